"""`autolabel demo` (`make demo`): the main job on the embedded stack, start to finish.

build the served models -> stack up -> worker -> publish samples/ -> wait for every label
-> print the table -> stop everything this command started.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import click
from tqdm import tqdm

from autolabel.labels import LEGEND, label_cell
from deploy.local.processes import WorkerProcess
from services.publisher import collect, publish_files
from services.settings import load_settings
from services.topics import read_labels

ROOT = Path(__file__).resolve().parent.parent


def _autolabel() -> list[str]:
    """The `autolabel` command of this interpreter and this code tree."""
    return [sys.executable, "-m", "autolabel"]


def _catalog(samples: Path) -> dict[str, dict[str, str]]:
    path = samples / "labels.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


@click.command("demo")
@click.option("--samples", type=click.Path(exists=True, file_okay=False, path_type=Path), default=ROOT / "samples", show_default=True)
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait for every label.")
@click.option("--models-dir", type=click.Path(path_type=Path), default=ROOT / "models", show_default=True, help="Trained heads to serve.")
@click.option("--skip-build", is_flag=True, help="Serve the repository as it is (no `models build`).")
@click.option("--keep-running", is_flag=True,
              help="Leave the stack up afterwards, with the review app started beside it (its URL and token are printed).")
def demo_command(samples: Path, timeout: float, models_dir: Path, skip_build: bool, keep_running: bool) -> None:
    """Label the sample photos end to end and print what came back."""
    from deploy.local.processes import StackError
    from deploy.local.stack import Stack, StackAlreadyRunning

    settings = load_settings()
    click.secho("1/5 building the served models", bold=True)
    if not skip_build:
        build = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
            [*_autolabel(), "models", "build", "--models-dir", str(models_dir), "--out", str(settings.model_repository)],
            stderr=subprocess.PIPE)
        pass_stderr(build.stderr, sys.stderr)  # type: ignore[arg-type]
        if build.wait() != 0:
            raise click.ClickException("`autolabel models build` failed (see above)")
    click.secho("2/5 starting the embedded stack", bold=True)
    # the worker calls one model (an ensemble loads its composing models): load only that
    stack = Stack(settings.model_copy(update={"stack_triton_models": settings.triton_model, "stack_timeout_s": max(settings.stack_timeout_s, 600)}))
    started_stack = False
    try:
        stack.up(log=click.echo)
        started_stack = True
    except StackAlreadyRunning as exc:
        click.echo(f"{exc}; using it and reloading its models")
        _reload_models(load_settings())
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    settings = load_settings()  # now with the stack's endpoints
    worker = None
    try:
        click.secho("3/5 starting a worker", bold=True)
        log_path = settings.state_dir / "logs" / "demo-worker.log"
        state_dir = str(settings.state_dir.resolve())  # the worker finds the stack's endpoints there
        worker = WorkerProcess({"AUTOLABEL_METRICS_PORT": "0", "AUTOLABEL_STATE_DIR": state_dir}, log_path, "demo-worker").start()
        click.echo(f"worker pid {worker.pid}, log {log_path}")
        click.secho("4/5 publishing the sample photos", bold=True)
        titles = {pid: {"title": row["productDisplayName"]} for pid, row in _catalog(samples).items() if row.get("productDisplayName")}
        summary = publish_files(settings, collect([samples]), metadata=titles)  # each photo with its product title
        wanted = {e.event_id: e.product_id for e in summary.published}
        click.secho(f"5/5 waiting for {len(wanted)} labels", bold=True)
        got = _wait(settings, wanted, timeout, worker)
        _print_table(got, _catalog(samples))
        _print_thresholds(got, models_dir)
        missing = set(wanted) - set(got)
        if missing:
            raise click.ClickException(f"{len(missing)} label(s) did not arrive within {timeout:.0f}s; see {log_path}")
        if keep_running:
            from autolabel.review import start_for_demo

            url, token = start_for_demo(settings)
            click.secho(f"\nreview the flagged labels: {url}  (token: {token})", bold=True)
    finally:
        if worker is not None:
            worker.stop()
        if started_stack and not keep_running:
            stack.down(log=click.echo)


def _reload_models(settings) -> None:  # noqa: ANN001
    import tritonclient.http as httpclient

    state_file = settings.state_dir / "stack.json"
    from deploy.local.stack import StackState

    ports = StackState.from_json(state_file.read_text()).components["triton"].ports
    client = httpclient.InferenceServerClient(f"127.0.0.1:{ports['http']}")
    for entry in client.get_model_repository_index():
        client.load_model(entry["name"])


def _wait(settings, wanted: dict[str, str], timeout: float, worker: WorkerProcess) -> dict:  # noqa: ANN001
    got = {}
    deadline = time.monotonic() + timeout
    with tqdm(total=len(wanted), desc="labels", unit="label") as bar:
        while len(got) < len(wanted) and time.monotonic() < deadline:
            if not worker.alive():
                raise click.ClickException(f"the worker exited with code {worker.returncode}; see {worker.log_path}")
            for event in read_labels(settings, idle_s=1.0):
                if event.source_event_id in wanted and event.source_event_id not in got:
                    got[event.source_event_id] = event
                    bar.update(1)
            if len(got) < len(wanted):
                time.sleep(1)
    return got


def _print_table(got: dict, catalog: dict[str, dict[str, str]]) -> None:
    if not got:
        return
    first = next(iter(got.values()))
    click.echo(f"\nmodel {first.model.name} version {first.model.version}: {first.model.backbone} with {first.model.weights_source} weights")
    head = f"{'product':<9} {'style':<20} {'gender':<17} {'season':<27} {'review':<6} {'scope':<6} {'read':<11}  catalog says"
    click.echo(head)
    click.echo("-" * len(head) + "-" * 30)
    for event in sorted(got.values(), key=lambda e: e.product_id):
        cells = {t: label_cell(lab) for t, lab in event.labels.items()}
        row = catalog.get(event.product_id, {})
        says = " / ".join(x for x in (row.get("usage"), row.get("gender"), row.get("season")) if x)
        review = "yes" if event.needs_review else "no"
        read = "+".join(event.inputs)
        scope = "-" if event.scope is None else "in" if event.scope.in_scope else "OUT"
        says = " / ".join(x for x in (row.get("masterCategory"), says) if x)
        click.echo(f"{event.product_id:<9} {cells['style']:<20} {cells['gender']:<17} {cells['season']:<27} {review:<6} {scope:<6} "
                   f"{read:<11}  {says}")
    reviewed = sum(e.needs_review for e in got.values())
    outside = [e for e in got.values() if e.scope is not None and not e.scope.in_scope]
    how = ("labeled by the heads for other categories, each under its own threshold" if any(e.scope.other_heads for e in outside)  # type: ignore[union-attr]
           else "not a product the heads were trained for: every label to review")
    click.echo(f"\n{len(got)} labeled, {reviewed} flagged needs_review" + (f"; {len(outside)} out of scope ({how})" if outside else ""))
    click.echo(LEGEND)
    only = [e for e in got.values() if e.needs_review and [t for t, lab in e.labels.items() if lab.status == "review"] == ["season"]]
    if only:  # what the per-task review policy would change (docs/accuracy.md, "Review policy")
        click.echo(f"{len(only)} of them wait only for their season label: with AUTOLABEL_REVIEW_POLICY=season=advisory they would "
                   "skip review (65 % of unseen products from the photo, 78 % with the title; docs/accuracy.md)")


def _print_thresholds(got: dict, models_dir: Path) -> None:
    """Each task's auto-accept threshold (what the worker used) and what it gives on held-out photos."""
    import json

    if not got:
        return
    manifest_path = models_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    tasks = manifest.get("tasks", {})
    click.echo("\nauto-accept thresholds (labels below them are flagged for review):")
    # an apparel photo read alone: its thresholds are the photo's (a routed photo's are the other heads')
    photo_only = next((e for e in got.values() if e.inputs == ["image"] and not (e.scope and e.scope.other_heads)), None)
    for task, label in (photo_only.labels.items() if photo_only else ()):
        shipped = tasks.get(task, {}).get("threshold")
        line = f"  {task:<7} photo only: threshold {label.threshold:.3f}"
        test = tasks.get(task, {}).get("metrics", {}).get("test", {}).get("auto_accept")
        if shipped and test and test.get("accepted"):
            line += (f"  (target precision {shipped['target_precision']:.2f}, chosen on validation;"
                     f" on {_photos(test)}: coverage {test['coverage']:.0%}, precision {test['precision']:.3f})")
        elif shipped:
            line += (f"  (no threshold reached precision {shipped['target_precision']:.2f} on validation:"
                     " every label of this task goes to review)")
        elif not shipped:
            line += "  (the model ships no threshold: a setting or the 0.5 fallback)"
        click.echo(line)
    _print_title_thresholds(got, manifest.get("title") or {})
    _print_other_thresholds(got, manifest.get("others") or {})


def _print_other_thresholds(got: dict, others: dict) -> None:
    """Photos routed to the heads for the other categories: their thresholds, and what they give on unseen test photos."""
    if not any(e.scope and e.scope.other_heads for e in got.values()) or not others:
        return
    for task, entry in others.get("tasks", {}).items():
        t, test = entry.get("threshold") or {}, (entry.get("metrics", {}).get("test") or {}).get("auto_accept") or {}
        line = f"  {task:<7} other categories: threshold {t.get('threshold', float('nan')):.3f}"
        if test.get("accepted"):
            line += f"  (on {test['rows']} unseen routed test photos: coverage {test['coverage']:.0%}, precision {test['precision']:.3f})"
        click.echo(line)


# TensorFlow's start-up lines (absl logs written before logging is set up: no setting hides them), e.g.
# "E0000 00:00:17.. cuda_platform.cc:52] failed call to cuInit" on a machine without a GPU
_TF_CHATTER = re.compile(r"^([IWE]\d{4} \d\d:\d\d:|WARNING: All log messages before absl|To enable the following instructions)")


def pass_stderr(source: IO[bytes], sink: IO[str]) -> None:
    """Copy a child's stderr as it comes (progress bars redraw with ``\\r``), without TensorFlow's start-up lines."""
    pending = ""
    while chunk := source.read1(4096) if hasattr(source, "read1") else source.read(4096):
        pieces = re.split(r"(?<=[\r\n])", pending + chunk.decode("utf-8", "replace"))
        pending = pieces.pop()  # not ended yet
        sink.write("".join(p for p in pieces if not _TF_CHATTER.match(p)))
        sink.flush()
    if pending and not _TF_CHATTER.match(pending):
        sink.write(pending)


def _photos(test: dict) -> str:
    """What the manifest's test figures cover: every test row of the training data with the task's label
    (Unisex and kids' apparel too, so more rows than docs/accuracy.md's Men/Women headline)."""
    return f"{test['rows']} unseen test photos of the training categories" if test.get("rows") else "unseen test photos"


def _print_title_thresholds(got: dict, title: dict) -> None:
    """With a title: one threshold per class, and what they give on unseen test photos."""
    if not any(e.inputs != ["image"] for e in got.values()) or not title:
        return
    for task, entry in title.get("tasks", {}).items():
        values = (entry.get("threshold") or {}).get("thresholds") or []
        test = entry.get("metrics", {}).get("image+title", {}).get("test", {}).get("auto_accept") or {}
        line = f"  {task:<7} photo + title: per class " + "/".join(f"{v:.3f}" for v in values)
        if test.get("accepted"):
            line += f"  (on {_photos(test)}: coverage {test['coverage']:.0%}, precision {test['precision']:.3f})"
        click.echo(line)


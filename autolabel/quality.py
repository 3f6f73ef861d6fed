"""`autolabel quality`: live precision (blind audits), reviewer agreement, audit backlog and, from a
worker's /metrics, drift, per task and model version; `--json` for scripts, `--plot FILE.png` over
time. `autolabel quality reference`: the drift reference of a known-good period's label events."""

from __future__ import annotations

import json
import re
import sys
from datetime import timedelta
from pathlib import Path

import click

from services.audit import Estimate, estimates, over_time

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    m = DURATION.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r}: a number and s, m, h or d (e.g. 1d)")
    return timedelta(seconds=float(m.group(1)) * UNITS[m.group(2)])


def verdict(e: Estimate, target: float) -> str:
    """What the interval says about the target: below (even its upper bound is), ok (its lower bound reaches it) or unsure."""
    lo, hi = e.interval
    if e.signal != "precision":
        return ""
    return "BELOW TARGET" if hi < target else "ok" if lo >= target else "unsure (audit more)"


def table(found: list[Estimate], target: float, backlog: dict[str, int], drift: dict[str, dict[str, float]]) -> str:
    lines = [f"{'signal':<10} {'task':<7} {'model':<22} {'class':<12} {'n':>5} {'value':>6}  {'95% interval':<15} vs target {target:.2f}"]
    for e in found:
        lo, hi = e.interval
        value = f"{e.value:.3f}" if e.value is not None else "-"
        lines.append(f"{e.signal:<10} {e.task:<7} {(e.model_version or 'all'):<22} {(e.label_class or 'all'):<12} {e.n:>5} "
                     f"{value:>6}  [{lo:.3f}, {hi:.3f}]  {verdict(e, target)}")
    if not found:
        lines.append("(no audit outcomes or review decisions in the window: set AUTOLABEL_AUDIT_RATE and review the audits)")
    lines.append(f"audit backlog: {sum(backlog.values())} waiting" + "".join(f", {v}: {n}" for v, n in sorted(backlog.items())))
    for task, values in sorted(drift.items()):
        lines.append(f"drift {task:<7} " + "  ".join(f"{k} {v:.3f}" for k, v in sorted(values.items())))
    return "\n".join(lines)


def worker_drift(urls: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per task, from workers' /metrics: the PSIs, the accept rate and its reference (the worst over the workers)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    wanted = {"autolabel_drift_psi", "autolabel_accept_rate", "autolabel_reference_accept_rate"}
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - an operator's URL
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:
                    key = sample.name.removeprefix("autolabel_") + (f"[{sample.labels['feature']}]" if "feature" in sample.labels else "")
                    task = out.setdefault(sample.labels["task"], {})
                    worse = max if "psi" in key else min
                    task[key] = worse(task.get(key, sample.value), sample.value)
    return out


def plot(path: Path, outcomes: list, bucket: timedelta, target: float, step: str = "") -> None:
    try:
        import matplotlib
    except ImportError:
        raise click.ClickException("--plot needs matplotlib (the `ml` extra: pip install -e '.[ml]', or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = over_time(outcomes, bucket)
    tasks = sorted({task for _, task in series}) or ["(none)"]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(9, 2.8 * len(tasks)), sharex=True, squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        for signal, style in (("precision", "-o"), ("agreement", "--s")):
            points = series.get((signal, task), [])
            if not points:
                continue
            xs = [t for t, _ in points]
            ax.plot(xs, [e.value for _, e in points], style, label=f"{signal} (n per point {min(e.n for _, e in points)}+)")
            ax.fill_between(xs, [e.interval[0] for _, e in points], [e.interval[1] for _, e in points], alpha=0.2)
        ax.axhline(target, color="red", lw=1, ls=":", label=f"target {target:.2f}")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(task)
        ax.legend(loc="lower left", fontsize=8)
    axes[0, 0].set_title(f"live precision (blind audits) and reviewer agreement, per {step or bucket}, 95 % Wilson", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@click.group("quality", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts instead of a table.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write a PNG over time.")
@click.option("--bucket", default="1d", show_default=True, help="The plot's time step (30m, 1h, 1d, ...).")
@click.option("--window", default=None, help="The window (e.g. 7d); default AUTOLABEL_QUALITY_WINDOW_S.")
@click.option("--worker-metrics", multiple=True, help="A worker's /metrics URL: adds its drift (repeatable).")
@click.pass_context
def quality_command(ctx: click.Context, as_json: bool, plot_path: Path | None, bucket: str, window: str | None,
                    worker_metrics: tuple[str, ...]) -> None:
    """Live precision of auto-accepted labels from blind audits (Wilson 95 %), per task, model version and class;
    reviewer agreement on flagged labels; the audit backlog; drift from workers (docs/quality.md)."""
    if ctx.invoked_subcommand is not None:
        return
    from services.review.quality import audit_backlog, read_outcomes
    from services.review.queue import ReviewQueue
    from services.settings import load_settings

    settings = load_settings(**({"quality_window_s": parse_duration(window).total_seconds()} if window else {}))
    queue = ReviewQueue.from_settings(settings)
    try:
        with queue.sessions() as s:
            from services.review.quality import window_start

            outcomes = read_outcomes(s, window_start(settings))
            backlog = audit_backlog(s)
    finally:
        queue.close()
    found = estimates(outcomes)
    drift = worker_drift(worker_metrics) if worker_metrics else {}
    if as_json:
        click.echo(json.dumps({"target_precision": settings.target_precision, "window_s": settings.quality_window_s,
                               "estimates": [dict(e.as_dict(), verdict=verdict(e, settings.target_precision) or None) for e in found],
                               "audit_backlog": backlog, "drift": drift}, indent=2))
    else:
        click.echo(table(found, settings.target_precision, backlog, drift))
    if plot_path is not None:
        plot(plot_path, outcomes, parse_duration(bucket), settings.target_precision, bucket)
        click.echo(f"plot: {plot_path}", err=True)


@quality_command.command("reference")
@click.option("--labels", "labels_file", type=click.File("r"), default=None,
              help="Label events as JSON lines (`autolabel labels --json`; - for stdin); default: read the label topic.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The reference JSON to write.")
def reference_command(labels_file, out_path: Path) -> None:  # noqa: ANN001
    """The drift reference (class shares, top-probability histogram, auto-accept rate per task) of the label events of
    a known-good period; the worker reads it from AUTOLABEL_DRIFT_REFERENCE."""
    from services.drift import build_reference
    from services.events import ProductLabeled

    if labels_file is not None:
        events = [ProductLabeled.model_validate_json(line) for line in labels_file if line.strip()]
        source = getattr(labels_file, "name", "stdin")
    else:
        from services.endpoints import require_kafka
        from services.settings import load_settings
        from services.topics import read_labels

        settings = load_settings()
        require_kafka(settings)
        events = list(read_labels(settings))
        source = f"topic {settings.topic_labels}"
    if not events:
        click.echo("no label events to build a reference from", err=True)
        sys.exit(1)
    ref = build_reference(events, source=source)
    out_path.write_text(json.dumps(ref, indent=2) + "\n")
    click.echo(f"{out_path}: reference of {len(events)} label event(s), tasks {sorted(ref['tasks'])}", err=True)

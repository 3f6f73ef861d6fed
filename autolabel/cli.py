"""`autolabel`: the command-line front door. Thin: parse, call, print.

It sits above every package: it assembles the subcommands of the running service
(:mod:`services`), training (:mod:`training`), the embedded stack (:mod:`deploy.local`),
the benchmarks (:mod:`benchmarks`) and the demo (:mod:`autolabel.demo`), and nothing below
imports it. Subcommands are imported only when used, so `autolabel publish` never pays
for TensorFlow.
"""

from __future__ import annotations

import importlib
import sys

import click

from services.endpoints import Unreachable
from services.errors import AutolabelError
from services.settings import SettingsError

# name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "stack": "deploy.local.cli:stack",
    "publish": "services.publisher:publish_command",
    "worker": "services.worker:worker_command",
    "labels": "autolabel.labels:labels_command",
    "settings": "autolabel.cli:settings_command",
    "schemas": "autolabel.cli:schemas_command",
    "demo": "autolabel.demo:demo_command",
    "train": "training.cli.train:train",
    "train-title": "training.cli.addons:train_title_command",
    "train-scope": "training.cli.addons:train_scope_command",
    "train-others": "training.cli.addons:train_others_command",
    "sweep": "training.cli.train:sweep",
    "evaluate": "training.cli.evaluate:evaluate",
    "models": "training.cli.models:models",
    "bench": "autolabel.cli:bench",
    "review": "autolabel.review:review_command",
    "relabel": "autolabel.review:relabel_command",
    "quality": "autolabel.quality:quality_command",
}

HELP = {
    "stack": "Start, stop and inspect the embedded stack (broker, S3, Triton).",
    "publish": "Upload product photos to S3 and emit ProductImageUploaded events.",
    "worker": "Run the labeling worker (Faust): events -> Triton -> labels.",
    "labels": "Show label events as a table or JSON lines.",
    "settings": "Print every setting, its value and its environment variable.",
    "schemas": "Write or check the events' JSON Schemas (docs/schemas/) for consumers.",
    "demo": "The main job: build models, stack up, label the samples, print, stop.",
    "train": "Train the task heads on a dataset.",
    "train-title": "Add the product title as a second signal to trained models.",
    "train-scope": "Add the scope gate: photos of products the heads were not trained for go to review.",
    "train-others": "Add heads for the other categories (shoes, bags, ...), chosen by the scope gate.",
    "sweep": "Run a hyperparameter grid and print the study's tables.",
    "evaluate": "Evaluate the served models on a dataset.",
    "models": "Build the served model repository.",
    "bench": "Benchmarks: serving, pipeline, soak, training.",
    "review": "Run the human review web app (flagged labels -> reviewed labels).",
    "relabel": "Re-emit labeled products' uploads so the served model labels them again.",
    "quality": "Live precision from blind audits, reviewer agreement, audit backlog, drift; drift references.",
}

BENCHES = {
    "serving": "benchmarks.serving:serving",
    "pipeline": "benchmarks.pipeline:pipeline",
    "soak": "benchmarks.soak:soak",
    "training": "benchmarks.training:training",
    "audit": "autolabel.audit_sim:audit",
}
BENCH_HELP = {
    "serving": "Standalone vs shared-backbone vs in-process inference (images/s, p50/p99).",
    "pipeline": "End-to-end events/s and latency through Kafka -> worker -> Triton -> Kafka+S3.",
    "soak": "Fixed-rate load for N minutes: throughput, latency, RSS, lag, losses.",
    "training": "Feature-cache head training vs a plain Keras fit with the frozen base.",
    "audit": "Blind audits end to end with a simulated reviewer: live precision vs the census of the same photos.",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use from ``lazy_commands``."""

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, lazy_help: dict[str, str] | None = None, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.lazy_commands = COMMANDS if lazy_commands is None else lazy_commands
        self.lazy_help = HELP if lazy_help is None else lazy_help

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.lazy_commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy_commands.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or module_name
            raise click.ClickException(
                f"`autolabel {cmd_name}` needs the module {missing!r}, which is not installed. "
                "Install the extras: `make install` (or pip install -e '.[ml,stack]')."
            ) from None
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(n, self.lazy_help.get(n, "")) for n in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """autolabel: label fashion product photos (style, gender, season) as they are uploaded."""


@click.group(cls=LazyGroup, lazy_commands=BENCHES, lazy_help=BENCH_HELP)
def bench() -> None:
    """Benchmarks. Results go to docs/benchmarks.md with the command that made them."""


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (secrets masked).")
def settings_command(as_json: bool) -> None:
    """Every setting, its current value and its environment variable (AUTOLABEL_*; README "Configuration")."""
    from services.settings import ENV_PREFIX, load_settings

    settings = load_settings()
    data = settings.model_dump(mode="json")
    if as_json:
        import json

        click.echo(json.dumps(data, indent=2))
        return
    for name, value in data.items():
        click.echo(f"{ENV_PREFIX}{name.upper():<34} {value}")


@click.command("schemas")
@click.option("--write", is_flag=True, help="Write docs/schemas/ from the event models (after a compatible change, or a new version).")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None, help="Another folder than docs/schemas/.")
def schemas_command(write: bool, directory: str | None) -> None:
    """Check (the default) that docs/schemas/ is the events' schemas as the code defines them, and that no change
    would break a consumer without a new schema_version; exit 1 naming each problem."""
    from pathlib import Path

    from services import schemas

    where = Path(directory) if directory else schemas.SCHEMA_DIR
    if write:
        for path in schemas.write(where):
            click.echo(f"wrote {path}")
        return
    problems = schemas.check(where)
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{len(schemas.EVENTS)} event schemas in {where} are current")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="autolabel", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        line = one_line(exc)
        if line is None:
            raise  # a bug: its traceback is what helps
        click.echo(f"error: {line}", err=True)
        sys.exit(1)


# libraries whose errors mean "a server is away or refused", not a bug in autolabel
_CLIENT_MODULES = ("kafka", "aiokafka", "botocore", "boto3", "urllib3", "tritonclient", "grpc", "obstore")


def one_line(exc: BaseException) -> str | None:
    """What a person sees of an error: one line for autolabel's own errors and for servers
    that are away or refuse (broker, S3, Triton); None for anything else (a bug)."""
    if isinstance(exc, OSError) and exc.filename is not None:  # a path the user gave: exists, not writable, disk full
        return f"{exc.filename}: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, AutolabelError) or type(exc).__module__.split(".")[0] in _CLIENT_MODULES:
        text = " ".join(str(exc).split()) or type(exc).__name__
        hint = "" if isinstance(exc, Unreachable) else " (is the stack up? `autolabel stack status`)"
        return f"{text[:500]}{hint}"
    return None


if __name__ == "__main__":
    main()

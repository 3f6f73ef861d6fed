"""`autolabel`: the command-line front door. Thin: parse, call, print.

Subcommands live beside the code they drive and are imported only when used, so
`autolabel publish` never pays for TensorFlow.
"""

from __future__ import annotations

import importlib
import sys

import click

from services.settings import SettingsError

# name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "stack": "deploy.local.cli:stack",
    "publish": "services.publisher:publish_command",
    "worker": "services.worker:worker_command",
    "labels": "services.labels:labels_command",
    "settings": "services.cli:settings_command",
    "demo": "services.demo:demo_command",
    "train": "training.cli:train",
    "sweep": "training.cli:sweep",
    "evaluate": "training.cli:evaluate",
    "models": "training.export:models",
    "bench": "services.bench:bench",
    "review": "services.review.commands:review_command",
    "relabel": "services.review.commands:relabel_command",
}

HELP = {
    "stack": "Start, stop and inspect the embedded stack (broker, S3, Triton).",
    "publish": "Upload product photos to S3 and emit ProductImageUploaded events.",
    "worker": "Run the labeling worker (Faust): events -> Triton -> labels.",
    "labels": "Show label events as a table or JSON lines.",
    "settings": "Print every setting, its value and its environment variable.",
    "demo": "The main job: build models, stack up, label the samples, print, stop.",
    "train": "Train the task heads on a dataset.",
    "sweep": "Run a hyperparameter grid and print the study's tables.",
    "evaluate": "Evaluate the served models on a dataset.",
    "models": "Build the served model repository.",
    "bench": "Benchmarks: serving, pipeline, soak.",
    "review": "Run the human review web app (flagged labels -> reviewed labels).",
    "relabel": "Re-emit labeled products' uploads so the served model labels them again.",
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


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (secrets masked).")
def settings_command(as_json: bool) -> None:
    from services.settings import ENV_PREFIX, load_settings

    settings = load_settings()
    data = settings.model_dump(mode="json")
    if as_json:
        import json

        click.echo(json.dumps(data, indent=2))
        return
    for name, value in data.items():
        click.echo(f"{ENV_PREFIX}{name.upper():<34} {value}")


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


if __name__ == "__main__":
    main()

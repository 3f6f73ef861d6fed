"""`autolabel review` (the web app) and `autolabel relabel`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from deploy.local.processes import ROOT, WorkerProcess
from services.endpoints import require_kafka, require_s3, require_triton
from services.settings import load_settings
from services.topics import require_topics


MAX_HEADER_BYTES = 16 * 1024  # the request line and headers together


@click.command("review")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")  # noqa: S104
@click.option("--port", type=int, default=None, help="Port (default AUTOLABEL_REVIEW_PORT).")
def review_command(host: str, port: int | None) -> None:
    """Run the review web app: the page, the JSON API, /healthz and /metrics."""
    import uvicorn

    from services import observability as obs
    from services.review.app import create_app

    settings = load_settings()
    # once, at start: no broker or S3 -> one line and exit 1, not a log line per client retry
    require_kafka(settings)
    require_s3(settings)
    # a misspelt topic is refused, never created by the first read or write
    require_topics(settings, {"topic_labels": settings.topic_labels, "topic_reviewed": settings.topic_reviewed})
    obs.configure_logging(settings.log_level)
    obs.quiet_libraries(settings.log_level)
    if not settings.review_reviewers():
        click.echo("warning: AUTOLABEL_REVIEW_TOKENS is empty: nobody can log in", err=True)
    # h11 with a bound on a request's head: a larger header block is refused (400) before it is kept
    uvicorn.run(create_app(settings), host=host, port=port or settings.review_port, log_level="warning",
                proxy_headers=True, timeout_graceful_shutdown=10, http="h11", h11_max_incomplete_event_size=MAX_HEADER_BYTES)


@click.command("relabel")
@click.option("--only", type=click.Choice(["all", "flagged", "other-version"]), default="other-version", show_default=True,
              help="Which labeled products: all, those flagged for review, or those labeled by a model version other than the served one.")
@click.option("--rate", type=float, default=None, help="Events per second at most (default AUTOLABEL_RELABEL_RATE).")
@click.option("--restart", is_flag=True, help="Ignore the checkpoint of an interrupted run and start over.")
@click.option("--limit", type=int, default=None, help="Send at most this many (the rest next time).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def relabel_command(only: str, rate: float | None, restart: bool, limit: int | None, quiet: bool) -> None:
    """Re-emit the uploads of labeled products so the served model labels them again.

    Human labels survive: the worker merges them into the new record of the same upload.
    """
    from services.review.relabel import relabel

    settings = load_settings()
    require_kafka(settings)  # where the uploads go again
    require_s3(settings)  # the records
    require_topics(settings, {"topic_images": settings.topic_images})
    if only == "other-version":
        require_triton(settings)  # which model version is served
    s = relabel(settings, only=only, rate=rate, restart=restart, limit=limit, progress=not quiet)
    version = f" (served model version {s.served_version})" if s.served_version else ""
    click.echo(f"{s.considered} labeled products, {s.selected} selected{version}; "
               f"sent {s.sent} upload event(s) to {settings.topic_images}"
               + (f"; {s.skipped_done} sent before the interruption" if s.skipped_done else ""))


class ReviewProcess(WorkerProcess):
    """`autolabel review` as a child process (tests, demo)."""

    def start(self) -> "ReviewProcess":
        # this module's own entry point: the same code as `autolabel review`, wherever the CLI lives
        cmd = [sys.executable, "-m", "autolabel.review", "review"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                         stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
        return self


def start_for_demo(settings, log=click.echo) -> tuple[str, str]:  # noqa: ANN001
    """Start the review app beside the embedded stack (`autolabel demo --keep-running`): a
    detached process recorded in the stack's state, so `autolabel stack down` stops it too.
    Returns (URL, a reviewer token): the first of AUTOLABEL_REVIEW_TOKENS, or a demo token
    generated once and kept in the state dir."""
    import secrets

    from deploy.local.processes import free_ports, http_ok, port_is_free, wait_until
    from deploy.local.stack import ComponentState, Stack

    state_dir = Path(settings.state_dir).resolve()
    reviewers = settings.review_reviewers()
    env = {"AUTOLABEL_STATE_DIR": str(state_dir), "AUTOLABEL_METRICS_PORT": "0"}
    if reviewers:
        token, name = next(iter(reviewers.items()))
    else:
        token_file = state_dir / "review-token"
        if not token_file.is_file():
            token_file.write_text(f"demo:{secrets.token_urlsafe(18)}")
            token_file.chmod(0o600)
        name, _, token = token_file.read_text().strip().partition(":")
        env["AUTOLABEL_REVIEW_TOKENS"] = f"{name}:{token}"
    port = settings.review_port if port_is_free(settings.review_port) else free_ports(1)[0]
    env["AUTOLABEL_REVIEW_PORT"] = str(port)
    url = f"http://127.0.0.1:{port}"
    stack = Stack(settings)
    state = stack.read_state()
    old = state.components.get("review") if state else None
    if old is not None and http_ok(f"{old.endpoint}/healthz"):
        return old.endpoint, token
    log_path = state_dir / "logs" / "review.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = ReviewProcess(env, log_path, "review").start()
    if not wait_until(lambda: http_ok(f"{url}/healthz"), 60, alive=proc.alive):
        raise click.ClickException(f"the review app did not start; see {log_path}")
    if state is not None:
        state.components["review"] = ComponentState("review", proc.pid, "autolabel.review review", {"http": port}, str(log_path), url)
        stack._write_state(state)  # noqa: SLF001 - `stack down` stops what the state lists
    log(f"review  ready  {url} (pid {proc.pid}, log {log_path})")
    return url, token


@click.group()
def main() -> None:
    """`python -m autolabel.review review|relabel`: the same as `autolabel review|relabel`."""


main.add_command(review_command)
main.add_command(relabel_command)

if __name__ == "__main__":
    main()

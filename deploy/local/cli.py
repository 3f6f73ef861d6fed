"""`autolabel stack up | down | status`."""

from __future__ import annotations

import json
import time

import click

from deploy.local.processes import StackError
from deploy.local.stack import Stack, StackAlreadyRunning
from services.settings import load_settings


def _stack() -> Stack:
    return Stack(load_settings())


@click.group()
def stack() -> None:
    """The embedded stack on 127.0.0.1: Tansu broker, SeaweedFS S3, tritonserver."""


@stack.command()
@click.option("--timeout", type=float, default=None, help="Seconds to wait for health (AUTOLABEL_STACK_TIMEOUT_S).")
def up(timeout: float | None) -> None:
    """Start the three servers, wait until healthy, create the bucket and topics."""
    st = _stack()
    started = time.monotonic()
    try:
        st.up(timeout=timeout, log=click.echo)
    except StackAlreadyRunning as exc:
        click.echo(str(exc))
        return
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"stack up in {time.monotonic() - started:.1f}s; endpoints in {st.env_file}")


@stack.command()
def down() -> None:
    """Stop exactly the processes `up` started (by PID)."""
    try:
        _stack().down(log=click.echo)
    except StackError as exc:
        raise click.ClickException(str(exc)) from None


@stack.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json: bool) -> None:
    """Each component, its endpoint and health. Exit 1 unless all are healthy."""
    try:
        rows = _stack().status()
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo("the stack is not running")
    else:
        for r in rows:
            health = "healthy" if r["healthy"] else ("running, unhealthy" if r["running"] else "down")
            click.echo(f"{r['component']:<7} {health:<18} pid {r['pid']:<8} {r['endpoint']}")
    if not rows or not all(r["healthy"] for r in rows):
        raise SystemExit(1)

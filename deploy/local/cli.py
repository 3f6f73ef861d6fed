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
@click.option("--env", "as_env", is_flag=True,
              help="Print what a client needs as AUTOLABEL_* variables (stack.env: endpoints, bucket, S3 keys, topics; "
                   "the S3 secret included).")
def status(as_json: bool, as_env: bool) -> None:
    """Each component, its endpoint and health. Exit 1 unless all are healthy."""
    st = _stack()
    try:
        rows = st.status()
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    env = st.env()
    if as_env:
        for name, value in env.items():
            click.echo(f"{name}={value}")
    elif as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo("the stack is not running")
    else:
        for r in rows:
            health = "healthy" if r["healthy"] else ("running, unhealthy" if r["running"] else "down")
            click.echo(f"{r['component']:<7} {health:<18} pid {r['pid']:<8} {r['endpoint']}")
        if env:
            click.echo(f"bucket  {env.get('AUTOLABEL_S3_BUCKET', '?')}; uploads to topic {env.get('AUTOLABEL_TOPIC_IMAGES', '?')}")
            click.echo(f"S3 keys and every client setting: {st.env_file} (or `autolabel stack status --env`)")
    if not rows or not all(r["healthy"] for r in rows):
        raise SystemExit(1)

"""Is a server there at all? A quick TCP check before a command waits on a client library.

kafka-python waits about 30 s before "Unable to bootstrap", then prints a traceback; a
person running `autolabel publish`, `labels` or `worker` with no broker should instead
learn within seconds which endpoint is down and what to do. The worker checks once, at
start; while it runs it never uses these checks: its clients retry (a server away is a
:class:`~services.errors.TransientError`).
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from services.errors import AutolabelError
from services.settings import ENV_PREFIX, Settings

CONNECT_TIMEOUT_S = 3.0
STACK_HINT = "start the embedded stack with `autolabel stack up`"


class Unreachable(AutolabelError):
    """A server a command needs does not accept connections; the message is one line that
    names the endpoint, the setting and the fix."""


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":") if ":" in address.strip("[]") else (address.strip(), "", "")
    return host.strip("[]"), int(port) if port.isdigit() else default_port


def reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _require(what: str, addresses: list[tuple[str, int]], setting: str, shown: str) -> None:
    if not any(reachable(h, p) for h, p in addresses):
        raise Unreachable(f"cannot reach {what} at {shown}: {STACK_HINT}, or set {ENV_PREFIX}{setting} to where it runs")


def require_kafka(settings: Settings) -> None:
    """At least one bootstrap server accepts connections, or :class:`Unreachable`."""
    servers = [s for s in settings.kafka_bootstrap_servers.split(",") if s.strip()]
    _require("the Kafka broker", [_host_port(s, 9092) for s in servers], "KAFKA_BOOTSTRAP_SERVERS", ",".join(servers))


def require_s3(settings: Settings) -> None:
    """The S3 endpoint accepts connections (nothing checked for AWS's default endpoint)."""
    if not settings.s3_endpoint_url:
        return
    url = urlsplit(settings.s3_endpoint_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    _require("S3", [(url.hostname or "", port)], "S3_ENDPOINT_URL", settings.s3_endpoint_url)


def require_triton(settings: Settings, url: str | None = None) -> None:
    """Triton's endpoint (``AUTOLABEL_TRITON_URL``, or ``url``) accepts connections."""
    address = url or settings.triton_url
    _require("Triton", [_host_port(address.split("://")[-1], 8001)], "TRITON_URL", address)

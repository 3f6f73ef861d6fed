"""Where photo bytes come from: the configured S3 bucket, or an allow-listed http(s) URL.

URLs are refused unless the host is on ``AUTOLABEL_URL_ALLOW_HOSTS`` *and* every address
it resolves to is public: loopback, private, link-local (169.254.169.254) and reserved
addresses are refused after DNS resolution, so an allow-listed name cannot be pointed
at the metadata service. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import socket
import ssl
from concurrent.futures import Executor
from urllib.parse import urlsplit

from services.events import ErrorCode, ImageLocation
from services.settings import Settings
from services.errors import BadInput, TransientError, transient_http_status
from services.storage import LabelStore


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified:
        return False
    # is_global also refuses what the flags above miss, e.g. 100.64.0.0/10 (shared address
    # space, where some clouds keep their metadata service: 100.100.100.200)
    return ip.is_global


def check_url(url: str, allow_hosts: list[str]) -> tuple[str, int]:
    """Refuse (BadInput url_not_allowed) a URL that may not be fetched; return (host, port)."""
    host, port, _ = _resolve_checked(url, allow_hosts)
    return host, port


def _resolve_checked(url: str, allow_hosts: list[str]) -> tuple[str, int, str]:
    """check_url's checks; also the (public) address the fetch must connect to."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in {"http", "https"} or not host:
        raise BadInput(ErrorCode.url_not_allowed, "only http(s) URLs with a host are accepted")
    if parts.username or parts.password:
        raise BadInput(ErrorCode.url_not_allowed, "URLs with credentials are refused")
    if host not in allow_hosts:
        raise BadInput(ErrorCode.url_not_allowed, f"host {host!r} is not on AUTOLABEL_URL_ALLOW_HOSTS")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise TransientError(f"cannot resolve {host}: {exc}") from exc
    addresses = sorted({info[4][0] for info in infos})
    blocked = [a for a in addresses if not _public(a)]
    if blocked or not addresses:
        raise BadInput(ErrorCode.url_not_allowed, f"host {host!r} resolves to non-public address(es) {blocked}")
    return host, port, addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, not to a second DNS answer (DNS rebinding)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to the checked address; the certificate is verified for the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_url(url: str, settings: Settings) -> bytes:
    """GET an allow-listed URL from the address checked above; redirects are not followed."""
    host, port, address = _resolve_checked(url, settings.url_allow_hosts)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn_cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    conn = conn_cls(host, port, address, timeout=10)
    try:
        conn.request("GET", target, headers={"User-Agent": "autolabel", "Accept": "image/*"})
        resp = conn.getresponse()
        if transient_http_status(resp.status):
            raise TransientError(f"{url}: HTTP {resp.status}")
        if resp.status != 200:
            note = " (redirects are not followed)" if 300 <= resp.status < 400 else ""
            raise BadInput(ErrorCode.image_not_found, f"{url}: HTTP {resp.status}{note}")
        data = resp.read(settings.max_image_bytes + 1)
    except (http.client.HTTPException, OSError) as exc:
        raise TransientError(f"{url}: {exc}") from exc
    finally:
        conn.close()
    if len(data) > settings.max_image_bytes:
        raise BadInput(ErrorCode.image_too_large, f"image is over {settings.max_image_bytes} bytes")
    return data


async def fetch(location: ImageLocation, store: LabelStore, settings: Settings, pool: Executor) -> bytes:
    """The photo's bytes from the configured bucket, or an allow-listed URL (in ``pool``)."""
    if location.s3 is not None:
        return await store.get_image(location.s3, settings.max_image_bytes)
    assert location.url is not None
    return await asyncio.get_running_loop().run_in_executor(pool, fetch_url, location.url, settings)

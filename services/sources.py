"""Where photo bytes come from: the configured S3 bucket, or an allow-listed http(s) URL.

URLs are refused unless the host is on ``AUTOLABEL_URL_ALLOW_HOSTS`` *and* every address
it resolves to is public: loopback, private, link-local (169.254.169.254) and reserved
addresses are refused after DNS resolution, so an allow-listed name cannot be pointed
at the metadata service. Redirects are not followed.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from services.events import ErrorCode, ImageLocation
from services.images import ImageError
from services.settings import Settings
from services.storage import Storage, TransientError


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
    """Refuse (ImageError url_not_allowed) a URL that may not be fetched; return (host, port)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in {"http", "https"} or not host:
        raise ImageError(ErrorCode.url_not_allowed, "only http(s) URLs with a host are accepted")
    if parts.username or parts.password:
        raise ImageError(ErrorCode.url_not_allowed, "URLs with credentials are refused")
    if host not in allow_hosts:
        raise ImageError(ErrorCode.url_not_allowed, f"host {host!r} is not on AUTOLABEL_URL_ALLOW_HOSTS")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise TransientError(f"cannot resolve {host}: {exc}") from exc
    addresses = {info[4][0] for info in infos}
    blocked = sorted(a for a in addresses if not _public(a))
    if blocked:
        raise ImageError(ErrorCode.url_not_allowed, f"host {host!r} resolves to non-public address(es) {blocked}")
    return host, port


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return None


def fetch_url(url: str, settings: Settings) -> bytes:
    check_url(url, settings.url_allow_hosts)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=10) as resp:  # noqa: S310 - checked above
            data = resp.read(settings.max_image_bytes + 1)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise TransientError(f"{url}: HTTP {exc.code}") from exc
        raise ImageError(ErrorCode.image_not_found, f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TransientError(f"{url}: {exc}") from exc
    if len(data) > settings.max_image_bytes:
        raise ImageError(ErrorCode.image_too_large, f"image is over {settings.max_image_bytes} bytes")
    return data


def fetch(location: ImageLocation, storage: Storage, settings: Settings) -> bytes:
    """The photo's bytes from S3 or an allow-listed URL (blocking; run in a thread)."""
    if location.s3 is not None:
        return storage.get_image(location.s3, settings.max_image_bytes)
    assert location.url is not None
    return fetch_url(location.url, settings)

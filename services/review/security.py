"""What the review app does to every request and response, whatever the route.

- :class:`Hardening`: a request body over ``review_max_body_bytes`` gets 413 (counted as it
  streams in, never read whole, never echoed); every response carries a strict CSP (no inline
  script or style, nothing from another origin, no framing), nosniff, a Referrer-Policy, and
  ``Cache-Control: no-store`` unless the route set its own (static files).
- :class:`AuthLimiter`: wrong logins and API tokens, per client address and from all clients
  together, in a moving one-minute window (the ``limits`` library); over either, 429 with
  Retry-After before the credential is even compared.
- :func:`validation_error`: a 422 that names the fields, never the values sent.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import Counter

AUTH_FAILURES = Counter("autolabel_review_auth_failures_total", "Wrong review logins or API tokens", ["kind"])
RATE_LIMITED = Counter("autolabel_review_rate_limited_total", "Requests refused with 429 after too many wrong credentials", ["scope"])

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


class BodyTooLarge(HTTPException):
    """Raised from the body stream: an HTTPException, so FastAPI's body parsing lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes", headers={"Connection": "close"})


class Hardening:
    """ASGI middleware: the body limit and the security headers (see the module's text)."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(send, limit)
            return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def secured_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, secured_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send, limit)


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"detail": f"request body over {limit} bytes"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
               (b"cache-control", b"no-store")] + [(k.encode(), v.encode()) for k, v in HEADERS.items()]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AuthLimiter:
    """Wrong credentials per client address and in total, per minute (in this process: each
    replica counts its own; behind N replicas the totals are N times the settings)."""

    def __init__(self, per_client: int, total: int) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._per_client = RateLimitItemPerMinute(per_client)
        self._total = RateLimitItemPerMinute(total)

    @staticmethod
    def client(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def check(self, request: Request) -> None:
        """429 when this client, or everyone together, sent too many wrong credentials lately."""
        for scope, item, key in (("client", self._per_client, self.client(request)), ("total", self._total, "*")):
            if not self._limiter.test(item, "auth", key):
                reset = self._limiter.get_window_stats(item, "auth", key).reset_time
                RATE_LIMITED.labels(scope).inc()
                retry = max(1, math.ceil(reset - time.time()))
                raise HTTPException(429, f"too many wrong tokens; try again in {retry} s", headers={"Retry-After": str(retry)})

    def failed(self, request: Request, kind: str) -> None:
        AUTH_FAILURES.labels(kind).inc()
        self._limiter.hit(self._per_client, "auth", self.client(request))
        self._limiter.hit(self._total, "auth", "*")


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming where each error is and what is wrong; the submitted values are left out."""
    def short(part: object) -> object:  # a field name can be the sender's too
        return part if isinstance(part, int) or len(str(part)) <= 32 else str(part)[:32] + "..."

    errors = [{"loc": [short(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))[:200], "type": e.get("type", "")}
              for e in exc.errors()[:20]]
    return JSONResponse({"detail": errors}, status_code=422)

"""Who is asking: reviewers from ``AUTOLABEL_REVIEW_TOKENS`` (``name:token,...``).

The JSON API takes ``Authorization: Bearer <token>``; the page a signed session cookie set
by logging in with the token, naming a login kept on the server (:mod:`services.review.sessions`:
logging out ends it). Form posts carry the session's CSRF token. Tokens are compared in
constant time; they are never logged nor echoed; wrong ones are rate-limited
(:class:`services.review.security.AuthLimiter`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import HTTPException, Request

from services.settings import Settings

SESSION_ID = "sid"
SESSION_CSRF = "csrf"


class Reviewers:
    def __init__(self, settings: Settings) -> None:
        self._by_token = settings.review_reviewers()

    def __len__(self) -> int:
        return len(self._by_token)

    def name_for(self, token: str | None) -> str | None:
        if not token:
            return None
        found = None
        for known, name in self._by_token.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = name
        return found

    def names(self) -> set[str]:
        return set(self._by_token.values())


def session_secret(settings: Settings) -> str:
    """The cookie signing key: the setting, or one derived from the tokens (stable across
    restarts and replicas; changing a token signs everyone out)."""
    explicit = settings.review_session_secret.get_secret_value()
    if explicit:
        return explicit
    material = "autolabel-review-session:" + settings.review_tokens.get_secret_value()
    return hashlib.sha256(material.encode()).hexdigest()


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _token_reviewer(request: Request) -> str | None:
    """The reviewer of the request's bearer token; None without one; 401 (counted, rate-limited) for a wrong one."""
    token = bearer(request)
    if token is None:
        return None
    limiter = request.app.state.auth_limiter
    limiter.check(request)
    name = request.app.state.reviewers.name_for(token)
    if name is None:
        limiter.failed(request, "token")
        raise HTTPException(401, "unknown reviewer token", headers={"WWW-Authenticate": "Bearer"})
    return name


def api_reviewer(request: Request) -> str:
    """The caller of the JSON API, from its bearer token; 401 otherwise."""
    name = _token_reviewer(request)
    if name is None:
        raise HTTPException(401, "a reviewer token is required: Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    return name


def any_reviewer(request: Request) -> str:
    """A bearer token or a logged-in session (photos, the API's schema); 401 otherwise."""
    name = _token_reviewer(request) or session_reviewer(request)
    if name is None:
        raise HTTPException(401, "log in or send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
    return name


def session_reviewer(request: Request) -> str | None:
    """The reviewer logged in on this session, while its login lasts on the server."""
    name = request.app.state.login_sessions.reviewer(request.session.get(SESSION_ID))
    return name if name in request.app.state.reviewers.names() else None


def log_in(request: Request, token: str) -> str | None:
    """Check a login token (rate-limited); on success a new server-side session and CSRF token."""
    limiter = request.app.state.auth_limiter
    limiter.check(request)
    name = request.app.state.reviewers.name_for(token)
    if name is None:
        limiter.failed(request, "login")
        return None
    log_out(request)
    request.session[SESSION_ID] = request.app.state.login_sessions.start(name)
    csrf_token(request)
    return name


def log_out(request: Request) -> None:
    request.app.state.login_sessions.end(request.session.get(SESSION_ID))
    request.session.clear()


def csrf_token(request: Request) -> str:
    token = request.session.get(SESSION_CSRF)
    if not token:
        token = secrets.token_urlsafe(32)
        request.session[SESSION_CSRF] = token
    return token


def check_csrf(request: Request, submitted: str | None) -> None:
    expected = request.session.get(SESSION_CSRF)
    if not expected or not submitted or not hmac.compare_digest(expected.encode(), submitted.encode()):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")

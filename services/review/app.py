"""The review web app (FastAPI): server-rendered page (:mod:`.pages`), JSON API and photo
proxy (:mod:`.api`), health and metrics (here), hardened as a whole (:mod:`.security`).

Flagged labels come from ``topic_labels`` into the queue (:mod:`services.review.consumer`);
a reviewer's decision becomes a ``ProductLabelsReviewed`` event on ``topic_reviewed`` and
human labels (``source: human``) in the product's S3 label record (:mod:`.decisions`). Class
names come from the reviewed label event (the served model's classes), never from a list kept here.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from starlette.middleware.sessions import SessionMiddleware

from services.review import auth, quality
from services.review.api import api, swagger_files
from services.review.decisions import Reviewing
from services.review.pages import REQUESTS_REFUSED, pages
from services.review.queue import ReviewQueue
from services.review.security import AuthLimiter, Hardening, validation_error
from services.review.sessions import LoginSessions
from services.settings import Settings
from services.storage import Storage

HERE = Path(__file__).resolve().parent
QUEUE_ITEMS = Gauge("autolabel_review_queue_items", "Review queue items by status", ["status"])

system = APIRouter(include_in_schema=False)  # health and metrics


@system.get("/healthz")
def healthz(request: Request) -> dict[str, Any]:
    request.app.state.queue.ping()
    consumer = request.app.state.consumer
    return {"status": "ok", "consumer": None if consumer is None else consumer.alive()}


@system.get("/metrics")
def metrics(request: Request) -> Response:
    stats = request.app.state.queue.stats()
    for status in ("pending", "claimed", "done", "stale", "quarantined"):
        QUEUE_ITEMS.labels(status).set(getattr(stats, status))
    quality.export(request.app.state.queue.sessions, request.app.state.settings)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings, start_consumer: bool = True) -> FastAPI:
    from services.review.consumer import ReviewConsumer

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        queue = ReviewQueue.from_settings(settings)
        app.state.queue = queue
        app.state.login_sessions = LoginSessions(queue.engine, settings.review_session_max_age_s)
        app.state.reviewing = Reviewing(settings, queue, Storage(settings))
        app.state.consumer = ReviewConsumer(settings, queue).start() if start_consumer else None
        try:
            yield
        finally:
            if app.state.consumer is not None:
                app.state.consumer.stop()
            app.state.reviewing.close()
            queue.close()

    # the schema and the docs page are routes of their own, behind a reviewer (services.review.api)
    app = FastAPI(title="autolabel review", version="2", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.reviewers = auth.Reviewers(settings)
    app.state.auth_limiter = AuthLimiter(settings.review_auth_failures_per_client, settings.review_auth_failures_total)
    app.add_middleware(SessionMiddleware, secret_key=auth.session_secret(settings), session_cookie="autolabel_review",
                       same_site="strict", max_age=settings.review_session_max_age_s, https_only=settings.review_cookie_secure)
    app.add_middleware(Hardening, max_body_bytes=settings.review_max_body_bytes)  # outermost: before any body is read
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    if settings.review_api_docs:
        app.mount("/api/docs/files", StaticFiles(directory=swagger_files()), name="api-docs-files")

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> Response:
        REQUESTS_REFUSED.labels(str(exc.status_code)).inc()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(RequestValidationError, validation_error)
    for router in (system, api, pages):
        app.include_router(router)
    return app

"""The review web app (FastAPI, server-rendered Jinja2 page + JSON API).

Flagged labels come from ``topic_labels`` into the queue (:mod:`services.review.consumer`);
a reviewer's decision becomes a ``ProductLabelsReviewed`` event on ``topic_reviewed`` and
human labels (``source: human``) in the product's S3 label record. Class names come from
the reviewed label event (the served model's classes), never from a list kept here.
"""

from __future__ import annotations

import threading
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request
from kafka.errors import KafkaError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.sessions import SessionMiddleware

from services import observability as obs
from services.errors import TransientError
from services.events import HumanLabel, ProductLabelsReviewed
from services.review import auth
from services.review.queue import Conflict, Item, NotFound, ReviewQueue
from services.settings import TASKS, Settings
from services.storage import ReviewConflict, Storage

HERE = Path(__file__).resolve().parent

REVIEWS = Counter("autolabel_reviews_total", "Review decisions stored and published", ["outcome"])
CORRECTIONS = Counter("autolabel_review_corrections_total", "Task labels a reviewer changed", ["task"])
QUEUE_ITEMS = Gauge("autolabel_review_queue_items", "Review queue items by status", ["status"])
REVIEW_LATENCY = Histogram("autolabel_review_decision_seconds", "Handling one review decision (S3 + event + database)")
REQUESTS_REFUSED = Counter("autolabel_review_refused_total", "Requests refused", ["status"])


NOTICES = {  # fixed texts: nothing from the query string is shown
    "conflict": "That product was reviewed by someone else, or has a newer photo since: your decision was not stored.",
    "gone": "That product is no longer in the queue.",
}


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: dict[str, str] = Field(default_factory=dict, description="task -> class; tasks left out are accepted as predicted")


def _item_json(request: Request, item: Item) -> dict[str, Any]:
    ev = item.event
    return {
        "product_id": item.product_id,
        "source_event_id": item.source_event_id,
        "uploaded_at": ev.upload_order()[0].isoformat(),
        "photo_url": str(request.url_for("photo", product_id=item.product_id)),
        "labels": {t: {"label": lab.label, "confidence": lab.confidence, "probabilities": lab.probabilities,
                       "threshold": lab.threshold, "needs_review": lab.needs_review} for t, lab in ev.labels.items()},
        "metadata": ev.metadata or {},
        "model": ev.model.model_dump(),
        "inputs": list(ev.inputs),  # what the model read: the photo, and the title where it had one
        "scope": ev.scope.model_dump() if ev.scope else None,  # out of scope: every label was sent to review for that
        "claimed_until": item.claimed_until.isoformat() if item.claimed_until else None,
    }


class Reviewing:
    """The decision path, shared by the page and the API."""

    def __init__(self, settings: Settings, queue: ReviewQueue, storage: Storage) -> None:
        self.settings = settings
        self.queue = queue
        self.storage = storage
        self._producer = None
        self._lock = threading.Lock()

    def producer(self):  # noqa: ANN201
        with self._lock:
            if self._producer is None:
                from services.publisher import make_producer

                self._producer = make_producer(self.settings)
            return self._producer

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)

    def decide(self, reviewer: str, product_id: str, labels: dict[str, str]) -> ProductLabelsReviewed:
        started = time.perf_counter()
        unknown_tasks = sorted(set(labels) - set(TASKS))
        if unknown_tasks:
            raise HTTPException(422, f"unknown task(s) {unknown_tasks}; tasks are {list(TASKS)}")
        try:
            item = self.queue.claim_one(product_id, reviewer)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except Conflict as exc:
            raise HTTPException(409, str(exc)) from None
        ev = item.event
        for task, label in labels.items():
            classes = list(ev.labels[task].probabilities)  # type: ignore[index]
            if label not in classes:
                raise HTTPException(422, f"unknown class {label!r} for {task}; the model's classes are {classes}")
        now = datetime.now(UTC)
        model_labels = {t: lab.label for t, lab in ev.labels.items()}
        final = {t: labels.get(t, model_labels[t]) for t in model_labels}
        corrected = [t for t in final if final[t] != model_labels[t]]
        human = {t: HumanLabel(label=final[t], reviewer=reviewer, reviewed_at=now, model_label=model_labels[t]) for t in final}
        try:
            self.storage.put_human_labels(ev, human)
        except TransientError as exc:
            raise HTTPException(503, f"the store is unavailable, nothing was recorded; try again ({exc})") from None
        except ReviewConflict as exc:
            self.queue.mark_stale(item)
            REVIEWS.labels("stale").inc()
            raise HTTPException(409, f"{product_id} has a newer photo; this review was not stored ({exc})") from None
        reviewed = ProductLabelsReviewed(
            product_id=ev.product_id, source_event_id=ev.source_event_id, uploaded_at=ev.upload_order()[0],
            image=ev.image, labels=final, model_labels=model_labels, corrected=corrected, model=ev.model,
            reviewer=reviewer, reviewed_at=now,
        )
        try:
            self.producer().send(self.settings.topic_reviewed, key=ev.product_id.encode(), value=reviewed.to_bytes()).get(timeout=30)
        except KafkaError as exc:  # the labels are stored; the item stays claimed: saving again sends the event
            raise HTTPException(503, f"the broker is unavailable; save again to publish the decision ({type(exc).__name__})") from None
        self.queue.complete(item, reviewer, final, len(corrected), now)
        REVIEWS.labels("corrected" if corrected else "accepted").inc()
        for t in corrected:
            CORRECTIONS.labels(t).inc()
        REVIEW_LATENCY.observe(time.perf_counter() - started)
        obs.get_logger(product_id=product_id, reviewer=reviewer).info("reviewed", corrected=corrected)
        return reviewed


system = APIRouter()  # health and metrics
api = APIRouter()  # JSON API (bearer tokens) and photos
pages = APIRouter()  # the page (session login, CSRF on every form)
TEMPLATES = Jinja2Templates(directory=HERE / "templates")


@system.get("/healthz")
def healthz(request: Request) -> dict[str, Any]:
    request.app.state.queue.ping()
    consumer = request.app.state.consumer
    return {"status": "ok", "consumer": None if consumer is None else consumer.alive()}

@system.get("/metrics")
def metrics(request: Request) -> Response:
    stats = request.app.state.queue.stats()
    for status in ("pending", "claimed", "done", "stale"):
        QUEUE_ITEMS.labels(status).set(getattr(stats, status))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

# --- JSON API (bearer tokens) ------------------------------------------------------
@api.get("/api/queue")
def api_queue(request: Request, limit: int = Query(10, ge=1, le=100), reviewer: str = Depends(auth.api_reviewer)) -> list[dict[str, Any]]:
    return [_item_json(request, item) for item in request.app.state.queue.claim(reviewer, limit)]

@api.post("/api/products/{product_id}/review")
def api_review(request: Request, product_id: str, body: ReviewRequest, reviewer: str = Depends(auth.api_reviewer)) -> dict[str, Any]:
    reviewed = request.app.state.reviewing.decide(reviewer, product_id, body.labels)
    return reviewed.model_dump(mode="json")

@api.get("/api/stats")
def api_stats(request: Request, reviewer: str = Depends(auth.api_reviewer)) -> dict[str, Any]:
    stats = request.app.state.queue.stats()
    n, per_min = request.app.state.queue.rate(reviewer)
    return {"waiting": stats.waiting, "pending": stats.pending, "claimed": stats.claimed, "done": stats.done,
            "stale": stats.stale, "reviewer": reviewer, "reviewed_last_hour": n, "per_minute": round(per_min, 2)}

# --- photos (bucket stays private: proxied for reviewers only) ----------------------
@api.get("/photos/{product_id}", name="photo")
def photo(request: Request, product_id: str, _reviewer: str = Depends(auth.any_reviewer)) -> Response:
    item = request.app.state.queue.get(product_id)
    if item is None:
        raise HTTPException(404, f"no product {product_id!r} in the review queue")
    location = item.event.image.s3
    if location is None:
        raise HTTPException(404, "the photo is not in the bucket")
    try:
        data, content_type = request.app.state.reviewing.storage.get_object_bytes(location)
    except FileNotFoundError:
        raise HTTPException(404, "the photo is gone from the bucket") from None
    if not content_type.startswith("image/"):
        content_type = "image/jpeg"
    return Response(data, media_type=content_type, headers={"Cache-Control": "private, max-age=300"})

# --- the page (session login, CSRF on every form) ----------------------------------
@pages.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    return TEMPLATES.TemplateResponse(request, "login.html", {"csrf": auth.csrf_token(request), "error": None})

@pages.post("/login")
def login(request: Request, token: str = Form(""), csrf_token: str = Form("")) -> Response:
    auth.check_csrf(request, csrf_token)
    name = request.app.state.reviewers.name_for(token.strip())
    if name is None:
        REQUESTS_REFUSED.labels("401").inc()
        return TEMPLATES.TemplateResponse(request, "login.html", {"csrf": auth.csrf_token(request), "error": "unknown token"},
                                          status_code=401)
    request.session.clear()
    request.session[auth.SESSION_REVIEWER] = name
    auth.csrf_token(request)  # a fresh CSRF token for the logged-in session
    return RedirectResponse("/", status_code=303)

@pages.post("/logout")
def logout(request: Request, csrf_token: str = Form("")) -> Response:
    auth.check_csrf(request, csrf_token)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)

@pages.get("/", response_class=HTMLResponse)
def page(request: Request, notice: str | None = None) -> Response:
    reviewer = auth.session_reviewer(request)
    if reviewer is None:
        return RedirectResponse("/login", status_code=303)
    queue: ReviewQueue = request.app.state.queue
    items = queue.claim(reviewer, 1)
    stats = queue.stats()
    n, per_min = queue.rate(reviewer)
    item = _item_json(request, items[0]) if items else None
    if item is not None:
        # the tasks the model is unsure of first: the cursor starts there
        item["order"] = sorted(item["labels"], key=lambda t: (not item["labels"][t]["needs_review"], TASKS.index(t)))
    return TEMPLATES.TemplateResponse(request, "review.html", {
        "reviewer": reviewer, "item": item, "csrf": auth.csrf_token(request), "waiting": stats.waiting,
        "done": stats.done, "reviewed": n, "per_minute": per_min, "message": NOTICES.get(notice or ""),
    })

@pages.post("/review/{product_id}")
async def review_form(request: Request, product_id: str) -> Response:
    reviewer = auth.session_reviewer(request)
    if reviewer is None:
        raise HTTPException(401, "log in first")
    form = await request.form()
    auth.check_csrf(request, str(form.get("csrf_token") or ""))
    labels = {t: str(form[f"label_{t}"]) for t in TASKS if form.get(f"label_{t}")}
    from starlette.concurrency import run_in_threadpool

    try:
        await run_in_threadpool(request.app.state.reviewing.decide, reviewer, product_id, labels)
    except HTTPException as exc:
        if exc.status_code not in (404, 409):
            raise
        # someone else got there first, or a newer photo needs no review: on to the next one
        REQUESTS_REFUSED.labels(str(exc.status_code)).inc()
        return RedirectResponse(f"/?notice={'gone' if exc.status_code == 404 else 'conflict'}", status_code=303)
    return RedirectResponse("/", status_code=303)

@pages.post("/skip/{product_id}")
def skip_form(request: Request, product_id: str, csrf_token: str = Form("")) -> Response:
    reviewer = auth.session_reviewer(request)
    if reviewer is None:
        raise HTTPException(401, "log in first")
    auth.check_csrf(request, csrf_token)
    request.app.state.queue.skip(product_id, reviewer)
    return RedirectResponse("/", status_code=303)


def create_app(settings: Settings, start_consumer: bool = True) -> FastAPI:
    from services.review.consumer import ReviewConsumer

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        queue = ReviewQueue.from_settings(settings)
        app.state.queue = queue
        app.state.reviewing = Reviewing(settings, queue, Storage(settings))
        app.state.consumer = ReviewConsumer(settings, queue).start() if start_consumer else None
        try:
            yield
        finally:
            if app.state.consumer is not None:
                app.state.consumer.stop()
            app.state.reviewing.close()
            queue.close()

    app = FastAPI(title="autolabel review", lifespan=lifespan, docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.settings = settings
    app.state.reviewers = auth.Reviewers(settings)
    app.add_middleware(SessionMiddleware, secret_key=auth.session_secret(settings), session_cookie="autolabel_review",
                       same_site="strict", max_age=12 * 3600)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> Response:
        REQUESTS_REFUSED.labels(str(exc.status_code)).inc()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    for router in (system, api, pages):
        app.include_router(router)
    return app

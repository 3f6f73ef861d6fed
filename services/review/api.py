"""The review app's JSON API (bearer tokens), the photo proxy and the API's own docs.

Every response has a schema here (the OpenAPI document is tested against the running app
with schemathesis); the queue's items are rendered by :func:`shown`, which quarantines an
item that cannot be rendered instead of failing the request.
"""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from services import observability as obs
from services.errors import BadInput
from services.events import ModelInfo, ProductLabelsReviewed, ScopeCheck, TaskLabel, validate_product_id
from services.images import ImageLimits, decode
from services.review import auth
from services.review.queue import Item, ReviewQueue

QUARANTINED = Counter("autolabel_review_quarantined_total", "Queue items that could not be shown, taken out of the queue")
PHOTOS_REFUSED = Counter("autolabel_review_photos_refused_total", "Photo requests refused: the object is not a photo", ["reason"])
MAX_PRODUCT_ID = 128
EVENT_ID_MAX = 64


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source_event_id: str = Field(min_length=1, max_length=EVENT_ID_MAX,
                                 description="The upload judged: `source_event_id` of the queue item the reviewer saw.")
    labels: dict[str, str] = Field(default_factory=dict, max_length=16,
                                   description="task -> class; tasks left out are accepted as predicted")


class TaskView(BaseModel):
    classes: list[str] = Field(description="The task's classes, in the model's order.")
    # null in an audit item: it is shown blind (no model label, probabilities or threshold to anchor on)
    label: str | None
    confidence: float | None
    probabilities: dict[str, float] | None
    threshold: float | None
    needs_review: bool | None
    status: str = Field(description="accepted, review (waits for a person), advisory (under its threshold, not queued), "
                        "or audit (a blind audit: the model's label is hidden; choose every task's label yourself).")


class QueueItem(BaseModel):
    product_id: str
    source_event_id: str = Field(description="The upload shown: send it back with the decision.")
    uploaded_at: datetime
    photo_url: str
    labels: dict[str, TaskView]
    metadata: dict[str, str]
    model: ModelInfo
    inputs: list[str] = Field(description="What the model read: the photo, and the title where it had one.")
    scope: ScopeCheck | None = Field(description="Out of scope: every label was sent to review for that.")
    claimed_until: datetime | None
    audit: bool = Field(False, description="A blind audit of labels that skipped review: every task must be labeled, "
                        "the model's labels are not shown (docs/quality.md).")


class QueueStats(BaseModel):
    waiting: int
    pending: int
    claimed: int
    done: int
    stale: int
    quarantined: int
    reviewer: str
    reviewed_last_hour: int
    per_minute: float


class Problem(BaseModel):
    detail: Any = Field(description="What went wrong (a 409 for a newer upload: message and current_source_event_id).")


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": Problem} for code in (401, 404, 409, 413, 422, 429, 503)}


def task_view(lab: TaskLabel, blind: bool) -> TaskView:
    """A task as a reviewer sees it; ``blind`` (an audit): its classes only."""
    if blind:
        return TaskView(classes=list(lab.probabilities), label=None, confidence=None, probabilities=None, threshold=None,
                        needs_review=None, status="audit")
    return TaskView(classes=list(lab.probabilities), label=lab.label, confidence=lab.confidence, probabilities=lab.probabilities,
                    threshold=lab.threshold, needs_review=lab.needs_review, status=lab.status)


def item_json(request: Request, item: Item) -> dict[str, Any]:
    ev = item.event
    blind = bool(item.audit)
    return QueueItem(
        product_id=item.product_id, source_event_id=item.source_event_id, uploaded_at=ev.upload_order()[0],
        photo_url=str(request.url_for("photo", product_id=validate_product_id(item.product_id))),
        labels={t: task_view(lab, blind) for t, lab in ev.labels.items()},
        metadata=ev.metadata or {}, model=ev.model, inputs=list(ev.inputs), scope=None if blind else ev.scope,
        claimed_until=item.claimed_until, audit=blind,
    ).model_dump(mode="json")


def shown(request: Request, reviewer: str, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` items claimed for ``reviewer``, rendered. One that cannot be rendered
    (a record no reader expected) is quarantined, its claim released, and another one taken."""
    queue: ReviewQueue = request.app.state.queue
    out: list[dict[str, Any]] = []
    for _ in range(limit + 20):  # bounded: a queue of nothing but bad items ends the loop too
        batch = queue.claim(reviewer, limit - len(out))
        bad = 0
        for item in batch:
            if any(o["product_id"] == item.product_id for o in out):
                continue
            try:
                out.append(item_json(request, item))
            except Exception as exc:  # noqa: BLE001 - whatever the record holds, the queue keeps working
                bad += 1
                queue.quarantine(item.product_id)
                QUARANTINED.inc()
                obs.get_logger(product_id=item.product_id[:MAX_PRODUCT_ID]).error(
                    "review item quarantined: it cannot be shown", error=f"{type(exc).__name__}: {str(exc)[:300]}")
        if not bad or len(out) >= limit:
            break
    return out


api = APIRouter(responses=ERRORS)


@api.get("/api/queue", response_model=list[QueueItem])
def api_queue(request: Request, limit: int = Query(10, ge=1, le=100), reviewer: str = Depends(auth.api_reviewer)) -> list[dict[str, Any]]:
    return shown(request, reviewer, limit)


@api.post("/api/products/{product_id}/review", response_model=ProductLabelsReviewed)
def api_review(request: Request, product_id: str, body: ReviewRequest, reviewer: str = Depends(auth.api_reviewer)) -> dict[str, Any]:
    reviewed = request.app.state.reviewing.decide(reviewer, product_id, body.source_event_id, body.labels)
    return reviewed.model_dump(mode="json")


@api.get("/api/stats", response_model=QueueStats)
def api_stats(request: Request, reviewer: str = Depends(auth.api_reviewer)) -> dict[str, Any]:
    stats = request.app.state.queue.stats()
    n, per_min = request.app.state.queue.rate(reviewer)
    return {"waiting": stats.waiting, "pending": stats.pending, "claimed": stats.claimed, "done": stats.done,
            "stale": stats.stale, "quarantined": stats.quarantined, "reviewer": reviewer, "reviewed_last_hour": n,
            "per_minute": round(per_min, 2)}


# --- photos (bucket stays private: proxied for reviewers only) ----------------------
def photo_bytes(data: bytes, limits: ImageLimits) -> bytes:
    """What the proxy serves: the object decoded as a photo the worker accepts, re-encoded
    as JPEG (nothing else in the object reaches the browser); BadInput otherwise."""
    img = decode(data, limits)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


@api.get("/photos/{product_id}", name="photo", response_class=Response,
         responses={200: {"content": {"image/jpeg": {}}, "description": "The photo, re-encoded as JPEG."}})
def photo(request: Request, product_id: str, _reviewer: str = Depends(auth.any_reviewer)) -> Response:
    item = request.app.state.queue.get(product_id)
    if item is None:
        raise HTTPException(404, "no such product in the review queue")
    location = item.event.image.s3
    settings = request.app.state.settings
    if location is None or not location.key.startswith(settings.s3_images_prefix):
        PHOTOS_REFUSED.labels("location").inc()
        raise HTTPException(404, "the photo is not in the bucket's images")
    try:
        data, _ = request.app.state.reviewing.storage.get_object_bytes(location)
    except FileNotFoundError:
        raise HTTPException(404, "the photo is gone from the bucket") from None
    try:
        body = photo_bytes(data, ImageLimits(settings.max_image_bytes, settings.max_image_pixels))
    except BadInput as exc:
        PHOTOS_REFUSED.labels(exc.code.value).inc()
        raise HTTPException(404, f"the object is not a photo the worker accepts ({exc.code.value})") from None
    return Response(body, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})


# --- the API's schema and docs (behind a reviewer; the page from installed files) ----
@api.get("/api/openapi.json", include_in_schema=False)
def openapi_schema(request: Request, _reviewer: str = Depends(auth.any_reviewer)) -> JSONResponse:
    return JSONResponse(request.app.openapi())


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>autolabel review API</title>
<link rel="stylesheet" href="/api/docs/files/swagger-ui.css"></head>
<body><div id="swagger-ui" data-url="/api/openapi.json"></div>
<script src="/api/docs/files/swagger-ui-bundle.js"></script>
<script src="/static/api-docs.js"></script></body></html>"""


def swagger_files() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


@api.get("/api/docs", include_in_schema=False)
def api_docs(request: Request) -> Response:
    if not request.app.state.settings.review_api_docs:
        raise HTTPException(404, "the API docs are off (AUTOLABEL_REVIEW_API_DOCS)")
    if auth.session_reviewer(request) is None:
        return RedirectResponse("/login", status_code=303)
    return HTMLResponse(DOCS_PAGE)

"""The review page: session login (a server-side login, CSRF on every form), one item at a
time, keyboard-driven (static/review.js; no inline script or style: the CSP forbids both)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool

from services.review import auth
from services.review.api import shown
from services.review.queue import ReviewQueue
from services.settings import TASKS

HERE = Path(__file__).resolve().parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
REQUESTS_REFUSED = Counter("autolabel_review_refused_total", "Requests refused", ["status"])

NOTICES = {  # fixed texts: nothing from the query string is shown
    "conflict": "That product was reviewed by someone else, or has a newer photo since: your decision was not stored.",
    "gone": "That product is no longer in the queue.",
}

pages = APIRouter(include_in_schema=False)


@pages.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    return TEMPLATES.TemplateResponse(request, "login.html", {"csrf": auth.csrf_token(request), "error": None})


@pages.post("/login")
def login(request: Request, token: str = Form("", max_length=1024), csrf_token: str = Form("", max_length=256)) -> Response:
    auth.check_csrf(request, csrf_token)
    try:
        name = auth.log_in(request, token.strip())
    except HTTPException as exc:  # 429: the page says so, with the wait
        if exc.status_code != 429:
            raise
        return TEMPLATES.TemplateResponse(request, "login.html", {"csrf": auth.csrf_token(request), "error": exc.detail},
                                          status_code=429, headers=exc.headers)
    if name is None:
        REQUESTS_REFUSED.labels("401").inc()
        return TEMPLATES.TemplateResponse(request, "login.html", {"csrf": auth.csrf_token(request), "error": "unknown token"},
                                          status_code=401)
    return RedirectResponse("/", status_code=303)


@pages.post("/logout")
def logout(request: Request, csrf_token: str = Form("", max_length=256)) -> Response:
    auth.check_csrf(request, csrf_token)
    auth.log_out(request)
    return RedirectResponse("/login", status_code=303)


@pages.get("/", response_class=HTMLResponse)
def page(request: Request, notice: str | None = None) -> Response:
    reviewer = auth.session_reviewer(request)
    if reviewer is None:
        return RedirectResponse("/login", status_code=303)
    queue: ReviewQueue = request.app.state.queue
    items = shown(request, reviewer, 1)
    stats = queue.stats()
    n, per_min = queue.rate(reviewer)
    item = items[0] if items else None
    if item is not None:
        # the tasks the model is unsure of first: the cursor starts there
        item["order"] = sorted(item["labels"], key=lambda t: (not item["labels"][t]["needs_review"], TASKS.index(t)))
        if item["audit"]:  # blind: every task, in the tasks' order (none is marked unsure)
            item["order"] = [t for t in TASKS if t in item["labels"]]
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
    source_event_id = str(form.get("source_event_id") or "")
    if not source_event_id:
        raise HTTPException(422, "the form names no upload (source_event_id): reload the page")
    labels = {t: str(form[f"label_{t}"]) for t in TASKS if form.get(f"label_{t}")}
    try:
        await run_in_threadpool(request.app.state.reviewing.decide, reviewer, product_id, source_event_id, labels)
    except HTTPException as exc:
        if exc.status_code not in (404, 409):
            raise
        # someone else got there first, or a newer photo came: on to the next one
        REQUESTS_REFUSED.labels(str(exc.status_code)).inc()
        return RedirectResponse(f"/?notice={'gone' if exc.status_code == 404 else 'conflict'}", status_code=303)
    return RedirectResponse("/", status_code=303)


@pages.post("/skip/{product_id}")
def skip_form(request: Request, product_id: str, csrf_token: str = Form("", max_length=256)) -> Response:
    reviewer = auth.session_reviewer(request)
    if reviewer is None:
        raise HTTPException(401, "log in first")
    auth.check_csrf(request, csrf_token)
    request.app.state.queue.skip(product_id, reviewer)
    return RedirectResponse("/", status_code=303)

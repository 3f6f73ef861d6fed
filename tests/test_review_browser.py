"""The review page in a real headless Chromium (Debian's `chromium`, driven by Playwright):
log in, see the photo, correct a label with the keyboard, see the queue shrink.

Set AUTOLABEL_REVIEW_SCREENSHOT=docs/img/review.png to refresh the screenshot in docs/review.md.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import SAMPLES, wait_for
from review_helpers import TOKENS, flagged_event, review_apps, send_flagged

from services.events import ImageLocation, ProductLabelsReviewed, S3Location
from services.storage import Storage
from services.topics import read_topic

pytestmark = pytest.mark.stack


@pytest.fixture()
def review_app(stack_settings, tmp_path):
    yield from review_apps(stack_settings, tmp_path)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    return os.environ.get("AUTOLABEL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def test_a_reviewer_corrects_a_label_with_the_keyboard(stack_settings, review_app, tmp_path):
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium executable (make test installs Debian's chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    settings, _ = stack_settings
    photos = sorted(SAMPLES.glob("*.jpg"))[:3]
    events = [flagged_event(settings, f"shirt-{i}", p.read_bytes()) for i, p in enumerate(photos)]
    svg_id = "shirt-svg"
    svg_key = f"{settings.s3_images_prefix}replaced-by-an-uploader.jpg"
    Storage(settings).client.put_object(Bucket=settings.s3_bucket, Key=svg_key, ContentType="image/svg+xml",
                                        Body=b'<svg xmlns="http://www.w3.org/2000/svg"><script>window.pwned = 1</script></svg>')
    svg_event = flagged_event(settings, svg_id, photos[0].read_bytes()).model_copy(
        update={"image": ImageLocation(s3=S3Location(bucket=settings.s3_bucket, key=svg_key))})
    send_flagged(settings, events + [svg_event])
    app = review_app()
    app.wait_waiting(4)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            refused: list[str] = []  # what the app's CSP blocked: nothing of its own pages may be
            page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(f"{app.url}/")
            assert page.url.endswith("/login")
            page.fill("#token", TOKENS["alice"])
            page.click("button[type=submit]")
            page.wait_for_selector("#photo")
            # the photo came through the app and decoded
            page.wait_for_function("document.getElementById('photo').complete")
            assert page.evaluate("document.getElementById('photo').naturalWidth") > 0
            assert page.inner_text("#queue-count") == "4"
            first = page.inner_text("#product-id")
            # the unsure task (style, predicted casual) is active: 2 picks its second class
            assert page.get_attribute("fieldset.task.active", "data-task") == "style"
            assert page.is_checked("input[name=label_style][value=casual]")
            page.keyboard.press("2")
            assert page.is_checked("input[name=label_style][value=formal]")
            assert page.get_attribute("fieldset.task.active", "data-task") != "style"  # moved on
            shot = Path(os.environ.get("AUTOLABEL_REVIEW_SCREENSHOT") or tmp_path / "review.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            with page.expect_navigation():
                page.keyboard.press("Enter")
            page.wait_for_selector("#queue-count")
            assert page.inner_text("#queue-count") == "3"
            assert page.inner_text("#reviewed-count") == "1"
            assert page.inner_text("#product-id") != first
            # -> skips to the next product; the skipped one goes to the back of the queue
            second = page.inner_text("#product-id")
            with page.expect_navigation():
                page.keyboard.press("ArrowRight")
            assert page.inner_text("#product-id") not in (first, second)
            assert page.evaluate("document.querySelector('meter.bar') !== null")  # the probability bars, without inline style
            assert not refused, refused
            # a photo object replaced by an SVG with a script: the proxy refuses it, nothing runs on the app's origin
            page.goto(f"{app.url}/photos/{svg_id}")
            assert page.evaluate("typeof window.pwned") == "undefined"
        finally:
            browser.close()

    record = Storage(settings).get_label(first)
    assert record.human_labels["style"].label == "formal" and record.human_labels["style"].reviewer == "alice"
    assert record.human_labels["gender"].label == "men"
    reviewed = wait_for(lambda: [ProductLabelsReviewed.model_validate_json(r.value)
                                 for r in read_topic(settings, settings.topic_reviewed, idle_s=1.0)], 20)
    assert [(r.product_id, r.corrected) for r in reviewed] == [(first, ["style"])]
    app.stop()


def test_an_audit_is_shown_blind_and_needs_every_task(stack_settings, review_app):
    """An audit item: nothing pre-selected, no probabilities; Enter does nothing until every task is
    chosen (the form's required radios), then the decision is saved as an audit."""
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium executable (make test installs Debian's chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    settings, _ = stack_settings
    photo = sorted(SAMPLES.glob("*.jpg"))[0]
    sure = flagged_event(settings, "audited-1", photo.read_bytes(), style=(0.9, 0.05, 0.05))
    assert not sure.needs_review
    send_flagged(settings, [sure.model_copy(update={"audit": True})])
    app = review_app()
    app.wait_waiting(1)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            page.goto(f"{app.url}/login")
            page.fill("#token", TOKENS["alice"])
            page.click("button[type=submit]")
            page.wait_for_selector("#photo")
            assert page.is_visible("#audit")
            assert page.evaluate("document.querySelectorAll('input[type=radio]:checked').length") == 0
            assert page.evaluate("document.querySelector('meter.bar, label.predicted, fieldset.unsure') === null")
            assert "0.90" not in page.inner_text("#review-form")
            page.keyboard.press("Enter")  # nothing chosen: the browser refuses to submit
            page.wait_for_timeout(500)
            assert page.is_visible("#audit") and page.inner_text("#reviewed-count") == "0"
            for key in ("2", "2", "1"):  # style formal, gender women, season spring-fall
                page.keyboard.press(key)
            with page.expect_navigation():
                page.keyboard.press("Enter")
            page.wait_for_selector("#empty")
        finally:
            browser.close()

    reviewed = wait_for(lambda: [ProductLabelsReviewed.model_validate_json(r.value)
                                 for r in read_topic(settings, settings.topic_reviewed, idle_s=1.0)], 20)
    assert [(r.product_id, r.audit, r.labels) for r in reviewed] == [
        ("audited-1", True, {"style": "formal", "gender": "women", "season": "spring-fall"})]
    assert sorted(reviewed[0].corrected) == ["gender", "style"]  # the model said casual, men, spring-fall
    app.stop()

"""The review app on the real embedded stack: worker -> topic_labels -> queue -> reviewers ->
ProductLabelsReviewed + human labels in the S3 record; restarts; access control; relabel."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest
from conftest import ROOT, SAMPLES, wait_for
from kafka import KafkaProducer
from PIL import Image
from review_helpers import csrf_of, flagged_event, review_apps, send_flagged

from services.events import ProductLabeled, ProductLabelsReviewed
from services.publisher import collect, publish_files
from services.storage import Storage
from services.topics import read_labels, read_topic

pytestmark = pytest.mark.stack


@pytest.fixture()
def review_app(stack_settings, tmp_path):
    yield from review_apps(stack_settings, tmp_path)

ALL_FLAGGED = {"AUTOLABEL_THRESHOLD_STYLE": "1.0", "AUTOLABEL_THRESHOLD_GENDER": "1.0", "AUTOLABEL_THRESHOLD_SEASON": "1.0"}


def _wait_labels(settings, expected: set[str], timeout: float = 180) -> list[ProductLabeled]:
    def done():
        events = list(read_labels(settings, idle_s=1.0))
        return events if {e.product_id for e in events} >= expected else None

    events = wait_for(done, timeout, interval=1.0)
    assert events, "labels did not arrive"
    return events


def _reviewed(settings) -> list[ProductLabelsReviewed]:
    return [ProductLabelsReviewed.model_validate_json(r.value) for r in read_topic(settings, settings.topic_reviewed, idle_s=1.0)]


def _other_class(label) -> str:
    return next(c for c in label["probabilities"] if c != label["label"])


def test_flagged_products_are_reviewed_once_by_one_reviewer_and_survive_restarts(stack_settings, worker_factory, review_app):
    settings, _ = stack_settings
    worker_factory(**ALL_FLAGGED)
    app = review_app()
    files = collect([SAMPLES])[:8]
    summary = publish_files(settings, files, progress=False)
    events = _wait_labels(settings, {e.product_id for e in summary.published})
    flagged = {e.product_id for e in events if e.needs_review}
    assert len(flagged) >= 4, "the 1.0 thresholds flag (nearly) everything"
    app.wait_waiting(len(flagged))

    # a re-delivery of the label topic changes nothing: each product is in the queue once
    producer = KafkaProducer(**settings.kafka_client_kwargs(), acks="all")
    for r in list(read_topic(settings, settings.topic_labels, idle_s=1.0)):  # all read before any is sent again
        producer.send(settings.topic_labels, key=r.key, value=r.value)
    producer.flush(30)
    wait_for(lambda: False, 4)  # give the consumer time to read them
    assert app.stats()["waiting"] == len(flagged)

    # no identity: 401 everywhere that is not health or metrics
    anon = app.api(None)
    assert anon.get("/api/queue").status_code == 401
    assert anon.get("/api/queue", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert anon.post(f"/api/products/{sorted(flagged)[0]}/review", json={"source_event_id": "x", "labels": {}}).status_code == 401
    assert anon.get(f"/photos/{sorted(flagged)[0]}").status_code == 401
    assert anon.get("/api/stats").status_code == 401
    assert anon.get("/", follow_redirects=False).headers["location"] == "/login"
    assert anon.get("/healthz").status_code == 200
    assert "autolabel_review_queue_items" in anon.get("/metrics").text

    # two reviewers claim different products; asking again returns what one holds
    alice, bob = app.api("alice"), app.api("bob")
    a_items = alice.get("/api/queue", params={"limit": 2}).json()
    b_items = bob.get("/api/queue", params={"limit": 2}).json()
    a_ids, b_ids = {i["product_id"] for i in a_items}, {i["product_id"] for i in b_items}
    assert len(a_ids) == 2 and len(b_ids) == 2 and not a_ids & b_ids
    assert a_ids | b_ids <= flagged
    assert {i["product_id"] for i in alice.get("/api/queue", params={"limit": 2}).json()} == a_ids
    item = a_items[0]
    pid = item["product_id"]
    assert set(item["labels"]) == {"style", "gender", "season"}
    assert all(abs(sum(t["probabilities"].values()) - 1) < 1e-3 for t in item["labels"].values())
    assert item["inputs"] == next(e for e in events if e.product_id == item["product_id"]).inputs  # what the model read

    # the photo comes through the app, for a reviewer only, re-encoded from the stored one
    photo = alice.get(item["photo_url"])
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    assert photo.headers["x-content-type-options"] == "nosniff"
    stored_event = next(e for e in events if e.product_id == pid)
    original = Image.open(io.BytesIO(Storage(settings).get_object_bytes(stored_event.image.s3)[0]))
    assert Image.open(io.BytesIO(photo.content)).size == original.size
    sid = item["source_event_id"]
    assert sid == stored_event.source_event_id

    # clear 4xx errors
    assert bob.post(f"/api/products/{pid}/review", json={"source_event_id": sid, "labels": {}}).status_code == 409
    bad = alice.post(f"/api/products/{pid}/review", json={"source_event_id": sid, "labels": {"style": "pyjamas"}})
    assert bad.status_code == 422 and "pyjamas" in bad.json()["detail"]
    assert alice.post(f"/api/products/{pid}/review", json={"source_event_id": sid, "labels": {"colour": "red"}}).status_code == 422
    assert alice.post(f"/api/products/{pid}/review", json={"labels": {}}).status_code == 422  # which upload is not said
    assert alice.post("/api/products/no-such-product/review", json={"source_event_id": sid, "labels": {}}).status_code == 404

    # a decision: event on topic_reviewed, human labels in the S3 record
    corrected_style = _other_class(item["labels"]["style"])
    ok = alice.post(f"/api/products/{pid}/review", json={"source_event_id": sid, "labels": {"style": corrected_style}})
    assert ok.status_code == 200, ok.text
    reviewed = wait_for(lambda: _reviewed(settings), 20)
    assert [r.product_id for r in reviewed] == [pid]
    r = reviewed[0]
    assert r.reviewer == "alice" and r.labels["style"] == corrected_style and r.corrected == ["style"]
    assert r.source_event_id == stored_event.source_event_id
    assert r.model_labels["style"] == item["labels"]["style"]["label"]
    record = Storage(settings).get_label(pid)
    assert record is not None and record.human_labels is not None
    assert record.human_labels["style"].label == corrected_style
    assert record.human_labels["style"].source == "human" and record.human_labels["style"].reviewer == "alice"
    assert record.human_labels["gender"].label == record.labels["gender"].label  # accepted as predicted
    assert record.labels["style"].label == item["labels"]["style"]["label"]  # the model's label is kept beside it
    # the same decision again answers with the first one's event (nothing stored or sent twice); another one is refused
    again = alice.post(f"/api/products/{pid}/review", json={"source_event_id": sid, "labels": {"style": corrected_style}})
    assert again.status_code == 200 and again.json()["event_id"] == ok.json()["event_id"]
    assert alice.post(f"/api/products/{pid}/review", json={"source_event_id": sid, "labels": {}}).status_code == 409
    before = app.stats()
    assert before["done"] == 1 and before["waiting"] == len(flagged) - 1 and before["reviewed_last_hour"] == 1

    # restart (SIGKILL): nothing lost; a label flagged meanwhile arrives after the restart
    app.kill()
    late = publish_files(settings, collect([SAMPLES])[8:9], progress=False, product_ids=None)
    late_id = late.published[0].product_id
    _wait_labels(settings, {late_id})
    app.start()
    app.wait_waiting(len(flagged) + 1)
    after = app.stats()
    assert after["done"] == 1 and after["waiting"] == len(flagged)  # one done, the new one waiting
    assert {i["product_id"] for i in bob.get("/api/queue", params={"limit": 2}).json()} == b_ids  # claims kept
    assert alice.post(f"/api/products/{pid}/review", json={"source_event_id": sid, "labels": {}}).status_code == 409
    assert [r.product_id for r in _reviewed(settings)] == [pid]
    app.stop()


def test_page_forms_need_a_session_and_the_csrf_token(stack_settings, review_app):
    settings, _ = stack_settings
    photo = sorted(SAMPLES.glob("*.jpg"))[0].read_bytes()
    send_flagged(settings, [flagged_event(settings, "form-1", photo), flagged_event(settings, "form-2", photo)])
    app = review_app()
    app.wait_waiting(2)

    # login: a wrong CSRF token is refused, a wrong reviewer token too
    c = httpx.Client(base_url=app.url, timeout=30)
    csrf = csrf_of(c.get("/login").text)
    assert c.post("/login", data={"token": "tok-alice-7c1f", "csrf_token": "forged"}).status_code == 403
    assert c.post("/login", data={"token": "wrong", "csrf_token": csrf}).status_code == 401
    assert c.post("/login", data={"token": "tok-alice-7c1f", "csrf_token": csrf}).status_code == 303

    page = c.get("/")
    assert page.status_code == 200
    pid = "form-1" if "form-1" in page.text else "form-2"
    assert f"/photos/{pid}" in page.text and "Test shirt" in page.text  # the photo and the catalog metadata
    csrf = csrf_of(page.text)
    assert c.get(f"/photos/{pid}").status_code == 200  # the session may see photos
    assert f'name="source_event_id" value="up-{pid}"' in page.text  # the form names the upload shown
    form = {"csrf_token": csrf, "source_event_id": f"up-{pid}"}
    assert c.post(f"/review/{pid}", data={**form, "csrf_token": "forged", "label_style": "formal"}).status_code == 403
    assert httpx.post(f"{app.url}/review/{pid}", data={**form, "label_style": "formal"}).status_code == 401
    assert c.post(f"/review/{pid}", data={**form, "label_style": "pyjamas"}).status_code == 422
    assert c.post(f"/review/{pid}", data={"csrf_token": csrf, "label_style": "formal"}).status_code == 422  # no upload named
    done = c.post(f"/review/{pid}", data={**form, "label_style": "formal"})
    assert done.status_code == 303
    record = Storage(settings).get_label(pid)
    assert record.human_labels["style"].label == "formal" and record.human_labels["style"].reviewer == "alice"
    assert app.stats()["done"] == 1
    again = c.post(f"/review/{pid}", data=form)  # reviewed already: back to the page, with a notice
    assert again.status_code == 303 and again.headers["location"] == "/?notice=conflict"
    assert "reviewed by someone else" in c.get(again.headers["location"]).text
    app.stop()


def test_a_newer_photo_that_needs_no_review_retires_the_waiting_item(stack_settings, review_app):
    """The product's photo changed and the new one is labeled surely: its old item leaves the
    queue as soon as that label arrives, and a review of the old photo is refused."""
    settings, _ = stack_settings
    photos = [p.read_bytes() for p in sorted(SAMPLES.glob("*.jpg"))[:2]]
    old = flagged_event(settings, "swap-1", photos[0])
    keep = flagged_event(settings, "swap-2", photos[0])
    send_flagged(settings, [old, keep])
    app = review_app()
    app.wait_waiting(2)
    alice = app.api("alice")
    assert alice.get("/api/queue", params={"limit": 2}).status_code == 200  # alice holds both

    newer = flagged_event(settings, "swap-1", photos[1], style=(0.9, 0.05, 0.05)).model_copy(
        update={"source_event_id": "up-swap-1-b", "uploaded_at": old.upload_order()[0] + timedelta(minutes=5)})
    assert not newer.needs_review
    send_flagged(settings, [newer])
    assert wait_for(lambda: app.stats()["stale"] == 1, 30), app.stats()
    assert app.stats()["waiting"] == 1
    refused = alice.post("/api/products/swap-1/review", json={"source_event_id": "up-swap-1", "labels": {"style": "formal"}})
    assert refused.status_code == 409 and "no review any more" in refused.json()["detail"]
    assert Storage(settings).get_label("swap-1").human_labels is None  # nothing stored on the new photo's record
    assert alice.post("/api/products/swap-2/review", json={"source_event_id": "up-swap-2", "labels": {}}).status_code == 200
    app.stop()


def test_a_photo_out_of_scope_says_so_to_the_reviewer(stack_settings, review_app):
    from services.events import ScopeCheck

    settings, _ = stack_settings
    photo = sorted(SAMPLES.glob("*.jpg"))[0].read_bytes()
    from services.labeling import with_scope

    event = flagged_event(settings, "shoe-1", photo)
    scope = ScopeCheck(in_scope=False, probability=0.97, threshold=0.32)
    shoe = event.model_copy(update={"scope": scope, "labels": with_scope(event.labels, scope)})
    send_flagged(settings, [shoe])
    app = review_app()
    app.wait_waiting(1)
    item = app.api("alice").get("/api/queue", params={"limit": 1}).json()[0]
    assert item["scope"] == {"in_scope": False, "probability": 0.97, "threshold": 0.32, "other_heads": False}
    page = app.login("alice").get("/")
    assert page.status_code == 200 and 'id="out-of-scope"' in page.text and "P = 0.97" in page.text
    assert "every label is here for that" in page.text
    app.stop()


def test_the_page_says_when_a_photo_was_labeled_by_the_heads_for_other_categories(stack_settings, review_app):
    from services.events import ScopeCheck
    from services.labeling import with_scope

    settings, _ = stack_settings
    event = flagged_event(settings, "shoe-2", sorted(SAMPLES.glob("*.jpg"))[0].read_bytes())
    scope = ScopeCheck(in_scope=False, probability=0.99, threshold=0.32, other_heads=True)
    shoe = event.model_copy(update={"scope": scope, "labels": with_scope(event.labels, scope, {})})  # none above a threshold
    send_flagged(settings, [shoe])
    app = review_app()
    app.wait_waiting(1)
    page = app.login("alice").get("/")
    assert page.status_code == 200 and "from its heads for other categories" in page.text and "every label is here" not in page.text
    app.stop()


def test_relabel_with_a_new_model_keeps_human_labels(stack, stack_settings, worker_factory, review_app):
    settings, env = stack_settings
    if stack["model"] == "trivial":
        pytest.skip("needs a second served model (training.serving.repository not importable)")
    old = worker_factory("old", AUTOLABEL_TRITON_MODEL="trivial", **ALL_FLAGGED)
    files = collect([SAMPLES])[:5]
    summary = publish_files(settings, files, progress=False)
    ids = {e.product_id for e in summary.published}
    events = _wait_labels(settings, ids)
    old_version = events[0].model.version
    app = review_app()
    app.wait_waiting(len(ids))
    alice = app.api("alice")
    item = alice.get("/api/queue", params={"limit": 1}).json()[0]
    pid = item["product_id"]
    human_style = _other_class(item["labels"]["style"])
    body = {"source_event_id": item["source_event_id"], "labels": {"style": human_style}}
    assert alice.post(f"/api/products/{pid}/review", json=body).status_code == 200
    old.stop()

    worker_factory("new")  # serves stack["model"]: another model version
    cli_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    run = lambda *args: subprocess.run([sys.executable, "-m", "autolabel.review", "relabel", "--quiet", *args],  # noqa: E731
                                       env=cli_env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    first = run("--limit", "2", "--rate", "20")  # interrupted after two ...
    assert first.returncode == 0, first.stderr
    assert "sent 2 upload event(s)" in first.stdout
    rest = run("--rate", "20")  # ... resumed from the checkpoint
    assert rest.returncode == 0, rest.stderr
    assert f"sent {len(ids) - 2} upload event(s)" in rest.stdout and "2 sent before the interruption" in rest.stdout

    storage = Storage(settings)

    def relabeled() -> dict[str, ProductLabeled] | None:
        records = {p: storage.get_label(p) for p in ids}
        return records if all(r is not None and r.model.version != old_version for r in records.values()) else None

    records = wait_for(relabeled, 120, interval=1.0)
    assert records, {p: (r.model.version if r else None) for p, r in {p: storage.get_label(p) for p in ids}.items()}
    reviewed = records[pid]
    assert reviewed.human_labels is not None and reviewed.human_labels["style"].label == human_style
    assert reviewed.human_labels["style"].reviewer == "alice"
    assert all(records[p].human_labels is None for p in ids - {pid})
    assert all(r.source_event_id == next(e for e in events if e.product_id == p).source_event_id for p, r in records.items())
    # nothing left for the served version; the reviewed item stays done in the queue
    again = run("--rate", "20")
    assert "sent 0 upload event(s)" in again.stdout
    assert alice.post(f"/api/products/{pid}/review", json={**body, "labels": {}}).status_code == 409
    app.stop()


def test_demo_keep_running_starts_the_review_app_with_the_stack(stack, monkeypatch):
    """`autolabel demo --keep-running` ends with the review app up, a URL and a token that
    works; the stack's state lists it, so `autolabel stack down` stops it too."""
    from autolabel.review import start_for_demo
    from deploy.local.processes import free_ports, pid_alive, stop_pid
    from deploy.local.stack import Stack
    from services.settings import load_settings

    for k, v in stack["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AUTOLABEL_REVIEW_PORT", str(free_ports(1)[0]))
    monkeypatch.delenv("AUTOLABEL_REVIEW_TOKENS", raising=False)
    settings = load_settings()
    url, token = start_for_demo(settings, log=lambda m: None)
    st = Stack(settings)
    review = st.read_state().components["review"]
    try:
        assert httpx.get(f"{url}/api/stats", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert httpx.get(f"{url}/api/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert {r["component"]: r["healthy"] for r in st.status()}["review"] is True
        assert start_for_demo(settings, log=lambda m: None) == (url, token)  # a second demo reuses it
    finally:
        stop_pid(review.pid)
        state = st.read_state()
        state.components.pop("review", None)
        st._write_state(state)  # leave the session's stack as it was
    assert not pid_alive(review.pid)

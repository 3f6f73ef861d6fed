"""The review loop against the attacks of issue 22, each on the real stack (the app as a
process, its consumer on the real broker, photos and records in the real S3):

1. a decision for an older photo is refused with 409 and the current upload;
2. an SVG (or HTML) in the bucket is never served: the proxy re-encodes photos only;
3. a forged label event never enters the queue, and an item that cannot be shown is quarantined;
4. wrong logins and tokens are rate-limited (429, Retry-After), per client and in total;
5. the cookie is `Secure` when the setting says so;
6. logging out ends the session on the server;
7. every response carries the CSP and the other security headers;
8. the API's schema and docs need a reviewer and load nothing from another origin;
9. two saves of one decision at once: one event, one logged decision;
10. an oversize body gets 413 (never echoed), a 422 never echoes the input, huge headers are refused.
"""

from __future__ import annotations

import io
import re
import socket
import threading
from datetime import timedelta

import httpx
import pytest
from conftest import SAMPLES, wait_for
from kafka import KafkaProducer
from PIL import Image
from review_helpers import TOKENS, ReviewApp, csrf_of, flagged_event, send_flagged

from services.events import ImageLocation, ProductLabelsReviewed, S3Location
from services.review.queue import ReviewQueue
from services.storage import Storage
from services.topics import read_topic

pytestmark = pytest.mark.stack

SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>fetch("/api/stats")</script></svg>'


@pytest.fixture()
def start(stack_settings, tmp_path):
    """start(**env) -> a started review app on this test's topics, with extra settings."""
    _, env = stack_settings
    apps: list[ReviewApp] = []

    def make(**extra: str) -> ReviewApp:
        app = ReviewApp({**env, **extra}, tmp_path)
        apps.append(app.start())
        return app

    yield make
    for app in apps:
        app.kill()


def _photo(i: int = 0) -> bytes:
    return sorted(SAMPLES.glob("*.jpg"))[i].read_bytes()


def _reviewed(settings) -> list[ProductLabelsReviewed]:
    return [ProductLabelsReviewed.model_validate_json(r.value) for r in read_topic(settings, settings.topic_reviewed, idle_s=1.0)]


def _metric(app: ReviewApp, name: str) -> float:
    text = httpx.get(f"{app.url}/metrics").text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_1_a_decision_for_an_older_photo_is_refused_with_the_current_upload(stack_settings, start):
    settings, _ = stack_settings
    first = flagged_event(settings, "stale-1", _photo(0))
    send_flagged(settings, [first])
    app = start()
    app.wait_waiting(1)
    alice = app.api("alice")
    [shown] = alice.get("/api/queue").json()
    assert shown["source_event_id"] == first.source_event_id
    page = app.login("alice")
    form_html = page.get("/").text
    # a newer photo of the product arrives, flagged too, while alice looks at the first one
    newer = flagged_event(settings, "stale-1", _photo(1)).model_copy(
        update={"source_event_id": "up-stale-1-b", "uploaded_at": first.upload_order()[0] + timedelta(minutes=5)})
    send_flagged(settings, [newer])
    assert wait_for(lambda: app.stats()["pending"] == 1, 30), app.stats()  # the new upload waits, unclaimed
    refused = alice.post("/api/products/stale-1/review", json={"source_event_id": first.source_event_id, "labels": {"style": "formal"}})
    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"]["current_source_event_id"] == "up-stale-1-b"
    # the page's form names the upload it showed: refused the same way
    form = {"csrf_token": csrf_of(form_html), "source_event_id": first.source_event_id, "label_style": "formal"}
    assert page.post("/review/stale-1", data=form).headers["location"] == "/?notice=conflict"
    assert Storage(settings).get_label("stale-1").human_labels is None  # nothing landed on the new photo
    # the current upload is reviewed as usual
    [current] = alice.get("/api/queue").json()
    assert current["source_event_id"] == "up-stale-1-b"
    ok = alice.post("/api/products/stale-1/review", json={"source_event_id": "up-stale-1-b", "labels": {"style": "formal"}})
    assert ok.status_code == 200 and ok.json()["source_event_id"] == "up-stale-1-b"
    app.stop()


def test_2_the_photo_proxy_serves_photos_only(stack_settings, start):
    settings, _ = stack_settings
    storage = Storage(settings)
    good = flagged_event(settings, "proxy-ok", _photo(0))
    svg = flagged_event(settings, "proxy-svg", _photo(0))
    html = flagged_event(settings, "proxy-html", _photo(0))
    # an uploader replaces the objects with an SVG holding a script and with HTML labelled as a JPEG
    storage.client.put_object(Bucket=settings.s3_bucket, Key=svg.image.s3.key + ".svg", Body=SVG, ContentType="image/svg+xml")
    storage.client.put_object(Bucket=settings.s3_bucket, Key=html.image.s3.key + ".html", Body=b"<html><script>alert(1)</script>",
                              ContentType="image/jpeg")
    svg = svg.model_copy(update={"image": ImageLocation(s3=S3Location(bucket=settings.s3_bucket, key=svg.image.s3.key + ".svg"))})
    html = html.model_copy(update={"image": ImageLocation(s3=S3Location(bucket=settings.s3_bucket, key=html.image.s3.key + ".html"))})
    send_flagged(settings, [good, svg, html])
    app = start()
    app.wait_waiting(3)
    alice = app.api("alice")
    ok = alice.get("/photos/proxy-ok")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    assert ok.headers["x-content-type-options"] == "nosniff" and "default-src 'none'" in ok.headers["content-security-policy"]
    assert Image.open(io.BytesIO(ok.content)).format == "JPEG"
    for pid in ("proxy-svg", "proxy-html"):
        r = alice.get(f"/photos/{pid}")
        assert r.status_code == 404 and r.headers["content-type"] == "application/json", (pid, r.headers)
        assert b"<script>" not in r.content and b"svg" not in r.content.lower()
    assert _metric(app, "autolabel_review_photos_refused_total") == 2
    app.stop()


def test_3_forged_label_events_never_enter_the_queue_and_bad_items_are_quarantined(stack_settings, start, tmp_path):
    settings, _ = stack_settings
    legit = [flagged_event(settings, f"legit-{i}", _photo(i)) for i in range(2)]
    slash = flagged_event(settings, "forged", _photo(0)).model_copy(update={"product_id": "forged/slash"})
    wrong_key = flagged_event(settings, "forged-key", _photo(0))
    label_json = flagged_event(settings, "forged-json", _photo(0)).model_copy(
        update={"image": ImageLocation(s3=S3Location(bucket=settings.s3_bucket, key="labels/legit-0.json"))})
    send_flagged(settings, legit)
    producer = KafkaProducer(**settings.kafka_client_kwargs(), acks="all")
    producer.send(settings.topic_labels, key=b"forged/slash", value=slash.to_bytes())
    producer.send(settings.topic_labels, key=b"someone-else", value=wrong_key.to_bytes())
    producer.send(settings.topic_labels, key=b"forged-json", value=label_json.to_bytes())
    producer.send(settings.topic_labels, key=b"junk", value=b"{not json")
    producer.flush(30)
    producer.close()
    app = start()
    app.wait_waiting(2)
    assert wait_for(lambda: _metric(app, "autolabel_review_records_skipped_total") >= 4, 30)
    text = httpx.get(f"{app.url}/metrics").text
    for reason in ("product_id", "key", "image_location", "unreadable"):
        assert f'autolabel_review_records_skipped_total{{reason="{reason}"}} 1.0' in text, reason
    stats = app.stats()
    assert stats["waiting"] == 2, stats
    # a greedy reviewer cannot be wedged, and the other still gets work
    assert {i["product_id"] for i in app.api("alice").get("/api/queue", params={"limit": 1}).json()} <= {"legit-0", "legit-1"}
    assert len(app.api("bob").get("/api/queue", params={"limit": 100}).json()) == 1

    # an item already in the database that cannot be rendered (written before these checks existed)
    q = ReviewQueue(app.env["AUTOLABEL_REVIEW_DATABASE_URL"])
    q.offer([flagged_event(settings, "old", _photo(0)).model_copy(update={"product_id": "old/slash"})])
    q.close()
    page = app.login("bob").get("/")  # bob holds legit-1 (or the bad one): either way the page renders
    assert page.status_code == 200
    assert app.api("bob").get("/api/queue", params={"limit": 100}).status_code == 200
    assert wait_for(lambda: app.stats()["quarantined"] == 1, 10), app.stats()
    assert _metric(app, "autolabel_review_quarantined_total") == 1
    app.stop()


def test_4_wrong_tokens_are_rate_limited_per_client_and_in_total(stack_settings, start):
    app = start(AUTOLABEL_REVIEW_AUTH_FAILURES_PER_CLIENT="5", AUTOLABEL_REVIEW_AUTH_FAILURES_TOTAL="12")
    mallory = {"X-Forwarded-For": "192.0.2.10"}  # the app trusts the local proxy's forwarded address (uvicorn proxy_headers)
    with httpx.Client(base_url=app.url, timeout=10) as c:
        codes = [c.get("/api/queue", headers={**mallory, "Authorization": f"Bearer guess-{i}"}).status_code for i in range(8)]
        assert codes == [401] * 5 + [429] * 3, codes
        limited = c.get("/api/queue", headers={**mallory, "Authorization": f"Bearer {TOKENS['alice']}"})
        assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60  # even a right token, from there
        ok = c.get("/api/queue", headers={"X-Forwarded-For": "192.0.2.11", "Authorization": f"Bearer {TOKENS['alice']}"})
        assert ok.status_code == 200  # another client is not locked out
        # the login form counts too, and says so on the page
        csrf = csrf_of(c.get("/login").text)
        for i in range(5):
            assert c.post("/login", data={"token": f"g{i}", "csrf_token": csrf}, headers={"X-Forwarded-For": "192.0.2.12"}).status_code == 401
        page = c.post("/login", data={"token": "g", "csrf_token": csrf}, headers={"X-Forwarded-For": "192.0.2.12"})
        assert page.status_code == 429 and "too many wrong tokens" in page.text and "retry-after" in page.headers
        # many clients under their own limit still meet the total one (10 failures so far, limit 12)
        spread = [c.get("/api/stats", headers={"X-Forwarded-For": f"192.0.2.{20 + i}", "Authorization": "Bearer x"}).status_code
                  for i in range(4)]
        assert spread == [401, 401, 429, 429], spread
    assert _metric(app, "autolabel_review_auth_failures_total") == 12
    assert _metric(app, "autolabel_review_rate_limited_total") >= 6
    app.stop()


def test_5_6_the_cookie_is_secure_when_set_and_logout_ends_the_session(stack_settings, start):
    settings, _ = stack_settings
    send_flagged(settings, [flagged_event(settings, "sess-1", _photo(0))])
    plain = start()
    login = httpx.Client(base_url=plain.url)
    csrf = csrf_of(login.get("/login").text)
    set_cookie = login.post("/login", data={"token": TOKENS["alice"], "csrf_token": csrf}).headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "secure" not in set_cookie
    # logout ends the session on the server: the copied cookie is worthless afterwards
    stolen = dict(login.cookies)
    assert httpx.get(f"{plain.url}/", cookies=stolen).status_code == 200
    csrf = csrf_of(login.get("/").text)
    assert login.post("/logout", data={"csrf_token": csrf}).status_code == 303
    after = httpx.get(f"{plain.url}/", cookies=stolen)
    assert after.status_code == 303 and after.headers["location"] == "/login"
    assert httpx.get(f"{plain.url}/photos/sess-1", cookies=stolen).status_code == 401
    plain.stop()

    secure = start(AUTOLABEL_REVIEW_COOKIE_SECURE="true")
    # (a client on plain HTTP keeps no Secure cookie, so this one cannot log in: the cookie it was sent says why)
    assert "; secure" in httpx.get(f"{secure.url}/login").headers["set-cookie"].lower()
    secure.stop()


def test_7_every_response_carries_the_security_headers(stack_settings, start):
    settings, _ = stack_settings
    send_flagged(settings, [flagged_event(settings, "hdr-1", _photo(0))])
    app = start()
    app.wait_waiting(1)
    session = app.login("alice")
    responses = {
        "login page": httpx.get(f"{app.url}/login"), "page": session.get("/"), "queue": app.api("alice").get("/api/queue"),
        "stats": app.api("alice").get("/api/stats"), "photo": session.get("/photos/hdr-1"), "401": app.api(None).get("/api/queue"),
        "404": session.get("/no-such-page"), "static": httpx.get(f"{app.url}/static/review.js"),
    }
    for what, r in responses.items():
        h = r.headers
        csp = h.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp, what
        assert h.get("x-frame-options") == "DENY" and h.get("x-content-type-options") == "nosniff", what
        assert h.get("referrer-policy") == "no-referrer", what
        if what != "static":
            assert "no-store" in h.get("cache-control", ""), what
    assert "<script>" not in responses["page"].text  # no inline script: the CSP would block it
    assert 'style="' not in responses["page"].text
    app.stop()


def test_8_the_api_schema_and_docs_need_a_reviewer_and_load_nothing_from_elsewhere(stack_settings, start):
    off = start()
    assert httpx.get(f"{off.url}/api/openapi.json").status_code == 401
    schema = off.api("alice").get("/api/openapi.json")
    assert schema.status_code == 200 and "/api/queue" in schema.json()["paths"]
    assert off.login("alice").get("/api/docs").status_code == 404  # off by default
    off.stop()

    on = start(AUTOLABEL_REVIEW_API_DOCS="true")
    assert httpx.get(f"{on.url}/api/docs", follow_redirects=False).headers["location"] == "/login"
    docs = on.login("alice").get("/api/docs")
    assert docs.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert sources and all(s.startswith("/") for s in sources), sources  # no CDN
    for s in sources:
        assert httpx.get(f"{on.url}{s}").status_code == 200, s
    on.stop()


def test_9_two_saves_of_one_decision_at_once_give_one_event_and_one_logged_decision(stack_settings, start):
    settings, _ = stack_settings
    send_flagged(settings, [flagged_event(settings, "twice-1", _photo(0))])
    app = start()
    app.wait_waiting(1)
    [item] = app.api("alice").get("/api/queue").json()
    body = {"source_event_id": item["source_event_id"], "labels": {"style": "sports"}}
    barrier = threading.Barrier(2)
    results: list[httpx.Response] = []

    def save() -> None:
        with app.api("alice") as c:
            barrier.wait()
            results.append(c.post("/api/products/twice-1/review", json=body))

    threads = [threading.Thread(target=save) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
    assert results[0].json()["event_id"] == results[1].json()["event_id"]
    wait_for(lambda: False, 2)
    assert [r.product_id for r in _reviewed(settings)] == ["twice-1"]
    assert app.stats()["reviewed_last_hour"] == 1
    app.stop()


def test_10_oversize_bodies_and_headers_are_refused_and_nothing_is_echoed(stack_settings, start):
    app = start()
    alice = app.api("alice")
    big = alice.post("/api/products/x/review", content=b'{"labels": "' + b"A" * (1 << 20) + b'"}',
                     headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and len(big.content) < 200 and b"AAAA" not in big.content

    def chunks():
        yield b'{"source_event_id": "e", "labels": {"style": "'
        for _ in range(64):
            yield b"B" * 4096
        yield b'"}}'

    streamed = alice.post("/api/products/x/review", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and b"BBBB" not in streamed.content  # no Content-Length: counted as it streams
    marker = "echo-me-" + "Z" * 500
    invalid = alice.post("/api/products/x/review", json={"source_event_id": "e", "labels": {"style": "formal"}, marker: marker})
    assert invalid.status_code == 422 and marker not in invalid.text and "Z" * 50 not in invalid.text
    assert invalid.json()["detail"][0]["loc"]
    # a 200 kB header block is refused before it is kept, and the app stays up
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while still sending: the reply is already there
        reply = sock.recv(200)
    assert reply.split(b" ")[1] in (b"400", b"431"), reply
    assert httpx.get(f"{app.url}/healthz").status_code == 200
    app.stop()

"""End to end on the real stack: events -> worker (subprocess) -> label events + S3 records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SAMPLES, wait_for
from corpus import bad_images, hard_but_valid_images
from kafka import KafkaProducer

from services.events import DeadLetter, ErrorCode, ImageLocation, ProductImageUploaded, ProductLabeled, S3Location
from services.publisher import collect, publish_files
from services.storage import Storage
from services.topics import read_labels, read_topic

pytestmark = pytest.mark.stack


def _labels(settings, topic=None) -> list[ProductLabeled]:
    return list(read_labels(settings, topic=topic, idle_s=1.0))


def _dead_letters(settings) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(r.value) for r in read_topic(settings, settings.topic_dlq, idle_s=1.0)]


def _wait_for_products(settings, expected: set[str], timeout: float) -> list[ProductLabeled]:
    def done():
        events = _labels(settings)
        return events if {e.product_id for e in events} >= expected else None

    events = wait_for(done, timeout, interval=1.0)
    got = {e.product_id for e in (events or _labels(settings))}
    assert got >= expected, f"missing labels for {sorted(expected - got)[:10]}"
    return events


def _stored_labels(settings) -> dict[str, ProductLabeled]:
    storage = Storage(settings)
    keys = storage.list_keys(settings.s3_labels_prefix)
    out = {}
    for key in keys:
        body = storage.client.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
        event = ProductLabeled.model_validate_json(body)  # validates against the schema
        out[Path(key).stem] = event
    return out


def _producer(settings) -> KafkaProducer:
    return KafkaProducer(**settings.kafka_client_kwargs(), acks="all", linger_ms=5)


def test_published_images_give_exactly_one_label_each(stack_settings, worker_factory):
    settings, _ = stack_settings
    files = collect([SAMPLES])
    worker = worker_factory()
    summary = publish_files(settings, files, progress=False)
    expected = {e.product_id for e in summary.published}
    assert len(expected) == len(files) == 12
    events = _wait_for_products(settings, expected, timeout=180)
    ids = [e.product_id for e in events]
    assert sorted(ids) == sorted(expected), "exactly one label event per product"
    stored = _stored_labels(settings)
    assert set(stored) == expected
    for e in events:
        assert set(e.labels) == {"style", "gender", "season"}
        assert stored[e.product_id].model.version == e.model.version
        for task in e.labels.values():
            assert abs(sum(task.probabilities.values()) - 1.0) < 1e-3
    review = _labels(settings, topic=settings.topic_review)
    assert sorted(r.product_id for r in review) == sorted(e.product_id for e in events if e.needs_review)
    assert worker.alive()
    # JSON logs with the product and event ids bound
    logged = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{") and '"labeled"' in line]
    assert {entry["product_id"] for entry in logged} == expected
    assert {entry["event_id"] for entry in logged} == {e.event_id for e in summary.published}


def test_bad_inputs_are_dead_lettered_and_good_ones_labeled(stack_settings, worker_factory):
    settings, _ = stack_settings
    storage = Storage(settings)
    producer = _producer(settings)
    expected_dlq: dict[str, ErrorCode] = {}  # product id (or key) -> code
    expected_labels: set[str] = set()
    good = sorted(SAMPLES.glob("*.jpg"))

    def send_event(product_id: str, location: ImageLocation) -> None:
        event = ProductImageUploaded(product_id=product_id, image=location)
        producer.send(settings.topic_images, key=product_id.encode(), value=event.to_bytes())

    def send_good(i: int) -> None:
        pid = f"good-{i}"
        send_event(pid, ImageLocation(s3=storage.put_image(good[i % len(good)].read_bytes())))
        expected_labels.add(pid)

    i = 0
    for name, (data, code) in bad_images().items():
        send_good(i)
        i += 1
        pid = f"bad-{Path(name).stem}"
        send_event(pid, ImageLocation(s3=storage.put_image(data, suffix=Path(name).suffix)))
        expected_dlq[pid] = code
    for name, data in hard_but_valid_images().items():
        pid = f"odd-{Path(name).stem}"
        send_event(pid, ImageLocation(s3=storage.put_image(data, suffix=Path(name).suffix)))
        expected_labels.add(pid)
    send_good(i)
    i += 1
    send_event("bad-missing", ImageLocation(s3=S3Location(bucket=settings.s3_bucket, key="images/does-not-exist.jpg")))
    expected_dlq["bad-missing"] = ErrorCode.image_not_found
    send_event("bad-otherbucket", ImageLocation(s3=S3Location(bucket="someone-elses", key="images/x.jpg")))
    expected_dlq["bad-otherbucket"] = ErrorCode.bucket_not_allowed
    send_event("bad-url", ImageLocation(url="https://evil.example.com/a.jpg"))
    expected_dlq["bad-url"] = ErrorCode.url_not_allowed
    send_event("bad-metadata-url", ImageLocation(url="http://169.254.169.254/latest/meta-data"))
    expected_dlq["bad-metadata-url"] = ErrorCode.url_not_allowed
    raw_bad = {
        "raw-malformed": (b"{not json at all", ErrorCode.malformed_json),
        "raw-schema": (json.dumps({"product_id": "x", "image": {"s3": {"bucket": "autolabel"}}}).encode(), ErrorCode.schema_invalid),
        "raw-traversal": (json.dumps({"product_id": "../../etc/passwd", "image": {"url": "https://a.example/b.jpg"}}).encode(),
                          ErrorCode.schema_invalid),
        "raw-huge": (b'{"pad": "' + b"x" * (settings.max_event_bytes + 10) + b'"}', ErrorCode.event_too_large),
    }
    for key, (value, code) in raw_bad.items():
        producer.send(settings.topic_images, key=key.encode(), value=value)
        send_good(i)
        i += 1
        expected_dlq[key] = code
    producer.flush()
    producer.close()

    from deploy.local.processes import free_ports

    metrics_port = free_ports(1)[0]
    worker = worker_factory(AUTOLABEL_METRICS_PORT=str(metrics_port))
    _wait_for_products(settings, expected_labels, timeout=240)

    def all_dead():
        dl = _dead_letters(settings)
        return dl if len(dl) >= len(expected_dlq) else None

    dead = wait_for(all_dead, 60, interval=1.0) or _dead_letters(settings)
    got = {(d.product_id or d.original_key): d.code for d in dead}
    assert got == expected_dlq
    cut = settings.dead_letter_max_original_bytes
    for d in dead:
        assert d.worker == "w1" and d.message
        if d.original_key in raw_bad:
            raw = raw_bad[d.original_key][0]
            assert d.original == raw[:cut] and d.original_size == len(raw), "the original, or its first bytes"
            assert d.original_truncated == (len(raw) > cut) and (d.original_ref is not None) == d.original_truncated
            if d.original_ref is not None:  # raw-huge: the whole of it in S3
                assert storage.client.get_object(Bucket=d.original_ref.bucket, Key=d.original_ref.key)["Body"].read() == raw
    labeled = {e.product_id for e in _labels(settings)}
    assert labeled == expected_labels, "no bad event is labeled, every good one is"
    assert worker.alive(), worker.output()[-2000:]
    import urllib.request

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    for code in set(expected_dlq.values()):
        n = sum(1 for c in expected_dlq.values() if c == code)
        assert f'autolabel_dead_letters_total{{code="{code.value}"}} {float(n)}' in metrics
    assert f"autolabel_events_out_total {float(len(expected_labels))}" in metrics
    assert "autolabel_e2e_latency_seconds_bucket" in metrics and "autolabel_triton_latency_seconds_count" in metrics


def test_sigkill_mid_stream_loses_no_label(stack_settings, worker_factory):
    settings, _ = stack_settings
    storage = Storage(settings)
    images = [storage.put_image(p.read_bytes()) for p in sorted(SAMPLES.glob("*.jpg"))]
    producer = _producer(settings)
    expected = set()
    for n in range(600):
        pid = f"p{n:04d}"
        event = ProductImageUploaded(product_id=pid, image=ImageLocation(s3=images[n % len(images)]))
        producer.send(settings.topic_images, key=pid.encode(), value=event.to_bytes())
        expected.add(pid)
    producer.flush()
    producer.close()

    first = worker_factory("w1", AUTOLABEL_BATCH_MAX_SIZE="4")
    # the worker logs each label as it is published: kill it as soon as a few are out
    assert wait_for(lambda: first.output().count('"event": "labeled"') >= 8, 180, interval=0.05), first.output()[-2000:]
    first.kill()
    done_before = {e.product_id for e in _labels(settings)}
    assert done_before < expected, "the kill must land mid-stream"
    second = worker_factory("w2", AUTOLABEL_BATCH_MAX_SIZE="4")
    events = _wait_for_products(settings, expected, timeout=300)
    assert {e.product_id for e in events} == expected
    stored = _stored_labels(settings)
    assert set(stored) == expected, "one label object per product"
    versions = {s.model.version for s in stored.values()}
    assert len(versions) == 1
    assert second.alive()


def test_publish_cli_names_products_and_refuses_bad_ids(stack_settings, tmp_path):
    import os
    import subprocess
    import sys

    settings, env = stack_settings
    photo = sorted(SAMPLES.glob("*.jpg"))[0]
    bad = tmp_path / "bad id!.jpg"
    bad.write_bytes(photo.read_bytes())

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "autolabel", "publish", "--quiet", *args],
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=120)

    ok = cli(str(photo), "--product-id", "sku-42")
    assert ok.returncode == 0 and "published 1 event" in ok.stdout
    refused = cli(str(bad))
    assert refused.returncode == 1 and "skipped" in refused.stderr and "Traceback" not in refused.stderr
    too_many = cli(str(SAMPLES), "--product-id", "x")
    assert too_many.returncode == 2 and "exactly one file" in too_many.stderr
    records = list(read_topic(settings, settings.topic_images, idle_s=1.0))
    assert [ProductImageUploaded.model_validate_json(r.value).product_id for r in records] == ["sku-42"]
    assert records[0].key == b"sku-42"


def test_a_replaced_photo_replaces_the_stored_record(stack_settings, worker_factory):
    """Issue 13: product P uploaded with photo A, then with photo B: s3://.../labels/P.json
    holds B's labels; an older upload or the same event again, labeled later, leaves it."""
    from datetime import UTC, datetime, timedelta

    settings, _ = stack_settings
    storage = Storage(settings)
    photos = sorted(SAMPLES.glob("*.jpg"))
    a_loc, b_loc = (storage.put_image(p.read_bytes()) for p in photos[:2])
    t = datetime.now(UTC)
    a = ProductImageUploaded(product_id="replaced-1", image=ImageLocation(s3=a_loc), uploaded_at=t - timedelta(seconds=10))
    b = ProductImageUploaded(product_id="replaced-1", image=ImageLocation(s3=b_loc), uploaded_at=t)
    older = ProductImageUploaded(product_id="replaced-1", image=ImageLocation(s3=a_loc), uploaded_at=t - timedelta(seconds=20))
    producer = _producer(settings)

    def send(*events: ProductImageUploaded) -> None:
        for e in events:
            producer.send(settings.topic_images, key=e.product_id.encode(), value=e.to_bytes())
        producer.flush()

    def label_events(n: int) -> list[ProductLabeled]:
        got = wait_for(lambda: (lambda evs: evs if len(evs) >= n else None)(_labels(settings)), 120, interval=1.0)
        assert got, f"fewer than {n} label events"
        return got

    send(a)
    worker_factory()
    assert [e.source_event_id for e in label_events(1)] == [a.event_id]
    send(b)
    label_events(2)
    key = f"{settings.s3_labels_prefix}replaced-1.json"
    stored = storage.get_label("replaced-1")
    assert stored.source_event_id == b.event_id and stored.image.s3 == b_loc and stored.uploaded_at == b.uploaded_at
    etag = storage.client.head_object(Bucket=settings.s3_bucket, Key=key)["ETag"]
    send(older, b)  # an older upload arriving late, and B delivered again
    events = label_events(4)
    assert sorted(e.source_event_id for e in events) == sorted([a.event_id, b.event_id, older.event_id, b.event_id])
    assert storage.get_label("replaced-1").source_event_id == b.event_id
    assert storage.client.head_object(Bucket=settings.s3_bucket, Key=key)["ETag"] == etag, "not written again"
    producer.close()


def test_a_title_in_the_upload_is_read_with_the_photo(stack_settings, worker_factory, tmp_path):
    """`publish --metadata-csv` attaches the product's row; the worker sends the title to Triton
    (inputs: image + title) and a photo without one keeps the image-only labels exactly."""
    import os
    import subprocess
    import sys

    import numpy as np
    import tritonclient.grpc as g

    from services.images import prepare

    settings, env = stack_settings
    photo = sorted(SAMPLES.glob("*.jpg"))[0]
    for name in ("titled", "untitled", "foreign"):
        (tmp_path / f"{name}.jpg").write_bytes(photo.read_bytes())
    csv_file = tmp_path / "catalog.csv"
    csv_file.write_text("id,productDisplayName,brand\ntitled,Puma Men Blue Track Pants,Puma\nforeign,日本語のシャツ\x07,\n")
    run = subprocess.run([sys.executable, "-m", "autolabel", "publish", "--quiet", str(tmp_path), "--metadata-csv", str(csv_file),
                          "--title-column", "productDisplayName"], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "metadata: 2 of 3 product(s) have a row" in run.stderr
    sent = {e.product_id: e for e in (ProductImageUploaded.model_validate_json(r.value)
                                      for r in read_topic(settings, settings.topic_images, idle_s=1.0))}
    assert sent["titled"].metadata == {"filename": "titled.jpg", "title": "Puma Men Blue Track Pants", "brand": "Puma"}
    assert sent["untitled"].metadata == {"filename": "untitled.jpg"}
    worker_factory()
    got = {e.product_id: e for e in _wait_for_products(settings, set(sent), timeout=180)}
    assert got["titled"].inputs == ["image", "title"]
    assert got["untitled"].inputs == ["image"] and got["foreign"].inputs == ["image"]  # no Latin word: the photo alone

    client = g.InferenceServerClient(env["AUTOLABEL_TRITON_URL"])
    x = prepare(photo.read_bytes(), (32, 32), "pad")[None]

    def served(title: bytes) -> dict[str, np.ndarray]:
        image, text = g.InferInput("image", list(x.shape), "UINT8"), g.InferInput("title", [1, 1], "BYTES")
        image.set_data_from_numpy(x)
        text.set_data_from_numpy(np.array([[title]], dtype=object))
        r = client.infer(env["AUTOLABEL_TRITON_MODEL"], [image, text])
        return {t: r.as_numpy(t)[0] for t in ("style", "gender", "season")}

    with_title, without = served(b"Puma Men Blue Track Pants"), served(b"")
    for task in ("style", "gender", "season"):
        for pid, want in (("titled", with_title), ("untitled", without), ("foreign", without)):
            probs = [got[pid].labels[task].probabilities[c] for c in got[pid].labels[task].probabilities]
            assert np.allclose(probs, np.round(want[task], 6), atol=1e-6), (pid, task)
    assert any(got["titled"].labels[t].probabilities != got["untitled"].labels[t].probabilities for t in got["titled"].labels)
    stored = _stored_labels(settings)
    assert stored["titled"].inputs == ["image", "title"]


def test_the_scope_gate_sends_a_photo_it_calls_out_of_scope_to_review(stack_settings, worker_factory):
    """Through Triton: the served gate's P(out of scope) is in every label event; above the
    threshold (here the operator's 0.0: every photo) every label goes to review."""
    settings, env = stack_settings
    if env["AUTOLABEL_TRITON_MODEL"] == "trivial":
        pytest.skip("the trivial model has no scope gate")
    files = collect([SAMPLES])[:3]
    worker = worker_factory(AUTOLABEL_SCOPE_THRESHOLD="0", AUTOLABEL_THRESHOLD_STYLE="0", AUTOLABEL_THRESHOLD_GENDER="0",
                            AUTOLABEL_THRESHOLD_SEASON="0")
    summary = publish_files(settings, files, progress=False)
    events = _wait_for_products(settings, {e.product_id for e in summary.published}, timeout=180)
    for e in events:
        assert e.scope is not None and not e.scope.in_scope and 0 < e.scope.probability <= 1 and e.scope.threshold == 0
        assert e.needs_review and all(t.needs_review for t in e.labels.values())  # though every task threshold is 0
    review = _labels(settings, topic=settings.topic_review)
    assert sorted(r.product_id for r in review) == sorted(e.product_id for e in events)
    worker.stop()

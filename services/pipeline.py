"""One batch of raw events -> label events or dead letters. Decides between the two in one place.

- Bad input (:class:`BadInput`: unparseable, schema-invalid, missing or undecodable
  photo, refused URL) becomes a :class:`DeadLetter` with its :class:`ErrorCode` at once.
- Transient failures (:class:`TransientError`: Triton, S3 or the network unreachable)
  are retried with capped exponential backoff, forever: never dead-lettered.
- Anything else is a failed attempt; after ``max_attempts`` attempts on the same event
  (a poison message) it is dead-lettered with ``processing_failed``.

:meth:`Pipeline.settle` is that decision (:mod:`services.errors` says which error is
which); the worker's publishing goes through it too. Publishing and storing happen in
:mod:`services.worker`; nothing here commits offsets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import numpy as np
from pydantic import ValidationError

from services import observability as obs
from services.dead_letters import Subject, build_dead_letter, subject_ids
from services.errors import BadInput, TransientError
from services.events import DeadLetter, ErrorCode, ProductImageUploaded, ProductLabeled
from services.images import ImageError, ImageLimits, prepare
from services.inference import InferenceError, TritonLabeler
from services.labeling import label_batch, resolve_thresholds
from services.settings import TASKS, Settings
from services.sources import fetch
from services.storage import LabelStore

T = TypeVar("T")


@dataclass(frozen=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes

    @property
    def ref(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


Outcome = ProductLabeled | DeadLetter


class Backoff:
    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum, self.delay = initial, maximum, initial

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.maximum, self.delay * 2)


def parse_event(msg: RawMessage, max_bytes: int) -> ProductImageUploaded:
    """Raw bytes -> event, or :class:`BadEvent` with a dead-letter code."""
    if len(msg.value) > max_bytes:
        raise BadEvent(ErrorCode.event_too_large, f"event has {len(msg.value)} bytes, limit {max_bytes}")
    try:
        return ProductImageUploaded.model_validate_json(msg.value)  # JSON parsed and checked in one pass
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["type"] == "json_invalid":
            raise BadEvent(ErrorCode.malformed_json, f"not JSON: {errors[0]['msg']}") from None
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
        raise BadEvent(ErrorCode.schema_invalid, detail) from None


class BadEvent(BadInput):
    """The record is not a usable ProductImageUploaded; ``code`` says why."""


class Pipeline:
    def __init__(self, settings: Settings, store: LabelStore, labeler: TritonLabeler) -> None:
        self.settings = settings
        self.store = store
        self.labeler = labeler
        self.limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self.io_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="url")
        self.cpu_pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        self.attempts: dict[tuple[str, int, int], int] = {}
        self.log = obs.get_logger(worker=settings.worker_name)

    @property
    def thresholds(self) -> dict[str, float]:
        """Settings' overrides over the thresholds the served model ships (known after discovery)."""
        served = self.labeler.served
        return resolve_thresholds(TASKS, {t: self.settings.threshold(t) for t in TASKS}, served.thresholds if served else {})

    def dead_letter(self, msg: RawMessage, code: ErrorCode, message: str, event: Subject = None) -> DeadLetter:
        """The dead letter of ``msg`` (bounded in size: :mod:`services.dead_letters`)."""
        obs.DEAD_LETTERS.labels(code=code.value).inc()
        self.log.warning("dead_letter", code=code.value, reason=message[:300], partition=msg.partition, offset=msg.offset,
                         size=len(msg.value), **subject_ids(event))
        s = self.settings
        return build_dead_letter(msg, code, message, subject=event, worker=s.worker_name, attempts=self.tries(msg),
                                 bucket=s.s3_bucket, max_original_bytes=s.dead_letter_max_original_bytes)

    def crashed(self, msg: RawMessage, failed: int) -> DeadLetter:
        """The dead letter of a record the worker process died handling ``failed`` times
        (counted across restarts by :mod:`services.attempts`)."""
        try:
            event: ProductImageUploaded | None = parse_event(msg, self.settings.max_event_bytes)
        except BadEvent:
            event = None
        self.attempts[msg.ref] = failed - 1  # tries() adds the last one
        return self.dead_letter(msg, ErrorCode.processing_failed,
                                f"the worker process died {failed} times while handling this record", event)

    def tries(self, msg: RawMessage) -> int:
        """How many times ``msg`` was tried, this last try included; forgets its count."""
        return self.attempts.pop(msg.ref, 0) + 1

    def _transient(self, stage: str, exc: TransientError, backoff: Backoff | None) -> Backoff:
        obs.RETRIES.labels(stage=stage).inc()
        backoff = backoff or Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)
        self.log.warning("transient_failure", stage=stage, error=str(exc)[:300], retry_in_s=backoff.delay)
        return backoff

    async def retry_transient(self, stage: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` until it does not raise TransientError (capped backoff, forever)."""
        backoff: Backoff | None = None  # made on the first failure: the happy path allocates nothing
        while True:
            try:
                return await fn()
            except TransientError as exc:
                backoff = self._transient(stage, exc, backoff)
                await backoff.sleep()

    async def settle(self, msg: RawMessage, event: Subject, stage: str, fn: Callable[[], Awaitable[T]]) -> T | BadInput:
        """Await ``fn()`` until it succeeds, or until ``msg`` is found at fault (the returned BadInput).

        The one decision on an error while handling a record: transient -> retried with
        backoff, forever; bad input -> the record's fault at once; anything else -> a
        counted attempt, and after ``max_attempts`` the record's fault (``processing_failed``).
        """
        transient: Backoff | None = None
        failed: Backoff | None = None
        while True:
            try:
                return await fn()
            except TransientError as exc:
                transient = self._transient(stage, exc, transient)
                await transient.sleep()
            except BadInput as exc:
                return exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed attempt, whatever it is
                n = self.attempts.get(msg.ref, 0) + 1
                self.attempts[msg.ref] = n
                self.log.error("processing_failed", stage=stage, attempt=n, error=repr(exc)[:300], **subject_ids(event))
                if n >= self.settings.max_attempts:
                    self.attempts[msg.ref] = n - 1  # tries() adds this last one
                    return BadInput(ErrorCode.processing_failed, f"{stage}: {exc!r} (after {n} attempts)")
                failed = failed or Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)
                await failed.sleep()
                transient = None  # a new attempt starts its transient backoff afresh

    async def _attempt(self, msg: RawMessage, event: ProductImageUploaded | None, stage: str, fn: Callable[[], Awaitable[T]]) -> T | DeadLetter:
        """:meth:`settle`, with the record's fault as its dead letter."""
        result = await self.settle(msg, event, stage, fn)
        return self.dead_letter(msg, result.code, str(result), event) if isinstance(result, BadInput) else result

    async def _load(self, msg: RawMessage, event: ProductImageUploaded) -> np.ndarray | DeadLetter:
        """Fetch and prepare one photo as a counted attempt (the slow path; see :meth:`_load_all`)."""
        loop = asyncio.get_running_loop()
        served = self.labeler.served or await self.retry_transient("discover", self.labeler.discover)

        async def load() -> np.ndarray:
            data = await fetch(event.image, self.store, self.settings, self.io_pool)
            return await loop.run_in_executor(self.cpu_pool, prepare, data, served.input_size, served.resize, self.limits)

        return await self._attempt(msg, event, "load", load)

    async def _load_all(self, messages: list[RawMessage]) -> list[tuple[ProductImageUploaded, np.ndarray] | DeadLetter]:
        """Parse, fetch (concurrently) and prepare a batch; a dead letter where the input is bad.

        The configured bucket's photos are read in one :meth:`LabelStore.get_images` call;
        a photo it cannot settle (missing, too large, S3 down, a URL) is fetched on its own
        with retries and counted attempts. Photos are decoded in ``decode_threads`` chunks,
        one executor hop per chunk rather than one per photo. A photo whose decoding fails
        in an unexpected way (not an :class:`ImageError`) takes the one-by-one path with
        counted attempts.
        """
        loop = asyncio.get_running_loop()
        served = self.labeler.served or await self.retry_transient("discover", self.labeler.discover)
        results: list[tuple[ProductImageUploaded, np.ndarray] | DeadLetter | None] = [None] * len(messages)
        events: dict[int, ProductImageUploaded] = {}
        for i, msg in enumerate(messages):
            try:
                events[i] = parse_event(msg, self.settings.max_event_bytes)
            except BadEvent as exc:
                results[i] = self.dead_letter(msg, exc.code, str(exc))

        async def get(i: int) -> bytes | DeadLetter:
            event = events[i]
            return await self._attempt(messages[i], event, "fetch", lambda: fetch(event.image, self.store, self.settings, self.io_pool))

        # the configured bucket's photos in one go; anything it cannot settle one by one
        in_s3 = [i for i, e in events.items() if e.image.s3 is not None]
        fast = await self.store.get_images([events[i].image.s3 for i in in_s3], self.settings.max_image_bytes)  # type: ignore[misc]
        fetched: dict[int, bytes | DeadLetter] = {i: data for i, data in zip(in_s3, fast, strict=True) if data is not None}
        slow = [i for i in events if i not in fetched]
        fetched.update(zip(slow, await asyncio.gather(*(get(i) for i in slow)), strict=True))
        todo = []
        for i, data in sorted(fetched.items()):
            if isinstance(data, DeadLetter):
                results[i] = data
            else:
                todo.append(i)

        def prepare_chunk(chunk: list[int]) -> list[np.ndarray | Exception]:
            out: list[np.ndarray | Exception] = []
            for i in chunk:
                try:
                    out.append(prepare(fetched[i], served.input_size, served.resize, self.limits))  # type: ignore[arg-type]
                except Exception as exc:  # noqa: BLE001 - sorted out below, per photo
                    out.append(exc)
            return out

        n_chunks = min(self.settings.decode_threads, len(todo))
        chunks = [todo[k::n_chunks] for k in range(n_chunks)]
        prepared = await asyncio.gather(*(loop.run_in_executor(self.cpu_pool, prepare_chunk, c) for c in chunks))
        for chunk, arrays in zip(chunks, prepared, strict=True):
            for i, arr in zip(chunk, arrays, strict=True):
                if isinstance(arr, ImageError):
                    results[i] = self.dead_letter(messages[i], arr.code, str(arr), events[i])
                elif isinstance(arr, Exception):
                    single = await self._load(messages[i], events[i])
                    results[i] = single if isinstance(single, DeadLetter) else (events[i], single)
                else:
                    results[i] = (events[i], arr)
        return results  # type: ignore[return-value]

    async def _infer(self, batch: list[np.ndarray]) -> dict[str, np.ndarray]:
        async def call() -> dict[str, np.ndarray]:
            started = time.perf_counter()
            out = await self.labeler.infer(np.stack(batch))
            obs.TRITON_LATENCY.observe(time.perf_counter() - started)
            return out

        return await self.retry_transient("infer", call)

    async def process(self, messages: list[RawMessage]) -> list[Outcome]:
        """Outcomes in the order of ``messages``: a label event or a dead letter for each one."""
        loaded = await self._load_all(messages)
        outcomes: list[Outcome | None] = [r if isinstance(r, DeadLetter) else None for r in loaded]
        good = [i for i, r in enumerate(loaded) if not isinstance(r, DeadLetter)]
        if not good:
            return outcomes  # type: ignore[return-value] - every one a dead letter
        arrays = [loaded[i][1] for i in good]  # type: ignore[index]
        obs.BATCH_SIZE.observe(len(arrays))
        try:
            probs = await self._infer(arrays)
            rows = {t: np.asarray(probs[t]) for t in TASKS}
            if any(len(r) != len(good) for r in rows.values()):
                raise ValueError(f"the model returned {[len(r) for r in rows.values()]} rows for {len(good)} images")
            labeled = dict(zip(good, label_batch(rows, self.labeler.served.classes, self.thresholds), strict=True))  # type: ignore[union-attr]
        except (InferenceError, ValueError) as exc:
            # one bad input must not sink the batch: infer one by one, counting attempts
            self.log.warning("batch_inference_failed", error=str(exc)[:300], size=len(good))
            labeled = {}
            for i, arr in zip(good, arrays, strict=True):
                event = loaded[i][0]  # type: ignore[index]
                single = await self._attempt(messages[i], event, "infer", lambda arr=arr: self._infer([arr]))
                if isinstance(single, DeadLetter):
                    outcomes[i] = single
                else:
                    labeled[i] = label_batch(single, self.labeler.served.classes, self.thresholds)[0]  # type: ignore[union-attr]
        served = self.labeler.served
        assert served is not None
        now = datetime.now(UTC)
        for i, labels in labeled.items():
            event = loaded[i][0]  # type: ignore[index]
            outcomes[i] = ProductLabeled(
                product_id=event.product_id, source_event_id=event.event_id, image=event.image,
                labels=labels, model=served.info, needs_review=any(t.needs_review for t in labels.values()),
                latency_ms=max(0.0, (now - event.uploaded_at).total_seconds() * 1000), labeled_at=now,
                uploaded_at=event.uploaded_at, metadata=dict(event.metadata) or None,
            )
            self.attempts.pop(messages[i].ref, None)
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    def close(self) -> None:
        self.io_pool.shutdown(wait=False, cancel_futures=True)
        self.cpu_pool.shutdown(wait=False, cancel_futures=True)


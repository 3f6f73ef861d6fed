"""One batch of raw events -> label events or dead letters. Decides between the two in one place.

- Bad input (:class:`BadInput`: unparseable, schema-invalid, missing or undecodable
  photo, refused URL) becomes a :class:`DeadLetter` with its :class:`ErrorCode` at once.
- Transient failures (:class:`TransientError`: Triton, S3 or the network unreachable)
  are retried with capped exponential backoff, forever: never dead-lettered.
- Anything else is a failed attempt; after ``max_attempts`` attempts on the same event
  (a poison message) it is dead-lettered with ``processing_failed``.

That decision is :class:`services.retry.Retry` (:mod:`services.errors` says which error
is which); the worker's output goes through the same policy. Publishing and storing happen
in :mod:`services.output`; nothing here commits offsets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

import numpy as np
from pydantic import ValidationError

from services import observability as obs
from services.errors import BadInput, InferenceError
from services.audit import audited
from services.events import DeadLetter, ErrorCode, Outcome, ProductImageUploaded, ProductLabeled, RawMessage, ScopeCheck, TaskLabel
from services.images import ImageLimits, prepare
from services.inference import TritonLabeler
from services.labeling import (
    label_batch,
    resolve_other_thresholds,
    resolve_thresholds,
    resolve_title_thresholds,
    with_policy,
    scope_checks,
    with_scope,
)
from services.retry import Retry
from services.settings import SCOPE_OUTPUT, TASKS, Settings
from services.sources import fetch
from services.storage import LabelStore
from services.titles import clean_title, has_words

T = TypeVar("T")



def parse_event(msg: RawMessage, max_bytes: int) -> ProductImageUploaded:
    """Raw bytes -> event, or :class:`BadInput` with a dead-letter code."""
    if len(msg.value) > max_bytes:
        raise BadInput(ErrorCode.event_too_large, f"event has {len(msg.value)} bytes, limit {max_bytes}")
    try:
        return ProductImageUploaded.model_validate_json(msg.value)  # JSON parsed and checked in one pass
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["type"] == "json_invalid":
            raise BadInput(ErrorCode.malformed_json, f"not JSON: {errors[0]['msg']}") from None
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
        raise BadInput(ErrorCode.schema_invalid, detail) from None


class Pipeline:
    def __init__(self, settings: Settings, store: LabelStore, labeler: TritonLabeler, retry: Retry) -> None:
        self.settings = settings
        self.store = store
        self.labeler = labeler
        self.retry = retry
        self.limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self.io_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="url")
        self.cpu_pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")

    @property
    def thresholds(self) -> dict[str, float]:
        """Settings' overrides over the thresholds the served model ships (known after discovery)."""
        served = self.labeler.served
        return resolve_thresholds(TASKS, {t: self.settings.threshold(t) for t in TASKS}, served.thresholds if served else {})

    @property
    def title_thresholds(self) -> dict[str, tuple[float, ...]]:
        """Per-class thresholds for labels read with a title (none where the operator set a task's threshold)."""
        served = self.labeler.served
        return resolve_title_thresholds({t: self.settings.threshold(t) for t in TASKS}, served.title_thresholds if served else {})

    @property
    def other_thresholds(self) -> dict[str, float]:
        """Thresholds of the heads for the other categories (out-of-scope photos), under the operator's per-task ones."""
        served = self.labeler.served
        return resolve_other_thresholds({t: self.settings.threshold(t) for t in TASKS}, served.other_thresholds if served else {})

    @property
    def scope_threshold(self) -> float | None:
        """The operator's AUTOLABEL_SCOPE_THRESHOLD over the served gate's; None where the model has no gate."""
        served = self.labeler.served
        if served is None or served.scope_threshold is None:
            return None
        return self.settings.scope_threshold if self.settings.scope_threshold is not None else served.scope_threshold

    def crashed(self, msg: RawMessage, failed: int) -> DeadLetter:
        """The dead letter of a record the worker process died handling ``failed`` times
        (counted across restarts by :mod:`services.attempts`)."""
        try:
            event: ProductImageUploaded | None = parse_event(msg, self.settings.max_event_bytes)
        except BadInput:
            event = None
        self.retry.attempts[msg.ref] = failed - 1  # tries() adds the last one
        return self.retry.dead_letter(msg, ErrorCode.processing_failed,
                                      f"the worker process died {failed} times while handling this record", event)

    async def _attempt(self, msg: RawMessage, event: ProductImageUploaded | None, stage: str, fn: Callable[[], Awaitable[T]]) -> T | DeadLetter:
        """:meth:`Retry.settle`, with the record's fault as its dead letter."""
        result = await self.retry.settle(msg, event, stage, fn)
        return self.retry.dead_letter(msg, result.code, str(result), event) if isinstance(result, BadInput) else result

    async def _load(self, msg: RawMessage, event: ProductImageUploaded) -> np.ndarray | DeadLetter:
        """Fetch and prepare one photo as a counted attempt (the slow path; see :meth:`_load_all`)."""
        loop = asyncio.get_running_loop()
        served = self.labeler.served or await self.retry.forever("discover", self.labeler.discover)

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
        in an unexpected way (not an :class:`BadInput`) takes the one-by-one path with
        counted attempts.
        """
        loop = asyncio.get_running_loop()
        served = self.labeler.served or await self.retry.forever("discover", self.labeler.discover)
        results: list[tuple[ProductImageUploaded, np.ndarray] | DeadLetter | None] = [None] * len(messages)
        events: dict[int, ProductImageUploaded] = {}
        for i, msg in enumerate(messages):
            try:
                events[i] = parse_event(msg, self.settings.max_event_bytes)
            except BadInput as exc:
                results[i] = self.retry.dead_letter(msg, exc.code, str(exc))

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
                if isinstance(arr, BadInput):
                    results[i] = self.retry.dead_letter(messages[i], arr.code, str(arr), events[i])
                elif isinstance(arr, Exception):
                    single = await self._load(messages[i], events[i])
                    results[i] = single if isinstance(single, DeadLetter) else (events[i], single)
                else:
                    results[i] = (events[i], arr)
        return results  # type: ignore[return-value]

    async def _infer(self, batch: list[np.ndarray], titles: list[str]) -> dict[str, np.ndarray]:
        async def call() -> dict[str, np.ndarray]:
            started = time.perf_counter()
            out = await self.labeler.infer(np.stack(batch), titles)
            obs.TRITON_LATENCY.observe(time.perf_counter() - started)
            return out

        return await self.retry.forever("infer", call)

    async def process(self, messages: list[RawMessage]) -> list[Outcome]:
        """Outcomes in the order of ``messages``: a label event or a dead letter for each one."""
        loaded = await self._load_all(messages)
        outcomes: list[Outcome | None] = [r if isinstance(r, DeadLetter) else None for r in loaded]
        good = [i for i, r in enumerate(loaded) if not isinstance(r, DeadLetter)]
        if not good:
            return outcomes  # type: ignore[return-value] - every one a dead letter
        arrays = [loaded[i][1] for i in good]  # type: ignore[index]
        titles = {i: clean_title(loaded[i][0].metadata) for i in good}  # type: ignore[index]
        obs.BATCH_SIZE.observe(len(arrays))
        try:
            probs = await self._infer(arrays, [titles[i] for i in good])
            rows = {t: np.asarray(probs[t]) for t in (*TASKS, SCOPE_OUTPUT) if t in probs}
            if any(len(r) != len(good) for r in rows.values()):
                raise ValueError(f"the model returned {[len(r) for r in rows.values()]} rows for {len(good)} images")
            labeled = dict(zip(good, self._label(rows, [titles[i] for i in good]), strict=True))
        except (InferenceError, ValueError) as exc:
            # one bad input must not sink the batch: infer one by one, counting attempts
            self.retry.log.warning("batch_inference_failed", error=str(exc)[:300], size=len(good))
            labeled = {}
            for i, arr in zip(good, arrays, strict=True):
                event = loaded[i][0]  # type: ignore[index]
                single = await self._attempt(messages[i], event, "infer", lambda arr=arr, i=i: self._infer([arr], [titles[i]]))
                if isinstance(single, DeadLetter):
                    outcomes[i] = single
                else:
                    labeled[i] = self._label(single, [titles[i]])[0]
        served = self.labeler.served
        assert served is not None
        now = datetime.now(UTC)
        for i, (labels, scope) in labeled.items():
            event = loaded[i][0]  # type: ignore[index]
            unsure = any(t.needs_review for t in labels.values())
            outcomes[i] = ProductLabeled(
                product_id=event.product_id, source_event_id=event.event_id, image=event.image, scope=scope,
                labels=labels, model=served.info, needs_review=unsure,
                audit=not unsure and audited(event.product_id, self.settings.audit_rate),
                latency_ms=max(0.0, (now - event.uploaded_at).total_seconds() * 1000), labeled_at=now,
                uploaded_at=event.uploaded_at, inputs=["image"] if scope and scope.other_heads else self._inputs(titles[i]),
                metadata=dict(event.metadata) or None,
            )
            self.retry.attempts.pop(messages[i].ref, None)
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    def _read_title(self, title: str) -> bool:
        served = self.labeler.served
        return bool(served and served.reads_title and has_words(title))

    def _inputs(self, title: str) -> list[str]:
        """What the labels were read from: the photo, and the title where the model read one."""
        return ["image", "title"] if self._read_title(title) else ["image"]

    def _label(self, probs: dict[str, np.ndarray], titles: list[str]) -> list[tuple[dict[str, TaskLabel], ScopeCheck | None]]:
        """Per image: the task labels, and the scope gate's verdict (out of scope: every label flagged, unless the
        photo was routed to the heads for the other categories: then judged by their thresholds)."""
        served = self.labeler.served
        assert served is not None
        labels = label_batch({t: probs[t] for t in TASKS}, served.classes, self.thresholds, self.title_thresholds,
                             [self._read_title(t) for t in titles])
        others = self.other_thresholds  # the served graph gives their heads' labels above its routing threshold
        route = served.others_route if served.others_route is not None else served.scope_threshold
        checks = scope_checks(probs.get(SCOPE_OUTPUT), self.scope_threshold, len(labels), route if others else None)
        policy = self.settings.review_policy
        return [(with_policy(with_scope(lab, check, others), policy), check) for lab, check in zip(labels, checks, strict=True)]

    async def close(self) -> None:
        """At shutdown: stop the pools and close the Triton client."""
        self.io_pool.shutdown(wait=False, cancel_futures=True)
        self.cpu_pool.shutdown(wait=False, cancel_futures=True)
        await self.labeler.close()


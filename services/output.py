"""Where outcomes go: label records to S3, label (and review) events and dead letters to Kafka.

:class:`Output` is a sink: it takes a producer (Faust's ``app.producer`` in the worker), a
store (:class:`services.storage.LabelStore`) and the retry policy
(:class:`services.retry.Retry`), and nothing else. The worker acknowledges a batch's
records only after :meth:`Output.emit` returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from services import observability as obs
from services.dead_letters import subject_ids
from services.drift import DriftMonitor
from services.errors import BadInput, classify_publish_error
from services.events import DeadLetter, Outcome, ProductLabeled, RawMessage
from services.retry import Retry
from services.settings import Settings


class Producer(Protocol):
    """What :class:`Output` needs of a Kafka producer (Faust's ``app.producer``)."""

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None, timestamp: float | None,
                   headers: object) -> Awaitable[object]: ...


class OutputStore(Protocol):
    """What :class:`Output` needs of S3 (:class:`services.storage.LabelStore`)."""

    async def put_labels(self, items: list[tuple[ProductLabeled, bytes]]) -> list[bool]: ...

    async def put_objects(self, items: list[tuple[str, bytes]]) -> None: ...


PUBLISH_TIMEOUT_S = 30.0  # one round of sends waits this long for its acknowledgements


@dataclass(frozen=True, slots=True)
class _Send:
    """One Kafka record to publish, and the consumed record whose outcome it carries."""

    source: RawMessage
    outcome: Outcome
    topic: str
    key: str | None
    value: bytes


class Output:
    """Where outcomes go: label record to S3, then label (and review) events; dead letters to
    the DLQ, after their originals too long to embed are stored in S3.

    Transient failures (broker or S3 down) are retried forever with backoff; the caller
    acknowledges the records only after :meth:`emit` returned. An output the broker refuses
    for good (too large), or one failing ``max_attempts`` times, is the record's fault: the
    record is dead-lettered instead of labeled; if its dead letter is refused too, it is
    logged, counted (``autolabel_undeliverable_total``) and acknowledged all the same. No
    record can stop the worker, and none is retried forever but for a transient failure.
    """

    def __init__(self, producer: Producer, store: OutputStore, retry: Retry, settings: Settings,
                 drift: DriftMonitor | None = None) -> None:
        self.producer, self.store, self.retry, self.settings = producer, store, retry, settings
        self.drift = drift  # the drift metrics, fed with every label published
        self.log_each = settings.log_level in {"debug", "info"}  # one line per label event, or none at all

    async def emit(self, results: list[tuple[RawMessage, Outcome]]) -> None:
        """Store the label records and long originals, then publish label, review and dead-letter events."""
        s = self.settings
        labeled = [(msg, o, o.to_bytes()) for msg, o in results if isinstance(o, ProductLabeled)]  # one body for S3 and Kafka
        if labeled:
            records = [(o, body) for _, o, body in labeled]
            await self.retry.forever("store", lambda: self.store.put_labels(records))
        dead = [(msg, o) for msg, o in results if isinstance(o, DeadLetter)]
        sends = await self._dead_letter_sends(dead) if dead else []
        for msg, o, body in labeled:
            sends.append(_Send(msg, o, s.topic_labels, o.product_id, body))
            if o.needs_review:
                sends.append(_Send(msg, o, s.topic_review, o.product_id, body))
        refused = await self._publish(sends)
        if refused:
            await self._dead_letter_refused(refused)
        gone = {send.source.ref for send, _ in refused}
        self._count_labeled([o for msg, o, _ in labeled if msg.ref not in gone])

    async def _dead_letter_sends(self, letters: list[tuple[RawMessage, DeadLetter]]) -> list[_Send]:
        """The DLQ records of ``letters``, once the originals they only name are in S3."""
        originals = [(d.original_ref.key, msg.value) for msg, d in letters if d.original_ref is not None]
        if originals:
            await self.retry.forever("store", lambda: self.store.put_objects(originals))
        return [_Send(msg, d, self.settings.topic_dlq, d.original_key, d.to_bytes()) for msg, d in letters]

    async def _publish(self, sends: list[_Send]) -> list[tuple[_Send, BadInput]]:
        """Publish ``sends``; return those refused for good, at most one per consumed record.

        All are sent at once and acknowledged together. Only when some failed are those sent
        again, each through :meth:`Retry.settle`: transient trouble (broker away, timeout)
        is retried forever, and those may reach the topic twice (at-least-once); a record
        the broker refuses for good, or failing ``max_attempts`` times, is the record's fault.
        """
        failed = await self._send_all(sends)
        if not failed:
            return []
        settled = await asyncio.gather(
            *(self.retry.settle(send.source, send.outcome, "publish", partial(self._send_one, send)) for send, _ in failed)
        )
        refused: dict[tuple[str, int, int], tuple[_Send, BadInput]] = {}
        for (send, _), result in zip(failed, settled, strict=True):
            if isinstance(result, BadInput):
                refused.setdefault(send.source.ref, (send, result))
        return list(refused.values())

    async def _send_one(self, send: _Send) -> None:
        """Publish one record; raise its failure as :func:`classify_publish_error` decides."""
        failed = await self._send_all([send])
        if failed:
            raise classify_publish_error(failed[0][1])

    async def _send_all(self, sends: list[_Send]) -> list[tuple[_Send, BaseException]]:
        """Send, then wait for every acknowledgement at once; return the sends that failed, with their errors."""
        failed: list[tuple[_Send, BaseException]] = []
        pending: list[tuple[_Send, Awaitable[object]]] = []
        for send in sends:
            key = send.key.encode() if send.key else None
            try:
                pending.append((send, await self.producer.send(send.topic, key, send.value, partition=None, timestamp=None, headers=None)))
            except Exception as exc:  # noqa: BLE001 - classified by the caller (e.g. too large for the producer)
                failed.append((send, exc))
        if pending:
            try:
                acks = await asyncio.wait_for(asyncio.gather(*(f for _, f in pending), return_exceptions=True), timeout=PUBLISH_TIMEOUT_S)
            except TimeoutError as exc:
                acks = [exc] * len(pending)
            failed.extend((send, ack) for (send, _), ack in zip(pending, acks, strict=True) if isinstance(ack, BaseException))
        return failed

    async def _dead_letter_refused(self, refused: list[tuple[_Send, BadInput]]) -> None:
        """Records whose output was refused: a label refused becomes the record's dead letter; a
        dead letter refused (or a second one) leaves the record undeliverable."""
        lost = [(send, err) for send, err in refused if isinstance(send.outcome, DeadLetter)]
        letters = [(send.source, self.retry.dead_letter(send.source, err.code, str(err), send.outcome))
                   for send, err in refused if isinstance(send.outcome, ProductLabeled)]
        if letters:
            lost += await self._publish(await self._dead_letter_sends(letters))
        for send, err in lost:
            self._undeliverable(send, err)

    def _undeliverable(self, send: _Send, err: BadInput) -> None:
        """Even the record's dead letter cannot be published: say so loudly and let the record go."""
        msg = send.source
        obs.UNDELIVERABLE.labels(code=err.code.value).inc()
        obs.get_logger(worker=self.settings.worker_name, **subject_ids(send.outcome)).error(
            "undeliverable", code=err.code.value, reason=str(err)[:300], topic=msg.topic, partition=msg.partition,
            offset=msg.offset, size=len(msg.value), attempts=self.retry.tries(msg),
        )

    def _count_labeled(self, published: list[ProductLabeled]) -> None:
        for o in published:
            obs.E2E_LATENCY.observe(o.latency_ms / 1000)
        obs.EVENTS_OUT.inc(len(published))
        obs.REVIEW_OUT.inc(sum(o.needs_review for o in published))
        obs.AUDIT_OUT.inc(sum(o.audit for o in published))
        if self.drift is not None:
            self.drift.observe(published)
        obs.OUT_OF_SCOPE.inc(sum(o.scope is not None and not o.scope.in_scope for o in published))
        if self.log_each:
            for o in published:
                obs.get_logger(product_id=o.product_id, event_id=o.source_event_id).info(
                    "labeled", needs_review=o.needs_review, latency_ms=round(o.latency_ms, 1),
                    **{t: lab.label for t, lab in o.labels.items()},
                )

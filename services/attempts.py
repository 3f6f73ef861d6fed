"""Attempt counts that survive the worker process: a record that kills it is dead-lettered.

A record whose handling *raises* is counted in memory (:meth:`services.retry.Retry.settle`). One that
kills the process (a segfault in a native library, the OOM killer, a hang ended by the
supervisor) leaves no exception to count; after a restart it is consumed again from the
last commit. So each batch is announced before it is handled:

- an *in-flight marker* is written to S3 at
  ``in-flight/<consumer group>/<topic>/<worker>.<token>.<n>.json`` naming its records
  (partition, offset, the failed attempts each had so far), and deleted once the batch
  is acknowledged: one PUT and one DELETE per batch, nothing per event;
- a worker lists the markers when it starts and whenever partitions are assigned to it.
  A marker another process left behind is a batch that never finished: each of its
  records not yet committed counts one failed attempt more than the marker says. Such a
  marker is deleted once every record it names is settled (acknowledged by this worker,
  or behind the group's committed offset);
- a record with failed attempts is a *suspect*: it is handled alone, with nothing else in
  flight in this worker (so that, if it kills the process again, no other record is
  charged), with a marker of its own carrying its count; when that count reaches
  ``AUTOLABEL_MAX_ATTEMPTS`` it is dead-lettered ``processing_failed`` without being
  handled again. Innocent records of a crashed batch are suspects once, then labeled.

A batch cut short by a rebalance (its partitions moved while it was in flight) is
counted as a failed attempt too: an over-count of one per rebalance, which is why
suspects are retried on their own rather than dead-lettered at once.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from services.dead_letters import Record

IN_FLIGHT_PREFIX = "in-flight/"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe(name: str) -> str:
    """A name as one key segment: only ``[A-Za-z0-9._-]``, at most 100 characters."""
    return _UNSAFE.sub("_", name)[:100] or "_"


def marker_prefix(consumer_group: str, topic: str) -> str:
    """Where the in-flight markers of one consumer group on one topic are kept."""
    return f"{IN_FLIGHT_PREFIX}{_safe(consumer_group)}/{_safe(topic)}/"


def marker_body(worker: str, topic: str, records: Iterable[tuple[Record, int]]) -> bytes:
    """A marker: the batch's records and the failed attempts each had before this one."""
    return json.dumps({
        "worker": worker, "topic": topic, "started_at": datetime.now(UTC).isoformat(),
        "records": [{"partition": r.partition, "offset": r.offset, "attempts": n} for r, n in records],
    }).encode()


def failed_attempts(bodies: Iterable[bytes]) -> dict[tuple[int, int], int]:
    """(partition, offset) -> failed attempts, from markers of batches that never finished.

    A record named by several (the batch that crashed, then its own run that crashed too)
    takes the highest count: each marker carries the count forward."""
    counts: dict[tuple[int, int], int] = {}
    for body in bodies:
        try:
            records = json.loads(body)["records"]
            refs = [((int(r["partition"]), int(r["offset"])), int(r["attempts"]) + 1) for r in records]
        except (ValueError, KeyError, TypeError):
            continue  # an unreadable marker counts nothing
        for ref, n in refs:
            counts[ref] = max(counts.get(ref, 0), n)
    return counts


class Gate:
    """Batches in flight share the worker; a suspect has it to itself.

    ``shared()`` for normal batches (any number at once), ``exclusive()`` for a suspect:
    it waits until no batch is in flight, and holds new ones back meanwhile."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            async with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            self._waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            async with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class AttemptLedger:
    """The worker's in-flight markers in S3 and the failed attempts they reveal.

    ``store`` is a :class:`services.storage.LabelStore` (``put_objects``, ``list_keys``,
    ``get_objects``, ``delete_objects``); every method may raise TransientError.
    """

    def __init__(self, store, consumer_group: str, topic: str, worker: str,  # noqa: ANN001
                 committed: Callable[[int], int | None] = lambda partition: None) -> None:
        self.store = store
        self.committed = committed  # the group's committed offset of a partition, if known
        self.topic = topic
        self.worker = worker
        self.prefix = marker_prefix(consumer_group, topic)
        self.own = f"{self.prefix}{_safe(worker)}.{uuid.uuid4().hex[:8]}."
        self._n = 0
        self.stale = True  # list the markers before the next batch (start, partitions assigned)
        self.failed: dict[tuple[int, int], int] = {}
        self._found: dict[str, set[tuple[int, int]]] = {}  # others' markers -> their records not yet settled
        self._first: dict[int, int] = {}  # partition -> first offset seen since the markers were listed

    async def load(self) -> None:
        """List the markers other processes left; count their records' failed attempts."""
        keys = [k for k in await self.store.list_keys(self.prefix) if not k.startswith(self.own)]
        bodies = await self.store.get_objects(keys)
        self.failed, self._found, self._first = {}, {}, {}
        settled = []
        for key, body in zip(keys, bodies, strict=True):
            if body is None:
                continue  # deleted meanwhile: its batch finished
            counts = {ref: n for ref, n in failed_attempts([body]).items() if not self._behind(ref)}
            if not counts:
                settled.append(key)  # everything it names is committed: a leftover
                continue
            self.failed.update({ref: max(n, self.failed.get(ref, 0)) for ref, n in counts.items()})
            self._found[key] = set(counts)
        if settled:
            await self.store.delete_objects(settled)
        self.stale = False

    def _behind(self, ref: tuple[int, int]) -> bool:
        """The record at ``ref`` is settled: behind the group's committed offset, or behind
        the first offset this worker was given on its partition since the markers were read."""
        partition, offset = ref
        committed = self.committed(partition)
        return (committed is not None and offset < committed) or (partition in self._first and offset < self._first[partition])

    def failed_before(self, msg: Record) -> int:
        """Failed attempts of ``msg`` in processes that died handling it."""
        self._first.setdefault(msg.partition, msg.offset)
        return self.failed.get((msg.partition, msg.offset), 0) if self.failed else 0

    async def begin(self, records: list[tuple[Record, int]]) -> str:
        """Write the marker of a batch about to be handled; its key."""
        self._n += 1
        key = f"{self.own}{self._n}.json"
        await self.store.put_objects([(key, marker_body(self.worker, self.topic, records))])
        return key

    async def end(self, key: str | None, settled: list[Record]) -> None:
        """The batch is acknowledged: delete its marker, and others' markers whose records
        are all settled now (acknowledged here, or behind the first offset seen here)."""
        done = [key] if key else []
        if self._found:
            for msg in settled:
                self.failed.pop((msg.partition, msg.offset), None)
            for other, refs in list(self._found.items()):
                refs -= {(m.partition, m.offset) for m in settled}
                refs -= {ref for ref in refs if self._behind(ref)}
                if not refs:
                    done.append(other)
                    del self._found[other]
        if done:
            await self.store.delete_objects(done)

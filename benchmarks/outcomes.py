"""What came out of a load run: every product id sent, labeled, dead-lettered or lost.

:func:`outcomes` reads the label topic, the dead-letter topic and the label objects in S3
(their versions too, with :func:`enable_versioning`); :class:`LagReader` reads the worker
group's committed offsets. Used by ``autolabel bench soak`` and ``tests/test_faults.py``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

# --- outcomes --------------------------------------------------------------------------


@dataclass
class Outcome:
    sent: int
    labeled: int  # distinct products with a label event
    label_events: int
    duplicates: int  # label events beyond the first per product
    dead_lettered: int
    dead_letter_codes: dict[str, int]
    lost: list[str]
    stored: int  # label objects in S3
    stored_missing: list[str]
    wrong_version: list[str]
    rewritten: list[str]  # label objects written again after a label was published
    written_twice: list[str] = field(default_factory=list)  # >1 object version (bucket versioning on)
    latencies_ms: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (labeled_at, latency)

    def summary(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("latencies_ms")
        for key in ("lost", "stored_missing", "wrong_version", "rewritten", "written_twice"):
            d[key] = d[key][:20]
            d[f"{key}_count"] = len(getattr(self, key))
        return d


def enable_versioning(settings) -> None:  # noqa: ANN001
    """Keep every write of an object (to count label writes); only on a stack of one's own."""
    from services.storage import Storage

    Storage(settings).client.put_bucket_versioning(Bucket=settings.s3_bucket, VersioningConfiguration={"Status": "Enabled"})


def object_writes(settings, prefix: str) -> Counter:  # noqa: ANN001
    """Versions per key under ``prefix`` (1 per key when each was written once)."""
    from services.storage import Storage

    client = Storage(settings).client
    writes: Counter = Counter()
    for page in client.get_paginator("list_object_versions").paginate(Bucket=settings.s3_bucket, Prefix=prefix):
        for version in page.get("Versions", []):
            writes[version["Key"]] += 1
    return writes


def outcomes(settings, sent: set[str], read_s3: bool = True, idle_s: float = 2.0, versions: bool = False) -> Outcome:  # noqa: ANN001
    """Labels, dead letters and S3 records of a run, checked against the product ids sent."""
    from services.events import DeadLetter, ProductLabeled
    from services.storage import Storage
    from services.topics import read_topic

    events: dict[str, list[ProductLabeled]] = defaultdict(list)
    for record in read_topic(settings, settings.topic_labels, idle_s=idle_s):
        e = ProductLabeled.model_validate_json(record.value)
        events[e.product_id].append(e)
    dead = [DeadLetter.model_validate_json(r.value) for r in read_topic(settings, settings.topic_dlq, idle_s=idle_s)]
    dead_ids = {d.product_id or d.original_key for d in dead}
    lost = sorted(sent - set(events) - dead_ids)
    stored_missing: list[str] = []
    wrong_version: list[str] = []
    rewritten: list[str] = []
    stored = 0
    if read_s3:
        storage = Storage(settings)
        keys = set(storage.list_keys(settings.s3_labels_prefix))
        stored = len(keys)
        from services.events import label_key

        present = [pid for pid in events if label_key(settings.s3_labels_prefix, pid) in keys]
        stored_missing.extend(sorted(set(events) - set(present)))
        with ThreadPoolExecutor(16) as pool:  # tens of thousands of records: read them concurrently
            records = dict(zip(present, pool.map(storage.get_label, present), strict=True))
        for pid in present:
            evs = events[pid]
            record = records[pid]
            if record is None:
                stored_missing.append(pid)
                continue
            if record.model.version not in {e.model.version for e in evs}:
                wrong_version.append(pid)
            # written once: the stored record predates (or is) the first published label;
            # a second write would carry a later labeled_at
            if record.labeled_at > min(e.labeled_at for e in evs):
                rewritten.append(pid)
    written_twice: list[str] = []
    if read_s3 and versions:
        written_twice = sorted(k for k, n in object_writes(settings, settings.s3_labels_prefix).items() if n > 1)
    n_events = sum(len(v) for v in events.values())
    return Outcome(
        sent=len(sent), labeled=len(set(events) & sent), label_events=n_events,
        duplicates=n_events - len(events), dead_lettered=len(dead),
        dead_letter_codes=dict(Counter(d.code.value for d in dead)), lost=lost, stored=stored,
        stored_missing=sorted(stored_missing), wrong_version=sorted(wrong_version), rewritten=sorted(rewritten),
        written_twice=written_twice,
        latencies_ms=sorted((e.labeled_at.timestamp(), e.latency_ms) for evs in events.values() for e in evs[:1]),
    )


class LagReader:
    """Committed offsets of the worker's group (OffsetFetch; joins no group)."""

    def __init__(self, settings) -> None:  # noqa: ANN001
        self.settings = settings
        self.consumer = None

    def committed(self, partitions: list[int]) -> dict[int, int] | None:
        from kafka import KafkaConsumer, TopicPartition

        try:
            if self.consumer is None:
                self.consumer = KafkaConsumer(**self.settings.kafka_client_kwargs(), group_id=self.settings.consumer_group,
                                              enable_auto_commit=False, session_timeout_ms=4000, request_timeout_ms=5000)
            return {p: self.consumer.committed(TopicPartition(self.settings.topic_images, p)) or 0 for p in partitions}
        except Exception:  # noqa: BLE001 - broker away: unknown now
            self.close()
            return None

    def lag(self, end_offsets: dict[int, int]) -> int | None:
        """Acknowledged-but-uncommitted events (end offsets as the producer saw them)."""
        committed = self.committed(list(range(self.settings.topic_partitions)))
        if committed is None:
            return None
        return sum(max(0, end - committed.get(p, 0)) for p, end in end_offsets.items())

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception:  # noqa: BLE001
                pass
            self.consumer = None



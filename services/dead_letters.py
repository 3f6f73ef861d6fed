"""Dead letters of bounded size, whatever the record they stand for.

A dead letter must always be publishable, or the record it stands for could never be
acknowledged. So it carries at most ``dead_letter_max_original_bytes`` of the original
value (plus its size and SHA-256), a record key of at most :data:`MAX_KEY_CHARS`, and a
message of at most :data:`MAX_MESSAGE_CHARS`. A longer original is stored whole in S3 at
``dead-letters/<topic>/<partition>/<offset>`` (:func:`original_location`), and the dead
letter names that object in ``original_ref``; the worker writes the object before it
publishes the dead letter.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from services.events import DeadLetter, ErrorCode, ProductImageUploaded, ProductLabeled, S3Location

DEAD_LETTERS_PREFIX = "dead-letters/"
MAX_KEY_CHARS = 1024  # a longer record key is cut (it is also the dead letter's Kafka key)
MAX_MESSAGE_CHARS = 2000  # DeadLetter.message's limit

Subject = ProductImageUploaded | ProductLabeled | DeadLetter | None


class Record(Protocol):
    """A consumed Kafka record (:class:`services.events.RawMessage`)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes: ...


def subject_ids(subject: Subject) -> dict[str, str | None]:
    """The product and event ids a record was found to carry, for dead letters and logs."""
    if subject is None:
        return {"product_id": None, "event_id": None}
    event_id = subject.source_event_id if isinstance(subject, ProductLabeled) else subject.event_id
    return {"product_id": subject.product_id, "event_id": event_id}


def original_location(bucket: str, record: Record) -> S3Location:
    """Where a record too long to embed is stored whole: one object per topic, partition, offset."""
    return S3Location(bucket=bucket, key=f"{DEAD_LETTERS_PREFIX}{record.topic}/{record.partition}/{record.offset}")


def needs_store(record: Record, max_original_bytes: int) -> bool:
    """Whether the dead letter of ``record`` carries only a prefix (the whole goes to S3)."""
    return len(record.value) > max_original_bytes


def build_dead_letter(
    record: Record, code: ErrorCode, message: str, *, subject: Subject, worker: str, attempts: int,
    bucket: str, max_original_bytes: int,
) -> DeadLetter:
    """The dead letter of ``record``: bounded in size whatever the record's size."""
    value = record.value
    truncated = needs_store(record, max_original_bytes)
    key = record.key.decode(errors="replace")[:MAX_KEY_CHARS] if record.key else None
    return DeadLetter(
        code=code, message=message[:MAX_MESSAGE_CHARS],
        original_b64=DeadLetter.encode_original(value[:max_original_bytes]),
        original_size=len(value), original_sha256=hashlib.sha256(value).hexdigest(),
        original_truncated=truncated, original_ref=original_location(bucket, record) if truncated else None,
        original_key=key, topic=record.topic, partition=record.partition, offset=record.offset,
        worker=worker, attempts=attempts, **subject_ids(subject),
    )

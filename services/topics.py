"""Topics: create the four with explicit partition counts; read one (:func:`read_topic`,
:func:`read_labels`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from services.events import ProductLabeled
from services.settings import Settings


def topic_names(settings: Settings) -> list[str]:
    return [settings.topic_images, settings.topic_labels, settings.topic_review, settings.topic_dlq, settings.topic_reviewed]


def ensure_topics(settings: Settings, replication_factor: int = 1) -> list[str]:
    """Create missing topics (partitions = ``topic_partitions``); return the ones created."""
    admin = KafkaAdminClient(**settings.kafka_client_kwargs(), request_timeout_ms=10000)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=replication_factor)
            for name in topic_names(settings)
            if name not in existing
        ]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in new]
    finally:
        admin.close()


def read_topic(
    settings: Settings,
    topic: str,
    follow: bool = False,
    idle_s: float = 2.0,
    max_wait_s: float | None = None,
) -> Iterator[Any]:  # kafka-python ConsumerRecord
    """Yield every record of ``topic`` from the beginning (no consumer group, nothing committed).

    Without ``follow`` it stops once every partition's position reached the high watermark
    seen in fetch responses and nothing came for ``idle_s`` (Tansu's ListOffsets "latest"
    is not trusted). ``max_wait_s`` bounds the whole read.
    """
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **settings.kafka_client_kwargs(), enable_auto_commit=False, group_id=None,
        auto_offset_reset="earliest", consumer_timeout_ms=int(idle_s * 1000) if not follow else float("inf"),
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        started = time.monotonic()
        last_record = time.monotonic()
        while True:
            batch = consumer.poll(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    last_record = time.monotonic()
                    yield record
            now = time.monotonic()
            if max_wait_s is not None and now - started > max_wait_s:
                return
            if follow or batch:
                continue
            caught_up = all(
                (hw := consumer.highwater(tp)) is not None and consumer.position(tp) >= hw for tp in tps
            )
            if caught_up and now - last_record >= min(idle_s, 0.5):
                return
            if now - last_record >= idle_s:
                return
    finally:
        consumer.close()


def read_labels(settings: Settings, follow: bool = False, product_id: str | None = None, topic: str | None = None,
                idle_s: float = 2.0) -> Iterator[ProductLabeled]:
    """Every ProductLabeled event on the label topic (or ``topic``), in topic order; records
    that are not one are skipped."""
    from pydantic import ValidationError

    for record in read_topic(settings, topic or settings.topic_labels, follow=follow, idle_s=idle_s):
        try:
            event = ProductLabeled.model_validate_json(record.value)
        except ValidationError:
            continue
        if product_id is None or event.product_id == product_id:
            yield event

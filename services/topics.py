"""Topics: create the five with explicit partition counts; check that those a command writes
to exist (:func:`require_topics`); read one (:func:`read_topic`, :func:`read_labels`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from services.errors import AutolabelError
from services.events import ProductLabeled
from services.settings import ENV_PREFIX, Settings


def topic_names(settings: Settings) -> list[str]:
    return [settings.topic_images, settings.topic_labels, settings.topic_review, settings.topic_dlq, settings.topic_reviewed]


class MissingTopic(AutolabelError):
    """A topic a command writes to does not exist. Brokers that auto-create topics (the
    embedded Tansu does, whatever it is told, for kafka-python's producer) would create a
    misspelt one on the first record, with no error and no consumer: the command stops first."""


def require_topics(settings: Settings, names: dict[str, str]) -> None:
    """Each topic of ``names`` (setting -> topic) exists, or :class:`MissingTopic` naming it.

    Lists all topics (a metadata request for all topics creates none) rather than asking
    for the named ones, which a broker may create on the spot."""
    admin = KafkaAdminClient(**settings.kafka_client_kwargs(), request_timeout_ms=10000)
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    for setting, topic in names.items():
        if topic not in existing:
            raise MissingTopic(
                f"topic {topic!r} ({ENV_PREFIX}{setting.upper()}) does not exist on {settings.kafka_bootstrap_servers}: "
                "check the name, or create the topics (`autolabel stack up`; deploy/compose/init_topics.py elsewhere)")


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

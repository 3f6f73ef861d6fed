"""Topic administration: create the topics with explicit partition counts."""

from __future__ import annotations

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from services.settings import Settings


def topic_names(settings: Settings) -> list[str]:
    return [settings.topic_images, settings.topic_labels, settings.topic_review, settings.topic_dlq, settings.topic_reviewed]


def isolated_env(suffix: str | None = None) -> dict[str, str]:
    """AUTOLABEL_* overrides for a run of its own on a shared stack: fresh topics, consumer
    group and label prefix, short group timeouts, quick retries, no metrics port."""
    import uuid

    suffix = suffix or uuid.uuid4().hex[:8]
    return {
        "AUTOLABEL_TOPIC_IMAGES": f"images-{suffix}",
        "AUTOLABEL_TOPIC_LABELS": f"labels-{suffix}",
        "AUTOLABEL_TOPIC_REVIEW": f"review-{suffix}",
        "AUTOLABEL_TOPIC_DLQ": f"dlq-{suffix}",
        "AUTOLABEL_TOPIC_REVIEWED": f"reviewed-{suffix}",
        "AUTOLABEL_REVIEW_CONSUMER_GROUP": f"review-group-{suffix}",
        "AUTOLABEL_CONSUMER_GROUP": f"group-{suffix}",
        "AUTOLABEL_S3_LABELS_PREFIX": f"labels-{suffix}/",
        "AUTOLABEL_KAFKA_SESSION_TIMEOUT_S": "6",
        "AUTOLABEL_METRICS_PORT": "0",
        "AUTOLABEL_RETRY_INITIAL_S": "0.2",
        "AUTOLABEL_RETRY_MAX_S": "2",
    }


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
):  # noqa: ANN201 - generator of kafka-python ConsumerRecord
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

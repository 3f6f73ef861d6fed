"""Topic administration: create the four topics with explicit partition counts."""

from __future__ import annotations

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from services.settings import Settings


def topic_names(settings: Settings) -> list[str]:
    return [settings.topic_images, settings.topic_labels, settings.topic_review, settings.topic_dlq]


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

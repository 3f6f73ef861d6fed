"""SIGTERM (how Kubernetes scales a worker down) is graceful: nothing committed without its label."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from conftest import SAMPLES, wait_for
from services.events import ImageLocation, ProductImageUploaded
from services.labels import read_labels
from services.storage import Storage
from services.topics import read_topic

pytestmark = pytest.mark.stack


def test_sigterm_commits_only_what_was_labeled(stack_settings, worker_factory):
    settings, _ = stack_settings
    storage = Storage(settings)
    images = [storage.put_image(p.read_bytes()) for p in sorted(SAMPLES.glob("*.jpg"))]
    producer = KafkaProducer(**settings.kafka_client_kwargs(), acks="all", linger_ms=5)
    for n in range(400):
        event = ProductImageUploaded(product_id=f"t{n:04d}", image=ImageLocation(s3=images[n % len(images)]))
        producer.send(settings.topic_images, key=event.product_id.encode(), value=event.to_bytes())
    producer.flush()
    producer.close()

    worker = worker_factory("w1", AUTOLABEL_BATCH_MAX_SIZE="4")
    assert wait_for(lambda: worker.output().count('"event": "labeled"') >= 8, 180, interval=0.05), worker.output()[-2000:]
    started = time.monotonic()
    code = worker.terminate(timeout=60)
    stop_s = time.monotonic() - started
    assert code == 0, worker.output()[-3000:]
    assert stop_s < 30

    labeled = {e.product_id for e in read_labels(settings, idle_s=1.0)}
    records = list(read_topic(settings, settings.topic_images, idle_s=1.0))
    consumer = KafkaConsumer(**settings.kafka_client_kwargs(), group_id=settings.consumer_group, enable_auto_commit=False)
    try:
        committed = {p: consumer.committed(TopicPartition(settings.topic_images, p)) or 0 for p in {r.partition for r in records}}
    finally:
        consumer.close()
    committed_ids = {r.key.decode() for r in records if r.offset < committed[r.partition]}
    assert committed_ids, "the worker committed what it finished before stopping"
    assert committed_ids <= labeled, f"committed without a label: {sorted(committed_ids - labeled)[:10]}"
    assert len(labeled) < 400, "the stop must land mid-stream"

    # a new worker picks up exactly where the group left off and finishes the rest
    worker_factory("w2", AUTOLABEL_BATCH_MAX_SIZE="8")
    expected = {r.key.decode() for r in records}
    assert wait_for(lambda: {e.product_id for e in read_labels(settings, idle_s=1.0)} >= expected, 300, interval=1.0)

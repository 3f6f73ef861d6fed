"""SIGTERM (how Kubernetes scales a worker down) is graceful: nothing committed without its label."""

from __future__ import annotations

import json
import time

import pytest
from conftest import SAMPLES, wait_for
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.events import ImageLocation, ProductImageUploaded
from services.storage import Storage
from services.topics import read_labels, read_topic

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


def _send(settings, n: int, prefix: str) -> None:
    storage = Storage(settings)
    image = storage.put_image(sorted(SAMPLES.glob("*.jpg"))[0].read_bytes())
    producer = KafkaProducer(**settings.kafka_client_kwargs(), acks="all", linger_ms=5)
    for i in range(n):
        event = ProductImageUploaded(product_id=f"{prefix}{i:03d}", image=ImageLocation(s3=image))
        producer.send(settings.topic_images, key=event.product_id.encode(), value=event.to_bytes())
    producer.flush()
    producer.close()


def test_sigterm_stops_a_stuck_worker_within_the_shutdown_timeout(stack_settings, worker_factory):
    """Issue 13: a worker whose batches cannot finish (here Triton is unreachable, so they are
    retried forever) used to wait for them forever after SIGTERM. It exits within
    AUTOLABEL_SHUTDOWN_TIMEOUT_S, non-zero, and commits nothing it did not label."""
    import socket

    settings, _ = stack_settings
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    _send(settings, 6, "stuck")
    worker = worker_factory("stuck", AUTOLABEL_TRITON_URL=f"127.0.0.1:{dead_port}", AUTOLABEL_SHUTDOWN_TIMEOUT_S="4")
    assert wait_for(lambda: '"stage": "discover"' in worker.output(), 120, interval=0.2), worker.output()[-2000:]
    started = time.monotonic()
    code = worker.terminate(timeout=30)
    stop_s = time.monotonic() - started
    assert stop_s < 4 + 3, (stop_s, worker.output()[-2000:])
    assert code == 1 and '"event": "shutdown_timeout"' in worker.output(), (code, worker.output()[-2000:])
    consumer = KafkaConsumer(**settings.kafka_client_kwargs(), group_id=settings.consumer_group, enable_auto_commit=False)
    try:
        committed = [consumer.committed(TopicPartition(settings.topic_images, p)) for p in range(settings.topic_partitions)]
    finally:
        consumer.close()
    assert not any(committed), committed


def test_a_crashed_agent_stops_the_worker_with_a_nonzero_exit(stack_settings, worker_factory):
    """Issue 13: an agent that crashed (here: the configured model does not have the three
    outputs, which fails every batch outside the per-record retry) left the process alive
    and idle, logging `wait_empty: Waiting for tasks` for 20 minutes. It now stops the
    process, exit 1, within AUTOLABEL_SHUTDOWN_TIMEOUT_S, for its supervisor to restart."""
    settings, _ = stack_settings
    _send(settings, 3, "crash")
    worker = worker_factory("crash", AUTOLABEL_TRITON_MODEL="backbone", AUTOLABEL_SHUTDOWN_TIMEOUT_S="4")
    assert wait_for(lambda: not worker.alive(), 120, interval=0.2), worker.output()[-3000:]
    assert worker.returncode == 1, worker.output()[-3000:]
    out = worker.output()
    assert '"event": "agent_crashed"' in out and "has no output" in out, out[-3000:]
    crashed_at = next(json.loads(line)["timestamp"] for line in out.splitlines() if '"agent_crashed"' in line)
    stopped_at = json.loads([line for line in out.splitlines() if line.startswith("{") and '"worker_stopped"' in line
                             or '"shutdown_timeout"' in line][-1])["timestamp"]
    from datetime import datetime

    held = (datetime.fromisoformat(stopped_at.replace("Z", "+00:00")) - datetime.fromisoformat(crashed_at.replace("Z", "+00:00"))).total_seconds()
    assert held < 4 + 2, held
    assert not list(read_labels(settings, idle_s=1.0))

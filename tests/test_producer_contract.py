"""A store's own producer, written from docs/events.md alone, on the real stack.

- examples/producer.py (boto3 + kafka-python) and examples/producer_confluent.py (boto3 +
  confluent-kafka), run as a store engineer would, with nothing but what `stack.env` gives,
  get their labels back;
- every client docs/events.md names puts a product on the partition autolabel's own producers
  (`autolabel publish`, `autolabel relabel`) choose, and confluent-kafka's default would not;
- a misspelt topic: what the embedded broker (Tansu) does with it, and what refuses it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLES

EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"
PARTITION_COUNTS = (1, 2, 3, 4, 7, 12, 64)


def _product_ids(n: int = 3000) -> list[str]:
    """Ids of every shape docs/events.md allows: numeric, SKU-like, long, with '.', '_', '-'."""
    ids = [str(i) for i in range(n)]
    ids += [f"SKU-{i:06d}_{c}" for i, c in zip(range(n), "abcdefghij" * (n // 10 + 1))]
    ids += [uuid.UUID(int=i * 7919).hex for i in range(n // 3)]
    ids += ["a", "Z.9", "x" * 128, "15970", "13212", "puma.track-pants_blue"]
    return ids


def _murmur2_partition(key: bytes, partitions: int) -> int:
    """kafka-python's DefaultPartitioner (and Java's): murmur2 of the key, positive, mod n."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _librdkafka(name: str):
    """librdkafka's own partitioner ``name`` from the library confluent-kafka ships (a pure
    function of the key and the partition count for a non-empty key)."""
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    lib = ctypes.CDLL(str(next(libs.glob("librdkafka*.so*"))))
    fn = getattr(lib, f"rd_kafka_msg_partitioner_{name}")
    fn.restype = ctypes.c_int32
    fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p]
    return lambda key, partitions: fn(None, key, len(key), partitions, None, None)


def test_kafka_python_and_confluent_murmur2_random_agree_and_confluents_default_does_not():
    """Over thousands of product ids and several partition counts: kafka-python's partitioner and
    librdkafka's murmur2_random choose the same partition; librdkafka's default (consistent_random,
    CRC32) another one for most ids, so a confluent-kafka producer left at its default breaks the
    per-product order. The murmur2 here is Java's (its own test vectors)."""
    from kafka.partitioner.default import murmur2

    java = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536, b"abc": 479470107}
    assert {k: ctypes.c_int32(murmur2(k)).value for k in java} == java
    murmur2_random, default = _librdkafka("murmur2_random"), _librdkafka("consistent_random")
    keys = [pid.encode() for pid in _product_ids()]
    for n in PARTITION_COUNTS:
        ours = [_murmur2_partition(k, n) for k in keys]
        assert [murmur2_random(k, n) for k in keys] == ours, f"{n} partitions"
        if n > 1:
            differ = sum(default(k, n) != p for k, p in zip(keys, ours))
            assert differ > len(keys) * (n - 1) / n * 0.8, f"{n} partitions: the default differs for only {differ} ids"


def test_the_doc_names_the_partitioner_and_the_settings_it_promises():
    text = (DOCS / "events.md").read_text()
    assert '"partitioner": "murmur2_random"' in text and "consistent_random" in text
    assert '"partitioner": "murmur2_random"' in (EXAMPLES / "producer_confluent.py").read_text()
    for name in ("AUTOLABEL_KAFKA_BOOTSTRAP_SERVERS", "AUTOLABEL_S3_ENDPOINT_URL", "AUTOLABEL_S3_BUCKET",
                 "AUTOLABEL_S3_ACCESS_KEY_ID", "AUTOLABEL_S3_SECRET_ACCESS_KEY", "AUTOLABEL_TOPIC_IMAGES"):
        assert name in text, name


# --- on the real stack ------------------------------------------------------------------


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _store_env(stack, settings, **extra: str) -> dict[str, str]:
    """What a store engineer's shell has: the stack's stack.env (nothing from conftest's
    settings but this test's own topic and label prefix), no AUTOLABEL_* of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOLABEL_")}
    env.update(stack["stack"].env())
    env.update({"AUTOLABEL_TOPIC_IMAGES": settings.topic_images, "AUTOLABEL_S3_LABELS_PREFIX": settings.s3_labels_prefix})
    env.update(extra)
    return env


def _run_example(name: str, args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _topic_partitions_by_event(settings) -> dict[str, int]:
    from services.topics import read_topic

    return {json.loads(r.value)["event_id"]: r.partition for r in read_topic(settings, settings.topic_images, idle_s=1.0)}


@pytest.mark.stack
def test_stack_env_gives_a_client_everything(stack, stack_settings):
    """stack.env (and `stack status --env`) name the endpoints, bucket, S3 keys and topics, the
    S3 keys being the ones the stack's S3 accepts; the file is its owner's alone."""
    import boto3
    from botocore.config import Config

    env = stack["stack"].env()
    assert env["AUTOLABEL_S3_ACCESS_KEY_ID"] == stack["env"]["AUTOLABEL_S3_ACCESS_KEY_ID"]
    assert env["AUTOLABEL_S3_BUCKET"] == "autolabel" and env["AUTOLABEL_TOPIC_IMAGES"] == "product-images"
    assert stack["stack"].env_file.stat().st_mode & 0o077 == 0
    s3 = boto3.client("s3", endpoint_url=env["AUTOLABEL_S3_ENDPOINT_URL"], region_name=env["AUTOLABEL_S3_REGION"],
                      aws_access_key_id=env["AUTOLABEL_S3_ACCESS_KEY_ID"], aws_secret_access_key=env["AUTOLABEL_S3_SECRET_ACCESS_KEY"],
                      config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    s3.head_bucket(Bucket=env["AUTOLABEL_S3_BUCKET"])
    shell = {k: v for k, v in os.environ.items() if not k.startswith("AUTOLABEL_")}
    status = subprocess.run([sys.executable, "-m", "autolabel", "stack", "status", "--env"], capture_output=True, text=True,
                            env={**shell, "AUTOLABEL_STATE_DIR": stack["env"]["AUTOLABEL_STATE_DIR"]}, timeout=120, cwd=ROOT)
    assert status.returncode == 0, status.stderr
    assert dict(line.split("=", 1) for line in status.stdout.splitlines()) == env


@pytest.mark.stack
def test_kafka_python_example_gets_its_labels_on_publishs_partition(stack, stack_settings, worker_factory):
    """examples/producer.py, run with stack.env only: its upload is labeled (stored record of its
    event id, with the title read) and sits on the partition `autolabel publish` chose for the
    same product."""
    from services.publisher import publish_files

    settings, _ = stack_settings
    worker_factory()
    photo = SAMPLES / "28794.jpg"
    published = publish_files(settings, [photo], progress=False, product_ids={photo: "ex-kp-28794"}).published[0]
    out = _run_example("producer", [str(photo), "ex-kp-28794", "--title", "Denizen Men Blue Jeans", "--wait", "180"],
                       _store_env(stack, settings))
    assert out.returncode == 0, out.stderr[-3000:]
    sent, result = (json.loads(line) for line in out.stdout.splitlines())
    assert set(result["labels"]) == {"style", "gender", "season"}
    record = result["record"]
    assert record["source_event_id"] == sent["event_id"] and record["inputs"] == ["image", "title"]
    assert record["metadata"] == {"filename": "28794.jpg", "title": "Denizen Men Blue Jeans"}
    partitions = _topic_partitions_by_event(settings)
    assert partitions[sent["event_id"]] == partitions[published.event_id] == sent["partition"]
    assert sent["partition"] == _murmur2_partition(b"ex-kp-28794", settings.topic_partitions)


@pytest.mark.stack
def test_confluent_producer_as_documented_lands_where_publish_does_and_gets_labels(stack, stack_settings, worker_factory,
                                                                                    monkeypatch):
    """A confluent-kafka producer configured as docs/events.md says (examples/producer_confluent.py)
    puts each product on the partition `autolabel publish` put it on (read back from the topic),
    and its uploads are labeled. The same producer at librdkafka's default partitioner, on a topic
    of its own, does not."""
    from confluent_kafka import Producer
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from services.publisher import make_producer, publish_files

    settings, _ = stack_settings
    worker_factory()
    photos = sorted(SAMPLES.glob("*.jpg"))
    ids = {f"ex-ck-{p.stem}": p for p in photos}
    summary = publish_files(settings, photos, progress=False, product_ids={p: pid for pid, p in ids.items()})
    published = {e.product_id: e.event_id for e in summary.published}
    for name, value in _store_env(stack, settings).items():  # the example reads its settings from the environment
        if name.startswith("AUTOLABEL_"):
            monkeypatch.setenv(name, value)
    confluent = _example("producer_confluent")
    s3, bucket = confluent.s3_client(), settings.s3_bucket
    sent = {}
    for pid, photo in ids.items():
        event = confluent.upload_event(pid, bucket, confluent.upload_photo(s3, bucket, photo), None, photo.name)
        sent[pid] = (event, confluent.send(event, settings.kafka_bootstrap_servers.split(","), settings.topic_images)[0])
    partitions = _topic_partitions_by_event(settings)
    assert len(set(partitions.values())) > 1, "the products spread over partitions"
    for pid, (event, partition) in sent.items():
        assert partitions[event["event_id"]] == partitions[published[pid]] == partition, pid
    # autolabel's producer object (`autolabel publish`, `autolabel relabel`) chooses these partitions
    producer = make_producer(settings)
    try:
        assert producer.partitions_for(settings.topic_images)
        assert {pid: producer._partition(settings.topic_images, None, pid, None, pid.encode(), None) for pid in sent} == \
            {pid: partition for pid, (_, partition) in sent.items()}
    finally:
        producer.close()
    # the confluent uploads are labeled: the stored record of each product is of its (newer) upload
    last_pid, (last_event, _) = list(sent.items())[-1]
    record = confluent.wait_for_labels(s3, bucket, last_event, timeout=180)
    assert record is not None and set(record["labels"]) == {"style", "gender", "season"}
    out = _run_example("producer_confluent", [str(photos[0]), "ex-ck-script", "--wait", "180"], _store_env(stack, settings))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[0])["partition"] == _murmur2_partition(b"ex-ck-script", settings.topic_partitions)
    # librdkafka's default on the wire: another partition for most products
    scratch = f"scratch-default-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**settings.kafka_client_kwargs())
    admin.create_topics([NewTopic(scratch, num_partitions=settings.topic_partitions, replication_factor=1)])
    admin.close()
    default = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "acks": "all"})
    got = {}
    for i in range(200):
        default.produce(scratch, key=f"p{i}".encode(), value=b"x", on_delivery=lambda err, msg: got.__setitem__(msg.key(), msg.partition()))
    assert default.flush(30) == 0
    differ = sum(p != _murmur2_partition(k, settings.topic_partitions) for k, p in got.items())
    assert len(got) == 200 and differ > 100, differ


@pytest.mark.stack
def test_a_misspelt_topic_is_refused_by_autolabel_and_the_examples(stack, stack_settings):
    """Tansu creates a topic named in a metadata request that allows it, and kafka-python's
    producer always allows it: a plain kafka-python producer creates `product-imagez` (4
    partitions) with no error. `autolabel publish` and both examples refuse it and create nothing;
    confluent-kafka with `allow.auto.create.topics: false` cannot create it either."""
    from confluent_kafka import Producer
    from kafka import KafkaAdminClient, KafkaProducer

    settings, env = stack_settings
    admin = KafkaAdminClient(**settings.kafka_client_kwargs())

    def exists(topic: str) -> bool:
        return topic in admin.list_topics()

    try:
        photo = str(SAMPLES / "13212.jpg")
        misspelt = f"{settings.topic_images}-imagez"
        shell = {k: v for k, v in os.environ.items() if not k.startswith("AUTOLABEL_")}
        cli = subprocess.run([sys.executable, "-m", "autolabel", "publish", "--quiet", photo], capture_output=True, text=True,
                             env={**shell, **env, "AUTOLABEL_TOPIC_IMAGES": misspelt}, timeout=120, cwd=ROOT)
        assert cli.returncode != 0 and misspelt in cli.stderr and "AUTOLABEL_TOPIC_IMAGES" in cli.stderr, cli.stderr
        for example in ("producer", "producer_confluent"):
            out = _run_example(example, [photo, "13212"], _store_env(stack, settings, AUTOLABEL_TOPIC_IMAGES=misspelt))
            assert out.returncode != 0 and misspelt in out.stderr, out.stderr[-2000:]
        strict = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "allow.auto.create.topics": False,
                           "message.timeout.ms": 3000})
        errors = []
        strict.produce(misspelt, key=b"13212", value=b"{}", on_delivery=lambda err, msg: errors.append(err))
        strict.flush(10)
        assert errors and errors[0] is not None
        assert not exists(misspelt), "refused, and nothing was created"
        # what Tansu does with it when a client allows it (kafka-python ignores allow_auto_create_topics=False)
        plain = KafkaProducer(**settings.kafka_client_kwargs(), allow_auto_create_topics=False)
        meta = plain.send(misspelt, key=b"13212", value=b"{}").get(timeout=30)
        plain.close()
        assert meta.offset == 0 and exists(misspelt)
        assert len(admin.describe_topics([misspelt])[0]["partitions"]) == 4
    finally:
        admin.close()


def test_examples_need_none_of_autolabels_code():
    for name in ("producer", "producer_confluent"):
        source = (EXAMPLES / f"{name}.py").read_text()
        for package in ("services", "autolabel", "deploy", "training", "benchmarks"):
            assert f"from {package}" not in source and f"import {package}" not in source

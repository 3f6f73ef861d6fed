"""A load harness on an embedded stack of its own: the stack, the producer, the metrics.

:class:`LocalStack` (a stack in a temporary folder, the numpy ``trivial`` model unless a
repository is given), :class:`Feeder` (sends ProductImageUploaded events at a rate, resends
what the broker did not acknowledge) and :func:`scrape_metrics` drive ``autolabel bench
soak`` (:mod:`benchmarks.soak`) and the fault-injection tests (``tests/test_faults.py``);
what came out is counted by :mod:`benchmarks.outcomes`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"

# --- the stack -------------------------------------------------------------------------


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

class LocalStack:
    """An embedded stack of its own in ``workdir`` (trivial model unless ``repository``)."""

    def __init__(self, workdir: Path, repository: Path | None = None, model: str = "autolabel",
                 delay_ms: float = 0, max_batch: int = 64, **settings: object) -> None:
        self.workdir = Path(workdir)
        self.repository = repository
        self.model = model
        self.delay_ms = delay_ms
        self.max_batch = max_batch
        self.extra = settings
        self.stack = None
        self.base_env: dict[str, str] = {}

    def start(self) -> "LocalStack":
        from deploy.local.stack import Stack
        from deploy.local.trivial import write_trivial_repository
        from services.settings import Settings

        repo = self.repository
        if repo is None:
            repo = write_trivial_repository(self.workdir / "repo", name=self.model, delay_ms=self.delay_ms, max_batch=self.max_batch)
        self.settings = Settings(state_dir=self.workdir / "state", model_repository=repo, stack_timeout_s=180, **self.extra)
        self.stack = Stack(self.settings)
        from deploy.local.processes import StackError

        for attempt in (1, 2, 3):  # free ports are picked, then bound: another stack may win the race
            try:
                self.stack.up(log=lambda m: None)
                break
            except StackError:
                if attempt == 3:
                    raise
                time.sleep(2)
        lines = (self.settings.state_dir / "stack.env").read_text().splitlines()
        self.base_env = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
        self.base_env.update({"AUTOLABEL_STATE_DIR": str(self.settings.state_dir), "AUTOLABEL_TRITON_MODEL": self.model})
        for key, value in self.extra.items():
            if key.startswith("s3_") or key.startswith("kafka_"):
                v = value.get_secret_value() if hasattr(value, "get_secret_value") else value
                self.base_env[f"AUTOLABEL_{key.upper()}"] = str(v)
        return self

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.stack is not None:
            try:
                self.stack.down(log=lambda m: None)
            finally:
                self.stack = None

    def run_env(self, **extra: str) -> dict[str, str]:
        """Environment for one run: fresh topics, group and label prefix on this stack."""

        suffix = uuid.uuid4().hex[:8]
        env = dict(self.base_env)
        env.update(isolated_env(suffix))
        env.update(extra)
        return env

    @staticmethod
    def settings_for(env: dict[str, str]):  # noqa: ANN205
        from services.settings import Settings

        return Settings(**{k.removeprefix("AUTOLABEL_").lower(): v for k, v in env.items() if k.startswith("AUTOLABEL_")})

    def pid(self, component: str) -> int:
        state = self.stack.read_state()
        return state.components[component].pid

    def kill(self, component: str, sig: int = signal.SIGKILL, timeout: float = 30) -> float:
        """Send ``sig`` to the component's process group; wait until it is gone. Returns when."""
        from deploy.local.processes import pid_alive

        pid = self.pid(component)
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return time.monotonic()

    def restart(self, component: str) -> None:
        self.stack.restart_component(component)


def scrape_metrics(port: int) -> dict[str, float]:
    """The worker's Prometheus metrics as {name: value} (histograms: _sum and _count only)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket") or sample.name.endswith("_created"):
                continue
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


# --- the producer ----------------------------------------------------------------------


def upload_images(settings, paths: list[Path] | None = None) -> list:  # noqa: ANN001
    """Upload the sample photos once; events refer to them (product ids stay distinct)."""
    from services.storage import Storage

    storage = Storage(settings)
    paths = paths or sorted(SAMPLES.glob("*.jpg"))
    return [storage.put_image(p.read_bytes()) for p in paths]


class Feeder:
    """Sends ProductImageUploaded events; a send the broker did not acknowledge is sent again.

    ``acked`` maps product id -> send time of its acknowledged event; ``end_offsets`` is the
    highest acknowledged offset + 1 per partition (the exact high watermark of the run).
    """

    def __init__(self, settings, images: list, prefix: str = "p") -> None:  # noqa: ANN001
        self.settings = settings
        self.images = images
        self.prefix = prefix
        self.producer = self._new_producer()
        self.producers_made = 1
        self.pending: dict[str, tuple[bytes, object]] = {}
        self.acked: dict[str, float] = {}
        self.sent_at: dict[str, float] = {}
        self.resends = 0
        self.end_offsets: dict[int, int] = defaultdict(int)
        self.partition_of: dict[str, int] = {}
        self.count = 0
        self.lock = threading.Lock()

    def _new_producer(self):  # noqa: ANN202
        from kafka import KafkaProducer

        return KafkaProducer(**self.settings.kafka_client_kwargs(), acks="all", linger_ms=5, retries=3,
                             max_block_ms=5000, request_timeout_ms=10000, max_in_flight_requests_per_connection=5)

    def _renew_producer(self) -> None:
        """kafka-python's sender stops for good after some broker errors: start a new one."""
        old, self.producer = self.producer, None
        if old is not None:
            try:
                old.close(timeout=0)
            except Exception:  # noqa: BLE001
                pass

    def product_id(self, n: int) -> str:
        return f"{self.prefix}{n:06d}"

    def event_bytes(self, n: int, image=None) -> tuple[str, bytes]:  # noqa: ANN001
        from services.events import ImageLocation, ProductImageUploaded

        pid = self.product_id(n)
        location = image or self.images[n % len(self.images)]
        event = ProductImageUploaded(product_id=pid, image=ImageLocation(s3=location))
        return pid, event.to_bytes()

    def send_raw(self, pid: str, value: bytes) -> None:
        self.sent_at.setdefault(pid, time.time())
        try:
            if self.producer is None:
                self.producer = self._new_producer()
                self.producers_made += 1
            fut = self.producer.send(self.settings.topic_images, key=pid.encode(), value=value)
        except Exception:  # noqa: BLE001 - broker away (metadata timeout): try again later
            self.pending[pid] = (value, None)
            return
        self.pending[pid] = (value, fut)

    def send(self, n: int, image=None) -> str:  # noqa: ANN001
        pid, value = self.event_bytes(n, image)
        self.send_raw(pid, value)
        self.count += 1
        return pid

    def settle(self, resend: bool = True) -> int:
        """Collect finished sends; resend failed ones. Returns how many are still pending."""
        failed: list[tuple[str, bytes]] = []
        for pid, (value, fut) in list(self.pending.items()):
            if fut is None:
                failed.append((pid, value))
                continue
            if not fut.is_done:
                continue
            if fut.succeeded():
                meta = fut.value
                with self.lock:
                    self.end_offsets[meta.partition] = max(self.end_offsets[meta.partition], meta.offset + 1)
                self.acked[pid] = self.sent_at[pid]
                self.partition_of[pid] = meta.partition
                del self.pending[pid]
            else:
                failed.append((pid, value))
        if failed and resend:
            if any(fut is not None for _, (_, fut) in ((p, self.pending[p]) for p, _ in failed)):
                self._renew_producer()
            for pid, value in failed:
                self.resends += 1
                self.send_raw(pid, value)
        return len(self.pending)

    def run(self, count: int, rate: float, start: int = 0, on_tick=None, stop: threading.Event | None = None) -> None:  # noqa: ANN001
        """Send ``count`` events at ``rate`` per second (0 = as fast as possible)."""
        began = time.monotonic()
        for i in range(count):
            if stop is not None and stop.is_set():
                break
            if rate:
                due = began + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.send(start + i)
            if i % 50 == 0:
                self.settle()
            if on_tick is not None:
                on_tick(i)

    def finish(self, timeout: float = 300) -> None:
        """Until every event is acknowledged (the broker may be restarting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.producer is not None:
                    self.producer.flush(timeout=5)
            except Exception:  # noqa: BLE001
                pass
            if self.settle() == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{len(self.pending)} events never acknowledged by the broker")

    def close(self) -> None:
        if self.producer is not None:
            try:
                self.producer.close(timeout=5)
            except Exception:  # noqa: BLE001
                pass



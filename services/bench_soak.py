"""`autolabel bench soak` / `autolabel bench burst`: load on a real stack, watched over time.

Each run starts its own embedded stack (the numpy ``trivial`` model by default, or a
given repository) in a temporary folder, one ``autolabel worker`` subprocess, and a
producer that sends product-image events at a fixed rate. While it runs it samples:

- the worker's RSS (``/proc/PID/status``) and its Prometheus metrics (``/metrics``:
  ``autolabel_in_flight``, ``autolabel_events_in_total``, ``autolabel_events_out_total``);
- the consumer lag: committed offsets of the worker's group against the end offsets the
  producer saw acknowledged (Tansu's ListOffsets "latest" is not trusted).

At the end it reads the label topic, the dead-letter topic and the label objects in S3
and checks every product id sent: labeled, dead-lettered, or lost. Latency p50/p99 per
time window come from the label events themselves (``latency_ms``, upload to label).

The same pieces (:class:`LocalStack`, :class:`WorkerProcess`, :class:`Feeder`,
:func:`outcomes`) drive the fault-injection tests in ``tests/test_faults.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from deploy.local.processes import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


# --- the stack -------------------------------------------------------------------------


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
        from services.topics import isolated_env

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
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:  # noqa: S310 - loopback
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


# --- outcomes --------------------------------------------------------------------------


@dataclass
class Outcome:
    sent: int
    labeled: int  # distinct products with a label event
    label_events: int
    duplicates: int  # label events beyond the first per product
    dead_lettered: int
    dead_letter_codes: dict[str, int]
    lost: list[str]
    stored: int  # label objects in S3
    stored_missing: list[str]
    wrong_version: list[str]
    rewritten: list[str]  # label objects written again after a label was published
    written_twice: list[str] = field(default_factory=list)  # >1 object version (bucket versioning on)
    latencies_ms: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (labeled_at, latency)

    def summary(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("latencies_ms")
        for key in ("lost", "stored_missing", "wrong_version", "rewritten", "written_twice"):
            d[key] = d[key][:20]
            d[f"{key}_count"] = len(getattr(self, key))
        return d


def enable_versioning(settings) -> None:  # noqa: ANN001
    """Keep every write of an object (to count label writes); only on a stack of one's own."""
    from services.storage import Storage

    Storage(settings).client.put_bucket_versioning(Bucket=settings.s3_bucket, VersioningConfiguration={"Status": "Enabled"})


def object_writes(settings, prefix: str) -> Counter:  # noqa: ANN001
    """Versions per key under ``prefix`` (1 per key when each was written once)."""
    from services.storage import Storage

    client = Storage(settings).client
    writes: Counter = Counter()
    for page in client.get_paginator("list_object_versions").paginate(Bucket=settings.s3_bucket, Prefix=prefix):
        for version in page.get("Versions", []):
            writes[version["Key"]] += 1
    return writes


def outcomes(settings, sent: set[str], read_s3: bool = True, idle_s: float = 2.0, versions: bool = False) -> Outcome:  # noqa: ANN001
    """Labels, dead letters and S3 records of a run, checked against the product ids sent."""
    from services.events import DeadLetter, ProductLabeled
    from services.storage import Storage
    from services.topics import read_topic

    events: dict[str, list[ProductLabeled]] = defaultdict(list)
    for record in read_topic(settings, settings.topic_labels, idle_s=idle_s):
        e = ProductLabeled.model_validate_json(record.value)
        events[e.product_id].append(e)
    dead = [DeadLetter.model_validate_json(r.value) for r in read_topic(settings, settings.topic_dlq, idle_s=idle_s)]
    dead_ids = {d.product_id or d.original_key for d in dead}
    lost = sorted(sent - set(events) - dead_ids)
    stored_missing: list[str] = []
    wrong_version: list[str] = []
    rewritten: list[str] = []
    stored = 0
    if read_s3:
        storage = Storage(settings)
        keys = set(storage.list_keys(settings.s3_labels_prefix))
        stored = len(keys)
        from services.events import label_key

        present = [pid for pid in events if label_key(settings.s3_labels_prefix, pid) in keys]
        stored_missing.extend(sorted(set(events) - set(present)))
        with ThreadPoolExecutor(16) as pool:  # tens of thousands of records: read them concurrently
            records = dict(zip(present, pool.map(storage.get_label, present), strict=True))
        for pid in present:
            evs = events[pid]
            record = records[pid]
            if record is None:
                stored_missing.append(pid)
                continue
            if record.model.version not in {e.model.version for e in evs}:
                wrong_version.append(pid)
            # written once: the stored record predates (or is) the first published label;
            # a second write would carry a later labeled_at
            if record.labeled_at > min(e.labeled_at for e in evs):
                rewritten.append(pid)
    written_twice: list[str] = []
    if read_s3 and versions:
        written_twice = sorted(k for k, n in object_writes(settings, settings.s3_labels_prefix).items() if n > 1)
    n_events = sum(len(v) for v in events.values())
    return Outcome(
        sent=len(sent), labeled=len(set(events) & sent), label_events=n_events,
        duplicates=n_events - len(events), dead_lettered=len(dead),
        dead_letter_codes=dict(Counter(d.code.value for d in dead)), lost=lost, stored=stored,
        stored_missing=sorted(stored_missing), wrong_version=sorted(wrong_version), rewritten=sorted(rewritten),
        written_twice=written_twice,
        latencies_ms=sorted((e.labeled_at.timestamp(), e.latency_ms) for evs in events.values() for e in evs[:1]),
    )


class LagReader:
    """Committed offsets of the worker's group (OffsetFetch; joins no group)."""

    def __init__(self, settings) -> None:  # noqa: ANN001
        self.settings = settings
        self.consumer = None

    def committed(self, partitions: list[int]) -> dict[int, int] | None:
        from kafka import KafkaConsumer, TopicPartition

        try:
            if self.consumer is None:
                self.consumer = KafkaConsumer(**self.settings.kafka_client_kwargs(), group_id=self.settings.consumer_group,
                                              enable_auto_commit=False, session_timeout_ms=4000, request_timeout_ms=5000)
            return {p: self.consumer.committed(TopicPartition(self.settings.topic_images, p)) or 0 for p in partitions}
        except Exception:  # noqa: BLE001 - broker away: unknown now
            self.close()
            return None

    def lag(self, end_offsets: dict[int, int]) -> int | None:
        """Acknowledged-but-uncommitted events (end offsets as the producer saw them)."""
        committed = self.committed(list(range(self.settings.topic_partitions)))
        if committed is None:
            return None
        return sum(max(0, end - committed.get(p, 0)) for p, end in end_offsets.items())

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception:  # noqa: BLE001
                pass
            self.consumer = None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


# --- the runs --------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Every ``every_s``: worker RSS, metrics, lag, acknowledged events."""

    def __init__(self, worker: WorkerProcess, settings, feeder: Feeder, metrics_port: int, every_s: float = 5.0) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.worker, self.settings, self.feeder, self.port, self.every = worker, settings, feeder, metrics_port, every_s
        self.samples: list[dict[str, float | None]] = []
        self.lag = LagReader(settings)
        self.stop_event = threading.Event()
        self.t0 = time.time()

    def sample(self) -> dict[str, float | None]:
        m = scrape_metrics(self.port)
        with self.feeder.lock:
            ends = dict(self.feeder.end_offsets)
        row = {
            "t": round(time.time() - self.t0, 1),
            "rss_mb": self.worker.rss_mb(),
            "in_flight": m.get("autolabel_in_flight"),
            "events_in": m.get("autolabel_events_in_total"),
            "events_out": m.get("autolabel_events_out_total"),
            "dead_letters": m.get("autolabel_dead_letters_total"),
            "retries": m.get("autolabel_transient_retries_total"),
            "sent": float(len(self.feeder.acked)),
            "lag": self.lag.lag(ends),
        }
        self.samples.append(row)
        return row

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            self.sample()


def _windows(latencies: list[tuple[float, float]], t0: float, width_s: float) -> list[dict[str, float]]:
    buckets: dict[int, list[float]] = defaultdict(list)
    for at, lat in latencies:
        buckets[int((at - t0) // width_s)].append(lat)
    return [
        {"t": (k + 1) * width_s, "n": len(v), "rate": len(v) / width_s, "p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99)}
        for k, v in sorted(buckets.items()) if k >= 0
    ]


def run_load(stack: LocalStack, workdir: Path, *, count: int | None, minutes: float | None, rate: float,
             batch_size: int | None = None, sample_s: float = 5.0, window_s: float = 30.0, drain_s: float = 600,
             log=print) -> dict[str, object]:  # noqa: ANN001
    """Send at ``rate`` for ``minutes`` (or ``count`` events), wait for the worker to drain, check."""
    from deploy.local.processes import free_ports
    from services.topics import ensure_topics

    port = free_ports(1)[0]
    extra = {"AUTOLABEL_METRICS_PORT": str(port), "AUTOLABEL_LOG_LEVEL": "warning"}
    if batch_size:
        extra["AUTOLABEL_BATCH_MAX_SIZE"] = str(batch_size)
    env = stack.run_env(**extra)
    settings = stack.settings_for(env)
    ensure_topics(settings)
    images = upload_images(settings)
    worker = WorkerProcess(env, workdir / "worker.log").start()
    feeder = Feeder(settings, images)
    sampler = Sampler(worker, settings, feeder, port, sample_s)
    try:
        # the worker is up once its metrics answer and its group has joined
        deadline = time.monotonic() + 120
        while not scrape_metrics(port) and time.monotonic() < deadline:
            if not worker.alive():
                raise click.ClickException(f"the worker exited: {worker.output()[-2000:]}")
            time.sleep(0.5)
        time.sleep(max(3.0, settings.kafka_session_timeout_s))
        baseline = sampler.sample()
        sampler.t0 = time.time()
        sampler.samples.clear()
        t_start = time.time()
        sampler.start()
        total = count if count is not None else int(rate * 60 * (minutes or 1))
        log(f"sending {total} events at {rate or 'max'}/s ...")
        last = [time.monotonic()]

        def tick(i: int) -> None:
            if time.monotonic() - last[0] > 30:
                last[0] = time.monotonic()
                s = sampler.samples[-1] if sampler.samples else {}
                log(f"  t={time.time() - t_start:.0f}s sent={i} rss={s.get('rss_mb')} in_flight={s.get('in_flight')} lag={s.get('lag')}")

        feeder.run(total, rate, on_tick=tick)
        feeder.finish()
        send_s = time.time() - t_start
        sent = set(feeder.acked)
        log(f"sent {len(sent)} in {send_s:.1f}s ({len(sent) / send_s:.1f}/s); draining ...")
        deadline = time.monotonic() + drain_s
        done_since = None
        while time.monotonic() < deadline:
            s = sampler.samples[-1] if sampler.samples else {}
            if (s.get("events_out") or 0) + (s.get("dead_letters") or 0) >= len(sent):
                done_since = done_since or time.monotonic()
                # and every offset committed (or the lag unreadable for 30 s)
                if s.get("lag") == 0 or time.monotonic() - done_since > 30:
                    break
            if not worker.alive():
                break
            time.sleep(1)
        drain_end = time.time()
        sampler.stop_event.set()
        sampler.join(10)
        sampler.sample()
        result = outcomes(settings, sent)
        alive = worker.alive()
    finally:
        sampler.stop_event.set()
        worker.stop()
        feeder.close()
    rss = [s["rss_mb"] for s in sampler.samples if s["rss_mb"]]
    in_flight = [s["in_flight"] for s in sampler.samples if s["in_flight"] is not None]
    lat = [lat for _, lat in result.latencies_ms]
    windows = _windows(result.latencies_ms, t_start, window_s)
    # RSS growth over the steady part: first full window after warm-up vs the last one
    steady = [s for s in sampler.samples if s["rss_mb"] and s["t"] >= min(60.0, send_s / 5) and s["t"] <= send_s]
    growth = None
    if len(steady) >= 4:
        head = [s["rss_mb"] for s in steady[: max(2, len(steady) // 10)]]
        tail = [s["rss_mb"] for s in steady[-max(2, len(steady) // 10):]]
        growth = (sum(tail) / len(tail)) / (sum(head) / len(head)) - 1
    return {
        "rate_target": rate, "sent": result.sent, "send_s": round(send_s, 1),
        "throughput": round(result.labeled / max(1e-9, (result.latencies_ms[-1][0] if result.latencies_ms else drain_end) - t_start), 1),
        "drain_s": round(drain_end - t_start - send_s, 1),
        "latency_p50_ms": round(percentile(lat, 50), 1), "latency_p99_ms": round(percentile(lat, 99), 1),
        "rss_baseline_mb": baseline.get("rss_mb"), "rss_max_mb": max(rss) if rss else None,
        "rss_growth_steady": None if growth is None else round(growth, 4),
        "in_flight_max": max(in_flight) if in_flight else None,
        "lag_max": max((s["lag"] for s in sampler.samples if s["lag"] is not None), default=None),
        "worker_alive_at_end": alive,
        "outcome": result.summary(), "windows": windows, "samples": sampler.samples,
        "worker_exit": worker.proc.returncode if worker.proc else None,
    }


def _plot(report: dict[str, object], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    windows = report["windows"]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot([w["t"] for w in windows], [w["p50_ms"] for w in windows], label="p50")
    axes[0].plot([w["t"] for w in windows], [w["p99_ms"] for w in windows], label="p99")
    axes[0].set_ylabel("latency (ms)")
    axes[0].legend()
    axes[1].plot([s["t"] for s in samples], [s["rss_mb"] for s in samples])
    axes[1].set_ylabel("worker RSS (MB)")
    axes[1].set_ylim(bottom=0)
    axes[2].plot([s["t"] for s in samples], [s["lag"] for s in samples], label="lag (uncommitted)")
    axes[2].plot([s["t"] for s in samples], [s["in_flight"] for s in samples], label="in flight")
    axes[2].set_ylabel("events")
    axes[2].set_xlabel("seconds")
    axes[2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)


def _print_report(report: dict[str, object]) -> None:
    o = report["outcome"]
    click.echo(
        f"sent {report['sent']}  labeled {o['labeled']}  duplicates {o['duplicates']}  dead-lettered {o['dead_lettered']}  "
        f"lost {o['lost_count']}  S3 records {o['stored']}\n"
        f"throughput {report['throughput']}/s  latency p50 {report['latency_p50_ms']} ms  p99 {report['latency_p99_ms']} ms\n"
        f"worker RSS baseline {report['rss_baseline_mb']} MB  max {report['rss_max_mb']} MB  steady growth {report['rss_growth_steady']}\n"
        f"in flight max {report['in_flight_max']}  lag max {report['lag_max']}  drain {report['drain_s']} s"
    )


def _common(fn):  # noqa: ANN001, ANN202
    options = [
        click.option("--repository", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                     help="Serve this model repository (default: the numpy trivial model)."),
        click.option("--model", default="autolabel", show_default=True, help="Served model name the worker calls."),
        click.option("--batch-size", type=int, default=None, help="AUTOLABEL_BATCH_MAX_SIZE of the worker."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the full report here."),
        click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="PNG of latency, RSS and lag over time."),
        click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Keep the stack's files here."),
        click.option("--broker-storage", type=click.Choice(["s3", "memory"]), default="s3", show_default=True,
                     help="The embedded broker's log: in S3 (durable, as the fault tests) or in memory."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _run(kind: str, repository, model, delay_ms, workdir, json_path, plot, title, broker_storage: str = "s3", **load) -> dict[str, object]:  # noqa: ANN001
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"autolabel-{kind}-"))
    tmp.mkdir(parents=True, exist_ok=True)
    click.echo(f"starting a stack in {tmp} (broker log: {broker_storage}) ...")
    stack = LocalStack(tmp, repository=repository, model=model, delay_ms=delay_ms, stack_broker_storage=broker_storage)
    try:
        stack.start()
        report = run_load(stack, tmp, log=click.echo, **load)
    finally:
        stack.close()
        if not workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    report["kind"] = kind
    report["triton_delay_ms"] = delay_ms
    report["broker_storage"] = broker_storage
    report["command"] = "autolabel " + " ".join(sys.argv[1:])
    _print_report(report)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1, default=str))
    if plot:
        _plot(report, plot, title)
    return report


@click.command("soak")
@click.option("--minutes", type=float, default=10, show_default=True, help="How long to send at --rate.")
@click.option("--rate", type=float, default=None, help="Events per second (required unless --burst).")
@click.option("--burst", type=int, default=None, help="Instead: send this many events at once (capacity, backpressure).")
@click.option("--delay-ms", type=float, default=0, show_default=True,
              help="Trivial model only: sleep per Triton execution (a slow Triton).")
@_common
def soak(minutes: float, rate: float | None, burst: int | None, delay_ms: float, repository, model, batch_size,  # noqa: ANN001
         json_path, plot, workdir, broker_storage) -> None:
    """Fixed-rate load for N minutes: throughput, latency over time, worker RSS, lag, losses.

    \b
    autolabel bench soak --burst 3000                 capacity: a backlog drained at full speed
    autolabel bench soak --minutes 10 --rate 80       a soak at a fixed rate
    autolabel bench soak --burst 5000 --delay-ms 200  backpressure: a burst while Triton is slow
    """
    if burst is None and not rate:
        raise click.UsageError("give --rate (events/s) or --burst N")
    if burst is not None:
        title = f"burst: {burst} events at once" + (f", Triton +{delay_ms:g} ms/execution" if delay_ms else "")
        report = _run("soak", repository, model, delay_ms, workdir, json_path, plot, title, broker_storage,
                      count=burst, minutes=None, rate=0, batch_size=batch_size, drain_s=3600)
    else:
        report = _run("soak", repository, model, delay_ms, workdir, json_path, plot, f"soak: {rate:g}/s for {minutes:g} min",
                      broker_storage, count=None, minutes=minutes, rate=rate, batch_size=batch_size)
    if report["outcome"]["lost_count"]:
        raise SystemExit(1)

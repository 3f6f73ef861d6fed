"""`autolabel bench pipeline`: end to end through Kafka -> worker -> Triton -> Kafka + S3,
side by side with the same model's direct in-process throughput, in one run.

1. builds the served repository (trained heads, or untrained heads on VGG16 when none are
   committed: the throughput is the same) plus the numpy ``trivial`` model at the same size;
2. starts its own embedded stack and uploads the sample photos once;
3. direct: the repository's backbone + head SavedModels in this process on the same
   photos, preprocessed, in batches of the worker's batch size;
4. pipeline: a real ``autolabel worker``; after a warm-up, N events are produced at once and
   the run ends when the last label is published (its ``labeled_at``). Rounds alternate
   with direct runs (direct, pipeline, direct, ...) and each path's runs are pooled;
5. the trivial model, the pipeline's own overhead: a burst as in 4, then a fixed rate
   offered for a while (does one worker keep up with it?).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import click
import numpy as np

from benchmarks.openvino_variants import openvino_result, pipeline_variant
from benchmarks.pipeline_report import markdown, write_doc
from benchmarks.stats import percentile

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int | tuple[int, ...]) -> float:
    """User + system CPU seconds so far of a process (or several), all their threads."""
    if isinstance(pid, tuple):
        return sum(cpu_seconds(p) for p in pid)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (tritonserver's Python-backend stubs)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def run_pipeline(settings, env: dict[str, str], model: str, images: list, n_events: int, batch: int, log_dir: Path, warmup: int,  # noqa: ANN001
                 servers: dict[str, int], concurrency: int = 2, rate: float = 0.0, seconds: float = 0.0) -> dict:
    """A fresh worker on its own topics, warmed up, then measured in one of two ways.

    - burst (``rate`` 0): ``n_events`` produced at once; events/s from the first send to
      the last label published (its ``labeled_at``);
    - sustained: events offered at ``rate`` per second for ``seconds``; the backlog (sent
      minus labeled) is sampled every second. The worker kept up when the backlog grew by
      less than 2 % of the events offered after the first quarter of the window.
    """
    run = _Run(settings, env, model, images, batch, log_dir, concurrency, rate)
    procs = {**servers, "worker": run.worker.pid, "this benchmark (producer)": os.getpid()}
    try:
        run.wait(len(run.send_all("warm", warmup)), 900)
        base = run.labeled()
        cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
        t0 = time.time()
        samples: list[tuple[float, int, int]] = []
        if rate:
            ids, samples = run.offer(seconds)
            t_sent = time.time()
        else:
            ids = run.send_all("p", n_events)
        run.wait(base + len(ids), 3600)
        cpu1 = {name: cpu_seconds(pid) for name, pid in procs.items()}
        events = run.collect(ids)
    finally:
        run.close()
    n = len(ids)
    end = max(e.labeled_at.timestamp() for e in events)
    latencies = [e.latency_ms for e in events]
    cpu = {name: cpu1[name] - cpu0[name] for name in cpu0}  # from the first send to the last label published
    result = {
        "events": n, "seconds": end - t0, "events_per_s": n / (end - t0),
        "latency_p50_ms": percentile(latencies, 50), "latency_p99_ms": percentile(latencies, 99),
        "batch": batch, "concurrency": concurrency, "cpu_s": cpu, "cpu_ms_per_event": {k: v / n * 1000 for k, v in cpu.items()},
        "worker_cpu_ms_per_event": cpu["worker"] / n * 1000,
        "events_per_worker_cpu_s": n / cpu["worker"] if cpu["worker"] else float("inf"),
    }
    if rate:
        result.update({"offered_per_s": rate, "offered_seconds": seconds, "offered_rate_actual": n / (t_sent - t0),
                       "drain_s": end - t_sent, **backlog_summary(samples, rate)})
    return result


class _Run:
    """One measured worker on topics of its own, and the producer that feeds it."""

    def __init__(self, settings, env: dict[str, str], model: str, images: list, batch: int, log_dir: Path,  # noqa: ANN001
                 concurrency: int, rate: float) -> None:
        from kafka import KafkaProducer

        from deploy.local.processes import WorkerProcess, free_ports
        from services.topics import ensure_topics

        suffix = uuid.uuid4().hex[:6]
        (self.metrics_port,) = free_ports(1)
        over = {
            "topic_images": f"bench-images-{suffix}", "topic_labels": f"bench-labels-{suffix}",
            "topic_review": f"bench-review-{suffix}", "topic_dlq": f"bench-dlq-{suffix}",
            "consumer_group": f"bench-{suffix}", "s3_labels_prefix": f"bench-labels-{suffix}/",
            "triton_model": model, "batch_max_size": batch, "worker_concurrency": concurrency, "metrics_port": self.metrics_port,
            "kafka_session_timeout_s": 6,
        }
        self.model, self.images, self.rate = model, images, rate
        self.settings = settings.model_copy(update=over)
        ensure_topics(self.settings)
        worker_env = {**env, **{f"AUTOLABEL_{k.upper()}": str(v) for k, v in over.items()}, "AUTOLABEL_LOG_LEVEL": "warning"}
        self.worker = WorkerProcess(worker_env, log_dir / f"worker-{model}-{suffix}.log", f"bench-{model}").start()
        # linger: a load generator at a few hundred events/s would otherwise send a request
        # every few events and spend more CPU than the worker it measures (same 2 cores)
        self.producer = KafkaProducer(**self.settings.kafka_client_kwargs(), acks="all", linger_ms=100 if rate else 5,
                                      batch_size=256 * 1024)

    def close(self) -> None:
        self.producer.close()
        self.worker.stop()

    def send(self, pid: str, i: int) -> None:
        from services.events import ImageLocation, ProductImageUploaded

        event = ProductImageUploaded(product_id=pid, image=ImageLocation(s3=self.images[i % len(self.images)]))
        self.producer.send(self.settings.topic_images, key=pid.encode(), value=event.to_bytes())

    def send_all(self, prefix: str, count: int) -> set[str]:
        pids = [f"{prefix}{i:06d}" for i in range(count)]
        for i, pid in enumerate(pids):
            self.send(pid, i)
        self.producer.flush()
        return set(pids)

    def labeled(self) -> int:
        from benchmarks.harness import scrape_metrics

        return int(scrape_metrics(self.metrics_port).get("autolabel_events_out_total", 0))

    def wait(self, total: int, timeout: float) -> None:
        """Until the worker has published ``total`` label events: a metrics scrape twice a
        second (a few ms of CPU each, here and in the worker), no broker or S3 time."""
        deadline = time.monotonic() + timeout
        while self.labeled() < total:
            if not self.worker.alive():
                raise click.ClickException(f"the {self.model} worker exited ({self.worker.returncode}); see {self.worker.log_path}")
            if time.monotonic() > deadline:
                raise click.ClickException(f"the {self.model} worker did not label {total} events in {timeout:.0f}s; "
                                           f"see {self.worker.log_path}")
            time.sleep(0.5)

    def collect(self, ids: set[str], timeout: float = 120) -> list:
        """The label events of ``ids``, read from the label topic."""
        from services.topics import read_labels

        deadline = time.monotonic() + timeout
        got: dict[str, object] = {}
        while time.monotonic() < deadline:
            for e in read_labels(self.settings, idle_s=0.5):
                if e.product_id in ids:
                    got.setdefault(e.product_id, e)
            if len(got) == len(ids):
                return list(got.values())
            time.sleep(0.5)
        raise click.ClickException(f"{len(ids) - len(got)} of {len(ids)} labels missing from {self.settings.topic_labels} ({self.model})")

    def offer(self, seconds: float) -> tuple[set[str], list[tuple[float, int, int]]]:
        """``rate`` events/s for ``seconds``; (elapsed s, sent, labeled) once a second."""
        ids: set[str] = set()
        samples: list[tuple[float, int, int]] = []
        base = self.labeled()
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < seconds:
            while len(ids) < int(elapsed * self.rate):
                pid = f"s{len(ids):07d}"
                self.send(pid, len(ids))
                ids.add(pid)
            if elapsed >= len(samples):
                samples.append((elapsed, len(ids), self.labeled() - base))
            time.sleep(0.005)
        self.producer.flush()
        return ids, samples


def backlog_summary(samples: list[tuple[float, int, int]], rate: float) -> dict:
    """Did a worker keep up with ``rate``? ``samples`` are (elapsed s, sent, labeled), one a second.

    It kept up when its backlog (sent - labeled) grew, from a quarter of the window to its
    end, by at most 2 % of the events offered meanwhile: a backlog that only holds the
    batches in flight stays flat, one that falls behind grows by (rate - capacity) a second.
    """
    if len(samples) < 4:
        raise ValueError("need at least 4 samples (one a second)")
    backlog = [sent - done for _, sent, done in samples]
    q, half = len(samples) // 4, len(samples) // 2
    (t_q, _, _), (t_mid, _, l_mid), (t_last, _, l_last) = samples[q], samples[half], samples[-1]
    return {
        "backlog": backlog, "backlog_quarter": backlog[q], "backlog_end": backlog[-1],
        "labeled_per_s_second_half": (l_last - l_mid) / (t_last - t_mid),
        "kept_up": backlog[-1] - backlog[q] <= 0.02 * rate * (t_last - t_q),
    }


def run_direct(repo: Path, photos: list[bytes], size: tuple[int, int], resize: str, n_images: int, batch: int) -> dict[str, float]:
    from services.images import prepare
    from benchmarks.inference_paths import InProcess, run_batched
    from services.settings import TASKS

    arrays = [prepare(p, size, resize) for p in photos]  # type: ignore[arg-type]
    images = np.stack([arrays[i % len(arrays)] for i in range(n_images)])
    model = InProcess(repo, TASKS)
    run_batched(model, images[:batch], batch)  # warm-up
    res, _ = run_batched(model, images, batch)
    return {"images": n_images, "seconds": res.seconds, "images_per_s": n_images / res.seconds,
            "latency_p50_ms": percentile(res.latencies_ms, 50), "latency_p99_ms": percentile(res.latencies_ms, 99), "batch": batch}


def _pooled(runs: list[dict], count: str = "images") -> dict[str, float]:
    """Several runs of one path as one: items and seconds summed, each run's rate kept."""
    items = sum(r[count] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    rate_key = "images_per_s" if count == "images" else "events_per_s"
    return {count: items, "seconds": seconds, rate_key: items / seconds, "runs": [r[rate_key] for r in runs],
            "latency_p50_ms": float(np.median([r["latency_p50_ms"] for r in runs])),
            "latency_p99_ms": max(r["latency_p99_ms"] for r in runs), "batch": runs[0]["batch"],
            **({"cpu_ms_per_event": {k: float(np.mean([r["cpu_ms_per_event"][k] for r in runs])) for k in runs[0]["cpu_ms_per_event"]},
                "concurrency": runs[0]["concurrency"]} if count == "events" else {})}


def _endpoints(settings, state):  # noqa: ANN001, ANN202 - (worker environment, Settings) of the started stack
    env = {
        "AUTOLABEL_KAFKA_BOOTSTRAP_SERVERS": state.components["broker"].endpoint,
        "AUTOLABEL_S3_ENDPOINT_URL": state.components["s3"].endpoint,
        "AUTOLABEL_TRITON_URL": f"127.0.0.1:{state.components['triton'].ports['grpc']}",
        "AUTOLABEL_STATE_DIR": str(settings.state_dir),
    }
    live = settings.model_copy(update={"kafka_bootstrap_servers": env["AUTOLABEL_KAFKA_BOOTSTRAP_SERVERS"],
                                       "s3_endpoint_url": env["AUTOLABEL_S3_ENDPOINT_URL"], "triton_url": env["AUTOLABEL_TRITON_URL"]})
    return env, live


@click.command("pipeline")
@click.option("--events", "n_events", type=click.IntRange(1), default=240, show_default=True, help="Events through the real model, per round.")
@click.option("--rounds", type=click.IntRange(1, 20), default=2, show_default=True,
              help="Pipeline runs of the real model, each followed by a direct run (one direct run comes first).")
@click.option("--trivial-events", type=click.IntRange(1), default=5000, show_default=True, help="Events of the trivial model's burst.")
@click.option("--trivial-rate", type=click.FloatRange(1), default=500, show_default=True, help="Events/s offered to the trivial model.")
@click.option("--trivial-seconds", type=click.FloatRange(4), default=40, show_default=True,
              help="How long the trivial model is offered --trivial-rate.")
@click.option("--batch", type=click.IntRange(1, 256), default=16, show_default=True, help="Worker batch size (AUTOLABEL_BATCH_MAX_SIZE).")
@click.option("--trivial-batch", type=click.IntRange(1, 256), default=128, show_default=True, help="Worker batch size for the trivial model.")
@click.option("--concurrency", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Batches in flight per worker (AUTOLABEL_WORKER_CONCURRENCY).")
@click.option("--broker-storage", type=click.Choice(["memory", "s3"]), default="memory", show_default=True,
              help="Where the embedded broker keeps its log. memory: as a production Kafka, whose log is on its own disks and not"
                   " the worker's S3; s3: Tansu writes every produce request to SeaweedFS on these same cores.")
@click.option("--models-dir", type=click.Path(path_type=Path), default=ROOT / "models", show_default=True)
@click.option("--input-size", type=click.IntRange(32, 1024), default=None, help="Untrained heads only: backbone input size (default 224).")
@click.option("--openvino", "openvino", type=click.Choice(["bf16", "f32", "int8"]), default=None,
              help="Also run each pipeline round with the backbone converted by OpenVINO at this precision (the same heads, "
                   "served beside TensorFlow's: `autolabel_ov_P`), interleaved with TensorFlow's rounds.")
@click.option("--data", default=None, help="--openvino int8: the labeled photos (KIND:PATH) the split's training part calibrates on.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the results as JSON.")
@click.option("--docs", "docs_path", type=click.Path(path_type=Path), default=None, help="Update this Markdown file's pipeline section.")
def pipeline(n_events: int, rounds: int, trivial_events: int, trivial_rate: float, trivial_seconds: float, batch: int, trivial_batch: int,
             concurrency: int, broker_storage: str, models_dir: Path, input_size: int | None, openvino: str | None, data: str | None,
             json_path: Path | None, docs_path: Path | None) -> None:
    """End-to-end events/s and latency next to the same model in-process."""
    from deploy.local.stack import Stack
    from deploy.local.trivial import write_trivial_repository
    from services.settings import Settings
    from services.storage import Storage
    from benchmarks.serving import prepare_models
    from training.export import build_repository
    from training.serving_models import read_models

    work = Path(tempfile.mkdtemp(prefix="autolabel-bench-pipeline-"))
    models, kind = prepare_models(models_dir, work, input_size, click.echo)
    manifest = read_models(models)
    size = tuple(manifest.backbone.input_size)
    repo = build_repository(models, work / "repo", target="cpu")
    write_trivial_repository(repo, name="trivial", size=size)  # type: ignore[arg-type]
    variant = pipeline_variant(models, work, repo, openvino, data, click.echo) if openvino else None
    settings = Settings(state_dir=work / "state", model_repository=repo, stack_timeout_s=900, stack_broker_storage=broker_storage)  # type: ignore[arg-type]
    stack = Stack(settings)
    click.echo(f"starting the embedded stack (broker log: {broker_storage}; loads the TensorFlow models: minutes on 2 cores)")
    state = stack.up(log=click.echo)
    try:
        env, live = _endpoints(settings, state)
        photos = [p.read_bytes() for p in sorted((ROOT / "samples").glob("*.jpg"))]
        storage = Storage(live)
        images = [storage.put_image(p) for p in photos]
        triton_pid = state.components["triton"].pid
        servers = {"s3 (SeaweedFS)": state.components["s3"].pid, "broker (Tansu)": state.components["broker"].pid,
                   "tritonserver": triton_pid, "Triton model stubs": tuple(child_pids(triton_pid))}

        def direct(label: str) -> dict:
            click.echo(f"direct{label}: {n_events} images in-process")
            run = run_direct(repo, photos, size, manifest.resize, n_events, batch)  # type: ignore[arg-type]
            click.echo(f"  {run['images_per_s']:.2f} images/s")
            return run

        directs, piped, piped_ov = [direct("")], [], []
        for r in range(rounds):  # interleaved, so a drift in the machine's speed hits both paths alike
            click.echo(f"pipeline, round {r + 1}/{rounds}: {n_events} events through the worker")
            piped.append(run_pipeline(live, env, "autolabel", images, n_events, batch, work, warmup=2 * batch, servers=servers,
                                      concurrency=concurrency))
            click.echo(f"  {piped[-1]['events_per_s']:.2f} events/s")
            if variant:
                click.echo(f"pipeline with {variant}, round {r + 1}/{rounds}: {n_events} events through the worker")
                piped_ov.append(run_pipeline(live, env, variant, images, n_events, batch, work, warmup=2 * batch, servers=servers,
                                             concurrency=concurrency))
                click.echo(f"  {piped_ov[-1]['events_per_s']:.2f} events/s")
            directs.append(direct(f", round {r + 1}/{rounds}"))
        click.echo(f"pipeline, trivial model: a burst of {trivial_events} events")
        trivial = run_pipeline(live, env, "trivial", images, trivial_events, trivial_batch, work, warmup=2 * trivial_batch, servers=servers,
                               concurrency=concurrency)
        click.echo(f"  {trivial['events_per_s']:.0f} events/s")
        click.echo(f"pipeline, trivial model: {trivial_rate:.0f} events/s offered for {trivial_seconds:.0f} s")
        sustained = run_pipeline(live, env, "trivial", images, 0, trivial_batch, work, warmup=2 * trivial_batch, servers=servers,
                                 concurrency=concurrency, rate=trivial_rate, seconds=trivial_seconds)
        click.echo(f"  {'kept up' if sustained['kept_up'] else 'fell behind'}: backlog {sustained['backlog_quarter']} -> {sustained['backlog_end']}")
    finally:
        stack.down(log=lambda m: None)
    desc = (f"{manifest.backbone.name} ({manifest.backbone.weights} weights) at {size[0]}x{size[1]}, {kind} heads,"
            " ensemble `autolabel` (one backbone pass)")
    direct_all, piped_all = _pooled(directs), _pooled(piped, "events")
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, CPU only",
        "command": "autolabel bench pipeline " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "autolabel bench pipeline",
        "model": desc, "photos": len(photos), "broker_storage": broker_storage,
        "direct": direct_all, "pipeline": piped_all, "pipeline_runs": piped, "trivial": trivial, "sustained": sustained,
        "ratio_pipeline_direct": piped_all["events_per_s"] / direct_all["images_per_s"],
    }
    if variant:
        result.update(openvino_result(openvino, variant, _pooled(piped_ov, "events"), piped_ov, piped_all, click.echo))  # type: ignore[arg-type]
    table = markdown(result)
    click.echo(table)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
    if docs_path:
        write_doc(docs_path, table)
        click.echo(f"updated {docs_path}")
    shutil.rmtree(work, ignore_errors=True)

"""`autolabel bench pipeline`: end to end through Kafka -> worker -> Triton -> Kafka + S3,
side by side with the same model's direct in-process throughput, in one run.

1. builds the served repository (trained heads, or untrained heads on VGG16 when none are
   committed: the throughput is the same) plus the numpy ``trivial`` model at the same size;
2. starts its own embedded stack and uploads the sample photos once;
3. direct: the repository's backbone + head SavedModels in this process on the same
   photos, preprocessed, in batches of the worker's batch size;
4. pipeline: a real ``autolabel worker``; after a warm-up, N events are produced at once and
   the run ends when the last label is published (its ``labeled_at``);
5. the same with the trivial model: the pipeline's own overhead per worker.
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

ROOT = Path(__file__).resolve().parent.parent
DOC_START, DOC_END = "<!-- bench-pipeline:start -->", "<!-- bench-pipeline:end -->"


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_pipeline(settings, env: dict[str, str], model: str, images: list, n_events: int, batch: int, log_dir: Path, warmup: int, servers: dict[str, int], concurrency: int = 2) -> dict[str, float]:  # noqa: ANN001
    """Produce ``n_events`` at once to a warm worker; events/s from first send to last label."""
    from kafka import KafkaProducer

    from deploy.local.processes import WorkerProcess, free_ports
    from services.bench_soak import scrape_metrics
    from services.events import ImageLocation, ProductImageUploaded
    from services.labels import read_labels
    from services.topics import ensure_topics

    suffix = uuid.uuid4().hex[:6]
    (metrics_port,) = free_ports(1)
    over = {
        "topic_images": f"bench-images-{suffix}", "topic_labels": f"bench-labels-{suffix}",
        "topic_review": f"bench-review-{suffix}", "topic_dlq": f"bench-dlq-{suffix}",
        "consumer_group": f"bench-{suffix}", "s3_labels_prefix": f"bench-labels-{suffix}/",
        "triton_model": model, "batch_max_size": batch, "worker_concurrency": concurrency, "metrics_port": metrics_port, "kafka_session_timeout_s": 6,
    }
    run_settings = settings.model_copy(update=over)
    ensure_topics(run_settings)
    worker_env = {**env, **{f"AUTOLABEL_{k.upper()}": str(v) for k, v in over.items()}, "AUTOLABEL_LOG_LEVEL": "warning"}
    worker = WorkerProcess(worker_env, log_dir / f"worker-{model}.log", f"bench-{model}").start()
    producer = KafkaProducer(**run_settings.kafka_client_kwargs(), acks="all", linger_ms=5, batch_size=256 * 1024)

    def send(prefix: str, count: int) -> set[str]:
        ids = set()
        for i in range(count):
            pid = f"{prefix}{i:06d}"
            event = ProductImageUploaded(product_id=pid, image=ImageLocation(s3=images[i % len(images)]))
            producer.send(run_settings.topic_images, key=pid.encode(), value=event.to_bytes())
            ids.add(pid)
        producer.flush()
        return ids

    def wait(count: int, timeout: float) -> None:
        """Until the worker has published ``count`` more label events: a cheap metrics
        scrape, so waiting takes no broker or S3 time from the measured run."""
        deadline = time.monotonic() + timeout
        nonlocal published
        published += count
        while scrape_metrics(metrics_port).get("autolabel_events_out_total", 0) < published:
            if not worker.alive():
                raise click.ClickException(f"the {model} worker exited ({worker.returncode}); see {worker.log_path}")
            if time.monotonic() > deadline:
                raise click.ClickException(f"the {model} worker did not label {count} events in {timeout:.0f}s; see {worker.log_path}")
            time.sleep(0.1)

    def collect(ids: set[str], timeout: float = 120) -> list:
        """The label events of ``ids``, read from the label topic."""
        deadline = time.monotonic() + timeout
        got: dict[str, object] = {}
        while time.monotonic() < deadline:
            for e in read_labels(run_settings, idle_s=0.5):
                if e.product_id in ids:
                    got.setdefault(e.product_id, e)
            if len(got) == len(ids):
                return list(got.values())
            time.sleep(0.5)
        raise click.ClickException(f"{len(ids) - len(got)} of {len(ids)} labels missing from {run_settings.topic_labels} ({model})")

    published = 0  # label events the worker has published so far
    try:
        wait(len(send("warm", warmup)), 900)
        cpu0 = {name: cpu_seconds(pid) for name, pid in {**servers, "worker": worker.pid}.items()}
        t0 = time.time()
        ids = send("p", n_events)
        wait(len(ids), 3600)
        cpu1 = {name: cpu_seconds(pid) for name, pid in {**servers, "worker": worker.pid}.items()}
        events = collect(ids)
    finally:
        producer.close()
        worker.stop()
    end = max(e.labeled_at.timestamp() for e in events)
    latencies = [e.latency_ms for e in events]
    cpu = {name: cpu1[name] - cpu0[name] for name in cpu0}  # from the first send to the last label published
    return {
        "events": n_events, "seconds": end - t0, "events_per_s": n_events / (end - t0),
        "latency_p50_ms": _percentile(latencies, 50), "latency_p99_ms": _percentile(latencies, 99),
        "batch": batch, "concurrency": concurrency, "cpu_s": cpu, "worker_cpu_ms_per_event": cpu["worker"] / n_events * 1000,
        "events_per_worker_cpu_s": n_events / cpu["worker"] if cpu["worker"] else float("inf"),
    }


def run_direct(repo: Path, photos: list[bytes], size: tuple[int, int], resize: str, n_images: int, batch: int) -> dict[str, float]:
    from services.images import prepare
    from training.bench_serving import InProcess, run_batched
    from services.settings import TASKS

    arrays = [prepare(p, size, resize) for p in photos]  # type: ignore[arg-type]
    images = np.stack([arrays[i % len(arrays)] for i in range(n_images)])
    model = InProcess(repo, TASKS)
    run_batched(model, images[:batch], batch)  # warm-up
    res, _ = run_batched(model, images, batch)
    return {"images": n_images, "seconds": res.seconds, "images_per_s": n_images / res.seconds,
            "latency_p50_ms": _percentile(res.latencies_ms, 50), "latency_p99_ms": _percentile(res.latencies_ms, 99), "batch": batch}


def _mean_direct(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The direct path measured before and after the pipeline: their mean, and both rates."""
    images = before["images"] + after["images"]
    seconds = before["seconds"] + after["seconds"]
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds,
            "latency_p50_ms": (before["latency_p50_ms"] + after["latency_p50_ms"]) / 2,
            "latency_p99_ms": max(before["latency_p99_ms"], after["latency_p99_ms"]), "batch": before["batch"],
            "before_images_per_s": before["images_per_s"], "after_images_per_s": after["images_per_s"]}


def markdown(result: dict) -> str:
    d, p, t = result["direct"], result["pipeline"], result["trivial"]
    ratio = p["events_per_s"] / d["images_per_s"]
    lines = [
        DOC_START,
        f"Measured {result['date']} on {result['machine']} with `{result['command']}`.",
        f"Model: {result['model']}. Worker batch size {p['batch']}, {p.get('concurrency', 1)} batches in flight; photos: the {result['photos']} samples in `samples/`.",
        "",
        "| path | items | seconds | items/s | latency p50 ms | latency p99 ms |",
        "|---|---|---|---|---|---|",
        f"| direct: backbone + heads in-process (TensorFlow), run before and after the pipeline | {d['images']} | {d['seconds']:.1f} | {d['images_per_s']:.2f} | {d['latency_p50_ms']:.0f} (batch) | {d['latency_p99_ms']:.0f} (batch) |",
        f"| pipeline: Kafka → worker → Triton → Kafka + S3, same model | {p['events']} | {p['seconds']:.1f} | {p['events_per_s']:.2f} | {p['latency_p50_ms']:.0f} | {p['latency_p99_ms']:.0f} |",
        f"| pipeline with the trivial model (the pipeline's own overhead) | {t['events']} | {t['seconds']:.1f} | {t['events_per_s']:.0f} | {t['latency_p50_ms']:.0f} | {t['latency_p99_ms']:.0f} |",
        "",
        f"- pipeline / direct = **{ratio:.2f}** (target ≥ 0.9); direct ran at {d.get('before_images_per_s', d['images_per_s']):.2f} images/s"
        f" before the pipeline and {d.get('after_images_per_s', d['images_per_s']):.2f} after it",
        f"- trivial-model pipeline: **{t['events_per_s']:.0f} events/s** end to end on this machine (target ≥ 500 per worker);",
        f"  the worker itself spent **{t['worker_cpu_ms_per_event']:.2f} ms CPU per event**, i.e. **{t['events_per_worker_cpu_s']:.0f} events per",
        "  worker CPU-second**. CPU seconds each process used during the trivial-model run (2 cores in all):",
        "  " + ", ".join(f"{name} {sec:.1f}" for name, sec in t["cpu_s"].items()) + f" over {t['seconds']:.1f} s.",
        "- Pipeline latency is upload-to-label for events produced all at once, so it includes queueing behind the",
        "  whole burst; it is a throughput run, not a latency-under-light-load figure.",
        DOC_END,
    ]
    return "\n".join(lines)


def write_doc(path: Path, section: str) -> None:
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if DOC_START in text and DOC_END in text:
        head, rest = text.split(DOC_START, 1)
        text = head + section + rest.split(DOC_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Pipeline\n\n" + section + "\n"
    path.write_text(text)


@click.command("pipeline")
@click.option("--events", "n_events", type=click.IntRange(1), default=96, show_default=True, help="Events through the real model.")
@click.option("--trivial-events", type=click.IntRange(1), default=3000, show_default=True, help="Events through the trivial model.")
@click.option("--batch", type=click.IntRange(1, 256), default=16, show_default=True, help="Worker batch size (AUTOLABEL_BATCH_MAX_SIZE).")
@click.option("--trivial-batch", type=click.IntRange(1, 256), default=128, show_default=True, help="Worker batch size for the trivial model.")
@click.option("--concurrency", type=click.IntRange(1, 16), default=2, show_default=True, help="Batches in flight per worker (AUTOLABEL_WORKER_CONCURRENCY).")
@click.option("--models-dir", type=click.Path(path_type=Path), default=ROOT / "models", show_default=True)
@click.option("--input-size", type=click.IntRange(32, 1024), default=None, help="Untrained heads only: backbone input size (default 224).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the results as JSON.")
@click.option("--docs", "docs_path", type=click.Path(path_type=Path), default=None, help="Update this Markdown file's pipeline section.")
def pipeline(n_events: int, trivial_events: int, batch: int, trivial_batch: int, concurrency: int, models_dir: Path, input_size: int | None, json_path: Path | None, docs_path: Path | None) -> None:
    """End-to-end events/s and latency next to the same model in-process."""
    from deploy.local.stack import Stack
    from deploy.local.trivial import write_trivial_repository
    from services.settings import Settings
    from services.storage import Storage
    from training.bench_serving import prepare_models
    from training.export import build_repository
    from training.serving_models import read_models

    work = Path(tempfile.mkdtemp(prefix="autolabel-bench-pipeline-"))
    models, kind = prepare_models(models_dir, work, input_size, click.echo)
    manifest = read_models(models)
    size = tuple(manifest.backbone.input_size)
    repo = build_repository(models, work / "repo", target="cpu")
    write_trivial_repository(repo, name="trivial", size=size)  # type: ignore[arg-type]
    settings = Settings(state_dir=work / "state", model_repository=repo, stack_timeout_s=900)
    stack = Stack(settings)
    click.echo("starting the embedded stack (loads the TensorFlow models; minutes on 2 cores)")
    state = stack.up(log=click.echo)
    try:
        env = {
            "AUTOLABEL_KAFKA_BOOTSTRAP_SERVERS": state.components["broker"].endpoint,
            "AUTOLABEL_S3_ENDPOINT_URL": state.components["s3"].endpoint,
            "AUTOLABEL_TRITON_URL": f"127.0.0.1:{state.components['triton'].ports['grpc']}",
            "AUTOLABEL_STATE_DIR": str(settings.state_dir),
        }
        live = settings.model_copy(update={"kafka_bootstrap_servers": env["AUTOLABEL_KAFKA_BOOTSTRAP_SERVERS"], "s3_endpoint_url": env["AUTOLABEL_S3_ENDPOINT_URL"], "triton_url": env["AUTOLABEL_TRITON_URL"]})
        photos = [p.read_bytes() for p in sorted((ROOT / "samples").glob("*.jpg"))]
        storage = Storage(live)
        images = [storage.put_image(p) for p in photos]
        click.echo(f"direct: {n_events} images in-process")
        before = run_direct(repo, photos, size, manifest.resize, n_events, batch)  # type: ignore[arg-type]
        click.echo(f"  {before['images_per_s']:.2f} images/s")
        click.echo(f"pipeline: {n_events} events through the worker")
        servers = {"s3 (SeaweedFS)": state.components["s3"].pid, "broker (Tansu)": state.components["broker"].pid, "tritonserver": state.components["triton"].pid}
        piped = run_pipeline(live, env, "autolabel", images, n_events, batch, work, warmup=2 * batch, servers=servers, concurrency=concurrency)
        click.echo(f"  {piped['events_per_s']:.2f} events/s")
        click.echo(f"direct again: {n_events} images in-process (the machine's speed may drift)")
        after = run_direct(repo, photos, size, manifest.resize, n_events, batch)  # type: ignore[arg-type]
        click.echo(f"  {after['images_per_s']:.2f} images/s")
        direct = _mean_direct(before, after)
        click.echo(f"pipeline, trivial model: {trivial_events} events")
        trivial = run_pipeline(live, env, "trivial", images, trivial_events, trivial_batch, work, warmup=2 * trivial_batch, servers=servers, concurrency=concurrency)
        click.echo(f"  {trivial['events_per_s']:.0f} events/s")
    finally:
        stack.down(log=lambda m: None)
    desc = f"{manifest.backbone.name} ({manifest.backbone.weights} weights) at {size[0]}x{size[1]}, {kind} heads, ensemble `autolabel` (one backbone pass)"
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, CPU only",
        "command": "autolabel bench pipeline " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "autolabel bench pipeline",
        "model": desc, "photos": len(photos), "direct": direct, "pipeline": piped, "trivial": trivial,
        "ratio_pipeline_direct": piped["events_per_s"] / direct["images_per_s"],
    }
    table = markdown(result)
    click.echo(table)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
    if docs_path:
        write_doc(docs_path, table)
        click.echo(f"updated {docs_path}")
    shutil.rmtree(work, ignore_errors=True)

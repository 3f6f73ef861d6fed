"""`autolabel bench soak`: load on a real stack, watched over time (`--burst N`: a backlog).

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

The stack, producer and outcome counting (:mod:`benchmarks.harness`,
:mod:`benchmarks.outcomes`) also drive the fault-injection tests in ``tests/test_faults.py``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import click

from benchmarks.harness import Feeder, LocalStack, scrape_metrics, upload_images
from benchmarks.outcomes import LagReader, outcomes
from benchmarks.stats import percentile
from deploy.local.processes import WorkerProcess

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
        _wait_started(worker, port, settings.kafka_session_timeout_s)
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
        _drain(worker, sampler, len(sent), drain_s)
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
    growth = _rss_growth(sampler.samples, send_s)
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


def _wait_started(worker: WorkerProcess, port: int, session_timeout_s: float) -> None:
    """The worker is up once its metrics answer and its group has joined."""
    deadline = time.monotonic() + 120
    while not scrape_metrics(port) and time.monotonic() < deadline:
        if not worker.alive():
            raise click.ClickException(f"the worker exited: {worker.output()[-2000:]}")
        time.sleep(0.5)
    time.sleep(max(3.0, session_timeout_s))


def _drain(worker: WorkerProcess, sampler: Sampler, sent: int, drain_s: float) -> None:
    """Until every event sent came out (labeled or dead-lettered) and every offset is committed
    (or the lag unreadable for 30 s), the worker died, or ``drain_s`` passed."""
    deadline = time.monotonic() + drain_s
    done_since = None
    while time.monotonic() < deadline:
        s = sampler.samples[-1] if sampler.samples else {}
        if (s.get("events_out") or 0) + (s.get("dead_letters") or 0) >= sent:
            done_since = done_since or time.monotonic()
            if s.get("lag") == 0 or time.monotonic() - done_since > 30:
                return
        if not worker.alive():
            return
        time.sleep(1)


def _rss_growth(samples: list[dict], send_s: float) -> float | None:
    """RSS growth over the steady part: the first full window after warm-up vs the last one."""
    steady = [s for s in samples if s["rss_mb"] and s["t"] >= min(60.0, send_s / 5) and s["t"] <= send_s]
    if len(steady) < 4:
        return None
    head = [s["rss_mb"] for s in steady[: max(2, len(steady) // 10)]]
    tail = [s["rss_mb"] for s in steady[-max(2, len(steady) // 10):]]
    return (sum(tail) / len(tail)) / (sum(head) / len(head)) - 1


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


def _run(kind: str, repository, model, delay_ms, workdir, json_path, plot, title, broker_storage: str = "s3", **load) -> dict[str, object]:  # noqa: ANN001, ANN003
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
def soak(minutes: float, rate: float | None, burst: int | None, delay_ms: float, repository: Path | None, model: str,
         batch_size: int | None, json_path: Path | None, plot: Path | None, workdir: Path | None, broker_storage: str) -> None:
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

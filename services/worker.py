"""The Faust worker: consume -> pipeline -> publish + store -> ack (commit). At-least-once.

An event's offset is acknowledged only after its label event is on the label topic(s)
and its record is in S3, or its dead letter is on the DLQ topic (and its original, when
too long to embed, in S3). Faust commits acked offsets; a SIGKILL at any point means the
unacknowledged events are consumed again, and the label record in S3 is rewritten only
if its model version changed. The one exception: a record whose dead letter the broker
refuses too is logged, counted and acknowledged, so that it cannot stop its partition.

Each batch is announced by an in-flight marker in S3 before it is handled and the marker
cleared once it is acknowledged (:mod:`services.attempts`): a record that kills the
process is found by the next worker, retried alone, and dead-lettered after
``max_attempts`` deaths.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, TypeVar

import click
import faust
from faust.sensors import Monitor
from faust.types import TP

from services import observability as obs
from services.attempts import AttemptLedger, Gate
from services.drift import DriftMonitor, load_reference
from services.events import RawMessage
from services.endpoints import require_kafka, require_s3
from services.inference import TritonLabeler
from services.output import Output, Producer
from services.pipeline import Pipeline
from services.retry import Retry
from services.settings import Settings, load_settings
from services.storage import LabelStore

E = TypeVar("E")  # a consumed event (Faust's, or a test's)


def _broker_credentials(settings: Settings):  # noqa: ANN202
    proto = settings.kafka_security_protocol.value
    if proto == "PLAINTEXT":
        return None
    import ssl

    ssl_context = None
    if proto in {"SSL", "SASL_SSL"}:
        ssl_context = ssl.create_default_context(cafile=settings.kafka_ca_path)
    if proto.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context,
        )
    return faust.SSLCredentials(ssl_context)


def raw_message(event: Any) -> RawMessage:  # a Faust event
    m = event.message
    return RawMessage(m.topic, m.partition, m.offset, m.key, m.value or b"")


class Batches:
    """One worker's handling of consumed batches: announce (in-flight marker), label
    (:class:`Pipeline`), output (:class:`Output`), clear the marker, and only then
    acknowledge. Records a worker process died handling (suspects) run alone, with nothing
    else in flight, and are dead-lettered once they have had their attempts."""

    def __init__(self, settings: Settings, pipeline: Pipeline, output: Output, ledger: AttemptLedger, retry: Retry) -> None:
        self.settings, self.pipeline, self.output, self.ledger, self.retry = settings, pipeline, output, ledger, retry
        self.gate = Gate()

    @classmethod
    def create(cls, settings: Settings, producer: Producer, committed: Callable[[int], int | None]) -> Batches:
        """The worker's: S3, Triton and the broker's producer, one retry policy for all."""
        store = LabelStore(settings)
        retry = Retry(settings)
        ledger = AttemptLedger(store, settings.consumer_group, settings.topic_images, settings.worker_name, committed)
        reference = load_reference(settings.drift_reference) if settings.drift_reference else None
        output = Output(producer, store, retry, settings, DriftMonitor(reference, settings.drift_window))
        return cls(settings, Pipeline(settings, store, TritonLabeler(settings), retry), output, ledger, retry)

    async def consume(self, batches: AsyncIterable[list[E]], ack: Callable[[E], Awaitable[object]],
                      to_message: Callable[[E], RawMessage] = raw_message) -> None:
        """Handle each batch, then acknowledge its events: only once its outcomes are out."""
        async for events in batches:
            obs.EVENTS_IN.inc(len(events))
            obs.IN_FLIGHT.inc(len(events))
            try:
                await self.handle([to_message(e) for e in events])
            finally:
                obs.IN_FLIGHT.dec(len(events))
            for e in events:  # only now: the offsets may be committed
                await ack(e)

    async def handle(self, messages: list[RawMessage]) -> None:
        if self.ledger.stale:
            await self.retry.forever("attempts", self.ledger.load)
        failed = [self.ledger.failed_before(m) for m in messages]
        if not any(failed):
            async with self.gate.shared():
                await self._label(messages, failed)
            return
        async with self.gate.exclusive():  # suspects: nothing else in flight meanwhile, each one alone
            ordinary = [m for m, n in zip(messages, failed, strict=True) if not n]
            if ordinary:
                await self._label(ordinary, [0] * len(ordinary))
            for msg, n in zip(messages, failed, strict=True):
                if n:
                    await self._suspect(msg, n)

    async def _label(self, batch: list[RawMessage], failed: list[int]) -> None:
        """Announce the batch (in-flight marker), label it, publish and store, then clear the marker."""
        key = await self.retry.forever("attempts", lambda: self.ledger.begin(list(zip(batch, failed, strict=True))))
        for msg, n in zip(batch, failed, strict=True):
            if n:
                self.retry.attempts[msg.ref] = n  # raised failures add to the process deaths
        outcomes = await self.pipeline.process(batch)
        await self.output.emit(list(zip(batch, outcomes, strict=True)))
        await self.retry.forever("attempts", lambda: self.ledger.end(key, batch))

    async def _suspect(self, msg: RawMessage, failed: int) -> None:
        """A record a worker process died handling: alone, or dead-lettered once it has had its attempts."""
        if failed >= self.settings.max_attempts:
            await self.output.emit([(msg, self.pipeline.crashed(msg, failed))])
            await self.retry.forever("attempts", lambda: self.ledger.end(None, [msg]))
        else:
            self.retry.log.warning("suspect_retried_alone", partition=msg.partition, offset=msg.offset, failed_attempts=failed)
            await self._label([msg], [failed])


class _QuietMonitor(Monitor):
    """Faust's monitor without its per-message bookkeeping: nothing reads those in-memory
    stats here (Faust's web view is off); the worker's Prometheus metrics
    (:mod:`services.observability`) count what matters. Saves a few µs per event."""

    def on_message_in(self, tp, offset, message) -> None:  # noqa: ANN001
        return None

    def on_stream_event_in(self, tp, offset, stream, event) -> None:  # noqa: ANN001
        return None

    def on_stream_event_out(self, tp, offset, stream, event, state=None) -> None:  # noqa: ANN001
        return None

    def on_message_out(self, tp, offset, message) -> None:  # noqa: ANN001
        return None

    def on_send_initiated(self, producer, topic, message, keysize, valsize) -> None:  # noqa: ANN001
        return None

    def on_send_completed(self, producer, state, metadata) -> None:  # noqa: ANN001
        return None


EXIT_CRASHED = 1  # an agent crashed, or the stop overran shutdown_timeout_s: a supervisor should restart it


class _Stopper:
    """Bounds the worker's stop. Once a stop begins (SIGTERM/SIGINT, or an agent crash), a
    daemon thread ends the process after ``shutdown_timeout_s`` whatever the event loop is
    doing (Faust waits for every consumed event to be acknowledged, which may never happen:
    a batch stuck behind an outage, or one whose agent crashed)."""

    def __init__(self) -> None:
        self.timeout_s = 20.0
        self.exit_code = 0
        self.timer: threading.Timer | None = None

    def arm(self, reason: str) -> None:
        if self.timer is None:
            obs.get_logger().info("worker_stopping", reason=reason, timeout_s=self.timeout_s)
            self.timer = threading.Timer(self.timeout_s, self._expire, args=(reason,))
            self.timer.daemon = True
            self.timer.start()

    def _expire(self, reason: str) -> None:
        obs.get_logger().error("shutdown_timeout", reason=reason, timeout_s=self.timeout_s,
                               detail="batches still in flight are not committed; they are consumed again")
        sys.stderr.flush()
        os._exit(EXIT_CRASHED)


STOPPER = _Stopper()


async def _crashed(agent, exc: BaseException) -> None:  # noqa: ANN001
    """An agent (or the start-up task) crashed: it would leave its events unacknowledged and
    the worker idling forever. Stop the whole process, non-zero, so its supervisor restarts it."""
    obs.get_logger().critical("agent_crashed", agent=getattr(agent, "name", None), error=repr(exc)[:500],
                              exc_info=exc, detail="stopping the worker (exit 1) for its supervisor to restart")
    STOPPER.exit_code = EXIT_CRASHED
    STOPPER.arm("agent_crashed")
    os.kill(os.getpid(), signal.SIGTERM)  # the same stop as an operator's, bounded by the timer


class _Worker(faust.Worker):
    def _schedule_shutdown(self, signal: signal.Signals) -> None:  # mode's hook for SIGTERM/SIGINT
        STOPPER.arm(signal.name)
        super()._schedule_shutdown(signal)


def create_app(settings: Settings) -> faust.App:
    servers = ";".join(f"kafka://{s.strip()}" for s in settings.kafka_bootstrap_servers.split(","))
    datadir = settings.state_dir / "faust" / settings.worker_name
    datadir.parent.mkdir(parents=True, exist_ok=True)
    buffered = max(64, settings.batch_max_size * settings.worker_concurrency * 2)  # events Faust holds at most
    app = faust.App(
        settings.consumer_group,
        broker=servers,
        broker_credentials=_broker_credentials(settings),
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=False,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.kafka_session_timeout_s / 5),
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=False,
        stream_buffer_maxsize=buffered,
        broker_max_poll_records=buffered,
        autodiscover=False,
        monitor=_QuietMonitor(),
    )
    images = app.topic(settings.topic_images, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    runtime: dict[str, Batches] = {}

    @app.task
    async def start() -> None:
        try:
            obs.quiet_libraries(settings.log_level)  # after Faust configured logging
            runtime["batches"] = Batches.create(settings, app.producer, lambda partition: app.consumer._committed_offset.get(  # noqa: SLF001
                TP(settings.topic_images, partition)))  # known for the partitions assigned here (Faust seeks to them)
            obs.start_metrics_server(settings.metrics_port)
            obs.get_logger(worker=settings.worker_name).info("worker_started", group=settings.consumer_group, topic=settings.topic_images)
        except Exception as exc:  # noqa: BLE001 - the worker cannot run: stop, non-zero
            await _crashed(None, exc)

    @app.on_partitions_assigned.connect
    async def _assigned(app, assigned, **kwargs) -> None:  # noqa: ANN001, ANN003, ARG001
        if "batches" in runtime:
            runtime["batches"].ledger.stale = True  # markers left by a worker that had these partitions: read them again

    @app.on_before_shutdown.connect
    async def _closing(app, **kwargs) -> None:  # noqa: ANN001, ANN003, ARG001 - after the consumer stopped
        if "batches" in runtime:
            try:
                await asyncio.wait_for(runtime["batches"].pipeline.close(), timeout=5)
            except Exception as exc:  # noqa: BLE001 - stopping anyway
                obs.get_logger().warning("close_failed", error=repr(exc)[:300])

    # offsets are committed only up to the first unacknowledged one (Faust tracks gaps),
    # so batches finishing out of order cannot commit an event that was not labeled
    @app.agent(images, concurrency=settings.worker_concurrency)
    async def label(stream):  # noqa: ANN001, ANN202
        while "batches" not in runtime:
            await asyncio.sleep(0.05)
        within = settings.batch_max_ms / 1000 if settings.batch_max_ms else 0.001
        try:
            await runtime["batches"].consume(stream.noack_take(settings.batch_max_size, within=within), stream.ack)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # stop the process rather than leave this actor dead
            await _crashed(label, exc)
            raise

    return app


def _tune_gc() -> None:
    """Fewer garbage collections: the worker makes many short-lived objects per event
    (events, futures, pydantic models) and Python's default gen-0 threshold (700) ran a
    collection every few events, ~0.1 ms CPU per event here. What exists at start-up
    (modules, Faust, gRPC) is frozen out of every later scan."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def run_worker(settings: Settings) -> int:
    """Run until stopped; the exit code (0 after a clean stop, :data:`EXIT_CRASHED` after a crash)."""
    obs.configure_logging(settings.log_level)
    STOPPER.timeout_s = settings.shutdown_timeout_s
    if settings.event_loop == "uvloop":
        import mode.loop

        try:
            mode.loop.use("uvloop")  # before Faust creates its loop
        except ImportError:
            obs.get_logger().warning("uvloop_missing", using="asyncio", fix="pip install uvloop")
    app = create_app(settings)
    _tune_gc()
    # Faust's own chatter (banners, assignment tables) only from warnings up
    faust_level = "DEBUG" if settings.log_level == "debug" else "WARNING"
    worker = _Worker(app, loglevel=faust_level, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return max(code, STOPPER.exit_code)


@click.command("worker")
@click.option("--batch-size", type=click.IntRange(1, 256), default=None, help="Override AUTOLABEL_BATCH_MAX_SIZE.")
@click.option("--metrics-port", type=int, default=None, help="Override AUTOLABEL_METRICS_PORT (0 = off).")
def worker_command(batch_size: int | None, metrics_port: int | None) -> None:
    """Run one labeling worker until SIGTERM/SIGINT (graceful within AUTOLABEL_SHUTDOWN_TIMEOUT_S:
    in-flight work is not committed). Exits non-zero when an agent crashed or the stop overran."""
    overrides: dict[str, object] = {}
    if batch_size is not None:
        overrides["batch_max_size"] = batch_size
    if metrics_port is not None:
        overrides["metrics_port"] = metrics_port
    settings = load_settings(**overrides)
    # once, at start: no broker or S3 -> one line naming the endpoint and the setting, exit 1 (its
    # supervisor restarts it), not Faust's bootstrap traceback; once running, the clients retry
    require_kafka(settings)
    require_s3(settings)
    started = time.monotonic()
    code = run_worker(settings)
    obs.get_logger().info("worker_stopped", ran_s=round(time.monotonic() - started, 1), exit_code=code)
    sys.exit(code)

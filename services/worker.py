"""The Faust worker: consume -> pipeline -> publish + store -> ack (commit). At-least-once.

An event's offset is acknowledged only after its label event is on the label topic(s)
and its record is in S3, or its dead letter is on the DLQ topic. Faust commits acked
offsets; a SIGKILL at any point means the unacknowledged events are consumed again, and
the label record in S3 is rewritten only if its model version changed.
"""

from __future__ import annotations

import asyncio
import gc
import time

import click
import faust
from faust.sensors import Monitor

from services import observability as obs
from services.events import DeadLetter, ProductLabeled
from services.inference import TritonLabeler
from services.pipeline import Pipeline, RawMessage
from services.settings import Settings, load_settings
from services.storage import LabelStore, TransientError


def _broker_credentials(settings: Settings):  # noqa: ANN202
    proto = settings.kafka_security_protocol.value
    if proto == "PLAINTEXT":
        return None
    import ssl

    ssl_context = None
    if proto in {"SSL", "SASL_SSL"}:
        ssl_context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    if proto.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context,
        )
    return faust.SSLCredentials(ssl_context)


class Output:
    """Where outcomes go: label record to S3, then label (and review) events; dead letters to the DLQ.

    Every step retries transient failures (broker or S3 down) forever with backoff; the
    caller acknowledges the event only after :meth:`emit` returned.
    """

    def __init__(self, app: faust.App, settings: Settings, pipeline: Pipeline, store: LabelStore) -> None:
        self.app, self.settings, self.pipeline, self.store = app, settings, pipeline, store
        self.log_each = settings.log_level in {"debug", "info"}  # one line per label event, or none at all

    async def _publish(self, stage: str, messages: list[tuple[str, str | None, bytes]]) -> None:
        """Send ``(topic, key, value)`` messages, then wait for every acknowledgement at once.

        Broker trouble (timeout, connection, any aiokafka error) retries the messages not
        acknowledged yet, with backoff, forever; those may reach the topic twice
        (at-least-once). Anything else propagates.
        """
        pending = messages

        async def attempt() -> None:
            nonlocal pending
            try:
                futures = [await self.app.producer.send(topic, key.encode() if key else None, value, partition=None, timestamp=None, headers=None)
                           for topic, key, value in pending]
                results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout=30)
            except Exception as exc:
                raise self._broker_trouble(exc) from exc
            failed = [(m, r) for m, r in zip(pending, results, strict=True) if isinstance(r, BaseException)]
            if failed:
                pending = [m for m, _ in failed]
                raise self._broker_trouble(failed[0][1]) from failed[0][1]  # type: ignore[arg-type]

        await self.pipeline.retry_transient(stage, attempt)

    @staticmethod
    def _broker_trouble(exc: BaseException) -> BaseException:
        if isinstance(exc, (TimeoutError, OSError)) or exc.__class__.__module__.startswith(("aiokafka", "kafka")):
            return TransientError(f"publish: {exc!r}")
        return exc

    async def emit(self, outcomes: list[ProductLabeled | DeadLetter]) -> None:
        """Store the label records, then publish label, review and dead-letter events."""
        s = self.settings
        labeled = [(o, o.to_bytes()) for o in outcomes if isinstance(o, ProductLabeled)]  # one body for S3 and Kafka
        if labeled:
            await self.pipeline.retry_transient("store", lambda: self.store.put_labels(labeled))
        messages = [(s.topic_dlq, o.original_key, o.to_bytes()) for o in outcomes if isinstance(o, DeadLetter)]
        for o, body in labeled:
            messages.append((s.topic_labels, o.product_id, body))
            if o.needs_review:
                messages.append((s.topic_review, o.product_id, body))
        await self._publish("publish", messages)
        for o, _ in labeled:
            obs.E2E_LATENCY.observe(o.latency_ms / 1000)
        obs.EVENTS_OUT.inc(len(labeled))
        obs.REVIEW_OUT.inc(sum(o.needs_review for o, _ in labeled))
        if self.log_each:
            for o, _ in labeled:
                obs.get_logger(product_id=o.product_id, event_id=o.source_event_id).info(
                    "labeled", needs_review=o.needs_review, latency_ms=round(o.latency_ms, 1),
                    **{t: lab.label for t, lab in o.labels.items()},
                )


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
    runtime: dict[str, object] = {}

    @app.task
    async def start() -> None:
        obs.quiet_libraries(settings.log_level)  # after Faust configured logging
        store = LabelStore(settings)
        pipeline = Pipeline(settings, store, TritonLabeler(settings))
        runtime["pipeline"] = pipeline
        runtime["output"] = Output(app, settings, pipeline, store)
        obs.start_metrics_server(settings.metrics_port)
        obs.get_logger(worker=settings.worker_name).info("worker_started", group=settings.consumer_group, topic=settings.topic_images)

    # offsets are committed only up to the first unacknowledged one (Faust tracks gaps),
    # so batches finishing out of order cannot commit an event that was not labeled
    @app.agent(images, concurrency=settings.worker_concurrency)
    async def label(stream):  # noqa: ANN001, ANN202
        while "pipeline" not in runtime:
            await asyncio.sleep(0.05)
        pipeline: Pipeline = runtime["pipeline"]  # type: ignore[assignment]
        output: Output = runtime["output"]  # type: ignore[assignment]
        within = settings.batch_max_ms / 1000 if settings.batch_max_ms else 0.001
        async for events in stream.noack_take(settings.batch_max_size, within=within):
            obs.EVENTS_IN.inc(len(events))
            obs.IN_FLIGHT.inc(len(events))
            messages = [
                RawMessage(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value or b"")
                for e in events
            ]
            try:
                outcomes = await pipeline.process(messages)
                await output.emit(outcomes)
            finally:
                obs.IN_FLIGHT.dec(len(events))
            # only now: the offsets may be committed
            for e in events:
                await stream.ack(e)

    return app


def _tune_gc() -> None:
    """Fewer garbage collections: the worker makes many short-lived objects per event
    (events, futures, pydantic models) and Python's default gen-0 threshold (700) ran a
    collection every few events, ~0.1 ms CPU per event here. What exists at start-up
    (modules, Faust, gRPC) is frozen out of every later scan."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def run_worker(settings: Settings) -> None:
    obs.configure_logging(settings.log_level)
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
    worker = faust.Worker(app, loglevel=faust_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


@click.command("worker")
@click.option("--batch-size", type=int, default=None, help="Override AUTOLABEL_BATCH_MAX_SIZE.")
@click.option("--metrics-port", type=int, default=None, help="Override AUTOLABEL_METRICS_PORT (0 = off).")
def worker_command(batch_size: int | None, metrics_port: int | None) -> None:
    """Run one labeling worker until SIGTERM/SIGINT (graceful: in-flight work is not committed)."""
    overrides: dict[str, object] = {}
    if batch_size is not None:
        overrides["batch_max_size"] = batch_size
    if metrics_port is not None:
        overrides["metrics_port"] = metrics_port
    settings = load_settings(**overrides)
    started = time.monotonic()
    run_worker(settings)
    obs.get_logger().info("worker_stopped", ran_s=round(time.monotonic() - started, 1))

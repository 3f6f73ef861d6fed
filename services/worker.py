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
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial

import click
import faust
from faust.sensors import Monitor
from faust.types import TP

from services import observability as obs
from services.attempts import AttemptLedger, Gate
from services.dead_letters import subject_ids
from services.errors import BadInput, classify_publish_error
from services.events import DeadLetter, ProductLabeled
from services.inference import TritonLabeler
from services.pipeline import Outcome, Pipeline, RawMessage
from services.settings import Settings, load_settings
from services.storage import LabelStore


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


PUBLISH_TIMEOUT_S = 30.0  # one round of sends waits this long for its acknowledgements


@dataclass(frozen=True, slots=True)
class _Send:
    """One Kafka record to publish, and the consumed record whose outcome it carries."""

    source: RawMessage
    outcome: Outcome
    topic: str
    key: str | None
    value: bytes


class Output:
    """Where outcomes go: label record to S3, then label (and review) events; dead letters to
    the DLQ, after their originals too long to embed are stored in S3.

    Transient failures (broker or S3 down) are retried forever with backoff; the caller
    acknowledges the records only after :meth:`emit` returned. An output the broker refuses
    for good (too large), or one failing ``max_attempts`` times, is the record's fault: the
    record is dead-lettered instead of labeled; if its dead letter is refused too, it is
    logged, counted (``autolabel_undeliverable_total``) and acknowledged all the same. No
    record can stop the worker, and none is retried forever but for a transient failure.
    """

    def __init__(self, app: faust.App, settings: Settings, pipeline: Pipeline, store: LabelStore) -> None:
        self.app, self.settings, self.pipeline, self.store = app, settings, pipeline, store
        self.log_each = settings.log_level in {"debug", "info"}  # one line per label event, or none at all

    async def emit(self, results: list[tuple[RawMessage, Outcome]]) -> None:
        """Store the label records and long originals, then publish label, review and dead-letter events."""
        s = self.settings
        labeled = [(msg, o, o.to_bytes()) for msg, o in results if isinstance(o, ProductLabeled)]  # one body for S3 and Kafka
        if labeled:
            records = [(o, body) for _, o, body in labeled]
            await self.pipeline.retry_transient("store", lambda: self.store.put_labels(records))
        dead = [(msg, o) for msg, o in results if isinstance(o, DeadLetter)]
        sends = await self._dead_letter_sends(dead) if dead else []
        for msg, o, body in labeled:
            sends.append(_Send(msg, o, s.topic_labels, o.product_id, body))
            if o.needs_review:
                sends.append(_Send(msg, o, s.topic_review, o.product_id, body))
        refused = await self._publish(sends)
        if refused:
            await self._dead_letter_refused(refused)
        gone = {send.source.ref for send, _ in refused}
        self._count_labeled([o for msg, o, _ in labeled if msg.ref not in gone])

    async def _dead_letter_sends(self, letters: list[tuple[RawMessage, DeadLetter]]) -> list[_Send]:
        """The DLQ records of ``letters``, once the originals they only name are in S3."""
        originals = [(d.original_ref.key, msg.value) for msg, d in letters if d.original_ref is not None]
        if originals:
            await self.pipeline.retry_transient("store", lambda: self.store.put_objects(originals))
        return [_Send(msg, d, self.settings.topic_dlq, d.original_key, d.to_bytes()) for msg, d in letters]

    async def _publish(self, sends: list[_Send]) -> list[tuple[_Send, BadInput]]:
        """Publish ``sends``; return those refused for good, at most one per consumed record.

        All are sent at once and acknowledged together. Only when some failed are those sent
        again, each through :meth:`Pipeline.settle`: transient trouble (broker away, timeout)
        is retried forever, and those may reach the topic twice (at-least-once); a record
        the broker refuses for good, or failing ``max_attempts`` times, is the record's fault.
        """
        failed = await self._send_all(sends)
        if not failed:
            return []
        settled = await asyncio.gather(
            *(self.pipeline.settle(send.source, send.outcome, "publish", partial(self._send_one, send)) for send, _ in failed)
        )
        refused: dict[tuple[str, int, int], tuple[_Send, BadInput]] = {}
        for (send, _), result in zip(failed, settled, strict=True):
            if isinstance(result, BadInput):
                refused.setdefault(send.source.ref, (send, result))
        return list(refused.values())

    async def _send_one(self, send: _Send) -> None:
        """Publish one record; raise its failure as :func:`classify_publish_error` decides."""
        failed = await self._send_all([send])
        if failed:
            raise classify_publish_error(failed[0][1])

    async def _send_all(self, sends: list[_Send]) -> list[tuple[_Send, BaseException]]:
        """Send, then wait for every acknowledgement at once; return the sends that failed, with their errors."""
        failed: list[tuple[_Send, BaseException]] = []
        pending: list[tuple[_Send, Awaitable[object]]] = []
        for send in sends:
            key = send.key.encode() if send.key else None
            try:
                pending.append((send, await self.app.producer.send(send.topic, key, send.value, partition=None, timestamp=None, headers=None)))
            except Exception as exc:  # noqa: BLE001 - classified by the caller (e.g. too large for the producer)
                failed.append((send, exc))
        if pending:
            try:
                acks = await asyncio.wait_for(asyncio.gather(*(f for _, f in pending), return_exceptions=True), timeout=PUBLISH_TIMEOUT_S)
            except TimeoutError as exc:
                acks = [exc] * len(pending)
            failed.extend((send, ack) for (send, _), ack in zip(pending, acks, strict=True) if isinstance(ack, BaseException))
        return failed

    async def _dead_letter_refused(self, refused: list[tuple[_Send, BadInput]]) -> None:
        """Records whose output was refused: a label refused becomes the record's dead letter; a
        dead letter refused (or a second one) leaves the record undeliverable."""
        lost = [(send, err) for send, err in refused if isinstance(send.outcome, DeadLetter)]
        letters = [(send.source, self.pipeline.dead_letter(send.source, err.code, str(err), send.outcome))
                   for send, err in refused if isinstance(send.outcome, ProductLabeled)]
        if letters:
            lost += await self._publish(await self._dead_letter_sends(letters))
        for send, err in lost:
            self._undeliverable(send, err)

    def _undeliverable(self, send: _Send, err: BadInput) -> None:
        """Even the record's dead letter cannot be published: say so loudly and let the record go."""
        msg = send.source
        obs.UNDELIVERABLE.labels(code=err.code.value).inc()
        obs.get_logger(worker=self.settings.worker_name, **subject_ids(send.outcome)).error(
            "undeliverable", code=err.code.value, reason=str(err)[:300], topic=msg.topic, partition=msg.partition,
            offset=msg.offset, size=len(msg.value), attempts=self.pipeline.tries(msg),
        )

    def _count_labeled(self, published: list[ProductLabeled]) -> None:
        for o in published:
            obs.E2E_LATENCY.observe(o.latency_ms / 1000)
        obs.EVENTS_OUT.inc(len(published))
        obs.REVIEW_OUT.inc(sum(o.needs_review for o in published))
        if self.log_each:
            for o in published:
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
    def _schedule_shutdown(self, signal: signal.Signals) -> None:  # noqa: ANN001 - mode's hook for SIGTERM/SIGINT
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
    runtime: dict[str, object] = {}

    @app.task
    async def start() -> None:
        try:
            await _start()
        except Exception as exc:  # noqa: BLE001 - the worker cannot run: stop, non-zero
            await _crashed(None, exc)

    async def _start() -> None:
        obs.quiet_libraries(settings.log_level)  # after Faust configured logging
        store = LabelStore(settings)
        pipeline = Pipeline(settings, store, TritonLabeler(settings))
        runtime["pipeline"] = pipeline
        runtime["output"] = Output(app, settings, pipeline, store)
        def committed(partition: int) -> int | None:  # known for the partitions assigned here (Faust seeks to them)
            return app.consumer._committed_offset.get(TP(settings.topic_images, partition))  # noqa: SLF001

        runtime["ledger"] = AttemptLedger(store, settings.consumer_group, settings.topic_images, settings.worker_name, committed)
        runtime["gate"] = Gate()
        obs.start_metrics_server(settings.metrics_port)
        obs.get_logger(worker=settings.worker_name).info("worker_started", group=settings.consumer_group, topic=settings.topic_images)

    @app.on_partitions_assigned.connect
    async def _assigned(app, assigned, **kwargs) -> None:  # noqa: ANN001, ARG001
        ledger = runtime.get("ledger")
        if ledger is not None:
            ledger.stale = True  # markers left by a worker that had these partitions: read them again

    # offsets are committed only up to the first unacknowledged one (Faust tracks gaps),
    # so batches finishing out of order cannot commit an event that was not labeled
    @app.agent(images, concurrency=settings.worker_concurrency)
    async def label(stream):  # noqa: ANN001, ANN202
        while "pipeline" not in runtime:
            await asyncio.sleep(0.05)
        pipeline: Pipeline = runtime["pipeline"]  # type: ignore[assignment]
        output: Output = runtime["output"]  # type: ignore[assignment]
        ledger: AttemptLedger = runtime["ledger"]  # type: ignore[assignment]
        gate: Gate = runtime["gate"]  # type: ignore[assignment]
        within = settings.batch_max_ms / 1000 if settings.batch_max_ms else 0.001

        async def handle(batch: list[RawMessage], failed: list[int]) -> None:
            """Announce the batch (in-flight marker), label it, publish and store, then clear the marker."""
            key = await pipeline.retry_transient("attempts", lambda: ledger.begin(list(zip(batch, failed, strict=True))))
            for msg, n in zip(batch, failed, strict=True):
                if n:
                    pipeline.attempts[msg.ref] = n  # raised failures add to the process deaths
            outcomes = await pipeline.process(batch)
            await output.emit(list(zip(batch, outcomes, strict=True)))
            await pipeline.retry_transient("attempts", lambda: ledger.end(key, batch))

        async def handle_suspect(msg: RawMessage, failed: int) -> None:
            """A record a worker process died handling: alone, or dead-lettered once it has had its attempts."""
            if failed >= settings.max_attempts:
                await output.emit([(msg, pipeline.crashed(msg, failed))])
                await pipeline.retry_transient("attempts", lambda: ledger.end(None, [msg]))
            else:
                pipeline.log.warning("suspect_retried_alone", partition=msg.partition, offset=msg.offset, failed_attempts=failed)
                await handle([msg], [failed])

        try:
            async for events in stream.noack_take(settings.batch_max_size, within=within):
                obs.EVENTS_IN.inc(len(events))
                obs.IN_FLIGHT.inc(len(events))
                messages = [
                    RawMessage(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value or b"")
                    for e in events
                ]
                try:
                    if ledger.stale:
                        await pipeline.retry_transient("attempts", ledger.load)
                    failed = [ledger.failed_before(m) for m in messages]
                    if not any(failed):
                        async with gate.shared():
                            await handle(messages, failed)
                    else:  # suspects: nothing else in flight meanwhile, each one alone
                        async with gate.exclusive():
                            ordinary = [m for m, n in zip(messages, failed, strict=True) if not n]
                            if ordinary:
                                await handle(ordinary, [0] * len(ordinary))
                            for msg, n in zip(messages, failed, strict=True):
                                if n:
                                    await handle_suspect(msg, n)
                finally:
                    obs.IN_FLIGHT.dec(len(events))
                # only now: the offsets may be committed
                for e in events:
                    await stream.ack(e)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - stop the process rather than leave this actor dead
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
@click.option("--batch-size", type=int, default=None, help="Override AUTOLABEL_BATCH_MAX_SIZE.")
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
    started = time.monotonic()
    code = run_worker(settings)
    obs.get_logger().info("worker_stopped", ran_s=round(time.monotonic() - started, 1), exit_code=code)
    sys.exit(code)

"""topic_labels -> the review queue: a consumer group of its own, offsets committed only
after the database commit (a crash in between re-reads records the queue absorbs: it is
idempotent by product and upload).

It reads every label event, not only the flagged ones of topic_review: a product's newer photo
(or relabel) that needs no review must retire the item still waiting for its older one."""

from __future__ import annotations

import threading

from prometheus_client import Counter
from pydantic import ValidationError

from services import observability as obs
from services.events import ProductLabeled, validate_product_id
from services.review.queue import ReviewQueue
from services.settings import Settings


SKIPPED = Counter("autolabel_review_records_skipped_total", "Label records the review queue refused", ["reason"])


def refusal(settings: Settings, key: bytes | None, ev: ProductLabeled) -> str | None:
    """Why a label event may not enter the queue (the upload's rules: a product id of the safe
    alphabet, the record keyed by it, a photo under the bucket's images); None when it may."""
    try:
        validate_product_id(ev.product_id)
    except ValueError:
        return "product_id"
    if key != ev.product_id.encode():
        return "key"
    s3 = ev.image.s3
    if s3 is not None and (s3.bucket != settings.s3_bucket or not s3.key.startswith(settings.s3_images_prefix)):
        return "image_location"
    return None


def read_events(settings: Settings, records: list, log) -> list[ProductLabeled]:  # noqa: ANN001
    """The records' label events that may enter the queue; the others are logged, counted and skipped."""
    events = []
    for r in records:
        try:
            ev = ProductLabeled.model_validate_json(r.value)
        except (ValidationError, ValueError) as exc:
            SKIPPED.labels("unreadable").inc()
            log.warning("skipped an unreadable review record", partition=r.partition, offset=r.offset, error=str(exc)[:300])
            continue
        reason = refusal(settings, r.key, ev)
        if reason is not None:
            SKIPPED.labels(reason).inc()
            log.warning("skipped a label record breaking the upload rules", reason=reason, partition=r.partition, offset=r.offset,
                        product_id=ev.product_id[:128])
            continue
        events.append(ev)
    return events


class ReviewConsumer:
    def __init__(self, settings: Settings, queue: ReviewQueue) -> None:
        self.settings = settings
        self.queue = queue
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.log = obs.get_logger(component="review-consumer")
        self.consumed = 0
        self.error: BaseException | None = None

    def start(self) -> "ReviewConsumer":
        self._thread = threading.Thread(target=self._run, name="review-consumer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _consumer(self):  # noqa: ANN202
        from kafka import KafkaConsumer

        timeout_ms = int(self.settings.kafka_session_timeout_s * 1000)
        return KafkaConsumer(
            self.settings.topic_labels, **self.settings.kafka_client_kwargs(), group_id=self.settings.review_consumer_group,
            enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=timeout_ms,
            heartbeat_interval_ms=max(1000, timeout_ms // 3), max_poll_records=200,
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                consumer = self._consumer()
            except Exception as exc:  # noqa: BLE001 - broker not there yet: try again
                self.log.warning("review consumer cannot connect", error=str(exc)[:300])
                self._stop.wait(2.0)
                continue
            try:
                while not self._stop.is_set():
                    batch = consumer.poll(timeout_ms=500)
                    records = [r for rs in batch.values() for r in rs]
                    if not records:
                        continue
                    events = read_events(self.settings, records, self.log)
                    counts = self.queue.offer(events)  # the database commit ...
                    consumer.commit()  # ... then the offsets
                    self.consumed += len(records)
                    self.log.info("review records consumed", records=len(records), **counts)
            except Exception as exc:  # noqa: BLE001 - the database or broker failed: reconnect, re-read from commits
                self.error = exc
                self.log.warning("review consumer failed; reconnecting", error=f"{type(exc).__name__}: {str(exc)[:300]}")
                self._stop.wait(2.0)
            finally:
                try:
                    consumer.close(autocommit=False)
                except Exception:  # noqa: BLE001
                    pass

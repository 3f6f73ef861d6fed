"""The decision path, shared by the page and the API: a reviewer's decision on the upload
they saw becomes human labels in the S3 record, a ``ProductLabelsReviewed`` event on
``topic_reviewed`` and a logged decision, once (a repeated save answers with the first)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from fastapi import HTTPException
from kafka.errors import KafkaError
from prometheus_client import Counter, Histogram

from services import observability as obs
from services.errors import TransientError
from services.events import HumanLabel, ProductLabelsReviewed
from services.review.queue import AlreadyDecided, Conflict, InProgress, Item, NewerUpload, NotFound, ReviewQueue
from services.review.tables import OutcomeRow
from services.settings import TASKS, Settings
from services.storage import ReviewConflict, Storage

REVIEWS = Counter("autolabel_reviews_total", "Review decisions stored and published", ["outcome"])
CORRECTIONS = Counter("autolabel_review_corrections_total", "Task labels a reviewer changed", ["task"])
REVIEW_LATENCY = Histogram("autolabel_review_decision_seconds", "Handling one review decision (S3 + event + database)")
SAVE_WAIT_S = 15.0  # a second save of one item waits this long for the first one's outcome


class Reviewing:
    """The decision path, shared by the page and the API."""

    def __init__(self, settings: Settings, queue: ReviewQueue, storage: Storage) -> None:
        self.settings = settings
        self.queue = queue
        self.storage = storage
        self._producer = None
        self._lock = threading.Lock()

    def producer(self):  # noqa: ANN201
        with self._lock:
            if self._producer is None:
                from services.publisher import make_producer

                self._producer = make_producer(self.settings)
            return self._producer

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)

    def decide(self, reviewer: str, product_id: str, source_event_id: str, labels: dict[str, str]) -> ProductLabelsReviewed:
        """Store and publish ``reviewer``'s decision on the upload ``source_event_id`` of
        ``product_id``: the one the reviewer saw. 409 (with the current upload) when the queue
        holds a newer one; the same decision saved again answers with the first one's event."""
        started = time.perf_counter()
        unknown_tasks = sorted(set(labels) - set(TASKS))
        if unknown_tasks:
            raise HTTPException(422, f"unknown task(s) {unknown_tasks}; tasks are {list(TASKS)}")
        item = self._begin(reviewer, product_id, source_event_id, labels)
        if isinstance(item, ProductLabelsReviewed):
            return item  # a repeated save: nothing stored or sent again
        try:
            reviewed = self._store_and_publish(item, reviewer, labels)
        except BaseException:
            self.queue.abort_decision(item, reviewer)
            raise
        REVIEW_LATENCY.observe(time.perf_counter() - started)
        obs.get_logger(product_id=product_id, reviewer=reviewer).info("reviewed", corrected=reviewed.corrected,
                                                                      source_event_id=source_event_id)
        return reviewed

    def _begin(self, reviewer: str, product_id: str, source_event_id: str, labels: dict[str, str]) -> Item | ProductLabelsReviewed:
        """The item held for this decision, or the event of the same decision saved before."""
        deadline = time.monotonic() + SAVE_WAIT_S
        while True:
            try:
                return self.queue.begin_decision(product_id, reviewer, source_event_id)
            except NotFound as exc:
                raise HTTPException(404, str(exc)) from None
            except NewerUpload as exc:
                REVIEWS.labels("stale").inc()
                raise HTTPException(409, {"message": str(exc), "current_source_event_id": exc.current_source_event_id}) from None
            except InProgress as exc:  # the same reviewer's other save of it: wait for its outcome
                if time.monotonic() > deadline:
                    raise HTTPException(409, str(exc)) from None
                time.sleep(0.1)
            except AlreadyDecided as exc:
                previous = exc.decision
                if previous is not None and previous.reviewed_json:
                    earlier = ProductLabelsReviewed.model_validate_json(previous.reviewed_json)
                    wanted = {t: labels.get(t, earlier.model_labels[t]) for t in earlier.model_labels}
                    if wanted == earlier.labels:
                        REVIEWS.labels("repeated").inc()
                        return earlier
                raise HTTPException(409, str(exc)) from None
            except Conflict as exc:
                raise HTTPException(409, str(exc)) from None

    def _store_and_publish(self, item: Item, reviewer: str, labels: dict[str, str]) -> ProductLabelsReviewed:
        ev = item.event
        for task, label in labels.items():
            classes = list(ev.labels[task].probabilities)  # type: ignore[index]
            if label not in classes:
                raise HTTPException(422, f"unknown class {label!r} for {task}; the model's classes are {classes}")
        audit = bool(item.audit)
        if audit and set(labels) != set(ev.labels):
            raise HTTPException(422, f"an audit needs every task's label, chosen by you: missing {sorted(set(ev.labels) - set(labels))}")
        now = datetime.now(UTC)
        model_labels = {t: lab.label for t, lab in ev.labels.items()}
        final = {t: labels.get(t, model_labels[t]) for t in model_labels}
        corrected = [t for t in final if final[t] != model_labels[t]]
        human = {t: HumanLabel(label=final[t], reviewer=reviewer, reviewed_at=now, model_label=model_labels[t]) for t in final}
        try:
            self.storage.put_human_labels(ev, human)
        except TransientError as exc:
            raise HTTPException(503, f"the store is unavailable, nothing was recorded; try again ({exc})") from None
        except ReviewConflict as exc:
            self.queue.mark_stale(item)
            REVIEWS.labels("stale").inc()
            raise HTTPException(409, f"{ev.product_id} has a newer photo; this review was not stored ({exc})") from None
        reviewed = ProductLabelsReviewed(
            product_id=ev.product_id, source_event_id=ev.source_event_id, uploaded_at=ev.upload_order()[0],
            image=ev.image, labels=final, model_labels=model_labels, corrected=corrected, model=ev.model,
            reviewer=reviewer, reviewed_at=now, audit=audit,
        )
        try:
            self.producer().send(self.settings.topic_reviewed, key=ev.product_id.encode(), value=reviewed.to_bytes()).get(timeout=30)
        except KafkaError as exc:  # the labels are stored; the item is claimed again: saving again sends the event
            raise HTTPException(503, f"the broker is unavailable; save again to publish the decision ({type(exc).__name__})") from None
        outcomes = [OutcomeRow(kind="audit" if audit else "flagged", product_id=ev.product_id, source_event_id=ev.source_event_id,
                               task=t, model_version=ev.model.version, model_label=model_labels[t], human_label=final[t],
                               status=ev.labels[t].status, reviewer=reviewer, decided_at=now) for t in final]  # type: ignore[index]
        self.queue.complete(item, reviewer, final, len(corrected), now, reviewed.model_dump_json(), outcomes)
        REVIEWS.labels("audited" if audit else "corrected" if corrected else "accepted").inc()
        for t in corrected:
            CORRECTIONS.labels(t).inc()
        return reviewed

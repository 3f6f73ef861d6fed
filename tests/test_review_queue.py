"""The review queue (SQLite file, no server) and the merge of human labels: pure rules."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from services.events import HumanLabel, ImageLocation, ModelInfo, ProductLabeled, S3Location, TaskLabel
from services.review.queue import ReviewQueue
from services.settings import Settings
from services.storage import keep_human_labels


def _event(pid: str, event_id: str = "e1", at: datetime | None = None, version: str = "v1", flagged: bool = True) -> ProductLabeled:
    def t(label, classes, conf) -> TaskLabel:
        probs = {c: (conf if c == label else (1 - conf) / (len(classes) - 1)) for c in classes}
        return TaskLabel(label=label, confidence=conf, probabilities=probs, threshold=0.6, needs_review=conf < 0.6)

    labels = {"style": t("casual", ("casual", "formal", "sports"), 0.4 if flagged else 0.9),
              "gender": t("men", ("men", "women"), 0.9), "season": t("summer", ("spring-fall", "summer", "winter"), 0.8)}
    return ProductLabeled(product_id=pid, source_event_id=event_id, image=ImageLocation(s3=S3Location(bucket="autolabel", key="images/x.jpg")),
                          labels=labels, model=ModelInfo(name="m", version=version, backbone="b", weights_source="w"),
                          needs_review=flagged, latency_ms=1.0, uploaded_at=at or datetime(2026, 1, 1, tzinfo=UTC))


def test_offer_is_idempotent_by_product_and_upload(tmp_path):
    q = ReviewQueue(f"sqlite:///{tmp_path / 'q.db'}")
    assert q.offer([_event("a"), _event("b"), _event("a")]) == {"added": 2, "updated": 0, "ignored": 1}
    assert q.offer([_event("a"), _event("c", flagged=False)])["ignored"] == 2
    assert q.stats().waiting == 2
    later = datetime(2026, 1, 2, tzinfo=UTC)
    assert q.offer([_event("a", "e0", at=datetime(2025, 1, 1, tzinfo=UTC))])["ignored"] == 1  # older upload
    assert q.offer([_event("a", "e2", at=later)])["updated"] == 1  # newer photo
    assert q.get("a").source_event_id == "e2"
    assert q.stats().waiting == 2


def test_two_reviewers_never_hold_the_same_item_and_claims_expire(tmp_path):
    q = ReviewQueue(f"sqlite:///{tmp_path / 'q.db'}", claim_timeout_s=0.5)
    q.offer([_event(f"p{i}") for i in range(5)])
    a = {i.product_id for i in q.claim("alice", 2)}
    b = {i.product_id for i in q.claim("bob", 2)}
    assert len(a) == len(b) == 2 and not a & b
    assert {i.product_id for i in q.claim("alice", 2)} == a  # what alice holds, again
    assert {i.product_id for i in q.claim("carol", 5)} == {"p0", "p1", "p2", "p3", "p4"} - a - b
    time.sleep(0.6)
    assert len(q.claim("carol", 5)) == 5  # the others' claims expired


def test_done_survives_a_new_connection_and_a_relabel_of_the_same_upload(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    q = ReviewQueue(url)
    q.offer([_event("a"), _event("b")])
    item = q.claim_one("a", "alice")
    assert q.complete(item, "alice", {"style": "formal"}, 1, datetime.now(UTC))
    q.close()
    q = ReviewQueue(url)  # a restart
    s = q.stats()
    assert (s.done, s.waiting) == (1, 1)
    assert q.offer([_event("a", version="v2")])["ignored"] == 1  # relabel: stays done
    assert q.offer([_event("a", "e9", at=datetime(2026, 2, 1, tzinfo=UTC))])["updated"] == 1  # new photo: fresh
    assert q.get("a").status == "pending"
    assert q.rate("alice")[0] == 1


def test_a_model_relabel_keeps_human_labels_a_new_upload_does_not():
    human = {"style": HumanLabel(label="formal", reviewer="alice", reviewed_at=datetime.now(UTC), model_label="casual")}
    stored = _event("a").model_copy(update={"human_labels": human})
    relabel = _event("a", version="v2")
    merged = ProductLabeled.model_validate_json(keep_human_labels(relabel, stored, relabel.to_bytes()))
    assert merged.human_labels == human and merged.model.version == "v2"
    new_upload = _event("a", "e2", at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=1), version="v2")
    assert ProductLabeled.model_validate_json(keep_human_labels(new_upload, stored, new_upload.to_bytes())).human_labels is None


def test_reviewer_tokens_parse():
    s = Settings(review_tokens="alice:t1, bob:t2,broken,:t3,carol:")
    assert s.review_reviewers() == {"t1": "alice", "t2": "bob"}


def test_relabel_re_emits_the_same_upload_and_selects_by_version():
    from services.events import supersedes
    from services.review.relabel import upload_again, wanted

    record = _event("a", "e7", at=datetime(2026, 3, 1, 12, tzinfo=UTC), version="v1").model_copy(update={"metadata": {"title": "Shirt"}})
    again = upload_again(record)
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert (again.event_id, again.uploaded_at, again.image, again.metadata) == ("e7", at, record.image, {"title": "Shirt"})
    # labeled again by the same version: no change; by another: it replaces the record
    assert not supersedes(_event("a", "e7", at=again.uploaded_at, version="v1"), record)
    assert supersedes(_event("a", "e7", at=again.uploaded_at, version="v2"), record)
    assert wanted(record, "other-version", "v2") and not wanted(record, "other-version", "v1")
    assert wanted(record, "flagged", None) and not wanted(_event("b", flagged=False), "flagged", None)
    assert wanted(_event("b", flagged=False), "all", None)

"""Blind audit sampling and the live-precision estimator, without servers (the same on the
real stack: tests/test_audit_stack.py).

- the sample is a fixed share of products, by a hash of the product id: the same products
  every time (a relabel, a re-delivery, another worker), about ``rate`` of them;
- only products whose labels skip review are audited, and their label event says so;
- Wilson intervals match known values; precision counts audits of accepted labels only,
  agreement counts decisions on flagged labels only, per task, model version and class.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from autolabel.labels import format_row
from services.audit import Outcome, audit_share, audited, estimates, over_time, wilson
from services.events import ProductLabeled
from test_worker_decisions import Worker, _event


def test_the_sample_is_fixed_by_product_id_and_about_the_rate() -> None:
    ids = [f"product-{i}" for i in range(20_000)]
    picked = [p for p in ids if audited(p, 0.02)]
    assert picked == [p for p in ids if audited(p, 0.02)]  # deterministic
    assert 0.017 < len(picked) / len(ids) < 0.023
    assert not any(audited(p, 0.0) for p in ids[:1000])
    assert all(audited(p, 1.0) for p in ids[:1000])
    # a larger rate audits a superset: raising it keeps the products audited so far
    assert set(picked) <= {p for p in ids if audited(p, 0.05)}
    assert all(0 <= audit_share(p) < 1 for p in ids[:100])


def test_only_labels_that_skip_review_are_audited_and_marked() -> None:
    pids = [f"p{i}" for i in range(8)]
    w = Worker(audit_rate=0.5)
    w.run([_event(p, f"images/{i}.jpg") for i, p in enumerate(pids)])
    labeled = {e.product_id: e for e in map(ProductLabeled.model_validate_json, w.on("labels"))}
    assert {p for p, e in labeled.items() if e.audit} == {p for p in pids if audited(p, 0.5)}
    assert 0 < sum(e.audit for e in labeled.values()) < len(pids)
    assert all(format_row(e).endswith("no (audit)") == e.audit for e in labeled.values())  # `autolabel labels` says so
    assert w.on("review") == []  # audits are not low-confidence labels: the review app queues them from the label topic
    # every label flagged (threshold above every confidence): nothing is audited
    w = Worker(audit_rate=1.0, threshold_style=0.99)
    w.run([_event(p, f"images/{i}.jpg") for i, p in enumerate(pids)])
    flagged = [ProductLabeled.model_validate_json(v) for v in w.on("labels")]
    assert all(e.needs_review and not e.audit for e in flagged)
    # off by default
    w = Worker()
    w.run([_event(p, f"images/{i}.jpg") for i, p in enumerate(pids)])
    assert not any(ProductLabeled.model_validate_json(v).audit for v in w.on("labels"))


def test_older_records_read_as_not_audited_and_an_unsure_one_cannot_be() -> None:
    w = Worker(threshold_style=0.99)
    w.run([_event("p0", "images/0.jpg")])
    data = json.loads(w.on("labels")[0])
    del data["audit"]
    assert ProductLabeled.model_validate(data).audit is False
    with pytest.raises(ValueError, match="only a product whose labels skip review"):
        ProductLabeled.model_validate({**data, "audit": True})


def test_wilson_matches_known_values() -> None:
    lo, hi = wilson(95, 100)
    assert lo == pytest.approx(0.8882, abs=1e-4) and hi == pytest.approx(0.9785, abs=1e-4)
    lo, hi = wilson(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def _o(kind: str, task: str, model: str, human: str, status: str, version: str = "v1", at: datetime | None = None) -> Outcome:
    return Outcome(kind=kind, task=task, model_version=version, model_label=model, human_label=human, status=status,  # type: ignore[arg-type]
                   decided_at=at or datetime(2026, 1, 1, tzinfo=UTC))


def test_precision_counts_blind_audits_of_accepted_labels_only() -> None:
    outcomes = (
        [_o("audit", "style", "casual", "casual", "accepted")] * 8
        + [_o("audit", "style", "casual", "formal", "accepted")] * 2
        + [_o("audit", "style", "formal", "formal", "accepted", version="v2")] * 5
        + [_o("audit", "season", "summer", "winter", "advisory")] * 3  # advisory: not an auto-accepted label
        + [_o("flagged", "style", "sports", "sports", "review")] * 3  # the reviewer saw it: agreement
        + [_o("flagged", "style", "sports", "casual", "review")]
        + [_o("flagged", "gender", "men", "men", "accepted")] * 4  # a flagged item's sure task: neither
    )
    got = {(e.signal, e.task, e.model_version, e.label_class): (e.n, e.agreed) for e in estimates(outcomes)}
    assert got == {
        ("precision", "style", "", ""): (15, 13),
        ("precision", "style", "v1", ""): (10, 8),
        ("precision", "style", "v2", ""): (5, 5),
        ("precision", "style", "", "casual"): (10, 8),
        ("precision", "style", "", "formal"): (5, 5),
        ("agreement", "style", "", ""): (4, 3),
        ("agreement", "style", "v1", ""): (4, 3),
        ("agreement", "style", "", "sports"): (4, 3),
    }
    overall = next(e for e in estimates(outcomes) if e.signal == "precision" and not e.model_version and not e.label_class)
    assert overall.value == pytest.approx(13 / 15) and overall.interval == wilson(13, 15)


def test_over_time_buckets_by_decision_time() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    outcomes = [_o("audit", "gender", "men", "men", "accepted", at=t0 + timedelta(hours=h)) for h in range(48)]
    outcomes.append(_o("audit", "gender", "men", "women", "accepted", at=t0 + timedelta(hours=30)))
    series = over_time(outcomes, timedelta(days=1))
    points = series[("precision", "gender")]
    assert [t for t, _ in points] == [t0, t0 + timedelta(days=1)]
    assert [(e.n, e.agreed) for _, e in points] == [(24, 24), (25, 24)]


def _audit_event(pid: str, version: str) -> ProductLabeled:
    from test_drift import _label

    from services.events import ImageLocation, ModelInfo, S3Location

    labels = {"style": _label(["casual", "formal", "sports"], 0 if version == "v1" else 1, 0.9),
              "gender": _label(["men", "women"], 0, 0.95), "season": _label(["spring-fall", "summer", "winter"], 1, 0.4, threshold=0.3)}
    return ProductLabeled(product_id=pid, source_event_id=f"up-{pid}", image=ImageLocation(s3=S3Location(bucket="autolabel", key="images/x.jpg")),
                          labels=labels, model=ModelInfo(name="m", version=version, backbone="b", weights_source="w"),
                          needs_review=False, latency_ms=1.0, audit=True, uploaded_at=datetime(2026, 1, 1, tzinfo=UTC))


def test_the_queue_keeps_audits_blind_and_scores_a_relabel_against_the_answer_given(tmp_path) -> None:
    """On SQLite, without Kafka: an audit is queued though it needs no review; its decision's outcomes
    feed the estimates; the same upload relabeled by another version is scored against that answer,
    once, without asking again."""
    from services.review.quality import read_outcomes
    from services.review.queue import ReviewQueue
    from services.review.tables import OutcomeRow

    queue = ReviewQueue(f"sqlite:///{tmp_path / 'q.db'}")
    ev = _audit_event("p1", "v1")
    assert queue.offer([ev])["added"] == 1
    (item,) = queue.claim("alice", 5)
    assert item.audit is True
    held = queue.begin_decision("p1", "alice", ev.source_event_id)
    answer = {"style": "casual", "gender": "women", "season": "summer"}
    now = datetime.now(UTC)
    rows = [OutcomeRow(kind="audit", product_id="p1", source_event_id=ev.source_event_id, task=t, model_version="v1",
                       model_label=ev.labels[t].label, human_label=answer[t], status=ev.labels[t].status, reviewer="alice",  # type: ignore[index]
                       decided_at=now) for t in answer]
    assert queue.complete(held, "alice", answer, 1, now, None, rows)
    relabel = _audit_event("p1", "v2")  # v2 says formal: the person said casual
    assert queue.offer([relabel])["scored"] == 1
    assert queue.offer([relabel])["scored"] == 0  # a re-delivery scores nothing twice
    assert queue.claim("alice", 5) == []  # nobody is asked again
    with queue.sessions() as s:
        found = {(e.task, e.model_version): (e.n, e.agreed) for e in estimates(read_outcomes(s)) if e.signal == "precision"
                 and e.model_version}
    assert found == {("style", "v1"): (1, 1), ("style", "v2"): (1, 0), ("gender", "v1"): (1, 0), ("gender", "v2"): (1, 0),
                     ("season", "v1"): (1, 1), ("season", "v2"): (1, 1)}
    queue.close()


def test_the_database_tallies_give_the_same_estimates(tmp_path) -> None:
    """What a scrape computes from GROUP BY counts equals the estimates of the outcomes read one by one."""
    from services.review.quality import read_outcomes, read_tallies
    from services.review.queue import ReviewQueue
    from services.review.tables import OutcomeRow
    from services.audit import estimates_of

    queue = ReviewQueue(f"sqlite:///{tmp_path / 'q.db'}")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [OutcomeRow(kind=kind, product_id=f"p{i}", source_event_id="e", task=task, model_version=f"v{i % 2}",
                       model_label=["casual", "formal"][i % 2], human_label=["casual", "formal", "sports"][i % 3], status=status,
                       reviewer="r", decided_at=t0 + timedelta(minutes=i))
            for i in range(60) for kind, status in (("audit", "accepted"), ("flagged", "review"), ("audit", "advisory"))
            for task in ("style",)]
    with queue.sessions.begin() as s:
        s.add_all(rows)
    with queue.sessions() as s:
        assert estimates_of(read_tallies(s, t0)) == estimates(read_outcomes(s, t0))
        assert estimates_of(read_tallies(s, t0 + timedelta(minutes=30))) == estimates(read_outcomes(s, t0 + timedelta(minutes=30)))
    queue.close()

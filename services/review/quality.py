"""Live quality from the review database: audit outcomes -> precision of auto-accepted labels,
decisions on flagged items -> reviewer agreement (:mod:`services.audit`), over the rolling window
``AUTOLABEL_QUALITY_WINDOW_S``; exported as gauges at each scrape of the review app's /metrics and
read by ``autolabel quality``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import Gauge
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from services.audit import Estimate, Outcome, Tally, estimates_of
from services.events import ProductLabeled
from services.review.tables import CLAIMED, PENDING, SAVING, Item, OutcomeRow
from services.settings import Settings

_LABELS = ["task", "model_version", "class"]
PRECISION = Gauge("autolabel_live_precision", "Share of audited auto-accepted labels a person labeled the same (class: the "
                  "model's predicted class; `all` = every version / class)", _LABELS)
PRECISION_LOWER = Gauge("autolabel_live_precision_lower", "Wilson 95 % lower bound of autolabel_live_precision", _LABELS)
PRECISION_UPPER = Gauge("autolabel_live_precision_upper", "Wilson 95 % upper bound of autolabel_live_precision", _LABELS)
AUDITS = Gauge("autolabel_live_precision_audits", "Audited auto-accepted labels in the window", _LABELS)
AGREEMENT = Gauge("autolabel_reviewer_agreement", "Share of flagged labels reviewers kept as the model said", _LABELS)
AGREEMENT_DECISIONS = Gauge("autolabel_reviewer_agreement_decisions", "Flagged labels decided in the window", _LABELS)
TARGET = Gauge("autolabel_target_precision", "The precision auto-accepted labels are held to (AUTOLABEL_TARGET_PRECISION)")
AUDIT_BACKLOG = Gauge("autolabel_audit_backlog", "Audit items waiting for a person", ["model_version"])
QUALITY_WINDOW = Gauge("autolabel_quality_window_seconds", "The rolling window live precision and agreement cover")


def read_outcomes(s: Session, since: datetime | None = None) -> list[Outcome]:
    query = select(OutcomeRow).order_by(OutcomeRow.decided_at, OutcomeRow.id)
    if since is not None:
        query = query.where(OutcomeRow.decided_at >= since)
    return [Outcome(kind=r.kind, task=r.task, model_version=r.model_version, model_label=r.model_label,  # type: ignore[arg-type]
                    human_label=r.human_label, status=r.status, decided_at=r.decided_at) for r in s.scalars(query)]


def read_tallies(s: Session, since: datetime) -> list[Tally]:
    """The window's outcomes grouped in the database (what a scrape reads)."""
    agreed = func.sum(case((OutcomeRow.model_label == OutcomeRow.human_label, 1), else_=0))
    cols = (OutcomeRow.kind, OutcomeRow.task, OutcomeRow.model_version, OutcomeRow.model_label, OutcomeRow.status)
    rows = s.execute(select(*cols, func.count(), agreed).where(OutcomeRow.decided_at >= since).group_by(*cols)).all()
    return [Tally(*r[:5], int(r[5]), int(r[6] or 0)) for r in rows]


def audit_backlog(s: Session) -> dict[str, int]:
    """Audit items waiting (pending or claimed), per model version."""
    rows = s.execute(select(Item.model_version, func.count()).where(Item.audit.is_(True), Item.status.in_((PENDING, CLAIMED, SAVING)))
                     .group_by(Item.model_version)).all()
    return {v: int(n) for v, n in rows}


def window_start(settings: Settings) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=settings.quality_window_s)


def export(sessions, settings: Settings) -> list[Estimate]:  # noqa: ANN001 - a sessionmaker
    """Set the quality gauges from the window's outcomes (series of groups no longer seen are dropped)."""
    with sessions() as s:
        found = estimates_of(read_tallies(s, window_start(settings)))
        backlog = audit_backlog(s)
    for gauge in (PRECISION, PRECISION_LOWER, PRECISION_UPPER, AUDITS, AGREEMENT, AGREEMENT_DECISIONS, AUDIT_BACKLOG):
        gauge.clear()
    for e in found:
        labels = (e.task, e.model_version or "all", e.label_class or "all")
        lo, hi = e.interval
        if e.signal == "precision":
            PRECISION.labels(*labels).set(e.value or 0.0)
            PRECISION_LOWER.labels(*labels).set(lo)
            PRECISION_UPPER.labels(*labels).set(hi)
            AUDITS.labels(*labels).set(e.n)
        else:
            AGREEMENT.labels(*labels).set(e.value or 0.0)
            AGREEMENT_DECISIONS.labels(*labels).set(e.n)
    AUDIT_BACKLOG.labels("all").set(sum(backlog.values()))
    for version, n in backlog.items():
        AUDIT_BACKLOG.labels(version).set(n)
    TARGET.set(settings.target_precision)
    QUALITY_WINDOW.set(settings.quality_window_s)
    return found


def score_relabel(s: Session, ev: ProductLabeled, now: datetime) -> int:
    """Another model version's label of an upload already audited (a relabel picks the same products): its
    labels scored against the person's blind answer, once per version, without asking again. The outcomes
    are dated ``now`` (when this version's labels were judged). Returns the outcomes added."""
    same = (OutcomeRow.product_id == ev.product_id, OutcomeRow.source_event_id == ev.source_event_id, OutcomeRow.kind == "audit")
    if s.scalar(select(func.count()).where(*same, OutcomeRow.model_version == ev.model.version)):
        return 0
    answers = {r.task: r for r in s.scalars(select(OutcomeRow).where(*same).order_by(OutcomeRow.id))}
    rows = [OutcomeRow(kind="audit", product_id=ev.product_id, source_event_id=ev.source_event_id, task=task,
                       model_version=ev.model.version, model_label=lab.label, human_label=answers[task].human_label,
                       status=lab.status, reviewer=answers[task].reviewer, decided_at=now)
            for task, lab in ev.labels.items() if task in answers]
    s.add_all(rows)
    return len(rows)

"""The review queue: one row per flagged product, in a real database (SQLAlchemy).

SQLite file under the state dir by default, PostgreSQL (or any SQLAlchemy URL) through
``AUTOLABEL_REVIEW_DATABASE_URL``. An item is ``pending`` -> ``claimed`` (by one reviewer,
until ``claimed_until``; an expired claim is pending again) -> ``saving`` (that reviewer's
decision is being stored; one at a time) -> ``done``, or ``stale`` when the product got a newer
photo (or a relabel) that needs no review, or ``quarantined`` when it cannot be shown (its claim
released; a newer upload of the product queues it again). Every state change is one conditional
UPDATE, so two reviewers never hold the same product, whatever the database. Tested on SQLite
and on a real PostgreSQL server (tests/test_review_queue.py), with concurrent reviewers,
consumers and replicas starting together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from services.events import ProductLabeled
from services.review.quality import score_relabel
from services.review.tables import (
    CLAIMED, DONE, PENDING, QUARANTINED, SAVING, STALE, Decision, Item, OutcomeRow, UTCDateTime, create_tables, database_url,
    make_engine,
)
from services.settings import Settings



def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Stats:
    pending: int
    claimed: int
    done: int
    stale: int
    quarantined: int = 0

    @property
    def waiting(self) -> int:
        """Not reviewed yet: pending, or claimed by someone."""
        return self.pending + self.claimed


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    pass


class NewerUpload(Conflict):
    """The decision names an upload the queue no longer holds: the product has a newer photo."""

    def __init__(self, product_id: str, judged: str, current: str) -> None:
        super().__init__(f"{product_id} has a newer upload ({current}) than the one judged ({judged}): the decision was not stored")
        self.current_source_event_id = current


class AlreadyDecided(Conflict):
    """The upload was decided already: by this reviewer (``decision`` holds it) or by another."""

    def __init__(self, message: str, decision: "Decision | None") -> None:
        super().__init__(message)
        self.decision = decision


class InProgress(Conflict):
    """The same reviewer's decision on this upload is being stored right now."""


class ReviewQueue:
    def __init__(self, url: str, claim_timeout_s: float = 600.0) -> None:
        self.engine = make_engine(url)
        create_tables(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.claim_timeout = timedelta(seconds=claim_timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ReviewQueue":
        return cls(database_url(settings), settings.review_claim_timeout_s)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with self.sessions() as s:
            s.execute(select(1))

    # --- filled from topic_labels ------------------------------------------------------
    def offer(self, events: list[ProductLabeled]) -> dict[str, int]:
        """Apply label events to the queue, in one transaction; idempotent by product and upload.

        A product has one row: the first flagged label of an upload adds it; a re-delivery
        changes nothing; a newer upload replaces it and queues it again (a new photo starts
        fresh, even after a review); an older upload is ignored; the same upload relabeled by
        another model version refreshes the labels shown, unless it was reviewed already (an audit
        reviewed already is scored for that version against the person's answer instead). A
        label that needs no review retires the waiting item it supersedes (:meth:`_retire`).
        """
        counts = {"added": 0, "updated": 0, "retired": 0, "ignored": 0, "scored": 0}
        now = _now()
        with self.sessions.begin() as s:
            # Two consumers may offer the same records at once (a rebalance re-delivers them):
            # the rows are locked in product order (no deadlock), a product's events keep theirs.
            for ev in sorted(events, key=lambda e: e.product_id):
                at = ev.upload_order()[0]
                if not ev.needs_review and not ev.audit:
                    counts["retired" if self._retire(s, ev, at) else "ignored"] += 1
                    continue
                if self._insert_new(s, Item(product_id=ev.product_id, source_event_id=ev.source_event_id, uploaded_at=at,
                                            model_version=ev.model.version, event_json=ev.model_dump_json(),
                                            status=PENDING, queued_at=now, audit=ev.audit)):
                    counts["added"] += 1
                    continue
                # the row exists: read its newest version and hold it until the commit
                item = s.get(Item, ev.product_id, with_for_update=True, populate_existing=True)
                if item is None:  # removed meanwhile (not done by this code): nothing to compare with
                    counts["ignored"] += 1
                    continue
                mine, theirs = (at, ev.source_event_id), (item.uploaded_at, item.source_event_id)
                if mine > theirs:
                    item.source_event_id, item.uploaded_at = ev.source_event_id, at
                    item.model_version, item.event_json, item.audit = ev.model.version, ev.model_dump_json(), ev.audit
                    item.status, item.queued_at, item.claimed_by, item.claimed_until = PENDING, now, None, None
                    item.reviewed_by = item.reviewed_at = None
                    counts["updated"] += 1
                elif mine == theirs and ev.model.version != item.model_version and item.status in (PENDING, CLAIMED):
                    item.model_version, item.event_json, item.audit = ev.model.version, ev.model_dump_json(), ev.audit
                    counts["updated"] += 1
                elif mine == theirs and ev.audit and item.audit and item.status == DONE and score_relabel(s, ev, now):
                    counts["scored"] += 1  # a relabel of an audited upload: scored against the person's answer
                else:
                    counts["ignored"] += 1
        return counts

    @staticmethod
    def _retire(s: Session, ev: ProductLabeled, at: datetime) -> bool:
        """A label that needs no review makes the product's waiting item stale when it is of a
        newer upload, or of the same upload by another model version (a relabel that is now
        sure). A reviewed item stays done; an older upload changes nothing."""
        newer = (Item.uploaded_at < at) | ((Item.uploaded_at == at) & (Item.source_event_id < ev.source_event_id))
        relabel = (Item.uploaded_at == at) & (Item.source_event_id == ev.source_event_id) & (Item.model_version != ev.model.version)
        res = s.execute(update(Item).where(Item.product_id == ev.product_id, Item.status.in_((PENDING, CLAIMED, SAVING)), newer | relabel)
                        .values(status=STALE, claimed_by=None, claimed_until=None))
        return res.rowcount == 1

    @staticmethod
    def _insert_new(s: Session, item: Item) -> bool:
        """Insert ``item`` unless its product has a row already (True: inserted). An
        ``INSERT ... ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite, so a concurrent insert of
        the same product waits for the other transaction and then does nothing, instead of
        failing the batch on the primary key. (On SQLite it also takes the write lock first,
        so the reads that follow are of the newest data.)"""
        values = {c.key: getattr(item, c.key) for c in Item.__table__.columns}
        name = s.get_bind().dialect.name
        if name == "postgresql":  # (its rowcount here is -1: ask for the row back)
            stmt = postgresql.insert(Item.__table__).values(**values).on_conflict_do_nothing(index_elements=[Item.product_id])
            return s.execute(stmt.returning(Item.__table__.c.product_id)).first() is not None
        if name == "sqlite":
            stmt = sqlite.insert(Item.__table__).values(**values).on_conflict_do_nothing(index_elements=[Item.product_id])
            return s.execute(stmt).rowcount == 1
        if s.get(Item, item.product_id, with_for_update=True) is not None:
            return False
        s.add(item)
        s.flush()
        return True

    # --- reviewers --------------------------------------------------------------------
    def _claimable(self, reviewer: str, now: datetime):  # noqa: ANN202
        return or_(
            Item.status == PENDING,
            (Item.status == CLAIMED) & ((Item.claimed_until < now) | (Item.claimed_by == reviewer)),
            (Item.status == SAVING) & (Item.claimed_until < now),  # the app died mid-save
        )

    def claim(self, reviewer: str, limit: int) -> list[Item]:
        """Up to ``limit`` items for ``reviewer``: the ones it holds already, then the oldest
        claimable ones; each taken by a conditional UPDATE (another reviewer's win is skipped)."""
        now = _now()
        until = now + self.claim_timeout
        out: list[Item] = []
        with self.sessions() as s:
            held = s.scalars(
                select(Item).where(Item.status == CLAIMED, Item.claimed_by == reviewer, Item.claimed_until >= now)
                .order_by(Item.queued_at, Item.product_id).limit(limit)
            ).all()
            for item in held:  # extend the claim of what is shown again
                s.execute(update(Item).where(Item.product_id == item.product_id, Item.claimed_by == reviewer)
                          .values(claimed_until=until))
                item.claimed_until = until
            s.commit()
            out.extend(held)
            tried: set[str] = {i.product_id for i in held}
            while len(out) < limit:
                candidates = s.scalars(
                    select(Item.product_id).where(self._claimable(reviewer, now), Item.product_id.not_in(tried))
                    .order_by(Item.queued_at, Item.product_id).limit(limit - len(out) + 8)
                ).all()
                if not candidates:
                    break
                for pid in candidates:
                    tried.add(pid)
                    if self._take(s, pid, reviewer, now, until):
                        got = s.get(Item, pid, populate_existing=True)
                        if got is not None:
                            out.append(got)
                    if len(out) >= limit:
                        break
        return out

    def _take(self, s: Session, product_id: str, reviewer: str, now: datetime, until: datetime) -> bool:
        res = s.execute(
            update(Item).where(Item.product_id == product_id, self._claimable(reviewer, now))
            .values(status=CLAIMED, claimed_by=reviewer, claimed_until=until)
        )
        s.commit()
        return res.rowcount == 1

    def begin_decision(self, product_id: str, reviewer: str, source_event_id: str) -> Item:
        """Hold ``product_id``'s upload ``source_event_id`` for ``reviewer``'s decision: the item
        is ``saving`` until :meth:`complete` or :meth:`abort_decision`. One conditional UPDATE,
        so a second save of the same item (same reviewer, another replica) cannot start meanwhile.

        NotFound; NewerUpload when the queue holds a newer upload of the product; InProgress
        when this reviewer's save of it is running; AlreadyDecided when it is done (with the
        decision when it was this reviewer's); Conflict when stale, quarantined or another's."""
        now = _now()
        with self.sessions() as s:
            res = s.execute(
                update(Item).where(Item.product_id == product_id, Item.source_event_id == source_event_id,
                                   self._claimable(reviewer, now))
                .values(status=SAVING, claimed_by=reviewer, claimed_until=now + self.claim_timeout)
            )
            s.commit()
            item = s.get(Item, product_id, populate_existing=True)
            if res.rowcount == 1 and item is not None:
                return item
            decision = None
            if item is not None and item.status == DONE and item.source_event_id == source_event_id:
                decision = s.scalars(select(Decision).where(Decision.product_id == product_id,
                                                            Decision.source_event_id == source_event_id,
                                                            Decision.reviewer == reviewer)
                                     .order_by(Decision.id.desc()).limit(1)).first()
        if item is None:
            raise NotFound(f"no product {product_id!r} in the review queue")
        if item.source_event_id != source_event_id:
            raise NewerUpload(product_id, source_event_id, item.source_event_id)
        if item.status == DONE:
            raise AlreadyDecided(f"{product_id} was reviewed already by {item.reviewed_by}", decision if item.reviewed_by == reviewer else None)
        if item.status == SAVING and item.claimed_by == reviewer:
            raise InProgress(f"your decision on {product_id} is being saved")
        if item.status == STALE:
            raise Conflict(f"{product_id} needs no review any more: a newer photo, or a relabel, is sure of its labels")
        if item.status == QUARANTINED:
            raise Conflict(f"{product_id} is quarantined: it could not be shown")
        raise Conflict(f"{product_id} is claimed by another reviewer ({item.claimed_by})")

    def abort_decision(self, item: Item, reviewer: str) -> None:
        """A save that failed (store or broker away): the item is the reviewer's claim again."""
        with self.sessions.begin() as s:
            s.execute(update(Item).where(Item.product_id == item.product_id, Item.source_event_id == item.source_event_id,
                                         Item.status == SAVING, Item.claimed_by == reviewer).values(status=CLAIMED))

    def quarantine(self, product_id: str) -> bool:
        """Take an item that cannot be shown out of the queue (its claim released)."""
        with self.sessions.begin() as s:
            res = s.execute(update(Item).where(Item.product_id == product_id, Item.status.in_((PENDING, CLAIMED)))
                            .values(status=QUARANTINED, claimed_by=None, claimed_until=None))
            return res.rowcount == 1

    def get(self, product_id: str) -> Item | None:
        with self.sessions() as s:
            return s.get(Item, product_id)

    def complete(self, item: Item, reviewer: str, labels: dict[str, str], corrected: int, at: datetime,
                 reviewed_json: str | None = None, outcomes: list[OutcomeRow] | None = None) -> bool:
        """Mark the reviewed upload done and record the decision (and its per-task outcomes), in one
        transaction. False when the row moved on meanwhile (a newer upload replaced it): the decision is still logged."""
        with self.sessions.begin() as s:
            res = s.execute(
                update(Item).where(Item.product_id == item.product_id, Item.source_event_id == item.source_event_id,
                                   Item.status.in_((CLAIMED, SAVING)), Item.claimed_by == reviewer)
                .values(status=DONE, reviewed_by=reviewer, reviewed_at=at, claimed_until=None)
            )
            s.add(Decision(product_id=item.product_id, source_event_id=item.source_event_id, reviewer=reviewer,
                           labels_json=json.dumps(labels, sort_keys=True), corrected=corrected, decided_at=at,
                           reviewed_json=reviewed_json))
            s.add_all(outcomes or [])
            return res.rowcount == 1

    def mark_stale(self, item: Item) -> None:
        with self.sessions.begin() as s:
            s.execute(update(Item).where(Item.product_id == item.product_id, Item.source_event_id == item.source_event_id,
                                         Item.status != DONE).values(status=STALE, claimed_by=None, claimed_until=None))

    def skip(self, product_id: str, reviewer: str) -> bool:
        """Give a claimed item back, to the end of the queue."""
        with self.sessions.begin() as s:
            res = s.execute(update(Item).where(Item.product_id == product_id, Item.status == CLAIMED, Item.claimed_by == reviewer)
                            .values(status=PENDING, claimed_by=None, claimed_until=None, queued_at=_now()))
            return res.rowcount == 1

    def stats(self) -> Stats:
        now = _now()
        with self.sessions() as s:
            rows = dict(s.execute(select(Item.status, func.count()).group_by(Item.status)).all())
            expired = s.scalar(select(func.count()).where(Item.status == CLAIMED, Item.claimed_until < now)) or 0
        return Stats(pending=rows.get(PENDING, 0) + expired, claimed=rows.get(CLAIMED, 0) + rows.get(SAVING, 0) - expired,
                     done=rows.get(DONE, 0), stale=rows.get(STALE, 0), quarantined=rows.get(QUARANTINED, 0))

    def rate(self, reviewer: str, window: timedelta = timedelta(hours=1)) -> tuple[int, float]:
        """(decisions by ``reviewer`` in the last ``window``, per minute over the span they took)."""
        since = _now() - window
        with self.sessions() as s:
            n, first = s.execute(select(func.count(), func.min(Decision.decided_at))
                                 .where(Decision.reviewer == reviewer, Decision.decided_at >= since)).one()
        if not n:
            return 0, 0.0
        first_at = UTCDateTime().process_result_value(first, None) if isinstance(first, datetime) else None
        minutes = max(1.0, (_now() - first_at).total_seconds() / 60) if first_at else 1.0
        return int(n), n / minutes

"""Pure: which products get a blind audit, and what the audits say about auto-accepted labels.

A share ``AUTOLABEL_AUDIT_RATE`` of the products whose labels skip review is also queued for a
person, shown without the model's labels (docs/quality.md). Which ones is decided by a hash of
the product id alone, so a relabel (or a re-delivery, or another worker) audits the same
products. Each audited task becomes an :class:`Outcome` (model label vs human label); the
precision of the auto-accepted labels is the share of audited ``accepted`` tasks the person
labeled the same, with a Wilson interval. Decisions on flagged items give a second signal,
reviewer agreement (how often people keep the model's label), which is not a precision: those
are the labels the model was unsure of, and the reviewer saw the model's choice.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

AUDIT_SALT = b"autolabel-audit:"
ALL = ""  # the label value of "every model version" / "every class" in estimates and metrics
Kind = Literal["audit", "flagged"]


def audit_share(product_id: str) -> float:
    """A product's fixed point in [0, 1): the first 8 bytes of SHA-256(salt + id)."""
    digest = hashlib.sha256(AUDIT_SALT + product_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def audited(product_id: str, rate: float) -> bool:
    """Whether ``product_id`` is among the ``rate`` share of products audited (the same answer every time)."""
    return rate > 0 and audit_share(product_id) < rate


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials (95 % for z = 1.96); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One task of one reviewed upload: what the model said, what the person decided."""

    kind: Kind  # audit: blind; flagged: the person saw the model's label (agreement, not precision)
    task: str
    model_version: str
    model_label: str
    human_label: str
    status: str  # the model label's status: accepted, advisory or review
    decided_at: datetime

    @property
    def agrees(self) -> bool:
        return self.model_label == self.human_label


@dataclass(frozen=True, slots=True)
class Estimate:
    """Share of agreeing outcomes in one group, with its Wilson interval."""

    signal: Literal["precision", "agreement"]
    task: str
    model_version: str  # ALL: every version
    label_class: str  # ALL: every class (the model's predicted class)
    n: int
    agreed: int

    @property
    def value(self) -> float | None:
        return self.agreed / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.agreed, self.n)

    def as_dict(self) -> dict[str, object]:
        lo, hi = self.interval
        return {"signal": self.signal, "task": self.task, "model_version": self.model_version or None,
                "class": self.label_class or None, "n": self.n, "agreed": self.agreed,
                "value": None if self.value is None else round(self.value, 4), "lower": round(lo, 4), "upper": round(hi, 4)}


def counted(outcome: Outcome | Tally) -> Literal["precision", "agreement"] | None:
    """Which signal an outcome counts for: a blind audit of an accepted label -> precision; a decision on
    a label that was flagged -> agreement; anything else (an audited advisory label, a flagged item's
    accepted task) -> neither."""
    if outcome.kind == "audit" and outcome.status == "accepted":
        return "precision"
    if outcome.kind == "flagged" and outcome.status == "review":
        return "agreement"
    return None


@dataclass(frozen=True, slots=True)
class Tally:
    """Outcomes of one kind, task, model version, model label and status: how many, how many agreed
    (what a database's GROUP BY gives, so that a scrape does not read every outcome)."""

    kind: str
    task: str
    model_version: str
    model_label: str
    status: str
    n: int
    agreed: int


def estimates(outcomes: Iterable[Outcome]) -> list[Estimate]:
    """Per signal and task: over every version and class, per model version, and per predicted class."""
    groups: dict[tuple[str, str, str, str, str], list[int]] = {}
    for o in outcomes:
        c = groups.setdefault((o.kind, o.task, o.model_version, o.model_label, o.status), [0, 0])
        c[0] += 1
        c[1] += o.agrees
    return estimates_of([Tally(*key, n, k) for key, (n, k) in groups.items()])


def estimates_of(tallies: Iterable[Tally]) -> list[Estimate]:
    """:func:`estimates` from grouped counts."""
    counts: dict[tuple[str, str, str, str], list[int]] = {}
    for t in tallies:
        signal = counted(t)  # type: ignore[arg-type] - a Tally has the fields counted() reads
        if signal is None:
            continue
        for key in ((signal, t.task, ALL, ALL), (signal, t.task, t.model_version, ALL), (signal, t.task, ALL, t.model_label)):
            c = counts.setdefault(key, [0, 0])
            c[0] += t.n
            c[1] += t.agreed
    return [Estimate(s, t, v, c, n, k) for (s, t, v, c), (n, k) in sorted(counts.items())]  # type: ignore[arg-type]


def over_time(outcomes: Iterable[Outcome], bucket: timedelta) -> dict[tuple[str, str], list[tuple[datetime, Estimate]]]:
    """Per (signal, task): one estimate per ``bucket`` of decision time (every version and class)."""
    by_bucket: dict[tuple[str, str, datetime], list[int]] = {}
    width = bucket.total_seconds()
    for o in outcomes:
        signal = counted(o)
        if signal is None:
            continue
        ts = o.decided_at.timestamp()
        start = datetime.fromtimestamp(ts - ts % width, tz=o.decided_at.tzinfo)
        c = by_bucket.setdefault((signal, o.task, start), [0, 0])
        c[0] += 1
        c[1] += o.agrees
    out: dict[tuple[str, str], list[tuple[datetime, Estimate]]] = {}
    for (signal, task, start), (n, k) in sorted(by_bucket.items()):
        out.setdefault((signal, task), []).append((start, Estimate(signal, task, ALL, ALL, n, k)))  # type: ignore[arg-type]
    return out

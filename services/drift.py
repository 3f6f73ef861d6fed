"""Drift without labels: what the model says now, per task, compared with a reference.

The reference (a small JSON file, ``AUTOLABEL_DRIFT_REFERENCE``, built by
``autolabel quality reference`` from the label events of a known-good period) holds per task
the share of each predicted class, a histogram of the top probability and the auto-accept rate.
The worker keeps its last ``AUTOLABEL_DRIFT_WINDOW`` labels per task and exports, per task, the
population stability index (PSI) of the class shares and of the top-probability histogram
against the reference, the window's auto-accept rate and class shares (docs/quality.md says how
to read them). :func:`psi` and :func:`build_reference` are pure; :class:`DriftMonitor` only
updates gauges.
"""

from __future__ import annotations

import json
import math
from collections import Counter as Tally
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from prometheus_client import Counter, Gauge

from services.events import ProductLabeled
from services.settings import TASKS

# top-probability bins: a 2-class task's top probability is >= 0.5, a 3-class one's >= 1/3
EDGES: tuple[float, ...] = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
EPS = 1e-4  # a share of 0 on either side counts as this (PSI is infinite otherwise)
REFERENCE_VERSION = 1

DRIFT_PSI = Gauge("autolabel_drift_psi", "PSI of the worker's recent labels against the drift reference, per task and feature "
                  "(class: predicted class shares; top_probability: the histogram of the top probability)", ["task", "feature"])
ACCEPT_RATE = Gauge("autolabel_accept_rate", "Share of the worker's recent labels auto-accepted, per task", ["task"])
REFERENCE_ACCEPT_RATE = Gauge("autolabel_reference_accept_rate", "Auto-accept rate in the drift reference, per task", ["task"])
CLASS_SHARE = Gauge("autolabel_predicted_class_share", "Share of each predicted class in the worker's recent labels",
                    ["task", "class"])
WINDOW_LABELS = Gauge("autolabel_drift_window_labels", "Labels the drift metrics cover now, per task", ["task"])
TASK_LABELS = Counter("autolabel_task_labels_total", "Task labels published, by status (accepted, review, advisory)",
                      ["task", "status"])


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of ``actual`` shares against ``expected`` (same bins):
    sum (a - e) ln(a / e), with empty bins counted as :data:`EPS`. Under 0.1: stable; above 0.25: shifted."""
    if len(expected) != len(actual):
        raise ValueError(f"{len(expected)} expected bins, {len(actual)} actual")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, EPS), max(a, EPS)
        total += (a - e) * math.log(a / e)
    return total


def histogram(values: Iterable[float], edges: Sequence[float] = EDGES) -> list[float]:
    """Shares of ``values`` in the bins ``[edges[i], edges[i+1])`` (the last one closed)."""
    counts = [0] * (len(edges) - 1)
    n = 0
    for v in values:
        n += 1
        for i in range(len(counts)):
            if v < edges[i + 1] or i == len(counts) - 1:
                counts[i] += 1
                break
    return [c / n if n else 0.0 for c in counts]


def build_reference(events: Iterable[ProductLabeled], source: str = "", edges: Sequence[float] = EDGES) -> dict:
    """The drift reference of a known-good period's label events (the newest label per upload and model version)."""
    seen: dict[tuple[str, str], ProductLabeled] = {}
    for ev in events:
        seen[(ev.source_event_id, ev.model.version)] = ev
    tasks: dict[str, dict] = {}
    for task in TASKS:
        labels = [ev.labels[task] for ev in seen.values()]  # type: ignore[index]
        if not labels:
            continue
        classes = list(labels[0].probabilities)
        tally = Tally(lab.label for lab in labels)
        tasks[task] = {
            "classes": {c: round(tally[c] / len(labels), 6) for c in classes},
            "top_probability": {"edges": list(edges), "shares": [round(s, 6) for s in histogram((lab.confidence for lab in labels), edges)]},
            "accept_rate": round(sum(lab.status == "accepted" for lab in labels) / len(labels), 6),
            "n": len(labels),
        }
    versions = sorted({ev.model.version for ev in seen.values()})
    return {"version": REFERENCE_VERSION, "source": source, "model_versions": versions, "tasks": tasks}


def load_reference(path: Path) -> dict:
    """The reference file, checked enough to be used (ValueError naming what is wrong)."""
    data = json.loads(Path(path).read_text())
    if data.get("version") != REFERENCE_VERSION or not isinstance(data.get("tasks"), dict):
        raise ValueError(f"{path}: not a drift reference of version {REFERENCE_VERSION} (autolabel quality reference)")
    for task, ref in data["tasks"].items():
        hist = ref["top_probability"]
        if len(hist["edges"]) != len(hist["shares"]) + 1 or not ref["classes"]:
            raise ValueError(f"{path}: task {task}: edges must be one more than shares, and classes not empty")
    return data


class DriftMonitor:
    """The worker's last ``window`` labels per task, and the gauges computed from them."""

    def __init__(self, reference: Mapping | None, window: int) -> None:
        self.reference = dict(reference["tasks"]) if reference else {}
        self.recent: dict[str, deque[tuple[str, float, bool]]] = {t: deque(maxlen=window) for t in TASKS}
        for task, ref in self.reference.items():
            REFERENCE_ACCEPT_RATE.labels(task).set(ref["accept_rate"])

    def observe(self, events: Iterable[ProductLabeled]) -> None:
        touched = set()
        for ev in events:
            for task, lab in ev.labels.items():
                TASK_LABELS.labels(task, lab.status).inc()
                self.recent[task].append((lab.label, lab.confidence, lab.status == "accepted"))
                touched.add(task)
        for task in touched:
            self._export(task)

    def summary(self, task: str) -> dict[str, object]:
        """The window's class shares, top-probability histogram, accept rate and PSIs (None without a reference)."""
        rows = self.recent[task]
        n = len(rows)
        ref = self.reference.get(task)
        classes = list(ref["classes"]) if ref else sorted({r[0] for r in rows})
        tally = Tally(r[0] for r in rows)
        shares = {c: tally[c] / n if n else 0.0 for c in classes}
        out: dict[str, object] = {"n": n, "classes": shares, "accept_rate": sum(r[2] for r in rows) / n if n else None,
                                  "class_psi": None, "top_probability_psi": None}
        if ref and n:
            out["class_psi"] = psi([ref["classes"][c] for c in classes], [shares[c] for c in classes])
            hist = ref["top_probability"]
            out["top_probability_psi"] = psi(hist["shares"], histogram((r[1] for r in rows), hist["edges"]))
        return out

    def _export(self, task: str) -> None:
        s = self.summary(task)
        WINDOW_LABELS.labels(task).set(s["n"])  # type: ignore[arg-type]
        if s["accept_rate"] is not None:
            ACCEPT_RATE.labels(task).set(s["accept_rate"])  # type: ignore[arg-type]
        for cls, share in s["classes"].items():  # type: ignore[attr-defined]
            CLASS_SHARE.labels(task, cls).set(share)
        if s["class_psi"] is not None:
            DRIFT_PSI.labels(task, "class").set(s["class_psi"])  # type: ignore[arg-type]
            DRIFT_PSI.labels(task, "top_probability").set(s["top_probability_psi"])  # type: ignore[arg-type]

"""Drift without labels (services/drift.py): PSI, the reference built from label events, and the
worker's monitor, whose gauges move with a drift injection (a stream of one category, or of
photos the model is unsure of) and stay low on a normal stream. The alert expressions on
these gauges: tests/test_quality_alerts.py; the monitor in the running worker: tests/test_audit_stack.py."""

from __future__ import annotations

import json
import random

import pytest
from prometheus_client import REGISTRY

from services.drift import DriftMonitor, build_reference, histogram, load_reference, psi
from services.events import ImageLocation, ModelInfo, ProductLabeled, S3Location, TaskLabel

CLASSES = {"style": ["casual", "formal", "sports"], "gender": ["men", "women"], "season": ["spring-fall", "summer", "winter"]}
MODEL = ModelInfo(name="autolabel", version="v1", backbone="vgg16", weights_source="test")
SHARES = {"style": [0.6, 0.25, 0.15], "gender": [0.55, 0.45], "season": [0.5, 0.35, 0.15]}


def _label(classes: list[str], best: int, confidence: float, threshold: float = 0.7) -> TaskLabel:
    rest = (1 - confidence) / (len(classes) - 1)
    probs = {c: (confidence if i == best else rest) for i, c in enumerate(classes)}
    return TaskLabel(label=classes[best], confidence=confidence, probabilities=probs, threshold=threshold,
                     needs_review=confidence < threshold)


def stream(n: int, seed: int, only: str | None = None, unsure: bool = False) -> list[ProductLabeled]:
    """``n`` label events like the reference's; ``only``: every style label that class; ``unsure``: low confidences."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        labels = {}
        for task, classes in CLASSES.items():
            best = rng.choices(range(len(classes)), SHARES[task])[0]
            if task == "style" and only is not None:
                best = classes.index(only)
            conf = rng.uniform(0.5, 0.72) if unsure else rng.betavariate(8, 1.5)
            labels[task] = _label(classes, best, max(conf, 1 / len(classes) + 0.01))
        out.append(ProductLabeled(product_id=f"p{seed}-{i}", source_event_id=f"e{seed}-{i}",
                                  image=ImageLocation(s3=S3Location(bucket="autolabel", key=f"images/{i}.jpg")),
                                  labels=labels, model=MODEL, needs_review=any(t.needs_review for t in labels.values()),
                                  latency_ms=1.0))
    return out


def test_psi_is_zero_for_equal_shares_and_grows_with_a_shift() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert psi([0.6, 0.25, 0.15], [0.58, 0.27, 0.15]) < 0.01
    assert psi([0.6, 0.25, 0.15], [1.0, 0.0, 0.0]) > 1.0  # an empty bin counts as EPS, not infinity
    with pytest.raises(ValueError):
        psi([1.0], [0.5, 0.5])
    assert histogram([0.45, 0.55, 0.999, 1.0], (0.0, 0.5, 0.9, 1.0)) == [0.25, 0.25, 0.5]


def test_the_reference_holds_shares_histogram_and_accept_rate(tmp_path) -> None:
    events = stream(2000, seed=1)
    ref = build_reference(events + events[:10], source="test")  # a re-delivery counts once
    style = ref["tasks"]["style"]
    assert style["n"] == 2000 and set(style["classes"]) == set(CLASSES["style"])
    assert style["classes"]["casual"] == pytest.approx(0.6, abs=0.04)
    assert sum(style["top_probability"]["shares"]) == pytest.approx(1.0)
    accepted = sum(e.labels["style"].status == "accepted" for e in events) / 2000
    assert style["accept_rate"] == pytest.approx(accepted, abs=1e-6)
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(ref))
    assert load_reference(path) == ref
    path.write_text(json.dumps({"version": 99, "tasks": {}}))
    with pytest.raises(ValueError, match="not a drift reference"):
        load_reference(path)


def _gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_normal_stream_stays_low_and_an_injection_moves_the_gauges() -> None:
    ref = build_reference(stream(3000, seed=1))
    monitor = DriftMonitor(ref, window=500)
    monitor.observe(stream(500, seed=2))  # the same distribution, another sample
    normal = {t: monitor.summary(t) for t in CLASSES}
    assert all(s["class_psi"] < 0.05 and s["top_probability_psi"] < 0.05 for s in normal.values()), normal
    assert _gauge("autolabel_drift_psi", task="style", feature="class") == pytest.approx(normal["style"]["class_psi"])
    assert _gauge("autolabel_reference_accept_rate", task="style") == ref["tasks"]["style"]["accept_rate"]
    assert _gauge("autolabel_drift_window_labels", task="style") == 500

    monitor.observe(stream(500, seed=3, only="sports"))  # a new brand: every photo called sports
    assert monitor.summary("style")["class_psi"] > 1.0
    assert _gauge("autolabel_drift_psi", task="style", feature="class") > 1.0
    assert _gauge("autolabel_predicted_class_share", task="style", **{"class": "sports"}) == 1.0
    assert monitor.summary("gender")["class_psi"] < 0.05  # the other tasks did not move

    monitor.observe(stream(500, seed=4, unsure=True))  # altered photos: the model is unsure of everything
    season = monitor.summary("season")
    assert season["top_probability_psi"] > 1.0 and season["accept_rate"] < 0.2
    assert _gauge("autolabel_accept_rate", task="season") == pytest.approx(season["accept_rate"])


def test_without_a_reference_only_the_accept_rate_and_shares_are_exported() -> None:
    monitor = DriftMonitor(None, window=100)
    monitor.observe(stream(50, seed=5))
    s = monitor.summary("gender")
    assert s["class_psi"] is None and s["n"] == 50 and s["accept_rate"] is not None
    before = _gauge("autolabel_task_labels_total", task="gender", status="accepted") or 0
    monitor.observe(stream(10, seed=6))
    assert _gauge("autolabel_task_labels_total", task="gender", status="accepted") > before

"""Temperature scaling, calibration error and the auto-accept threshold (training.heads.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from training.heads.calibration import (
    accept_stats,
    choose_threshold,
    coverage_curve,
    expected_calibration_error,
    fit_temperature,
    reliability,
    softmax,
    wilson_lower,
)


def _draw(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature): calibrated at that temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, 3))
    p = softmax(logits / temperature)
    y = np.array([rng.choice(3, p=row) for row in p])
    return logits, y


def test_temperature_recovers_the_true_one_and_lowers_the_error() -> None:
    logits, y = _draw(6000, temperature=2.5)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(2.5, rel=0.1)
    raw, cal = expected_calibration_error(softmax(logits), y), expected_calibration_error(softmax(logits / t), y)
    assert raw > 0.08 and cal < 0.03
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0


def test_reliability_bins_add_up() -> None:
    logits, y = _draw(2000, temperature=1.0, seed=1)
    bins = reliability(softmax(logits), y, bins=10)
    assert sum(b.n for b in bins) == 2000
    assert all(b.lower <= b.confidence <= b.upper for b in bins if b.n)
    assert all(abs(b.accuracy - b.confidence) < 0.1 for b in bins if b.n > 200)


def test_threshold_reaches_the_target_with_a_margin_and_is_the_lowest_such() -> None:
    logits, y = _draw(4000, temperature=1.0, seed=2)
    p = softmax(logits)
    conf, correct = p.max(1), p.argmax(1) == y
    thr = choose_threshold(conf, correct, target=0.95)
    accepted = conf >= thr.threshold
    assert correct[accepted].mean() >= 0.95
    assert wilson_lower(np.array([correct[accepted].sum()]), np.array([accepted.sum()]), 1.0)[0] >= 0.95
    assert thr.coverage == pytest.approx(accepted.mean()) and thr.accepted == accepted.sum()
    # one step lower (the next distinct confidence) would no longer pass the bound
    below = np.max(conf[conf < thr.threshold])
    more = conf >= below
    assert wilson_lower(np.array([correct[more].sum()]), np.array([more.sum()]), 1.0)[0] < 0.95
    # a stricter target accepts fewer labels
    assert choose_threshold(conf, correct, target=0.99).coverage < thr.coverage


def test_no_threshold_reaches_an_impossible_target_so_nothing_is_accepted() -> None:
    conf = np.linspace(0.4, 0.99, 500)
    correct = np.arange(500) % 2 == 0  # 50 % right at every confidence
    thr = choose_threshold(conf, correct, target=0.95)
    assert thr.coverage == 0.0 and thr.accepted == 0 and thr.threshold > conf.max()
    assert accept_stats(np.stack([conf, 1 - conf], 1), np.zeros(500, int), thr.threshold)["accepted"] == 0


def test_coverage_curve_is_cumulative_from_the_top() -> None:
    conf = np.array([0.9, 0.8, 0.8, 0.6])
    correct = np.array([True, False, True, True])
    c = coverage_curve(conf, correct)
    assert c.thresholds.tolist() == [0.9, 0.8, 0.6]
    assert c.accepted.tolist() == [1, 3, 4] and c.precision.tolist() == pytest.approx([1.0, 2 / 3, 0.75])
    assert c.coverage.tolist() == pytest.approx([0.25, 0.75, 1.0])

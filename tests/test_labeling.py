import numpy as np
import pytest

from services.labeling import label_batch, task_label


def test_picks_argmax_and_flags_low_confidence():
    lab = task_label(np.array([0.2, 0.5, 0.3]), ["casual", "formal", "sports"], threshold=0.6)
    assert lab.label == "formal" and lab.confidence == pytest.approx(0.5) and lab.needs_review
    sure = task_label(np.array([0.05, 0.95]), ["men", "women"], threshold=0.8)
    assert sure.label == "women" and not sure.needs_review
    assert set(sure.probabilities) == {"men", "women"}


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        task_label(np.array([0.5, 0.5]), ["a", "b", "c"], 0.5)


def test_batch():
    probs = {"gender": np.array([[0.9, 0.1], [0.3, 0.7]])}
    out = label_batch(probs, {"gender": ["men", "women"]}, {"gender": 0.8})
    assert [o["gender"].label for o in out] == ["men", "women"]
    assert [o["gender"].needs_review for o in out] == [False, True]


def test_batch_matches_one_by_one_and_rounds_the_same_way():
    rng = np.random.default_rng(3)
    probs = {"style": rng.dirichlet([1, 1, 1], 50).astype(np.float32), "gender": rng.dirichlet([1, 1], 50)}
    classes = {"style": ["casual", "formal", "sports"], "gender": ["men", "women"]}
    thresholds = {"style": 0.6, "gender": 0.8}
    batch = label_batch(probs, classes, thresholds)
    for i, labels in enumerate(batch):
        for task in probs:
            p = np.clip(probs[task][i].astype(np.float64), 0, 1)
            expected = {c: round(float(v), 6) for c, v in zip(classes[task], p)}
            assert labels[task].probabilities == expected
            assert labels[task].label == classes[task][int(np.argmax(p))]
            assert labels[task].confidence == max(expected.values())
            assert labels[task] == task_label(probs[task][i], classes[task], thresholds[task])


def test_out_of_range_probabilities_are_clipped():
    lab = task_label(np.array([-0.1, 1.2]), ["men", "women"], 0.8)
    assert lab.probabilities == {"men": 0.0, "women": 1.0} and lab.label == "women"


def test_an_override_beats_the_shipped_threshold_which_beats_the_fallback() -> None:
    from services.labeling import FALLBACK_THRESHOLD, resolve_thresholds

    got = resolve_thresholds(["style", "gender", "season"], {"style": 0.7, "gender": None, "season": None}, {"style": 0.9, "gender": 0.8})
    assert got == {"style": 0.7, "gender": 0.8, "season": FALLBACK_THRESHOLD}

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

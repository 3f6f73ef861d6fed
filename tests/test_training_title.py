"""The title model: TensorFlow and scipy featurise alike, late fusion, per-class thresholds, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.features.text import TextConfig, fit_idf, present_buckets, tfidf, title_vectors
from training.heads.calibration import accept_stats, choose_class_thresholds
from training.heads.title import TitleModel, fit_title_model
from training.serving.servables import fused_probs

TITLES = ["Puma Men Blue Track Pants", "Wrangler Women Navy Jacket", "", "日本語のシャツ", "Nike Men Black Sports Shoes!!",
          "United Colors of Benetton Women Solid Grey Stockings", "men men MEN"]


def test_tensorflow_and_scipy_give_the_same_vectors() -> None:
    import tensorflow as tf

    cfg = TextConfig(buckets=2**12)
    present = present_buckets(TITLES, cfg)
    idf = fit_idf(present)
    want = tfidf(present, idf).toarray()
    got = title_vectors(tf.constant([[t] for t in TITLES]), cfg, idf).numpy()
    assert np.allclose(got, want, atol=1e-6)
    assert not got[2].any() and not got[3].any()  # no ASCII word: the zero vector
    assert present[6].sum() == 2  # "men" and "men men": a repeated word counts once


def _synthetic(n: int = 2000, seed: int = 0) -> tuple[list[str], dict, dict, dict, dict]:
    """Season from a word in the title (right 80 %) and noisy image logits, independent of each other: fusion should beat both."""
    rng = np.random.default_rng(seed)
    words = {0: ["shirt", "jeans"], 1: ["shorts", "tank"], 2: ["jacket", "sweater"]}
    y = rng.integers(0, 3, n)
    noisy = np.where(rng.random(n) < 0.3, rng.integers(0, 3, n), y)  # the title says the truth 70 % (+ chance)
    titles = [f"Brand{rng.integers(0, 20)} Men {rng.choice(words[int(c)])}" for c in noisy]
    image = np.eye(3)[y] * 1.5 + rng.normal(0, 1.0, (n, 3))  # its confidence says how far to trust it
    order = rng.permutation(n)
    parts = {"train": np.sort(order[: n // 2]), "val": np.sort(order[n // 2 : 3 * n // 4]), "test": np.sort(order[3 * n // 4 :])}
    return titles, {"season": image}, {"season": y}, {"season": parts}, {"season": ["spring-fall", "summer", "winter"]}


def test_fusion_beats_the_photo_and_the_title_alone_and_survives_save_load(tmp_path: Path) -> None:
    import tensorflow as tf

    titles, logits, labels, parts, classes = _synthetic()
    model = fit_title_model(titles, logits, labels, parts, classes, TextConfig(buckets=2**10))
    m = model.tasks["season"].metrics
    test = {inputs: m[inputs]["test"]["balanced_accuracy"] for inputs in ("image", "title", "image+title")}
    assert test["image+title"] > max(test["image"], test["title"]) + 0.02, test
    thr = model.tasks["season"].threshold
    assert thr is not None and len(thr.thresholds) == 3
    model.save(tmp_path / "title.npz")
    back = TitleModel.load(tmp_path / "title.npz", model.text, classes)
    task = back.tasks["season"]
    rows = parts["season"]["test"][:16]
    probs, _ = fused_probs(tf.constant(np.exp(logits["season"][rows]) / np.exp(logits["season"][rows]).sum(1, keepdims=True),
                                       tf.float32), tf.constant(logits["season"][rows], tf.float32),
                           tf.constant([[titles[i]] for i in rows]), back.text, back.idf, task)
    x = tfidf(present_buckets([titles[i] for i in rows], model.text), model.idf)
    want = task.fused_logits(logits["season"][rows], task.title_logits(x))
    want = np.exp(want - want.max(1, keepdims=True))
    assert np.allclose(probs.numpy(), want / want.sum(1, keepdims=True), atol=1e-5)


def test_class_thresholds_keep_a_rare_class_from_vetoing_the_rest() -> None:
    """Class 0 is right 99 % of the time at any confidence, class 1 only 60 %: one threshold
    for both would be set by class 1; per class, class 0's labels are accepted."""
    rng = np.random.default_rng(3)
    n0, n1 = 600, 200
    conf = np.r_[rng.uniform(0.5, 1.0, n0), rng.uniform(0.5, 1.0, n1)]
    probs = np.zeros((n0 + n1, 2))
    probs[:n0, 0], probs[:n0, 1] = conf[:n0], 1 - conf[:n0]
    probs[n0:, 1], probs[n0:, 0] = conf[n0:], 1 - conf[n0:]
    y = np.r_[np.where(rng.random(n0) < 0.99, 0, 1), np.where(rng.random(n1) < 0.6, 1, 0)]
    t = choose_class_thresholds(probs, y, 0.95)
    assert t.thresholds[0] <= 0.55
    assert t.thresholds[1] > probs[n0:, 1].max()  # no confidence makes class 1 right 95 % of the time: none accepted
    stats = accept_stats(probs, y, t.thresholds)
    assert stats["precision"] >= 0.95 and stats["coverage"] >= 0.7


def test_season_study_helpers_measure_what_they_say() -> None:
    """studies.season: the cross-validated stacker, nearest-title votes, the year table."""
    from scipy.sparse import csr_matrix

    from studies.season import nearest_title_votes, stacked_balanced_accuracy, year_table

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    telling, noise = np.eye(3)[y] * 4 + rng.normal(0, 0.3, (300, 3)), rng.normal(0, 1, (300, 3))
    assert stacked_balanced_accuracy([telling], y, seeds=1) > 0.95
    assert stacked_balanced_accuracy([noise], y, seeds=1) < 0.5
    assert stacked_balanced_accuracy([noise, telling], y, seeds=1) > 0.95  # a useful signal is found beside noise

    # training titles 0-5: a word per class; a query with class 2's word is voted class 2
    x = csr_matrix(np.array([[1, 0, 0, 1], [1, 0, 0, 1], [0, 1, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 0.5]]))
    votes = nearest_title_votes(x, np.arange(6), np.array([6]), np.array([0, 0, 1, 1, 2, 2]), k=2, n_classes=3)
    assert votes.shape == (1, 3) and votes[0].argmax() == 2

    table = year_table(["2011"] * 25 + ["2015"] * 5, np.array([0] * 20 + [1] * 5 + [2] * 5), ("a", "b", "c"))
    assert table[2] == "| 2011 | 20 | 5 | 0 | 25 |" and len(table) == 3  # years under 20 rows left out


def test_stream_context_is_the_mean_of_earlier_uploads_only(tmp_path) -> None:
    """studies.season.stream_context: upload order, a window of earlier rows, never the row itself; thumbnails."""
    from PIL import Image

    from studies.season import stream_context, thumbnails

    probs = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0]])
    order = np.array([3, 0, 2, 1])  # uploaded: row 3, then 0, 2, 1
    ctx = np.exp(stream_context(probs, order, window=2)) - 1e-3
    assert np.allclose(ctx[3], 1 / 3)  # first upload: nothing before it
    assert np.allclose(ctx[0], probs[3])  # second: the first only
    assert np.allclose(ctx[2], (probs[3] + probs[0]) / 2)
    assert np.allclose(ctx[1], (probs[0] + probs[2]) / 2)  # window 2: row 3 has left it; its own class 1 is not counted

    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (60, 80), colour).save(tmp_path / f"{i}.jpg")
    t = thumbnails([tmp_path / "0.jpg", tmp_path / "1.jpg"])
    assert t.shape == (2, 12 * 16 * 3) and t[0, 0] > 0.9 > 0.1 > t[0, 2] and t[1, 2] > 0.9

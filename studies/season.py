"""Why season stops near 0.80: what the photo and the title can add, measured on validation only.

``python -m studies.season --data fpi:DIR --models-dir models`` reads the served image
model's calibrated logits (readout vectors from the feature cache) and the committed title
model, then on the **validation part** (test rows are never read):

1. the catalog year against the season label (training + validation rows): the catalog's
   season is mostly the collection's year, not the garment;
2. balanced accuracy of stacked signals, each a class-weighted logistic regression fitted by
   5-fold cross-validation *within* validation (5 shuffles, mean), so every candidate is
   judged on rows its stacker did not see: image, title, both, and both with one more signal
   (nearest titles, a linear model on the readout, the catalog year predicted from the
   title, a gradient-boosted model on a 12x16-pixel thumbnail of the photo, and the *stream
   context*: the served season of the 50 uploads before it, in catalog-id order), and with
   the true catalog year (an oracle no upload carries, for the ceiling);
3. the title model's learning curve: more training titles, how much more season.

Prints a Markdown report (docs/accuracy.md quotes it) and writes it with ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from pathlib import Path

import numpy as np

TASK = "season"
FOLDS, SHUFFLES = 5, 5
WINDOW = 50  # uploads of stream context


def stacked_balanced_accuracy(features: list[np.ndarray], y: np.ndarray, seeds: int = SHUFFLES) -> float:
    """Mean out-of-fold balanced accuracy of a class-weighted logistic regression on ``features`` (rows = ``y``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    x = np.hstack(features)
    scores = []
    for seed in range(seeds):
        order = np.random.default_rng(seed).permutation(len(y))
        pred = np.zeros(len(y), np.int64)
        for f in range(FOLDS):
            held = order[f::FOLDS]
            fit = np.setdiff1d(order, held)
            model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(x[fit], y[fit])
            pred[held] = model.predict(x[held])
        scores.append(balanced_accuracy_score(y, pred))
    return float(np.mean(scores))


def nearest_title_votes(x: object, train: np.ndarray, rows: np.ndarray, y_train: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """Log of the prior-corrected, similarity-weighted class votes of each row's ``k`` most similar training titles."""
    from sklearn.preprocessing import normalize

    xn = normalize(x)
    sim = np.asarray((xn[rows] @ xn[train].T).todense())
    top = np.argpartition(-sim, k, axis=1)[:, :k]
    prior = np.bincount(y_train, minlength=n_classes) / len(y_train)
    votes = np.einsum("nk,nkc->nc", np.take_along_axis(sim, top, 1), (np.eye(n_classes)[y_train] / prior)[top])
    return np.log(votes + 1e-3)


def stream_context(probs: np.ndarray, order: np.ndarray, window: int) -> np.ndarray:
    """Log of the mean of ``probs`` over the ``window`` rows before each row in ``order`` (upload order), itself excluded.

    The first row has no context: a uniform distribution. Labels are never read, only what was served.
    """
    p = probs[order]
    c = np.cumsum(np.r_[np.zeros((1, p.shape[1])), p], axis=0)
    i = np.arange(len(p))
    lo = np.maximum(0, i - window)
    ctx = np.where((i > 0)[:, None], (c[i] - c[lo]) / np.maximum(1, i - lo)[:, None], 1.0 / p.shape[1])
    out = np.empty_like(ctx)
    out[order] = ctx
    return np.log(out + 1e-3)


def thumbnails(paths: list[Path], size: tuple[int, int] = (12, 16)) -> np.ndarray:
    """Each photo shrunk to ``size`` (width, height) RGB, pixels in [0, 1], one row per photo."""
    from PIL import Image

    rows = []
    for path in paths:
        with Image.open(path) as im:
            rows.append(np.asarray(im.convert("RGB").resize(size), np.float32).ravel() / 255)
    return np.stack(rows)


def catalog_years(data_dir: Path) -> dict[str, str]:
    with (data_dir / "styles.csv").open(newline="", encoding="utf-8", errors="replace") as f:
        return {r["id"]: (r.get("year") or "").strip() for r in csv.DictReader(f)}


def year_table(years: list[str], y: np.ndarray, classes: tuple[str, ...]) -> list[str]:
    counts = Counter(zip(years, y, strict=True))
    lines = ["| catalog year | " + " | ".join(classes) + " | rows |", "|---|" + "---:|" * (len(classes) + 1)]
    for yr in sorted(set(years)):
        row = [counts[(yr, c)] for c in range(len(classes))]
        if sum(row) >= 20:
            lines.append(f"| {yr or '?'} | " + " | ".join(str(n) for n in row) + f" | {sum(row)} |")
    return lines


def _year_bins(years: list[str]) -> np.ndarray:
    """The catalog year as a class (the years with many rows apart, the rest before/after)."""
    common = {"2011": 1, "2012": 2, "2015": 3, "2016": 4}
    return np.array([common.get(v, 0 if (v or "0") < "2011" else 5) for v in years])


def _signals(x: object, readout: np.ndarray, tr: np.ndarray, va: np.ndarray, y: np.ndarray, years: np.ndarray,
             k: int, thumbs: np.ndarray) -> dict[str, np.ndarray]:
    """Validation-row features of the extra signals, each fitted on the training rows only."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(readout[tr])
    linear = LogisticRegression(C=0.001, class_weight="balanced", max_iter=500).fit(scaler.transform(readout[tr]), y[tr])
    year_model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=3000).fit(x[tr], years[tr])
    boosted = HistGradientBoostingClassifier(max_iter=300, class_weight="balanced", random_state=0).fit(thumbs[tr], y[tr])
    return {
        "nearest titles (10)": nearest_title_votes(x, tr, va, y[tr], 10, k),
        "linear model on the readout": linear.decision_function(scaler.transform(readout[va])),
        "catalog year predicted from the title": year_model.decision_function(x[va]),
        "the photo's 12x16 thumbnail (gradient boosting)": np.log(boosted.predict_proba(thumbs[va]) + 1e-4),
    }


def _learning_curve(x: object, tr: np.ndarray, va: np.ndarray, y: np.ndarray, image_val: np.ndarray) -> list[str]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    lines = ["| training titles | title alone | image + title (stacked) |", "|---:|---:|---:|"]
    for frac in (0.5, 0.75, 1.0):
        alone, both = [], []
        for seed in range(3 if frac < 1 else 1):
            sub = np.random.default_rng(seed).permutation(tr)[: int(frac * len(tr))]
            zt = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit(x[sub], y[sub]).decision_function(x[va])
            alone.append(balanced_accuracy_score(y[va], zt.argmax(1)))
            both.append(stacked_balanced_accuracy([image_val, zt], y[va], seeds=2))
        lines.append(f"| {int(frac * len(tr))} ({frac:.0%}) | {np.mean(alone):.3f} | {np.mean(both):.3f} |")
    return lines


def study(data: str, models_dir: Path, cache_dir: Path, split_path: Path | None = None) -> str:
    from sklearn.metrics import balanced_accuracy_score

    from training.data.datasets import load
    from training.data.split import Split
    from training.features.text import present_buckets, tfidf
    from training.features.readout import served_readout
    from training.manifest.read import read_models
    from training.steps.train_title import image_logits

    kind, _, path = data.partition(":")
    if kind != "fpi":
        raise SystemExit("studies.season reads the catalog year: it needs an fpi:DIR dataset")
    dataset = load(data, ["Apparel"])
    split = Split.load(split_path or models_dir / "split.json")
    models = read_models(models_dir)
    if models.title is None:
        raise SystemExit(f"{models_dir} has no title model: run `autolabel train-title` first")
    samples, logits = image_logits(models_dir, dataset, cache_dir)
    readout = served_readout(models, dataset, cache_dir).readout
    classes = dataset.classes[TASK]
    title = models.title.load({TASK: classes})
    x = tfidf(present_buckets([s.title for s in samples], title.text), title.idf)
    y = np.array([classes.index(s.label(TASK)) if s.label(TASK) in classes else -1 for s in samples])
    row = {s.key: i for i, s in enumerate(samples)}
    tr, va = (np.array(sorted(row[k] for k in split.keys(TASK, p) if k in row and y[row[k]] >= 0)) for p in ("train", "val"))
    year_of = catalog_years(Path(path))
    years = [year_of.get(s.key, "") for s in samples]
    bins = _year_bins(years)
    zi, zt = logits[TASK][va], title.tasks[TASK].title_logits(x[va])
    fused = title.tasks[TASK].fused_logits(zi, zt)
    yv = y[va]
    out = [f"## Season on validation ({len(va)} rows, Apparel; test not read)", "",
           "Catalog year against the season label (training + validation rows):", "",
           *year_table([years[i] for i in np.r_[tr, va]], y[np.r_[tr, va]], classes), "",
           "| signals | balanced accuracy (val) |", "|---|---:|",
           f"| image (served head) | {balanced_accuracy_score(yv, zi.argmax(1)):.3f} |",
           f"| title (served text model) | {balanced_accuracy_score(yv, zt.argmax(1)):.3f} |",
           f"| image + title, served fusion (fitted on all of val) | {balanced_accuracy_score(yv, fused.argmax(1)):.3f} |",
           f"| image + title, stacked (cross-validated) | {stacked_balanced_accuracy([zi, zt], yv):.3f} |"]
    extras = _signals(x, readout, tr, va, y, bins, len(classes), thumbnails([samples[i].path for i in range(len(samples))]))
    served = np.exp(fused - fused.max(1, keepdims=True))
    ids = np.array([int(s.key) if s.key.isdigit() else i for i, s in enumerate(samples)])[va]
    extras[f"stream context: the served season of the {WINDOW} uploads before it"] = stream_context(
        served / served.sum(1, keepdims=True), np.argsort(ids, kind="stable"), WINDOW)
    thumb = extras["the photo's 12x16 thumbnail (gradient boosting)"]
    out.append(f"| the photo's 12x16 thumbnail alone (gradient boosting) | {balanced_accuracy_score(yv, thumb.argmax(1)):.3f} |")
    for name, extra in extras.items():
        out.append(f"| image + title + {name} (cross-validated) | {stacked_balanced_accuracy([zi, zt, extra], yv):.3f} |")
    year_1hot = np.eye(bins.max() + 1)[bins[va]]
    out += [f"| *oracle*: the true catalog year alone | {stacked_balanced_accuracy([year_1hot], yv):.3f} |",
            f"| *oracle*: image + title + the true catalog year | {stacked_balanced_accuracy([zi, zt, year_1hot], yv):.3f} |",
            "", "Title model trained on more titles (served featurisation, C = 1):", "",
            *_learning_curve(x, tr, va, y, zi)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    from training.features.cache import DEFAULT_CACHE_DIR

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="fpi:DIR (the catalog year is read from its styles.csv)")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--split", type=Path, default=None, help="default: <models-dir>/split.json")
    p.add_argument("--cache-dir", type=Path, default=Path(DEFAULT_CACHE_DIR))
    p.add_argument("--out", type=Path, default=None, help="also write the report here")
    a = p.parse_args(argv)
    t0 = time.time()
    report = study(a.data, a.models_dir, a.cache_dir, a.split)
    print(report + f"\n({time.time() - t0:.0f} s)")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(report)


if __name__ == "__main__":
    main()

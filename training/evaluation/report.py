"""Report folders: confusion matrices and training curves as PNG, and a Markdown page."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.heads.keras_heads import STUDY_TEST_ACCURACY


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], title: str, path: Path) -> Path:
    """Counts, with each row's share of the true class as the colour (recall on the diagonal)."""
    plt = _plt()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(classes), 1.0 + 1.0 * len(classes)))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{matrix[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(history: Mapping[str, Any], title: str, path: Path) -> Path:
    """Loss and accuracy per epoch, train and validation; the restored epoch is marked."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key in ((a1, "loss"), (a2, "accuracy")):
        ax.plot(epochs, history.get(key, []), label=f"train {key}")
        if history.get(f"val_{key}"):
            ax.plot(epochs, history[f"val_{key}"], label=f"val {key}")
        best = history.get("best_epoch")
        if best:
            ax.axvline(best, color="grey", ls=":", lw=1, label=f"kept epoch {best}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_calibration(task: str, y: np.ndarray, probs: np.ndarray, threshold: float | Sequence[float] | None, path: Path) -> Path:
    """Left: reliability diagram (accuracy per confidence bin vs the diagonal, bar width = rows).
    Right: coverage vs precision of the auto-accepted labels as the threshold moves; the
    shipped threshold is marked."""
    from training.heads.calibration import accepted_mask, coverage_curve, expected_calibration_error, reliability

    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    bins = reliability(probs, y, bins=10)
    n = max(sum(b.n for b in bins), 1)
    centres = [(b.lower + b.upper) / 2 for b in bins if b.n]
    a1.bar(centres, [b.accuracy for b in bins if b.n], width=0.09, alpha=0.75, label="accuracy in bin")
    a1.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
    a1.scatter(centres, [b.confidence for b in bins if b.n], s=[10 + 200 * b.n / n for b in bins if b.n], color="C1", zorder=3,
               label="mean confidence (size: rows)")
    a1.set_xlim(0, 1)
    a1.set_ylim(0, 1)
    a1.set_xlabel("confidence")
    a1.set_ylabel("accuracy")
    a1.set_title(f"{task}: reliability (ECE {expected_calibration_error(probs, y):.3f})", fontsize=10)
    a1.legend(fontsize=7, loc="upper left")
    curve = coverage_curve(probs.max(1), probs.argmax(1) == y)
    a2.plot(curve.coverage, curve.precision, lw=1.5)
    if threshold is not None:
        accepted = accepted_mask(probs, threshold)
        cov = float(accepted.mean()) if len(y) else 0.0
        prec = float((probs.argmax(1) == y)[accepted].mean()) if accepted.any() else float("nan")
        a2.scatter([cov], [prec], color="C3", zorder=3,
                   label=f"threshold {fmt_threshold(threshold)}: coverage {cov:.0%}, precision {prec:.3f}")
        a2.legend(fontsize=7, loc="lower left")
    a2.axhline(0.95, color="grey", ls=":", lw=1)
    a2.set_xlim(0, 1)
    a2.set_ylim(max(0.0, float(np.nanmin(curve.precision)) - 0.05) if len(curve.precision) else 0, 1.01)
    a2.set_xlabel("coverage (share auto-accepted)")
    a2.set_ylabel("precision of accepted labels")
    a2.set_title(f"{task}: coverage vs precision", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fmt_threshold(threshold: float | Sequence[float]) -> str:
    """0.912, or one per class: 0.461/0.978/0.999."""
    return f"{threshold:.3f}" if np.ndim(threshold) == 0 else "/".join(f"{t:.3f}" for t in threshold)  # type: ignore[union-attr]


def accept_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Per task: calibration error and what the shipped threshold auto-accepts."""
    lines = ["| task | ECE | threshold | coverage (auto-accepted) | precision of accepted |", "|---|---:|---:|---:|---:|"]
    for task, m in results.items():
        a = m.get("auto_accept")
        if a is None:
            lines.append(f"| {task} | {m.get('ece', float('nan')):.3f} | (none shipped) | | |")
            continue
        lines.append(f"| {task} | {m['ece']:.3f} | {fmt_threshold(a['threshold'])} | {a['coverage']:.3f} ({a['accepted']}/{a['rows']}) |"
                     f" {a['precision']:.3f} |")
    return "\n".join(lines)


def metrics_table(results: Mapping[str, Mapping[str, Any]], study: Mapping[str, float] = STUDY_TEST_ACCURACY) -> str:
    lines = [
        "| task | n | accuracy | balanced accuracy | macro-F1 | study test accuracy | balanced acc. - study |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task, m in results.items():
        s = study.get(task)
        gap = f"{m['balanced_accuracy'] - s:+.3f}" if s is not None else ""
        lines.append(
            f"| {task} | {m['n']} | {m['accuracy']:.3f} | {m['balanced_accuracy']:.3f} | {m['macro_f1']:.3f} |"
            f" {'' if s is None else f'{s:.2f}'} | {gap} |"
        )
    return "\n".join(lines)


def per_class_table(task: str, m: Mapping[str, Any]) -> str:
    lines = [f"| {task}: class | precision | recall | F1 | n |", "|---|---:|---:|---:|---:|"]
    for c, v in m["per_class"].items():
        lines.append(f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |")
    return "\n".join(lines)


def write_report(
    out_dir: Path,
    title: str,
    results: Mapping[str, Mapping[str, Any]],
    confusions: Mapping[str, tuple[np.ndarray, Sequence[str]]],
    histories: Mapping[str, Mapping[str, Any]] | None = None,
    notes: Sequence[str] = (),
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray, float | None]] | None = None,
) -> Path:
    """``out_dir/report.md`` with the metrics, per-class tables and the PNGs beside it.

    ``predictions``: per task (labels, probabilities, threshold) for the calibration plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", "", *notes, "", metrics_table(results), ""]
    if any("ece" in m for m in results.values()):
        parts += [accept_table(results), ""]
    for task, m in results.items():
        parts += [f"## {task}", "", per_class_table(task, m), ""]
        stem = "".join(c if c.isalnum() else "_" for c in task).strip("_")  # "season [image+title]" -> season__image_title
        if predictions and task in predictions and len(predictions[task][0]):
            y, probs, thr = predictions[task]
            png = plot_calibration(task, y, probs, thr, out_dir / f"calibration_{stem}.png")
            parts += [f"![{task} reliability and coverage]({png.name})", ""]
        if task in confusions:
            matrix, classes = confusions[task]
            png = plot_confusion(matrix, classes, f"{task}: confusion (n={m['n']})", out_dir / f"confusion_{stem}.png")
            parts += [f"![{task} confusion matrix]({png.name})", ""]
        if histories and task in histories:
            png = plot_curves(histories[task], f"{task}: training curves", out_dir / f"curves_{task}.png")
            parts += [f"![{task} training curves]({png.name})", ""]
    page = out_dir / "report.md"
    page.write_text("\n".join(parts).rstrip() + "\n")
    return page


def category_table(by_category: Mapping[str, Mapping[str, Any]]) -> str:
    """Per category outside the headline: n and balanced accuracy per task."""
    order = ("style", "gender", "season")
    tasks = sorted({t for row in by_category.values() for t in row}, key=lambda t: order.index(t) if t in order else 99)
    lines = ["| category | " + " | ".join(f"{t}: n, bal. acc." for t in tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for cat, row in by_category.items():
        cells = [f"{row[t]['n']}, {row[t]['balanced_accuracy']:.3f}" if t in row else "" for t in tasks]
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def joint_table(result: Any) -> str:
    """`autolabel train`'s summary of a joint run: val and test per task, with calibration and auto-accept."""
    lines = ["| task | part | n | accuracy | balanced acc. | macro-F1 | ECE | threshold | coverage | auto-accepted precision |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t, o in result.outcomes.items():
        for part in ("val", "test"):
            m = o.metrics.get(part)
            if not m:
                continue
            a = m["auto_accept"]
            lines.append(f"| {t} | {part} | {m['n']} | {m['accuracy']:.3f} | {m['balanced_accuracy']:.3f} | {m['macro_f1']:.3f} |"
                         f" {m['ece']:.3f} | {fmt_threshold(a['threshold'])} | {a['coverage']:.3f} | {a['precision']:.3f} |")
    return "\n".join(lines)


def title_table(model: Any, used: Mapping[str, int]) -> str:
    """`autolabel train-title`: rows with a title, validation balanced accuracy per input, auto-accept with a title."""
    lines = ["| task | train rows with a title | val balanced acc.: image | title | image+title | auto-accepted with a title (val) |",
             "|---|---:|---:|---:|---:|---|"]
    for task, m in model.tasks.items():
        val = {inputs: parts["val"]["balanced_accuracy"] for inputs, parts in m.metrics.items()}
        aa = m.metrics["image+title"]["val"].get("auto_accept", {})
        lines.append(f"| {task} | {used[task]} | {val['image']:.3f} | {val['title']:.3f} | {val['image+title']:.3f} |"
                     f" {aa.get('coverage', 0):.0%} at precision {aa.get('precision', float('nan')):.3f} |")
    return "\n".join(lines)


def comparison_table(comparison: Sequence[tuple[str, Any]]) -> str:
    """`autolabel train --readout none`'s table: each candidate head (balance mode) on validation and test."""
    lines = ["| task | balance | train rows (+augmented) | val bal. acc | test acc | test bal. acc | test macro-F1 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for task, r in comparison:
        lines.append(
            f"| {task} | {r.balance} | {r.n_train} (+{r.n_augmented}) | {r.val['balanced_accuracy']:.3f} |"
            f" {r.test['accuracy']:.3f} | {r.test['balanced_accuracy']:.3f} | {r.test['macro_f1']:.3f} |"
        )
    return "\n".join(lines)



def fine_tune_note(r: Any) -> str:
    """The fine-tuning of a per-task head, as a clause of the run report (empty without one)."""
    if r.fine_tune is None or r.fine_tune_history is None:
        return ""
    h = r.fine_tune_history
    return (f"; then fine-tuned the top {r.fine_tune.blocks} block(s) with the head: {r.fine_tune.optimizer} lr"
            f" {r.fine_tune.learning_rate:g}, {r.fine_tune.epochs} epochs, kept epoch {h.best_epoch}, {h.seconds:.1f}s")



def write_run(run_dir: Path, results: Sequence[Any], data: str, cfg: Any) -> None:
    """A per-task training run's report folder: metrics.json and the report page of the test split."""
    from training.heads.metrics import confusion

    metrics = {r.task: r.test for r in results}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    notes = [
        f"Data: `{data}`; backbone {cfg.backbone.describe()} at {cfg.backbone.input_size[0]}x{cfg.backbone.input_size[1]}"
        f" ({cfg.resize}); test split of seed {cfg.seed}, scored on cached features.",
        "",
        *[f"- {r.task}: {r.config.describe()}, balance {r.balance}, {r.n_train} train rows (+{r.n_augmented} augmented),"
          f" kept epoch {r.history.best_epoch}, {r.history.seconds:.1f}s" + fine_tune_note(r) for r in results],
    ]
    confusions = {r.task: (confusion(r.y_test, r.p_test.argmax(1), len(r.classes)), r.classes) for r in results}
    write_report(run_dir, "Training run: test split", metrics, confusions, {r.task: r.history.to_dict() for r in results}, notes)

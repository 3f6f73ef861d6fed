"""Report folders: confusion matrices and training curves as PNG, and a Markdown page."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.heads import STUDY_TEST_ACCURACY


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
) -> Path:
    """``out_dir/report.md`` with the metrics, per-class tables and the PNGs beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", "", *notes, "", metrics_table(results), ""]
    for task, m in results.items():
        parts += [f"## {task}", "", per_class_table(task, m), ""]
        if task in confusions:
            matrix, classes = confusions[task]
            png = plot_confusion(matrix, classes, f"{task}: confusion (n={m['n']})", out_dir / f"confusion_{task}.png")
            parts += [f"![{task} confusion matrix]({png.name})", ""]
        if histories and task in histories:
            png = plot_curves(histories[task], f"{task}: training curves", out_dir / f"curves_{task}.png")
            parts += [f"![{task} training curves]({png.name})", ""]
    page = out_dir / "report.md"
    page.write_text("\n".join(parts).rstrip() + "\n")
    return page

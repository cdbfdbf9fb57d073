"""PNG plots for the reports (matplotlib, Agg backend: no display needed).

Every function writes one PNG and returns its path. Scores may be probabilities or raw anomaly
scores: histograms take their range from the data unless `value_range` is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from sklearn.metrics import (  # type: ignore[import-untyped,unused-ignore]
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

DPI = 110
BAND_COLOR = "orange"
THRESHOLD_COLOR = "red"


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _mark_threshold(
    ax: Any, threshold: float | None, band: tuple[float, float] | None, legend: bool = True
) -> None:
    if band is not None:
        ax.axvspan(
            band[0],
            band[1],
            color=BAND_COLOR,
            alpha=0.15,
            label=f"uncertain band [{band[0]:.3g}, {band[1]:.3g})" if legend else None,
        )
    if threshold is not None:
        ax.axvline(
            threshold,
            color=THRESHOLD_COLOR,
            linestyle="--",
            label=f"threshold {threshold:.3g}" if legend else None,
        )


def plot_confusion(
    matrix: Sequence[Sequence[int]] | npt.NDArray[Any],
    classes: Sequence[str],
    path: Path,
    title: str,
    *,
    columns: Sequence[str] | None = None,
    xlabel: str = "predicted",
    ylabel: str = "true",
) -> Path:
    """Counts in cells; `columns` when the predicted axis differs (e.g. a "passed" column)."""
    m = np.asarray(matrix)
    cols = list(columns) if columns is not None else list(classes)
    fig, ax = plt.subplots(figsize=(1.4 + 0.9 * len(cols), 1.0 + 0.8 * len(classes)))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), list(classes))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    top = m.max() if m.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            color = "white" if top and m[i, j] > top / 2 else "black"
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color=color)
    return _save(fig, path)


def plot_pr_curves(
    y_true: Sequence[int] | npt.NDArray[Any],
    probs: npt.NDArray[Any],
    classes: Sequence[str],
    path: Path,
    title: str = "precision-recall per class (test split)",
) -> Path:
    """One-vs-rest PR curves of a classifier's class probabilities."""
    y = np.asarray(y_true)
    curves: dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]] = {}
    for i, name in enumerate(classes):
        if (y == i).any():
            precision, recall, _ = precision_recall_curve(y == i, probs[:, i])
            curves[name] = (np.asarray(recall), np.asarray(precision))
    return plot_pr_xy(curves, path, title)


def plot_pr_xy(
    curves: Mapping[
        str, tuple[Sequence[float] | npt.NDArray[Any], Sequence[float] | npt.NDArray[Any]]
    ],
    path: Path,
    title: str,
    ap: Mapping[str, float] | None = None,
) -> Path:
    """PR curves given as (recall, precision) per class; `ap` adds "AP 0.81" to the legend."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (recall, precision) in curves.items():
        label = f"{name} (AP {ap[name]:.3f})" if ap and name in ap else name
        ax.plot(recall, precision, label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    if curves:
        ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_score_histogram(
    groups: Mapping[str, Sequence[float] | npt.NDArray[Any]],
    path: Path,
    title: str,
    threshold: float | None = None,
    *,
    band: tuple[float, float] | None = None,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    xlabel: str = "score",
    ylabel: str = "images",
) -> Path:
    """Overlaid histograms of score groups; `value_range` None takes the range of the data."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _histograms(ax, groups, value_range, threshold, band)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _bins(
    values: Sequence[npt.NDArray[Any]], value_range: tuple[float, float] | None, extra: list[float]
) -> npt.NDArray[np.float64]:
    if value_range is not None:
        return np.linspace(value_range[0], value_range[1], 41)
    every = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values] + [extra])
    lo, hi = (float(every.min()), float(every.max())) if every.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, 41)


def _histograms(
    ax: Any,
    groups: Mapping[str, Sequence[float] | npt.NDArray[Any]],
    value_range: tuple[float, float] | None,
    threshold: float | None,
    band: tuple[float, float] | None,
    filled: str | None = None,
) -> None:
    arrays = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in groups.items()}
    marks = [x for x in (threshold, *(band or ())) if x is not None]
    bins = _bins(list(arrays.values()), value_range, marks)
    for name, values in arrays.items():
        shown = np.clip(values, bins[0], bins[-1])
        ax.hist(
            shown,
            bins=bins,
            alpha=0.55,
            label=f"{name} ({len(values)})",
            histtype="stepfilled" if filled in (None, name) else "step",
            linewidth=1.5,
        )
    _mark_threshold(ax, threshold, band)


def plot_class_histograms(
    scores: Sequence[float] | npt.NDArray[Any],
    labels: Sequence[str] | npt.NDArray[Any],
    good_class: str,
    path: Path,
    title: str,
    threshold: float | None = None,
    band: tuple[float, float] | None = None,
    xlabel: str = "score",
) -> Path:
    """One panel per defect class: the good parts' scores against that class's, threshold and
    uncertainty band drawn, all panels on the same bins."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(str)
    defects = sorted(set(y.tolist()) - {good_class}) or [good_class]
    cols = min(3, len(defects))
    rows = -(-len(defects) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    marks = [x for x in (threshold, *(band or ())) if x is not None]
    bins = _bins([s], None, marks)
    for ax, cls in zip(axes.ravel(), defects, strict=False):
        groups = {good_class: s[y == good_class], cls: s[y == cls]}
        _histograms(ax, groups, (float(bins[0]), float(bins[-1])), threshold, band, good_class)
        ax.set_title(f"{good_class} vs {cls}", fontsize=10)
        ax.set_xlabel(xlabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes.ravel()[len(defects) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)


def plot_roc(
    curves: Mapping[
        str, tuple[Sequence[bool] | npt.NDArray[Any], Sequence[float] | npt.NDArray[Any]]
    ],
    path: Path,
    title: str,
    threshold: float | None = None,
) -> Path:
    """ROC curves of (is_defect, score) pairs; the operating point at `threshold` is marked."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (y_true, score) in curves.items():
        y = np.asarray(y_true, dtype=bool)
        s = np.asarray(score, dtype=np.float64)
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        (line,) = ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y, s):.3f})")
        if threshold is not None:
            ax.plot(
                float((s[~y] >= threshold).mean()),
                float((s[y] >= threshold).mean()),
                "o",
                color=line.get_color(),
            )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false-reject rate (good parts flagged)")
    ax.set_ylabel("defects caught (1 - miss rate)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(title + ("\n(dots: the threshold)" if threshold is not None else ""))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_training_curves(
    series: Mapping[str, Sequence[float]],
    path: Path,
    title: str,
    *,
    epochs: Sequence[float] | None = None,
    best_epoch: float | None = None,
    ylabel: str = "validation metric",
) -> Path:
    """Metric per epoch (one line per series); the best epoch as a dotted vertical line."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, values in series.items():
        x = list(epochs) if epochs is not None else list(range(1, len(values) + 1))
        ax.plot(x[: len(values)], list(values), label=name)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch:g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bars(
    values: Mapping[str, float | None],
    path: Path,
    title: str,
    *,
    target: float | None = None,
    ylabel: str = "",
    limits: tuple[float, float] = (0.0, 1.0),
) -> Path:
    """One bar per class (missing values drawn as 0), the target as a dashed line."""
    names = list(values)
    heights = [values[n] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(1.6 + 0.8 * len(names), 4))
    colors = ["tab:green" if target is None or h > target else "tab:red" for h in heights]
    ax.bar(range(len(names)), heights, color=colors)
    for i, h in enumerate(heights):
        ax.text(i, h + 0.01 * (limits[1] - limits[0]), f"{h:.2f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    if target is not None:
        ax.axhline(target, color=THRESHOLD_COLOR, linestyle="--", label=f"target {target:g}")
        ax.legend(fontsize=8)
    ax.set_ylim(*limits)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)

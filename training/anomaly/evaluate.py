"""Calibration and metrics: threshold for a miss-rate target, AUROC, per-class rates."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from service.inference.preprocess import PreprocessSpec

# one pHash, union-find and exposure-bracket rule for every split


def calibrate(good: np.ndarray, defects: np.ndarray, target_miss: float) -> dict[str, float]:
    """Highest threshold whose miss rate on the calibration defects is <= target_miss (a part is
    flagged when raw score >= threshold); min/max from all validation scores."""
    ordered = np.sort(defects.astype(np.float64))
    allowed = math.floor(target_miss * len(ordered) + 1e-9)
    threshold = float(ordered[allowed])
    every = np.concatenate([good, defects]).astype(np.float64)
    return {
        "threshold": threshold,
        "min": float(every.min()),
        "max": float(every.max()),
        "val_miss_rate": float((defects < threshold).mean()),
        "val_false_reject_rate": float((good >= threshold).mean()),
    }


def auroc(good: np.ndarray, defects: np.ndarray) -> float | None:
    if len(good) == 0 or len(defects) == 0:
        return None
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(good)), np.ones(len(defects))]
    return float(roc_auc_score(y, np.r_[good, defects]))


def split_metrics(
    labels: Sequence[str],
    scores: np.ndarray,
    good_class: str,
    threshold: float,
    norm: Callable[[np.ndarray], np.ndarray] | None = None,
    band: float = 0.1,
) -> dict[str, Any]:
    labels_a = np.asarray(labels)
    good = scores[labels_a == good_class]
    bad = scores[labels_a != good_class]
    per_class: dict[str, Any] = {}
    for c in sorted(set(labels) - {good_class}):
        s = scores[labels_a == c]
        per_class[c] = {
            "images": len(s),
            "miss_rate": round(float((s < threshold).mean()), 4),
            "auroc": _round(auroc(good, s)),
        }
    out: dict[str, Any] = {
        "good_images": len(good),
        "defect_images": len(bad),
        "auroc": _round(auroc(good, bad)),
        "miss_rate": round(float((bad < threshold).mean()), 4) if len(bad) else None,
        "false_reject_rate": round(float((good >= threshold).mean()), 4) if len(good) else None,
        "per_class": per_class,
    }
    if norm is not None:  # what the service's PASS / UNCERTAIN / FAIL would be (0.5 +- band)
        n = norm(scores)
        verdict = np.where(n >= 0.5 + band, "fail", np.where(n >= 0.5 - band, "uncertain", "pass"))
        out["service_verdicts"] = {
            c: dict(sorted(Counter(verdict[labels_a == c].tolist()).items()))
            for c in sorted(set(labels))
        }
    return out


def _round(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(x, n)


def histogram_png(
    path: Path,
    splits: dict[str, tuple[Sequence[str], np.ndarray]],
    good_class: str,
    threshold: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4), squeeze=False)
    every = np.concatenate([s for _, s in splits.values()])
    bins = np.linspace(float(every.min()), float(every.max()), 41)
    for ax, (name, (labels, scores)) in zip(axes[0], splits.items(), strict=True):
        labels_a = np.asarray(labels)
        for c in sorted(set(labels), key=lambda c: (c != good_class, c)):
            ax.hist(
                scores[labels_a == c],
                bins=bins,
                alpha=0.55,
                label=f"{c} ({(labels_a == c).sum()})",
                histtype="stepfilled" if c == good_class else "step",
                linewidth=1.5,
            )
        ax.axvline(threshold, color="k", linestyle="--", label="threshold")
        ax.set_title(f"{name} split: raw anomaly score")
        ax.set_xlabel("raw anomaly score (pred_score)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pixel_auroc(
    paths: Sequence[Path], maps: Sequence[np.ndarray], spec: PreprocessSpec, resize: str
) -> float | None:
    """Per-pixel AUROC over the test images that have masks (maps at model resolution; masks
    geometrically transformed the same way as the images)."""
    from service.inference.preprocess import letterbox, stretch

    ys, ss = [], []
    rng = np.random.default_rng(0)
    for p, m in zip(paths, maps, strict=True):
        mask_path = p.with_suffix(".png")
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) if mask_path.is_file() else None
        if mask is None:
            continue
        mask = cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR)
        if resize == "letterbox":
            mask, _ = letterbox(mask, spec.size, 0)
        else:
            mask, _ = stretch(mask, spec.size)
        y = (mask[..., 0] > 127).reshape(-1)
        s = m.reshape(-1)
        keep = rng.random(y.size) < 0.05  # subsample pixels: enough for a stable AUROC
        ys.append(y[keep])
        ss.append(s[keep])
    if not ys:
        return None
    y = np.concatenate(ys)
    if y.all() or not y.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, np.concatenate(ss)))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x

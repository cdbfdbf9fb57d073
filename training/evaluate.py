"""Metrics and the production-readiness verdict, computed with scikit-learn (never hand-rolled).

Readiness criteria are the domain brief's (shared/docs/domain.md):
- classification: accuracy > 90 %, every class F1 > 0.85, no class recall < 0.80;
- detection: mAP50 > 0.80, every class AP50 > 0.75, false-positive rate < 10 %, miss rate on
  critical defects < 5 %;
- anomaly: AUROC ≥ 0.95 and miss rate ≤ 5 % at the tuned threshold (the false-reject rate is
  reported beside it: strict thresholds raise it);
- everywhere: train minus validation accuracy ≤ 10 points (the overfitting signal).
Some criteria cannot be checked by a script (review of the confusion matrix, images from the
production camera, a rollback plan); they are listed as `manual` so nobody mistakes a PASS
here for a sign-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

OVERFIT_POINTS = 10.0
MANUAL_CHECKS = [
    "confusion matrix reviewed by a quality engineer",
    "tested on images from the production camera across all expected conditions",
    "inference latency acceptable for the line",
    "human review defined for edge cases (uncertain frames)",
    "rollback plan",
]


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    good_classes: Sequence[str] = (),
) -> dict[str, Any]:
    y = np.asarray(y_true)
    pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    p, r, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    good = [classes.index(g) for g in good_classes]
    per_class: dict[str, dict[str, float | int | None]] = {}
    for i, name in enumerate(classes):
        mask = y == i
        miss = None
        if good and i not in good and mask.any():
            miss = float(np.isin(pred[mask], good).mean())  # a defect called good
        per_class[name] = {
            "precision": round(float(p[i]), 4),
            "recall": round(float(r[i]), 4),
            "f1": round(float(f1[i]), 4),
            "support": int(support[i]),
            "miss_rate": None if miss is None else round(miss, 4),
        }
    return {
        "images": len(y),
        "accuracy": round(float(accuracy_score(y, pred)), 4),
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "per_class": per_class,
    }


def anomaly_metrics(
    is_defect: Sequence[bool],
    scores: Sequence[float],
    threshold: float,
    defect_class: Sequence[str],
) -> dict[str, Any]:
    """AUROC over all images; miss rate per defect class and false-reject rate at `threshold`."""
    y = np.asarray(is_defect, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    flagged = s >= threshold
    names = np.asarray(defect_class)
    per_class = {
        str(c): {
            "images": int((names == c).sum()),
            "miss_rate": round(float((~flagged[names == c]).mean()), 4),
        }
        for c in sorted(set(names[y].tolist()))
    }
    return {
        "images": len(y),
        "auroc": round(float(roc_auc_score(y, s)), 4) if y.any() and (~y).any() else None,
        "threshold": threshold,
        "miss_rate": round(float((~flagged[y]).mean()), 4) if y.any() else None,
        "false_reject_rate": round(float(flagged[~y].mean()), 4) if (~y).any() else None,
        "per_class": per_class,
    }


def _criterion(
    name: str, value: float | None, limit: float, higher_is_better: bool
) -> dict[str, Any]:
    ok = value is not None and (value > limit if higher_is_better else value < limit)
    return {"criterion": name, "value": value, "limit": limit, "passed": bool(ok)}


def overfitting(train_accuracy: float, val_accuracy: float) -> dict[str, Any]:
    gap = round((train_accuracy - val_accuracy) * 100, 2)
    return {
        "criterion": "train - validation accuracy (points)",
        "value": gap,
        "limit": OVERFIT_POINTS,
        "passed": gap <= OVERFIT_POINTS,
    }


def readiness_classification(test: dict[str, Any], gap: dict[str, Any]) -> dict[str, Any]:
    per = test["per_class"]
    criteria = [
        _criterion("overall accuracy", test["accuracy"], 0.90, True),
        _criterion("lowest class F1", min(c["f1"] for c in per.values()), 0.85, True),
        _criterion("lowest class recall", min(c["recall"] for c in per.values()), 0.80, True)
        | {"limit": 0.80, "passed": min(c["recall"] for c in per.values()) >= 0.80},
        gap,
    ]
    return _verdict(criteria)


def readiness_anomaly(test: dict[str, Any], max_miss: float = 0.05) -> dict[str, Any]:
    criteria = [
        _criterion("AUROC", test["auroc"], 0.95, True) | {"passed": (test["auroc"] or 0) >= 0.95},
        _criterion("miss rate at threshold", test["miss_rate"], max_miss, False)
        | {"passed": test["miss_rate"] is not None and test["miss_rate"] <= max_miss},
        {
            "criterion": "false-reject rate at threshold (reported)",
            "value": test["false_reject_rate"],
            "limit": None,
            "passed": True,
        },
    ]
    return _verdict(criteria)


def readiness_detection(
    map50: float,
    per_class_ap50: dict[str, float],
    fp_rate: float | None,
    critical_miss: float | None,
) -> dict[str, Any]:
    criteria = [
        _criterion("mAP50", map50, 0.80, True),
        _criterion(
            "lowest class AP50",
            min(per_class_ap50.values()) if per_class_ap50 else None,
            0.75,
            True,
        ),
        _criterion("false-positive rate", fp_rate, 0.10, False),
        _criterion("miss rate on critical defects", critical_miss, 0.05, False),
    ]
    return _verdict(criteria)


def _verdict(criteria: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "passed": all(c["passed"] for c in criteria),
        "criteria": criteria,
        "manual": MANUAL_CHECKS,
    }

"""Threshold tuning on the validation split, with the service's own decision rule.

Goal, stated in the card: for each *critical* defect class, the highest threshold whose recall
on validation is still ≥ 1 - max_miss (a miss — a defect called good — is the dangerous error);
for every other defect class, the threshold with the best one-vs-rest F1. Then one uncertainty
band, the narrowest that routes at least `review_share` of validation images to review
(UNCERTAIN), found by running `service.stages.decide` itself over the validation predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.core.types import Verdict
from service.stages.decide import DecisionPolicy, decide_classification

CANDIDATES = np.round(np.arange(0.05, 0.96, 0.01), 2)
BANDS = np.round(np.arange(0.0, 0.31, 0.01), 2)
DEFAULT_BAND = 0.1


def _f1(scores: np.ndarray, positive: np.ndarray, t: float) -> float:
    pred = scores >= t
    tp = float((pred & positive).sum())
    if tp == 0:
        return 0.0
    precision = tp / pred.sum()
    recall = tp / positive.sum()
    f1: float = 2 * precision * recall / (precision + recall)  # a numpy float64
    return f1


def tune_classifier(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    good_classes: Sequence[str] = (),
    critical: Sequence[str] = (),
    max_miss: float = 0.05,
    review_share: float = 0.05,
) -> dict[str, Any]:
    """-> {"thresholds": ThresholdSpec fields, "rationale": {...}} for the model card."""
    y = np.asarray(y_true)
    per_class: dict[str, float] = {}
    rationale: dict[str, Any] = {}
    for i, name in enumerate(classes):
        if name in good_classes:
            continue
        positive = y == i
        if not positive.any():
            rationale[name] = "no validation images: default threshold kept"
            continue
        scores = probs[:, i]
        if name in critical:
            ok = [t for t in CANDIDATES if (scores[positive] >= t).mean() >= 1 - max_miss]
            t = float(max(ok)) if ok else float(CANDIDATES[0])
            rationale[name] = (
                f"critical: highest threshold with validation recall >= {1 - max_miss:.2f}"
            )
        else:
            f1s = np.asarray([_f1(scores, positive, t) for t in CANDIDATES])
            # The middle of the best plateau: a cleanly separated class gets the widest margin
            # on both sides instead of the lowest threshold that happens to tie.
            plateau = np.flatnonzero(f1s >= f1s.max() - 1e-9)
            t = float(CANDIDATES[plateau[len(plateau) // 2]])
            rationale[name] = (
                f"best one-vs-rest F1 on validation ({f1s.max():.3f}), middle of the "
                f"{CANDIDATES[plateau[0]]:.2f}-{CANDIDATES[plateau[-1]]:.2f} plateau"
            )
        per_class[name] = t
    band, share = _band_for_share(probs, classes, good_classes, per_class, review_share)
    if share >= review_share:
        rationale["band"] = (
            f"narrowest band routing >= {review_share:.0%} of validation images to review "
            f"(got {share:.1%})"
        )
    else:  # validation is too clean to reach the share: keep a modest default band
        band = DEFAULT_BAND
        rationale["band"] = (
            f"no band up to {BANDS[-1]:.2f} routes {review_share:.0%} of validation images to "
            f"review (the model is confident on all of them); default ±{DEFAULT_BAND} kept"
        )
    return {
        "thresholds": {
            "default": 0.5,
            "per_class": per_class,
            "band": band,
            "per_class_band": {},
            "min_box_size": 0.0,
        },
        "rationale": rationale,
        "goal": {"critical": list(critical), "max_miss": max_miss, "review_share": review_share},
        "validation_review_share": round(share, 4),
    }


def _band_for_share(
    probs: np.ndarray,
    classes: Sequence[str],
    good: Sequence[str],
    per_class: dict[str, float],
    target: float,
) -> tuple[float, float]:
    share = 0.0
    for band in BANDS:
        policy = DecisionPolicy(
            classes=tuple(classes),
            per_class=per_class,
            band=float(band),
            good_classes=frozenset(good),
        )
        verdicts = [decide_classification(row, policy).verdict for row in probs]
        share = sum(v is Verdict.UNCERTAIN for v in verdicts) / max(len(verdicts), 1)
        if share >= target:
            return float(band), share
    return float(BANDS[-1]), share

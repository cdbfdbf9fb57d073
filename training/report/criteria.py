"""Readiness criteria and next-step advice: pure functions of measured numbers.

Targets are the domain brief's (shared/docs/domain.md, "Production readiness criteria"):
- classification: accuracy > 90 %, every class F1 > 0.85, no class recall < 0.80;
- detection: mAP50 > 0.80, every class AP50 > 0.75, false-positive rate < 10 %, miss rate on
  critical defects < 5 %;
- anomaly / binary good-vs-defect: miss rate (defects passed) ≤ 5 % overall and per defect
  class, 15-25 real defect images per defect class to calibrate the threshold. The brief fixes
  no AUROC and no false-reject number; this project uses AUROC ≥ 0.95 (training.evaluate) and
  a false-reject rate ≤ 10 %, and the criteria say so;
- everywhere: train minus validation accuracy ≤ 10 points (the overfitting signal), no class
  more than 3x the images of the smallest, images per class 50-200 (proof of concept), 200-800
  (pilot), 500-2000 (production).
A criterion measured as None ("not measured") never passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from training.report.model import Criterion, count, percent, points, rate, ratio

CLS_ACCURACY = 0.90
CLS_F1 = 0.85
CLS_RECALL = 0.80
DET_MAP50 = 0.80
DET_CLASS_AP50 = 0.75
DET_FP_RATE = 0.10
DET_CRITICAL_MISS = 0.05
BIN_AUROC = 0.95  # project target (training.evaluate); the domain brief names none
BIN_MISS = 0.05
BIN_FALSE_REJECT = 0.10  # project target; the domain brief says "report it", no number
CALIB_MIN, CALIB_ENOUGH = 15, 25
OVERFIT_POINTS = 10.0
BALANCE_MAX = 3.0
IMAGES_PER_CLASS: dict[str, tuple[int, int]] = {
    "proof of concept": (50, 200),
    "pilot": (200, 800),
    "production": (500, 2000),
}
CONFOUNDERS = ("shadows", "water stains", "paint drips", "dirt", "reflections")


# -- criteria


def _above(
    name: str,
    value: float | None,
    limit: float,
    *,
    strict: bool = True,
    fmt: Callable[[float], str] = ratio,
    note: str = "",
) -> Criterion:
    shown = f"{limit:g}" if fmt is ratio else fmt(limit)
    ok = value is not None and (value > limit if strict else value >= limit)
    return Criterion(name, value, f"{'>' if strict else '≥'} {shown}", ok, note, fmt)


def _below(
    name: str,
    value: float | None,
    limit: float,
    *,
    strict: bool = True,
    fmt: Callable[[float], str] = rate,
    note: str = "",
) -> Criterion:
    shown = f"{limit:g}" if fmt is ratio else fmt(limit)
    ok = value is not None and (value < limit if strict else value <= limit)
    return Criterion(name, value, f"{'<' if strict else '≤'} {shown}", ok, note, fmt)


def _lowest(values: Mapping[str, float | None]) -> tuple[str, float | None]:
    known = {k: v for k, v in values.items() if v is not None}
    if not known:
        return "", None
    name = min(known, key=lambda k: (known[k], k))
    return name, known[name]


def overfitting_criterion(train_accuracy: float | None, val_accuracy: float | None) -> Criterion:
    gap = None
    if train_accuracy is not None and val_accuracy is not None:
        gap = round(100 * (train_accuracy - val_accuracy), 2)
    return _below(
        "train - validation accuracy (points)", gap, OVERFIT_POINTS, strict=False, fmt=points
    )


def classification_criteria(
    accuracy: float | None,
    per_class: Mapping[str, Mapping[str, float | None]],
    *,
    train_accuracy: float | None = None,
    val_accuracy: float | None = None,
) -> list[Criterion]:
    """`per_class[c]` holds at least "f1" and "recall" (test split)."""
    f1_class, f1 = _lowest({c: v.get("f1") for c, v in per_class.items()})
    r_class, recall = _lowest({c: v.get("recall") for c, v in per_class.items()})
    out = [
        _above("overall accuracy", accuracy, CLS_ACCURACY),
        _above(f"lowest class F1 (`{f1_class}`)" if f1_class else "lowest class F1", f1, CLS_F1),
        _above(
            f"lowest class recall (`{r_class}`)" if r_class else "lowest class recall",
            recall,
            CLS_RECALL,
            strict=False,
        ),
    ]
    if train_accuracy is not None or val_accuracy is not None:
        out.append(overfitting_criterion(train_accuracy, val_accuracy))
    return out


def detection_criteria(
    map50: float | None,
    per_class_ap50: Mapping[str, float | None],
    fp_rate: float | None,
    critical_miss: float | None,
    *,
    fp_note: str = "",
    miss_note: str = "",
) -> list[Criterion]:
    ap_class, ap = _lowest(per_class_ap50)
    return [
        _above("mAP50", map50, DET_MAP50),
        _above(
            f"lowest class AP50 (`{ap_class}`)" if ap_class else "lowest class AP50",
            ap,
            DET_CLASS_AP50,
        ),
        _below("false-positive rate", fp_rate, DET_FP_RATE, note=fp_note),
        _below("miss rate on critical defects", critical_miss, DET_CRITICAL_MISS, note=miss_note),
    ]


def binary_criteria(
    auroc: float | None,
    miss_rate: float | None,
    per_class_miss: Mapping[str, float | None],
    false_reject_rate: float | None,
    calib_counts: Mapping[str, int] | None,
    *,
    min_auroc: float = BIN_AUROC,
    max_miss: float = BIN_MISS,
    max_false_reject: float = BIN_FALSE_REJECT,
    min_calib: int = CALIB_MIN,
) -> list[Criterion]:
    """Anomaly / supervised / hybrid good-vs-defect models at their threshold."""
    out = [
        _above(
            "image AUROC (good vs defect)",
            auroc,
            min_auroc,
            strict=False,
            note="project target; the domain brief fixes no AUROC",
        ),
        _below("miss rate (defects passed), all defects", miss_rate, max_miss, strict=False),
    ]
    out += [
        _below(f"miss rate `{c}`", m, max_miss, strict=False)
        for c, m in sorted(per_class_miss.items())
    ]
    out.append(
        _below(
            "false-reject rate (good parts rejected)",
            false_reject_rate,
            max_false_reject,
            strict=False,
            note="project target; the domain brief asks to report it and fixes no number",
        )
    )
    c_class, c_min = _lowest({k: float(v) for k, v in (calib_counts or {}).items()})
    out.append(
        _above(
            f"fewest calibration defects per class (`{c_class}`)"
            if c_class
            else "fewest calibration defects per class",
            c_min,
            min_calib,
            strict=False,
            fmt=count,
            note=f"the domain asks {CALIB_MIN}-{CALIB_ENOUGH} real defect images per defect class",
        )
    )
    return out


# -- advice


@dataclass(frozen=True)
class AdviceContext:
    """What a report knows beyond its metrics, for the advice rules."""

    val_curve: Sequence[float] = ()  # validation metric per epoch, higher is better
    metric_name: str = "validation metric"
    train_accuracy: float | None = None
    val_accuracy: float | None = None
    confounders: Sequence[str] = CONFOUNDERS
    stage: str = "pilot"  # the images-per-class stage "label more" aims at


def stage_minimum(stage: str) -> int:
    if stage not in IMAGES_PER_CLASS:
        raise ValueError(f"unknown stage {stage!r}: one of {sorted(IMAGES_PER_CLASS)}")
    return IMAGES_PER_CLASS[stage][0]


def advise_label_more(
    metric_by_class: Mapping[str, float | None],
    train_counts: Mapping[str, int] | None,
    *,
    metric: str = "recall",
    stage: str = "pilot",
) -> str | None:
    """The weakest class (lowest `metric`) with fewer training images than `stage` needs."""
    name, value = _lowest(metric_by_class)
    if not name or value is None or not train_counts or name not in train_counts:
        return None
    n, need = int(train_counts[name]), stage_minimum(stage)
    if n >= need:
        return None
    return (
        f"label more `{name}` ({n} images now; {stage} needs {need}): "
        f"it has the lowest {metric} ({value:.3f})"
    )


def _ratio(big: float, small: float) -> str:
    r = big / small
    return f"{r:.0f}:1" if r >= 10 or abs(r - round(r)) < 0.05 else f"{r:.1f}:1"


def advise_balance(counts: Mapping[str, int], max_ratio: float = BALANCE_MAX) -> str | None:
    """The domain's balance rule: no class more than `max_ratio` times the smallest."""
    if len(counts) < 2:
        return None
    big = max(counts, key=lambda k: (counts[k], k))
    small = min(counts, key=lambda k: (counts[k], k))
    if counts[small] <= 0:
        return f"classes unbalanced: `{small}` has no images (`{big}` has {counts[big]})"
    if counts[big] <= max_ratio * counts[small]:
        return None
    return (
        f"classes unbalanced {_ratio(counts[big], counts[small])} (`{big}` {counts[big]} vs "
        f"`{small}` {counts[small]} images; at most {max_ratio:g}:1): add `{small}` images "
        f"(plausible augmentation helps, it does not replace real ones)"
    )


def tail_length(epochs: int, last_share: float = 0.1, window: int = 5) -> int:
    """Epochs the "still rising" slope is fitted to: the last 10 % of them, at least 5."""
    return max(window, math.ceil(last_share * epochs))


def still_rising(
    curve: Sequence[float],
    *,
    last_share: float = 0.1,
    window: int = 5,
    min_slope: float = 1e-3,
    min_gain: float = 5e-3,
) -> tuple[bool, int, float]:
    """(rising, best epoch 1-based, slope over the last epochs); NaNs are dropped.

    Rising: the best epoch is within the last `last_share` of the epochs and beats every
    earlier epoch by more than `min_gain`, or the slope fitted to the last max(`window`,
    `last_share` of the epochs) epochs is > `min_slope` per epoch. The margins keep a plateau's
    noise (±0.01 from epoch to epoch on a 0-1 metric) from reading as progress."""
    v = np.asarray([x for x in curve if x is not None and not math.isnan(x)], dtype=np.float64)
    if len(v) < 3:
        return False, len(v), 0.0
    best = int(np.argmax(v))
    tail = v[-min(tail_length(len(v), last_share, window), len(v)) :]
    slope = float(np.polyfit(np.arange(len(tail)), tail, 1)[0])
    start = len(v) - max(1, math.ceil(last_share * len(v)))
    late = best >= start and float(v[best] - v[:start].max()) > min_gain
    return late or slope > min_slope, best + 1, slope


def advise_epochs(curve: Sequence[float], metric: str = "validation metric") -> str | None:
    rising, best, slope = still_rising(curve)
    if not rising:
        return None
    return (
        f"train more epochs: validation still rising ({metric} best at epoch {best} of "
        f"{len(curve)}, last-{tail_length(len(curve))}-epoch slope {slope:+.4f}/epoch)"
    )


def advise_overfitting(
    train_accuracy: float | None, val_accuracy: float | None, max_points: float = OVERFIT_POINTS
) -> str | None:
    if train_accuracy is None or val_accuracy is None:
        return None
    gap = 100 * (train_accuracy - val_accuracy)
    if gap <= max_points:
        return None
    return (
        f"overfitting: train accuracy {percent(train_accuracy)} vs validation "
        f"{percent(val_accuracy)} ({gap:.1f} points > {max_points:g}): add varied real images, "
        "use plausible augmentation, or stop at the best validation epoch"
    )


def advise_false_reject(
    rate: float | None,
    limit: float = BIN_FALSE_REJECT,
    confounders: Sequence[str] = CONFOUNDERS,
    what: str = "false-reject rate",
) -> str | None:
    if rate is None or rate <= limit:
        return None
    return (
        f"{what} {percent(rate)} (target ≤ {percent(limit, 0)}): review the threshold / add "
        f"good images of the confounders ({', '.join(confounders)}) as no-defect"
    )


def advise_calibration(
    calib_counts: Mapping[str, int] | None, minimum: int = CALIB_MIN, enough: int = CALIB_ENOUGH
) -> str | None:
    if not calib_counts:
        return None
    few = {c: n for c, n in sorted(calib_counts.items()) if n < minimum}
    if not few:
        return None
    listed = ", ".join(f"`{c}` {n}" for c, n in few.items())
    return (
        f"too few real defects to calibrate the threshold ({listed}): collect "
        f"{minimum}-{enough} per defect class"
    )


def advise_misses(
    per_class_miss: Mapping[str, float | None],
    limit: float = BIN_MISS,
    remedy: str = "lower its threshold (costs false rejects) or train a supervised / hybrid "
    "model with its labelled images",
) -> str | None:
    """The defect class that passes most often, when above `limit`."""
    known = {c: m for c, m in per_class_miss.items() if m is not None and m > limit}
    if not known:
        return None
    worst = max(known, key=lambda c: (known[c], c))
    others = [f"`{c}` {percent(m)}" for c, m in sorted(known.items()) if c != worst]
    tail = f" (also {', '.join(others)})" if others else ""
    return (
        f"`{worst}` passes {percent(known[worst])} of its defects (target ≤ {percent(limit, 0)})"
        f"{tail}: {remedy}"
    )


def collect(*items: str | Iterable[str | None] | None) -> list[str]:
    """Advice strings in order, without Nones or repeats."""
    out: list[str] = []
    for item in items:
        for text in [item] if item is None or isinstance(item, str) else item:
            if text and text not in out:
                out.append(text)
    return out


def advise_separation(
    auroc_by_class: Mapping[str, float | None], min_auroc: float = BIN_AUROC
) -> str | None:
    """The defect class whose scores overlap the good parts' most, when below `min_auroc`."""
    name, value = _lowest(auroc_by_class)
    if not name or value is None or value >= min_auroc:
        return None
    return (
        f"`{name}` scores overlap the good parts' (AUROC {value:.3f} < {min_auroc:g}): score thin "
        "defects at native resolution or in tiles, or train a supervised / hybrid model on the "
        f"labelled `{name}` images and compare it on the same parts"
    )

"""Good-vs-defect reports: anomaly, supervised and hybrid models scored per image.

A part is flagged when its score is ≥ the threshold (higher score = more defective). The
service's uncertainty band (lo, hi), in the same units, splits the decisions three ways:
pass below lo, uncertain in [lo, hi), fail from hi up. The miss rate is the share of defect
images scored below the threshold (defects passed), the false-reject rate the share of good
images at or above it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped,unused-ignore]

from training.report import criteria as cr
from training.report import plots
from training.report.model import (
    Bullets,
    Criterion,
    Figure,
    Paragraph,
    Report,
    Section,
    Table,
    WrittenReport,
    percent,
    write,
)

if TYPE_CHECKING:
    from training.report.compare import Comparison

Scores = npt.ArrayLike
Labels = Sequence[str] | npt.NDArray[Any]


@dataclass(frozen=True)
class ClassStats:
    images: int
    auroc: float | None  # this class against the good parts (None for the good class)
    flagged: int  # score ≥ threshold
    passed: int  # score < lo
    uncertain: int  # lo ≤ score < hi
    failed: int  # score ≥ hi

    @property
    def flagged_rate(self) -> float | None:
        return self.flagged / self.images if self.images else None

    @property
    def miss_rate(self) -> float | None:
        return 1.0 - self.flagged / self.images if self.images else None


@dataclass(frozen=True)
class BinaryMetrics:
    good_class: str
    threshold: float
    band: tuple[float, float]
    auroc: float | None
    per_class: dict[str, ClassStats]  # the good class first, then the defect classes sorted
    defects: ClassStats  # every defect class together

    @property
    def good(self) -> ClassStats:
        return self.per_class[self.good_class]

    @property
    def defect_classes(self) -> list[str]:
        return [c for c in self.per_class if c != self.good_class]

    @property
    def miss_rate(self) -> float | None:
        return self.defects.miss_rate

    @property
    def false_reject_rate(self) -> float | None:
        return self.good.flagged_rate

    def class_auroc(self) -> dict[str, float | None]:
        return {c: self.per_class[c].auroc for c in self.defect_classes}

    def class_miss(self) -> dict[str, float | None]:
        return {c: self.per_class[c].miss_rate for c in self.defect_classes}


def auroc(is_defect: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64]) -> float | None:
    if is_defect.all() or not is_defect.any():
        return None
    return float(roc_auc_score(is_defect, scores))


def _stats(
    s: npt.NDArray[np.float64],
    good: npt.NDArray[np.float64],
    threshold: float,
    band: tuple[float, float],
    is_good: bool,
) -> ClassStats:
    lo, hi = band
    a = None
    if not is_good and len(s) and len(good):
        a = auroc(np.r_[np.zeros(len(good), bool), np.ones(len(s), bool)], np.r_[good, s])
    return ClassStats(
        images=len(s),
        auroc=a,
        flagged=int((s >= threshold).sum()),
        passed=int((s < lo).sum()),
        uncertain=int(((s >= lo) & (s < hi)).sum()),
        failed=int((s >= hi).sum()),
    )


def binary_metrics(
    scores: Scores,
    labels: Labels,
    good_class: str,
    threshold: float,
    band: tuple[float, float] | None = None,
) -> BinaryMetrics:
    """AUROC (overall and per defect class against the good parts), miss and false-reject rates
    at `threshold`, pass / uncertain / fail counts for the band (`band` None: no band)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(str).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    lo, hi = band if band is not None else (threshold, threshold)
    if not lo <= threshold <= hi:
        raise ValueError(f"threshold {threshold} outside its band [{lo}, {hi}]")
    good = s[y == good_class]
    per_class = {good_class: _stats(good, good, threshold, (lo, hi), True)}
    for c in sorted(set(y.tolist()) - {good_class}):
        per_class[c] = _stats(s[y == c], good, threshold, (lo, hi), False)
    return BinaryMetrics(
        good_class=good_class,
        threshold=threshold,
        band=(lo, hi),
        auroc=auroc(y != good_class, s),
        per_class=per_class,
        defects=_stats(s[y != good_class], good, threshold, (lo, hi), False),
    )


def _share(n: int, total: int) -> str:
    return f"{n} ({percent(n / total)})" if total else "0"


def decisions_table(m: BinaryMetrics, caption: str = "") -> Table:
    """good / each defect class / all defects × pass, uncertain, fail (and flagged at the
    threshold)."""
    lo, hi = m.band
    rows: list[list[str | int | float | None]] = []
    named = [(c, m.per_class[c]) for c in m.per_class] + [("all defects", m.defects)]
    for name, st in named:
        label = name if name == "all defects" else f"`{name}`"
        counts = (st.passed, st.uncertain, st.failed, st.flagged)
        rows.append([label, st.images, *(_share(n, st.images) for n in counts)])
    header = [
        "class",
        "images",
        f"pass (< {lo:.4g})",
        f"uncertain [{lo:.4g}, {hi:.4g})",
        f"fail (≥ {hi:.4g})",
        f"flagged (≥ threshold {m.threshold:.4g})",
    ]
    return Table(header, rows, caption)


def per_class_table(
    m: BinaryMetrics,
    calib_counts: Mapping[str, int] | None,
    train_counts: Mapping[str, int] | None,
    caption: str = "",
) -> Table:
    rows: list[list[str | int | float | None]] = []
    calib, train = calib_counts or {}, train_counts or {}
    for c in m.defect_classes:
        st = m.per_class[c]
        rows.append(
            [f"`{c}`", st.images, st.auroc, percent(st.miss_rate), calib.get(c), train.get(c)]
        )
    good = m.good_class
    fr = f"false reject {percent(m.false_reject_rate)}"
    rows.append([f"`{good}` (good)", m.good.images, None, fr, calib.get(good), train.get(good)])
    header = [
        "class",
        "images",
        "AUROC vs good",
        "miss rate (defects passed)",
        "calibration images",
        "training images",
    ]
    return Table(header, rows, caption)


def _default_calib(
    scores: Mapping[str, tuple[Scores, Labels]], good_class: str
) -> Mapping[str, int] | None:
    """Defect images per class of the validation split (where thresholds are calibrated)."""
    if "val" not in scores:
        return None
    y = np.asarray(scores["val"][1]).astype(str)
    return {str(c): int((y == c).sum()) for c in sorted(set(y.tolist()) - {good_class})}


def _context(ctx: cr.AdviceContext | Mapping[str, Any] | None) -> cr.AdviceContext:
    if ctx is None:
        return cr.AdviceContext()
    if isinstance(ctx, cr.AdviceContext):
        return ctx
    return cr.AdviceContext(**ctx)


def binary_criteria_for(
    m: BinaryMetrics, calib_counts: Mapping[str, int] | None
) -> list[Criterion]:
    return cr.binary_criteria(
        m.auroc, m.miss_rate, m.class_miss(), m.false_reject_rate, calib_counts
    )


def binary_advice(
    m: BinaryMetrics,
    calib_counts: Mapping[str, int] | None,
    train_counts: Mapping[str, int] | None,
    ctx: cr.AdviceContext,
) -> list[str]:
    defect_counts = {c: n for c, n in (train_counts or {}).items() if c != m.good_class}
    return cr.collect(
        cr.advise_misses(m.class_miss()),
        cr.advise_label_more(m.class_auroc(), defect_counts, metric="AUROC", stage=ctx.stage),
        cr.advise_separation(m.class_auroc()),
        cr.advise_calibration(calib_counts),
        cr.advise_false_reject(m.false_reject_rate, confounders=ctx.confounders),
        cr.advise_balance(dict(train_counts)) if train_counts and len(train_counts) > 1 else None,
        cr.advise_epochs(ctx.val_curve, ctx.metric_name),
        cr.advise_overfitting(ctx.train_accuracy, ctx.val_accuracy),
    )


# -- the report


def _split_summary(metrics: Mapping[str, BinaryMetrics]) -> Table:
    rows: list[list[str | int | float | None]] = []
    for split, m in metrics.items():
        total = m.good.images + m.defects.images
        uncertain = m.good.uncertain + m.defects.uncertain
        rows.append(
            [
                split,
                m.good.images,
                m.defects.images,
                m.auroc,
                percent(m.miss_rate),
                percent(m.false_reject_rate),
                percent(uncertain / total if total else None),
            ]
        )
    header = ["split", "good", "defects", "AUROC", "miss rate", "false-reject rate", "to review"]
    return Table(header, rows)


def write_binary_report(
    out_dir: Path,
    *,
    title: str,
    model_name: str,
    scores: Mapping[str, tuple[Scores, Labels]],
    good_class: str,
    threshold: float,
    band: tuple[float, float] | None = None,
    calib_counts: Mapping[str, int] | None = None,
    train_counts: Mapping[str, int] | None = None,
    extra_tables: Sequence[Table] = (),
    advice_context: cr.AdviceContext | Mapping[str, Any] | None = None,
    eval_split: str | None = None,
    score_name: str = "score",
    comparison: Comparison | None = None,
    notes: Sequence[str] = (),
) -> WrittenReport:
    """report.md + report.html + PNGs in `out_dir` for a good-vs-defect model.

    scores: split -> (scores, class-name labels); the readiness criteria are measured on
    `eval_split` (default "test" when present, else the last split). calib_counts: defect
    images per class the threshold was calibrated on (default: the "val" split's defects).
    """
    if not scores:
        raise ValueError("no scores to report")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = _context(advice_context)
    split = eval_split or ("test" if "test" in scores else list(scores)[-1])
    if split not in scores:
        raise ValueError(f"eval_split {split!r} is not one of {list(scores)}")
    by_split = {
        k: binary_metrics(s, y, good_class, threshold, band) for k, (s, y) in scores.items()
    }
    m = by_split[split]
    lo, hi = m.band
    calib_note = ""
    if calib_counts is None:
        calib_counts = _default_calib(scores, good_class)
        calib_note = "calibration images: the validation split's defects" if calib_counts else ""

    report = Report(title)
    report.summary = [
        f"model `{model_name}`; readiness measured on the {split} split: "
        f"{m.good.images} good and {m.defects.images} defect images "
        f"({len(m.defect_classes)} defect classes)",
        f"threshold {threshold:.4g} ({score_name}; a part is flagged at or above it); "
        f"uncertain band [{lo:.4g}, {hi:.4g}) goes to review",
        f"AUROC {'–' if m.auroc is None else f'{m.auroc:.3f}'}, miss rate {percent(m.miss_rate)} "
        f"(defects passed), false-reject rate {percent(m.false_reject_rate)} (good parts "
        "rejected)",
        *notes,
    ]
    report.readiness = binary_criteria_for(m, calib_counts)
    report.readiness_notes = [n for n in (calib_note,) if n]
    report.advice = binary_advice(m, calib_counts, train_counts, ctx)

    report.sections.append(
        Section(
            f"Per class ({split})",
            [
                per_class_table(m, calib_counts, train_counts),
                decisions_table(m, f"decisions at the threshold and band ({split})"),
            ],
        )
    )
    if len(by_split) > 1:
        report.sections.append(Section("Every split", [_split_summary(by_split)]))
    figures: list[Figure | Table | Paragraph | Bullets] = []
    for k, (s, y) in scores.items():
        s_a = np.asarray(s, dtype=np.float64).ravel()
        y_a = np.asarray(y).astype(str).ravel()
        curves = {"all defects": (y_a != good_class, s_a)}
        for c in by_split[k].defect_classes:
            keep = (y_a == good_class) | (y_a == c)
            curves[c] = (y_a[keep] == c, s_a[keep])
        roc = plots.plot_roc(curves, out_dir / f"roc_{k}.png", f"ROC ({k} split)", threshold)
        hist = plots.plot_class_histograms(
            s_a,
            y_a,
            good_class,
            out_dir / f"score_histograms_{k}.png",
            f"{score_name} per class ({k} split)",
            threshold,
            m.band,
            score_name,
        )
        figures += [
            Figure(roc, f"ROC, {k} split: all defects and each class against the good parts"),
            Figure(hist, f"{score_name} histograms, {k} split: threshold (dashed) and band"),
        ]
    if len(ctx.val_curve) > 1:
        path = plots.plot_training_curves(
            {ctx.metric_name: list(ctx.val_curve)},
            out_dir / "training_curve.png",
            "validation per epoch",
            ylabel=ctx.metric_name,
        )
        figures.append(Figure(path, f"{ctx.metric_name} per epoch"))
    report.sections.append(Section("Plots", figures))
    if comparison is not None:
        from training.report.compare import comparison_section

        report.sections.append(comparison_section(comparison, out_dir))
    if extra_tables:
        report.sections.append(Section("More", list(extra_tables)))
    return write(report, out_dir)

"""Several candidate models (anomaly, supervised, hybrid) scored on the same held-out parts:
one table, one ROC overlay, one recommendation with its reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.report import criteria as cr
from training.report import plots
from training.report.binary import BinaryMetrics, Labels, Scores, binary_metrics
from training.report.model import Bullets, Figure, Paragraph, Section, Table, percent


@dataclass(frozen=True)
class Candidate:
    """One model's scores on the comparison split, with its own threshold (and band)."""

    name: str
    scores: Scores
    labels: Labels
    threshold: float
    band: tuple[float, float] | None = None
    ids: Sequence[str] | None = None  # image ids: when given, must match across candidates


@dataclass(frozen=True)
class Comparison:
    good_class: str
    split: str
    metrics: dict[str, BinaryMetrics]  # candidate name -> its metrics, in the given order
    recommended: str
    reason: str
    max_miss: float = cr.BIN_MISS
    candidates: Sequence[Candidate] = field(default=(), repr=False)

    @property
    def defect_classes(self) -> list[str]:
        return next(iter(self.metrics.values())).defect_classes

    def table(self, mark: bool = True) -> Table:
        """One row per candidate; `mark=False` for a split that must not choose (test)."""
        header = ["model", "AUROC", "miss rate", "false-reject rate"]
        header += [f"AUROC `{c}`" for c in self.defect_classes] + (["recommended"] if mark else [])
        rows: list[list[str | int | float | None]] = []
        for name, m in self.metrics.items():
            rows.append(
                [
                    name,
                    m.auroc,
                    percent(m.miss_rate),
                    percent(m.false_reject_rate),
                    *(m.per_class[c].auroc for c in self.defect_classes),
                    *((["★ " + self.reason if name == self.recommended else ""]) if mark else []),
                ]
            )
        caption = f"candidates on the same {self.split} parts, each at its own threshold"
        if not mark:
            caption += " (measured once, after the choice; not used to choose)"
        return Table(header, rows, caption)


def compare_candidates(
    candidates: Sequence[Candidate],
    *,
    good_class: str,
    split: str = "test",
    max_miss: float = cr.BIN_MISS,
) -> Comparison:
    """Evaluate candidates on the same split; recommend one.

    Rule: among the candidates whose miss rate is ≤ `max_miss`, the lowest false-reject rate
    (then the highest AUROC); when none meets the miss target, the highest AUROC (then the
    lowest miss rate): its threshold is the thing to move.
    """
    if not candidates:
        raise ValueError("no candidates to compare")
    first = candidates[0]
    ref = np.asarray(first.labels).astype(str)
    for c in candidates[1:]:
        if not np.array_equal(np.asarray(c.labels).astype(str), ref):
            raise ValueError(f"{c.name} and {first.name} were not scored on the same parts")
        if c.ids is not None and first.ids is not None and list(c.ids) != list(first.ids):
            raise ValueError(f"{c.name} and {first.name} list different image ids")
    if len({c.name for c in candidates}) != len(candidates):
        raise ValueError("candidate names must be unique")
    metrics = {
        c.name: binary_metrics(c.scores, c.labels, good_class, c.threshold, c.band)
        for c in candidates
    }

    def auroc_of(name: str) -> float:
        return metrics[name].auroc or 0.0

    def miss_of(name: str) -> float:
        value = metrics[name].miss_rate
        return 1.0 if value is None else value

    def fr_of(name: str) -> float:
        value = metrics[name].false_reject_rate
        return 1.0 if value is None else value

    # a miss rate of 5/100 computes as 0.05000000000000004: compare with a tolerance
    eligible = [n for n in metrics if miss_of(n) <= max_miss + 1e-9]
    limit = percent(max_miss, 0)
    if eligible:
        best = min(eligible, key=lambda n: (fr_of(n), -auroc_of(n)))
        if len(eligible) == 1:
            reason = f"the only one with miss rate ≤ {limit}"
        else:
            reason = (
                f"lowest false-reject rate ({percent(fr_of(best))}) among the "
                f"{len(eligible)} with miss rate ≤ {limit}"
            )
    else:
        best = max(metrics, key=lambda n: (auroc_of(n), -miss_of(n)))
        reason = (
            f"none reaches miss rate ≤ {limit} at its threshold; highest AUROC "
            f"({auroc_of(best):.3f}): re-calibrate its threshold"
        )
    return Comparison(good_class, split, metrics, best, reason, max_miss, tuple(candidates))


def comparison_section(
    comparison: Comparison, out_dir: Path, heading: str = "Candidate models"
) -> Section:
    """The comparison table, the recommendation and an ROC overlay (written to out_dir)."""
    curves = {}
    for c in comparison.candidates:
        y = np.asarray(c.labels).astype(str) != comparison.good_class
        curves[c.name] = (y, np.asarray(c.scores, dtype=np.float64).ravel())
    blocks: list[Figure | Table | Paragraph | Bullets] = [
        comparison.table(),
        Paragraph(f"Recommended: `{comparison.recommended}` — {comparison.reason}."),
    ]
    if curves:
        path = plots.plot_roc(
            curves, Path(out_dir) / "roc_candidates.png", f"candidates ({comparison.split})"
        )
        blocks.append(Figure(path, f"ROC of every candidate on the same {comparison.split} parts"))
    return Section(heading, blocks)

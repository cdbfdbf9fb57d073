"""Drift: how far each camera's recent frames have moved from what the model was validated on.

The model card's `reference` section (written by the training companion on the validation split)
holds histograms of image brightness, contrast and sharpness, of the model's confidence, and the
verdict mix. For every camera a sliding window of the last `window` judged frames is binned on the
same edges, and two statistics per signal are exported as Prometheus gauges:

- PSI (population stability index), on the reference bins merged until each holds at least
  1/`psi_bins` of the reference mass. Twenty bins of ~200 reference images would make PSI noisy
  (its expectation under no drift is about (bins - 1) * (1/n + 1/m)); about ten equal-mass bins
  keep a fresh sample of the training distribution near 0.1 while a darkened or blurred line
  reaches several units. Levels: < 0.1 stable, 0.1-0.25 watch, > 0.25 alert (the usual rule).
- KS, the largest gap between the two cumulative distributions on the reference edges
  (sample-size free, bounded in [0, 1]).

This module holds the statistics (pure, table-tested); the drift sink
(`service.sinks.drift.DriftMonitor`) keeps the per-camera windows and exports the gauges.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from service.core.types import Result

log = logging.getLogger(__name__)

STATS = ("brightness", "contrast", "sharpness")
CONTINUOUS = (*STATS, "confidence")
VERDICTS = ("pass", "fail", "uncertain")


def image_stats(image: np.ndarray) -> tuple[float, float, float]:
    """Brightness (mean grey), contrast (grey std), sharpness (variance of the Laplacian).

    Must match `training.cards.image_stats`, which computed the reference (a test checks it).
    """
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    mean, std = cv2.meanStdDev(grey)
    lap_std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_64F))[1]
    return float(mean[0, 0]), float(std[0, 0]), float(lap_std[0, 0]) ** 2


def confidences_of(result: Result) -> list[float]:
    """The confidence values the trainer recorded for the reference, per task.

    classify: the top class's probability; detect: every detection's confidence; anomaly: the
    normalised score (clipped into the reference's [0, 1] range).
    """
    p = result.prediction
    if p.probabilities is not None:
        return [float(np.max(p.probabilities))]
    if p.detections is not None:
        return [float(c) for c in p.detections.confidence]
    if p.anomaly is not None:
        return [min(max(float(p.anomaly.score), 0.0), 1.0)]
    return [f.confidence for f in result.decision.findings]


# -- pure statistics (table-tested)


def merge_bins(ref_counts: Sequence[float] | np.ndarray, target_bins: int) -> list[tuple[int, int]]:
    """Group adjacent bins (index ranges [a, b)) so that each group holds about 1/target of the
    reference mass. A bin that alone holds that much stays alone, and the light bins before it
    form their own group: a peaked reference (a classifier's top-class confidence piles up in
    the last bin) must keep its light side, or PSI could never see the peak erode."""
    counts = np.asarray(ref_counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return [(0, len(counts))]
    need = total / max(target_bins, 1)
    groups: list[tuple[int, int]] = []
    start, acc = 0, 0.0
    for i, c in enumerate(counts):
        if i > start and c >= need:  # a heavy bin: close the light (even empty) run before it
            groups.append((start, i))
            start, acc = i, 0.0
        acc += c
        if acc >= need:
            groups.append((start, i + 1))
            start, acc = i + 1, 0.0
    if start < len(counts):
        # A tail with real mass keeps its own group (as does any tail when it would otherwise
        # leave one group, which no drift could move); an empty or light one joins its neighbour.
        heavy_alone = bool(groups) and groups[-1][1] - groups[-1][0] == 1
        keep = acc > 0 and (acc >= need / 2 or heavy_alone or len(groups) == 1)
        if groups and not keep:
            groups[-1] = (groups[-1][0], len(counts))
        else:
            groups.append((start, len(counts)))
    return groups


Counts = Sequence[float] | np.ndarray


def psi(ref: Counts, live: Counts, groups: list[tuple[int, int]]) -> float:
    """Population stability index of `live` against `ref` (both raw counts on the same bins),
    on merged `groups`, with additive smoothing so an empty bin is finite."""
    r = np.asarray([sum(ref[a:b]) for a, b in groups], dtype=np.float64)
    v = np.asarray([sum(live[a:b]) for a, b in groups], dtype=np.float64)
    if r.sum() <= 0 or v.sum() <= 0:
        return 0.0
    k = len(groups)
    pr = (r + 0.5) / (r.sum() + 0.5 * k)
    pv = (v + 0.5) / (v.sum() + 0.5 * k)
    return float(np.sum((pv - pr) * np.log(pv / pr)))


def ks(ref: Counts, live: Counts) -> float:
    """Largest gap between the two cumulative distributions, evaluated on the bin edges."""
    r = np.asarray(ref, dtype=np.float64)
    v = np.asarray(live, dtype=np.float64)
    if r.sum() <= 0 or v.sum() <= 0:
        return 0.0
    return float(np.max(np.abs(np.cumsum(r) / r.sum() - np.cumsum(v) / v.sum())))


def level(value: float, watch: float, alert: float) -> str:
    return "alert" if value > alert else "watch" if value > watch else "ok"


# -- the reference, parsed once per model


@dataclass(frozen=True)
class Signal:
    """One reference histogram: inner edges for binning, counts, and PSI bin groups."""

    inner_edges: np.ndarray  # values below edges[0] go to bin 0, above edges[-1] to the last
    counts: np.ndarray
    groups: list[tuple[int, int]]

    def bin_of(self, value: float) -> int:
        return int(np.searchsorted(self.inner_edges, value, side="right"))


def _signal(edges: Sequence[float | None], counts: Sequence[float], psi_bins: int) -> Signal:
    """Bins are np.histogram's [e_i, e_i+1). Binning a live value against the inner edges puts
    anything below the second edge in bin 0 and anything above the second-to-last in the last
    bin: right for the open-ended (None) outer edges of the image statistics, and it clips
    out-of-range values into the outer bins of closed ones instead of losing them."""
    if len(edges) != len(counts) + 1:
        raise ValueError(f"{len(edges)} edges for {len(counts)} counts")
    inner = np.asarray([float(e) for e in edges[1:-1]], dtype=np.float64)  # type: ignore[arg-type]
    c = np.asarray(counts, dtype=np.float64)
    return Signal(inner, c, merge_bins(c, psi_bins))


@dataclass(frozen=True)
class Reference:
    signals: dict[str, Signal]
    verdicts: np.ndarray | None  # reference counts in VERDICTS order, or None

    @classmethod
    def from_card(cls, section: Mapping[str, Any], psi_bins: int) -> Reference | None:
        """Parse a card's `reference`; None when it has nothing usable (drift then stays off)."""
        signals: dict[str, Signal] = {}
        try:
            for name in STATS:
                hist = section["image_stats"][name]["histogram"]
                signals[name] = _signal(hist["edges"], hist["counts"], psi_bins)
            per_class = section.get("class_confidence") or {}
            pooled: np.ndarray | None = None
            edges: Sequence[float | None] = ()
            for hist in per_class.values():
                counts = np.asarray(hist["counts"], dtype=np.float64)
                pooled = counts if pooled is None else pooled + counts
                edges = hist["edges"]
            if pooled is not None and pooled.sum() > 0:
                signals["confidence"] = _signal(edges, pooled.tolist(), psi_bins)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("model card reference unusable for drift: %s", exc)
            return None
        mix = section.get("verdict_mix") or {}
        verdicts = np.asarray([float(mix.get(v, 0)) for v in VERDICTS])
        return cls(signals, verdicts if verdicts.sum() > 0 else None)


# -- per-camera windows


@dataclass
class Window:
    """The last `size` frames of one camera, binned; running counts make each update O(bins)."""

    reference: Reference
    sha256: str
    size: int
    rows: deque[tuple[dict[str, list[int]], int]] = field(default_factory=deque)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    verdicts: np.ndarray = field(default_factory=lambda: np.zeros(len(VERDICTS)))

    def __post_init__(self) -> None:
        self.counts = {k: np.zeros(len(s.counts)) for k, s in self.reference.signals.items()}

    def add(self, bins: dict[str, list[int]], verdict: int) -> None:
        if len(self.rows) >= self.size:
            old, old_verdict = self.rows.popleft()
            self._apply(old, old_verdict, -1.0)
        self.rows.append((bins, verdict))
        self._apply(bins, verdict, 1.0)

    def _apply(self, bins: dict[str, list[int]], verdict: int, sign: float) -> None:
        for name, indices in bins.items():
            for i in indices:
                self.counts[name][i] += sign
        if verdict >= 0:
            self.verdicts[verdict] += sign

    def scores(self) -> dict[str, tuple[float, float | None]]:
        """Per signal: (PSI, KS); the verdict mix has PSI only."""
        out: dict[str, tuple[float, float | None]] = {}
        for name, sig in self.reference.signals.items():
            live = self.counts[name]
            out[name] = (psi(sig.counts, live, sig.groups), ks(sig.counts, live))
        if self.reference.verdicts is not None:
            ref = self.reference.verdicts
            out["verdict"] = (psi(ref, self.verdicts, [(i, i + 1) for i in range(len(ref))]), None)
        return out

"""Decisions: scores + per-class thresholds ± an uncertainty band -> PASS / FAIL / UNCERTAIN.

Pure functions over immutable inputs, so every rule is a row in a table test. The rules lean
conservative, as inspectors do ("when in doubt, choose the more severe grade"):

- a score at or above `threshold + band` FAILs; within `[threshold - band, threshold + band)` it is
  UNCERTAIN; below that it does not count;
- a detection of a good class, or one smaller than `min_box_size` on its shorter side, never
  counts (the domain's minimum reliable defect is about 20x20 px);
- a classifier PASSes only when no defect class reached its band and its top class is a good one;
- any FAIL makes the verdict FAIL, otherwise any UNCERTAIN makes it UNCERTAIN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from service.core.types import AnomalyScore, Decision, Detections, Finding, Outcome, Verdict

ANOMALY_CLASS = "anomaly"


@dataclass(frozen=True)
class DecisionPolicy:
    """Thresholds for one model. Immutable: a runtime change swaps the whole policy."""

    classes: tuple[str, ...]
    default_threshold: float = 0.5
    per_class: Mapping[str, float] = field(default_factory=dict)
    band: float = 0.1
    per_class_band: Mapping[str, float] = field(default_factory=dict)
    good_classes: frozenset[str] = frozenset()
    min_box_size: float = 0.0

    def __post_init__(self) -> None:
        known = set(self.classes)
        for where, names in (
            ("thresholds", self.per_class),
            ("bands", self.per_class_band),
            ("good classes", self.good_classes),
        ):
            unknown = sorted(set(names) - known)
            if unknown:
                raise ValueError(
                    f"{where} name unknown classes {unknown}; known: {list(self.classes)}"
                )
        for name, value in [("default", self.default_threshold), *self.per_class.items()]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold for {name} must be within [0, 1], got {value}")
        for name, value in [("default", self.band), *self.per_class_band.items()]:
            if not 0.0 <= value <= 0.5:
                raise ValueError(f"band for {name} must be within [0, 0.5], got {value}")
        if self.min_box_size < 0:
            raise ValueError(f"min_box_size must be >= 0, got {self.min_box_size}")
        # Read-only views: a policy shared between threads must not change under them.
        object.__setattr__(self, "per_class", MappingProxyType(dict(self.per_class)))
        object.__setattr__(self, "per_class_band", MappingProxyType(dict(self.per_class_band)))
        object.__setattr__(self, "good_classes", frozenset(self.good_classes))

    def class_name(self, class_id: int) -> str:
        if 0 <= class_id < len(self.classes):
            return self.classes[class_id]
        return f"class{class_id}"

    def threshold(self, name: str) -> float:
        return self.per_class.get(name, self.default_threshold)

    def band_for(self, name: str) -> float:
        return self.per_class_band.get(name, self.band)

    def confidence_floor(self) -> float:
        """Lowest score that can still matter: anything under it can be dropped at decode."""
        names = [c for c in self.classes if c not in self.good_classes] or list(self.classes)
        if not names:
            return max(0.0, self.default_threshold - self.band)
        return min(max(0.0, self.threshold(n) - self.band_for(n)) for n in names)


def score_outcome(score: float, threshold: float, band: float) -> Outcome:
    """Where one score falls relative to its threshold and band."""
    if score >= min(threshold + band, 1.0):
        return Outcome.FAIL
    if score >= max(threshold - band, 0.0):
        return Outcome.UNCERTAIN
    return Outcome.BELOW


def combine(findings: tuple[Finding, ...], pass_reason: str) -> Decision:
    failing = [f for f in findings if f.outcome is Outcome.FAIL]
    if failing:
        top = max(failing, key=lambda f: f.confidence)
        return Decision(Verdict.FAIL, findings, _describe(top, len(failing), "at or above"))
    unsure = [f for f in findings if f.outcome is Outcome.UNCERTAIN]
    if unsure:
        top = max(unsure, key=lambda f: f.confidence)
        return Decision(Verdict.UNCERTAIN, findings, _describe(top, len(unsure), "within"))
    return Decision(Verdict.PASS, findings, pass_reason)


def _describe(top: Finding, count: int, relation: str) -> str:
    edge = "the band of" if relation == "within" else "threshold+band of"
    more = f" (and {count - 1} more)" if count > 1 else ""
    return (
        f"{top.class_name} {top.confidence:.3f} {relation} {edge} "
        f"{top.threshold:.3f}±{top.band:.3f}{more}"
    )


def decide_detections(dets: Detections, policy: DecisionPolicy) -> Decision:
    findings: list[Finding] = []
    order = np.argsort(-dets.confidence, kind="stable")
    for i in order:
        name = policy.class_name(int(dets.class_id[i]))
        conf = float(dets.confidence[i])
        x1, y1, x2, y2 = (float(v) for v in dets.xyxy[i])
        thr, band = policy.threshold(name), policy.band_for(name)
        if name in policy.good_classes:
            outcome = Outcome.GOOD_CLASS
        elif min(x2 - x1, y2 - y1) < policy.min_box_size:
            outcome = Outcome.TOO_SMALL
        else:
            outcome = score_outcome(conf, thr, band)
        findings.append(
            Finding(int(dets.class_id[i]), name, conf, thr, band, outcome, (x1, y1, x2, y2))
        )
    return combine(tuple(findings), "no defect detection reached its uncertainty band")


def decide_classification(probabilities: np.ndarray, policy: DecisionPolicy) -> Decision:
    findings: list[Finding] = []
    for class_id, p in enumerate(probabilities.tolist()):
        name = policy.class_name(class_id)
        thr, band = policy.threshold(name), policy.band_for(name)
        outcome = Outcome.GOOD_CLASS if name in policy.good_classes else score_outcome(p, thr, band)
        findings.append(Finding(class_id, name, float(p), thr, band, outcome))
    findings.sort(key=lambda f: -f.confidence)
    decision = combine(tuple(findings), "")
    if decision.verdict is not Verdict.PASS:
        return decision
    top = findings[0]
    if top.outcome is Outcome.GOOD_CLASS:
        return Decision(
            Verdict.PASS,
            decision.findings,
            f"top class {top.class_name} ({top.confidence:.3f}) is good",
        )
    # The model's best guess is a defect, just not a confident one: a person should look.
    unsure = Finding(
        top.class_id, top.class_name, top.confidence, top.threshold, top.band, Outcome.UNCERTAIN
    )
    rest = tuple(f for f in findings[1:])
    return Decision(
        Verdict.UNCERTAIN,
        (unsure, *rest),
        f"top class {top.class_name} ({top.confidence:.3f}) is a defect below its band "
        f"{top.threshold:.3f}±{top.band:.3f}",
    )


def decide_anomaly(score: AnomalyScore, policy: DecisionPolicy) -> Decision:
    thr, band = policy.threshold(ANOMALY_CLASS), policy.band_for(ANOMALY_CLASS)
    outcome = score_outcome(score.score, thr, band)
    finding = Finding(0, ANOMALY_CLASS, score.score, thr, band, outcome)
    return combine((finding,), f"anomaly score {score.score:.3f} below {thr:.3f}-{band:.3f}")

"""A candidate model's judgement of a frame next to the live model's: pure functions, and the
per-camera tally behind the candidate's report (`GET /v1/models/{name}/candidate`) and metrics.

The candidate worker (`service.sinks.candidate`) calls `compare` once per frame both models
judged and adds the outcome to its camera's `Tally`.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.core.types import Result, Verdict

VERDICTS = tuple(v.value for v in Verdict)  # pass, fail, uncertain
# Every direction a verdict can flip in: (live, candidate).
FLIPS = tuple((a, b) for a in VERDICTS for b in VERDICTS if a != b)
LATENCY_KEPT = 1000  # latencies kept per camera for the report's percentiles


def flip_name(live: str, candidate: str) -> str:
    return f"{live}->{candidate}"


def class_scores(result: Result, classes: Iterable[str]) -> dict[str, float]:
    """Per class, the score the model gave it on this frame: a classifier's probability, a
    detector's most confident box of that class (0 without one), an anomaly model's normalised
    score. Good classes and boxes too small to count are scores all the same."""
    scores = dict.fromkeys(classes, 0.0)
    for f in result.decision.findings:
        if f.class_name in scores:
            scores[f.class_name] = max(scores[f.class_name], f.confidence)
    return scores


@dataclass(frozen=True)
class Comparison:
    live: str  # the live verdict
    candidate: str  # the candidate's
    shifts: Mapping[str, float]  # per class: candidate score - live score

    @property
    def agree(self) -> bool:
        return self.live == self.candidate


def compare(live: Result, candidate: Result, classes: Iterable[str]) -> Comparison:
    """The two verdicts on one frame, and per class (of `classes`: those both models know) how
    far the candidate's score moved from the live one's."""
    names = tuple(classes)
    before, after = class_scores(live, names), class_scores(candidate, names)
    return Comparison(
        live.decision.verdict.value,
        candidate.decision.verdict.value,
        {name: after[name] - before[name] for name in names},
    )


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


@dataclass
class Tally:
    """One camera's comparison since the candidate was loaded."""

    compared: int = 0
    agreements: int = 0
    flips: Counter[tuple[str, str]] = field(default_factory=Counter)
    shift_sum: dict[str, float] = field(default_factory=dict)
    shift_abs: dict[str, float] = field(default_factory=dict)
    dropped: int = 0  # frames the candidate's queue had no room for
    errors: int = 0  # frames the candidate failed on
    kept: int = 0  # disagreeing frames offered to the review queue and taken
    live_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_KEPT))
    candidate_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_KEPT))

    def add(self, c: Comparison, live_s: float, candidate_s: float) -> None:
        self.compared += 1
        if c.agree:
            self.agreements += 1
        else:
            self.flips[(c.live, c.candidate)] += 1
        for name, shift in c.shifts.items():
            self.shift_sum[name] = self.shift_sum.get(name, 0.0) + shift
            self.shift_abs[name] = self.shift_abs.get(name, 0.0) + abs(shift)
        self.live_s.append(live_s)
        self.candidate_s.append(candidate_s)

    @property
    def agreement(self) -> float | None:
        return self.agreements / self.compared if self.compared else None

    def report(self) -> dict[str, Any]:
        n = self.compared
        agreement = self.agreement
        return {
            "compared": n,
            "agreements": self.agreements,
            "agreement": None if agreement is None else round(agreement, 6),
            "flips": {flip_name(a, b): self.flips.get((a, b), 0) for a, b in FLIPS},
            "score_shift": {
                name: {
                    "mean": round(self.shift_sum[name] / n, 6),
                    "mean_abs": round(self.shift_abs[name] / n, 6),
                }
                for name in sorted(self.shift_sum)
            }
            if n
            else {},
            "latency_ms": {
                who: {
                    "p50": _ms(percentile(values, 50)),
                    "p95": _ms(percentile(values, 95)),
                    "mean": _ms(sum(values) / len(values)) if values else None,
                }
                for who, values in (("live", self.live_s), ("candidate", self.candidate_s))
            },
            "dropped": self.dropped,
            "errors": self.errors,
            "kept_for_review": self.kept,
        }


def summary(tallies: Mapping[str, Tally]) -> dict[str, Any]:
    """All cameras together: frames compared, agreement, flips by direction, drops, errors."""
    compared = sum(t.compared for t in tallies.values())
    agreements = sum(t.agreements for t in tallies.values())
    flips: Counter[tuple[str, str]] = Counter()
    for t in tallies.values():
        flips.update(t.flips)
    return {
        "compared": compared,
        "agreements": agreements,
        "agreement": round(agreements / compared, 6) if compared else None,
        "flips": {flip_name(a, b): flips.get((a, b), 0) for a, b in FLIPS},
        "dropped": sum(t.dropped for t in tallies.values()),
        "errors": sum(t.errors for t in tallies.values()),
        "kept_for_review": sum(t.kept for t in tallies.values()),
    }

"""Comparing a candidate's judgement with the live one (service.comparison): table tests over
hand-built results, so every flip direction and score shift is checked by value."""

from __future__ import annotations

import numpy as np
import pytest

from service.comparison import FLIPS, Tally, class_scores, compare, percentile, summary
from service.core.types import (
    Decision,
    Finding,
    ModelIdentity,
    Outcome,
    Prediction,
    Result,
    StageTimes,
    Verdict,
)

CLASSES = ("crack", "dent", "good")


def result(verdict: str, scores: dict[str, float], boxes: bool = False) -> Result:
    findings = tuple(
        Finding(CLASSES.index(c), c, s, 0.5, 0.1, Outcome.BELOW, (0, 0, 9, 9) if boxes else None)
        for c, s in scores.items()
    )
    identity = ModelIdentity("m", "1", "0" * 64, "detect" if boxes else "classify")
    prediction = Prediction(identity.task, (10, 10), probabilities=np.zeros(3, np.float32))
    return Result(identity, prediction, Decision(Verdict(verdict), findings, ""), StageTimes())


def test_class_scores_take_each_class_best_and_zero_for_the_absent() -> None:
    detector = result("fail", {"crack": 0.9, "dent": 0.3}, boxes=True)
    two_cracks = Result(
        detector.model,
        detector.prediction,
        Decision(
            Verdict.FAIL,
            (*detector.decision.findings, Finding(0, "crack", 0.95, 0.5, 0.1, Outcome.FAIL)),
            "",
        ),
        detector.times,
    )
    assert class_scores(two_cracks, CLASSES) == {"crack": 0.95, "dent": 0.3, "good": 0.0}
    # a class only one model knows is not compared
    assert class_scores(detector, ("crack",)) == {"crack": 0.9}


@pytest.mark.parametrize(("live", "candidate"), [(a, b) for a in Verdict for b in Verdict])
def test_compare_names_the_flip_direction(live: Verdict, candidate: Verdict) -> None:
    c = compare(
        result(live.value, {"crack": 0.2}), result(candidate.value, {"crack": 0.7}), CLASSES
    )
    assert (c.live, c.candidate) == (live.value, candidate.value)
    assert c.agree is (live is candidate)
    assert c.shifts == pytest.approx({"crack": 0.5, "dent": 0.0, "good": 0.0})


def test_tally_counts_agreement_flips_shifts_and_latency() -> None:
    t = Tally()
    rows = [("pass", "pass", 0.1), ("pass", "fail", 0.6), ("fail", "uncertain", -0.2)] * 2
    for i, (live, cand, shift) in enumerate(rows):
        t.add(
            compare(result(live, {"dent": 0.3}), result(cand, {"dent": 0.3 + shift}), CLASSES),
            0.004,
            0.010 + i / 1000,
        )
    report = t.report()
    assert (report["compared"], report["agreements"]) == (6, 2)
    assert report["agreement"] == pytest.approx(2 / 6, abs=1e-6)
    assert report["flips"]["pass->fail"] == 2 and report["flips"]["fail->uncertain"] == 2
    assert sum(report["flips"].values()) == 4 and len(report["flips"]) == len(FLIPS) == 6
    assert report["score_shift"]["dent"]["mean"] == pytest.approx((0.1 + 0.6 - 0.2) / 3, abs=1e-6)
    assert report["score_shift"]["dent"]["mean_abs"] == pytest.approx(0.9 / 3, abs=1e-6)
    assert report["score_shift"]["crack"] == {"mean": 0.0, "mean_abs": 0.0}
    assert report["latency_ms"]["live"]["p50"] == 4.0
    assert report["latency_ms"]["candidate"]["p95"] == 15.0
    t.dropped, t.errors = 3, 1
    other = Tally()
    other.add(compare(result("pass", {}), result("pass", {}), CLASSES), 0.0, 0.0)
    total = summary({"a": t, "b": other})
    assert total["compared"] == 7 and total["agreements"] == 3 and total["dropped"] == 3
    assert total["flips"]["pass->fail"] == 2 and total["errors"] == 1


def test_an_empty_tally_reports_no_agreement_rather_than_zero() -> None:
    report = Tally().report()
    assert report["agreement"] is None and report["score_shift"] == {}
    assert report["latency_ms"]["candidate"] == {"p50": None, "p95": None, "mean": None}
    assert percentile([], 50) is None and percentile([3.0, 1.0, 2.0], 50) == 2.0

"""Table tests of the pure decision rules."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.types import AnomalyScore, Detections, Outcome, Verdict
from service.stages.decide import (
    DecisionPolicy,
    decide_anomaly,
    decide_classification,
    decide_detections,
    score_outcome,
)


@pytest.mark.parametrize(
    ("score", "threshold", "band", "expected"),
    [
        (0.61, 0.5, 0.1, Outcome.FAIL),
        (0.60, 0.5, 0.1, Outcome.FAIL),  # the upper edge belongs to FAIL
        (0.59, 0.5, 0.1, Outcome.UNCERTAIN),
        (0.50, 0.5, 0.1, Outcome.UNCERTAIN),
        (0.40, 0.5, 0.1, Outcome.UNCERTAIN),  # the lower edge belongs to UNCERTAIN
        (0.39, 0.5, 0.1, Outcome.BELOW),
        (0.50, 0.5, 0.0, Outcome.FAIL),  # no band: plain threshold
        (0.49, 0.5, 0.0, Outcome.BELOW),
        (1.00, 0.95, 0.1, Outcome.FAIL),  # band clipped at 1: a perfect score still fails
        (0.99, 0.95, 0.1, Outcome.UNCERTAIN),
        (0.00, 0.05, 0.1, Outcome.UNCERTAIN),  # band clipped at 0
    ],
)
def test_score_outcome(score: float, threshold: float, band: float, expected: Outcome) -> None:
    assert score_outcome(score, threshold, band) is expected


POLICY = DecisionPolicy(
    classes=("good", "scratch", "dent"),
    default_threshold=0.5,
    per_class={"dent": 0.8},
    band=0.1,
    per_class_band={"dent": 0.05},
    good_classes=frozenset({"good"}),
    min_box_size=20,
)


def dets(*rows: tuple[float, float, float, float, float, int]) -> Detections:
    arr = np.array(rows, np.float32).reshape(-1, 6)
    return Detections(arr[:, :4], arr[:, 4], arr[:, 5].astype(np.int64))


@pytest.mark.parametrize(
    ("rows", "verdict", "outcomes"),
    [
        ((), Verdict.PASS, []),
        (((0, 0, 50, 50, 0.9, 1),), Verdict.FAIL, [Outcome.FAIL]),
        (((0, 0, 50, 50, 0.55, 1),), Verdict.UNCERTAIN, [Outcome.UNCERTAIN]),
        (((0, 0, 50, 50, 0.3, 1),), Verdict.PASS, [Outcome.BELOW]),
        # per-class threshold 0.8 ± 0.05 for dent
        (((0, 0, 50, 50, 0.84, 2),), Verdict.UNCERTAIN, [Outcome.UNCERTAIN]),
        (((0, 0, 50, 50, 0.85, 2),), Verdict.FAIL, [Outcome.FAIL]),
        (((0, 0, 50, 50, 0.7, 2),), Verdict.PASS, [Outcome.BELOW]),
        # a good class never fails, however confident
        (((0, 0, 50, 50, 0.99, 0),), Verdict.PASS, [Outcome.GOOD_CLASS]),
        # shorter side 19 px < min_box_size 20: ignored
        (((0, 0, 100, 19, 0.99, 1),), Verdict.PASS, [Outcome.TOO_SMALL]),
        (((0, 0, 20, 20, 0.99, 1),), Verdict.FAIL, [Outcome.FAIL]),
        # FAIL beats UNCERTAIN; findings sorted by confidence
        (
            ((0, 0, 50, 50, 0.55, 1), (0, 0, 50, 50, 0.95, 2)),
            Verdict.FAIL,
            [Outcome.FAIL, Outcome.UNCERTAIN],
        ),
    ],
)
def test_decide_detections(rows: tuple, verdict: Verdict, outcomes: list[Outcome]) -> None:
    decision = decide_detections(dets(*rows), POLICY)
    assert decision.verdict is verdict
    assert [f.outcome for f in decision.findings] == outcomes
    if verdict is not Verdict.PASS:
        assert decision.drivers, "a FAIL or UNCERTAIN names what drove it"


@pytest.mark.parametrize(
    ("probs", "verdict", "driver"),
    [
        ((0.9, 0.05, 0.05), Verdict.PASS, None),
        ((0.3, 0.65, 0.05), Verdict.FAIL, "scratch"),
        ((0.45, 0.55, 0.0), Verdict.UNCERTAIN, "scratch"),
        ((0.1, 0.05, 0.85), Verdict.FAIL, "dent"),
        ((0.2, 0.0, 0.8), Verdict.UNCERTAIN, "dent"),  # dent needs 0.85
        # no defect reaches its band, but the top class is still a defect: review it
        ((0.3, 0.35, 0.35), Verdict.UNCERTAIN, "scratch"),
    ],
)
def test_decide_classification(probs: tuple, verdict: Verdict, driver: str | None) -> None:
    decision = decide_classification(np.array(probs, np.float32), POLICY)
    assert decision.verdict is verdict, decision.reason
    names = [f.class_name for f in decision.drivers]
    assert (names[0] if names else None) == driver


def test_classifier_without_good_classes_never_passes() -> None:
    policy = DecisionPolicy(classes=("crazing", "scratches"))
    assert decide_classification(np.array([0.97, 0.03]), policy).verdict is Verdict.FAIL
    assert decide_classification(np.array([0.52, 0.48]), policy).verdict is Verdict.UNCERTAIN
    assert decide_classification(np.array([0.39, 0.38]), policy).verdict is Verdict.UNCERTAIN


@pytest.mark.parametrize(
    ("score", "verdict"),
    [
        (0.3, Verdict.PASS),
        (0.45, Verdict.UNCERTAIN),
        (0.55, Verdict.UNCERTAIN),
        (0.7, Verdict.FAIL),
    ],
)
def test_decide_anomaly(score: float, verdict: Verdict) -> None:
    policy = DecisionPolicy(classes=("anomaly",), band=0.1)
    assert decide_anomaly(AnomalyScore(score, raw=score * 10), policy).verdict is verdict


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"per_class": {"rust": 0.5}}, "unknown classes ['rust']"),
        ({"good_classes": frozenset({"ok"})}, "unknown classes ['ok']"),
        ({"default_threshold": 1.5}, "within [0, 1]"),
        ({"band": 0.7}, "within [0, 0.5]"),
        ({"min_box_size": -1}, "min_box_size"),
    ],
)
def test_policy_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DecisionPolicy(classes=("good", "scratch"), **kwargs)


def test_confidence_floor_is_lowest_band_edge_of_defect_classes() -> None:
    assert POLICY.confidence_floor() == pytest.approx(0.4)  # scratch 0.5 - 0.1; good ignored

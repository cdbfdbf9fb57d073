"""Metrics, readiness and threshold tuning on inputs whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.types import Verdict
from service.stages.decide import DecisionPolicy, decide_classification
from training import evaluate, thresholds


def test_classification_metrics_and_miss_rate() -> None:
    classes = ["good", "crack", "dent"]
    y = [0, 0, 1, 1, 1, 2, 2, 2]
    pred = [0, 1, 1, 1, 0, 2, 2, 1]  # one crack called good (a miss), one dent called crack
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    m = evaluate.classification_metrics(y, probs, classes, good_classes=["good"])
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 2, 0], [0, 1, 2]]
    assert m["per_class"]["crack"]["miss_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["per_class"]["dent"]["miss_rate"] == 0.0
    assert m["per_class"]["good"]["miss_rate"] is None
    assert m["per_class"]["crack"]["precision"] == pytest.approx(0.5)
    gap = evaluate.overfitting(0.99, 0.85)
    assert gap["value"] == pytest.approx(14.0) and not gap["passed"]
    r = evaluate.readiness_classification(m, evaluate.overfitting(0.7, 0.65))
    assert not r["passed"] and r["manual"]
    assert {c["criterion"]: c["passed"] for c in r["criteria"]}["overall accuracy"] is False


def test_readiness_passes_a_good_classifier() -> None:
    y = list(range(3)) * 20
    probs = np.eye(3)[y] * 0.9 + 0.1 / 3
    m = evaluate.classification_metrics(y, probs, ["a", "b", "c"])
    assert evaluate.readiness_classification(m, evaluate.overfitting(0.99, 0.98))["passed"]


def test_anomaly_metrics() -> None:
    labels = [False] * 6 + [True] * 4
    scores = [0.1, 0.2, 0.3, 0.2, 0.6, 0.1, 0.7, 0.8, 0.9, 0.4]
    names = ["good"] * 6 + ["crack", "crack", "hole", "hole"]
    m = evaluate.anomaly_metrics(labels, scores, threshold=0.5, defect_class=names)
    assert m["miss_rate"] == 0.25 and m["false_reject_rate"] == pytest.approx(1 / 6, abs=1e-4)
    assert (
        m["per_class"]["hole"]["miss_rate"] == 0.5 and m["per_class"]["crack"]["miss_rate"] == 0.0
    )
    assert m["auroc"] == pytest.approx(23 / 24, abs=1e-4)  # only 0.4 < 0.6 is out of order


def test_threshold_tuning_meets_the_goal_with_the_service_rule() -> None:
    rng = np.random.default_rng(0)
    classes = ["good", "crack", "dent"]
    y = rng.integers(0, 3, 600)
    logits = np.eye(3)[y] * 2.5 + rng.normal(0, 1.0, (600, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    tuned = thresholds.tune_classifier(
        y, probs, classes, ["good"], critical=["crack"], max_miss=0.05, review_share=0.1
    )
    t = tuned["thresholds"]
    assert set(t["per_class"]) == {"crack", "dent"}
    crack = probs[y == 1, 1]
    assert (crack >= t["per_class"]["crack"]).mean() >= 0.95
    # the band really routes >= 10 % of validation frames to review under the service's rule
    policy = DecisionPolicy(
        tuple(classes), per_class=t["per_class"], band=t["band"], good_classes=frozenset({"good"})
    )
    share = np.mean([decide_classification(p, policy).verdict is Verdict.UNCERTAIN for p in probs])
    assert share >= 0.1 and share == pytest.approx(tuned["validation_review_share"], abs=1e-4)

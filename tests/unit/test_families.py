"""Model families are found through one registry: a new family is one class (one file in
service/inference/families/), and the resolver, the batch runner and the card accept it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml

from service.core.types import Decision, Finding, Outcome, Prediction, Verdict
from service.inference import families
from service.inference.errors import ModelError
from service.inference.families import Outputs, Probe
from service.inference.model import load_model
from service.inference.runtime import RuntimeOptions
from service.stages.decide import DecisionPolicy, score_outcome
from tests import onnx_factory

FAST = RuntimeOptions(warmup_runs=0)


class Count:
    """A toy family: the model's one output is a count of flaws, FAIL at the threshold."""

    task: ClassVar[str] = "count"
    guess_rank: ClassVar[int] = 99
    self_describing: ClassVar[bool] = False
    rect_letterbox: ClassVar[bool] = False

    def __init__(self, spec: Any, output_names: list[str]) -> None:
        self.spec = spec

    @classmethod
    def claims(cls, outs: dict[str, np.ndarray]) -> bool:
        return False  # only ever named by a card

    @classmethod
    def outputs(cls, probe: Probe) -> Outputs:
        probe.sources["classes"] = "count"
        return Outputs(("flaws",))

    @classmethod
    def default_resize(cls, meta: Any) -> tuple[str, str]:
        return "resize", "default"

    def postprocess(self, outputs: list[np.ndarray], geometry: Any, policy: Any) -> Prediction:
        value = float(np.asarray(outputs[0]).reshape(-1)[0])
        return Prediction(self.task, geometry.image_size, probabilities=np.float32([value]))

    def decide(self, prediction: Prediction, policy: DecisionPolicy) -> Decision:
        assert prediction.probabilities is not None
        value = float(prediction.probabilities[0])
        thr, band = policy.threshold("flaws"), policy.band_for("flaws")
        outcome = score_outcome(value, thr, band)
        finding = Finding(0, "flaws", value, thr, band, outcome)
        verdict = Verdict.FAIL if outcome is Outcome.FAIL else Verdict.PASS
        return Decision(verdict, (finding,), f"{value:g} flaws")


def _count_model(tmp_path: Path, value: float, task: str = "count") -> Path:
    path = onnx_factory.constant_model(tmp_path / "count.onnx", np.float32([value]), size=(32, 32))
    card = {"task": task, "thresholds": {"default": 0.5, "band": 0.0}}
    path.with_name("count.card.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")
    return path


def test_a_registered_family_is_served_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(families._FAMILIES, "count", Count)  # what @register does
    model = load_model(_count_model(tmp_path, 0.9), FAST)
    assert model.spec.task == "count" and model.spec.classes == ("flaws",)
    result = model.predict([np.zeros((40, 60, 3), np.uint8)])[0]
    assert result.decision.verdict is Verdict.FAIL and result.decision.reason == "0.9 flaws"
    assert result.prediction.image_size == (40, 60)


def test_an_unknown_task_is_refused_naming_the_known_families(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"unknown task 'count' in card.*anomaly, classify"):
        load_model(_count_model(tmp_path, 0.9), FAST)


def test_the_shipped_families_are_registered() -> None:
    assert families.tasks() == ("anomaly", "classify", "detect")
    # Detector layouts are recognised by their outputs' structure (Darknet heads, (K, 7) rows,
    # four EfficientNMS outputs) before a single 2-D output is taken for a classifier.
    assert [f.task for f in families.guess_order()] == ["anomaly", "detect", "classify"]

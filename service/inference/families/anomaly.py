"""Anomaly models trained on good parts: an image score (and optionally a map), normalised so the
calibrated threshold sits at 0.5."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from service.core.types import AnomalyScore, Decision, Prediction
from service.inference.card import AnomalySpec, ModelCard, ResizeMode
from service.inference.errors import ModelError
from service.inference.families import Outputs, Probe, register
from service.stages.decide import ANOMALY_CLASS, DecisionPolicy, decide_anomaly

if TYPE_CHECKING:
    from service.inference.metadata import ExportMetadata
    from service.inference.preprocess import Geometry
    from service.inference.registry import ModelSpec


def normalise(raw: Any, a: AnomalySpec | None) -> Any:
    """Anomalib-style min-max normalisation that puts the calibrated threshold at 0.5."""
    if a is None:
        return raw
    return np.clip((raw - a.threshold) / (a.max - a.min) + 0.5, 0.0, 1.0)


def score_and_map(card: ModelCard | None, outs: dict[str, np.ndarray]) -> tuple[str, str | None]:
    """The score output (one value per image) and the map output, if any."""
    names = list(outs)
    score = card.output.score if card and card.output.score else None
    amap = card.output.map if card and card.output.map else None
    for name in (score, amap):
        if name is not None and name not in outs:
            raise ModelError(f"the card names output '{name}', but the model's outputs are {names}")
    if score is None:
        small = [n for n in names if outs[n].size == outs[n].shape[0]]  # one value per image
        named = [n for n in small if re.search(r"score", n, re.I)] or small
        if not named:
            shapes = {k: list(v.shape) for k, v in outs.items()}
            raise ModelError(f"no anomaly-score output (one value per image) among {shapes}")
        score = named[0]
    if amap is None:
        maps = [n for n in names if n != score and outs[n].ndim >= 3]
        amap = maps[0] if maps else None
    return score, amap


@register
class Anomaly:
    task: ClassVar[str] = "anomaly"
    guess_rank: ClassVar[int] = 10  # output names are the strongest hint: asked first
    self_describing: ClassVar[bool] = False
    rect_letterbox: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec, output_names: list[str]) -> None:
        if spec.score_output is None:
            raise ValueError(f"anomaly model {spec.name} names no score output")
        self.calibration = spec.anomaly
        self.score_index = output_names.index(spec.score_output)
        self.map_index = None if spec.map_output is None else output_names.index(spec.map_output)

    @classmethod
    def claims(cls, outs: dict[str, np.ndarray]) -> bool:
        """An output named like an anomaly map or score; a `score` output must hold one value
        per image (a detector's `det_scores` or `scores` does not)."""
        return any(
            re.search("anomal", n, re.I)
            or (re.search("score", n, re.I) and v.ndim > 0 and v.size == v.shape[0])
            for n, v in outs.items()
        )

    @classmethod
    def outputs(cls, probe: Probe) -> Outputs:
        card, sources = probe.card, probe.sources
        sources["classes"] = "anomaly"
        score, amap = score_and_map(card, probe.outs)
        sources["anomaly.outputs"] = "card" if card and card.output.score else "output names"
        if not (card and card.anomaly):
            probe.warnings.append(
                "no `anomaly` normalisation in the card: the raw score is compared with the "
                "threshold as it is"
            )
        return Outputs((ANOMALY_CLASS,), score_output=score, map_output=amap)

    @classmethod
    def default_resize(cls, meta: ExportMetadata) -> tuple[ResizeMode, str]:
        return "resize", "default"

    def postprocess(
        self, outputs: list[np.ndarray], geometry: Geometry, policy: DecisionPolicy
    ) -> Prediction:
        raw = float(np.asarray(outputs[self.score_index][0]).reshape(-1)[0])
        amap = None
        if self.map_index is not None:
            amap = np.asarray(outputs[self.map_index][0], np.float32).squeeze()
        score = AnomalyScore(
            score=float(normalise(np.float32(raw), self.calibration)),
            raw=raw,
            map=None if amap is None else normalise(amap, self.calibration),
        )
        return Prediction(self.task, geometry.image_size, anomaly=score)

    def decide(self, prediction: Prediction, policy: DecisionPolicy) -> Decision:
        assert prediction.anomaly is not None
        return decide_anomaly(prediction.anomaly, policy)

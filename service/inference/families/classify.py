"""Classifiers: one probability (or logit, softmaxed here) per class."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from service.core.types import Decision, Prediction
from service.inference.card import ResizeMode
from service.inference.errors import ModelError
from service.inference.families import Outputs, Probe, class_names, register
from service.stages.decide import DecisionPolicy, decide_classification

if TYPE_CHECKING:
    from service.inference.metadata import ExportMetadata
    from service.inference.preprocess import Geometry
    from service.inference.registry import ModelSpec


def softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


@register
class Classify:
    task: ClassVar[str] = "classify"
    guess_rank: ClassVar[int] = 20
    self_describing: ClassVar[bool] = False
    rect_letterbox: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec, output_names: list[str]) -> None:
        self.logits = spec.output_kind != "probabilities"

    @classmethod
    def claims(cls, outs: dict[str, np.ndarray]) -> bool:
        return len(outs) == 1 and next(iter(outs.values())).ndim == 2

    @classmethod
    def outputs(cls, probe: Probe) -> Outputs:
        card, sources = probe.card, probe.sources
        first_name, first = next(iter(probe.outs.items()))
        if first.ndim > 2 and all(d == 1 for d in first.shape[2:]):  # (batch, classes, 1, 1)
            first = first.reshape(first.shape[0], -1)
        if first.ndim != 2:
            raise ModelError(
                f"a classifier output must be (batch, classes), got {list(first.shape)}"
            )
        classes = class_names(card, probe.meta, first.shape[1], sources)
        assert classes is not None
        if len(classes) != first.shape[1]:
            raise ModelError(
                f"output '{first_name}' has {first.shape[1]} classes but {sources['classes']} "
                f"lists {len(classes)}: {list(classes)}"
            )
        if card and card.output.kind:
            output_kind, sources["output.kind"] = card.output.kind, "card"
        else:
            row = first[0].astype(np.float64)
            is_prob = bool(np.all(row >= 0) and np.all(row <= 1) and abs(row.sum() - 1) < 1e-3)
            output_kind = "probabilities" if is_prob else "logits"
            sources["output.kind"] = "test inference"
        return Outputs(classes, output_kind=output_kind)

    @classmethod
    def default_resize(cls, meta: ExportMetadata) -> tuple[ResizeMode, str]:
        if meta.author and "ultralytics" in meta.author.lower():
            return "center_crop", "Ultralytics classifier"
        return "resize", "default"

    def postprocess(
        self, outputs: list[np.ndarray], geometry: Geometry, policy: DecisionPolicy
    ) -> Prediction:
        row = np.asarray(outputs[0][0], dtype=np.float32).reshape(-1)
        probs = softmax(row) if self.logits else row
        return Prediction(self.task, geometry.image_size, probabilities=probs)

    def decide(self, prediction: Prediction, policy: DecisionPolicy) -> Decision:
        assert prediction.probabilities is not None
        return decide_classification(prediction.probabilities, policy)

"""Model families: how a model's outputs are recognised and resolved, what they mean, and which
decision judges them.

A family is one class in one module of this package, registered with `@register`; every module
here is imported when the package is, so adding a family is adding a file: the resolver
(`service.inference.registry`), the batch runner and the card's `task` field all ask this
registry. A family class offers, at class level, what resolving a model needs (`FamilyType`);
an instance, made per loaded model, offers `postprocess` and `decide` (`Family`).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from service.core.types import Decision, Prediction

if TYPE_CHECKING:
    from service.inference.card import ModelCard, ResizeMode
    from service.inference.layouts import Decoder, InputDefaults
    from service.inference.metadata import ExportMetadata
    from service.inference.preprocess import Geometry
    from service.inference.registry import ModelSpec
    from service.stages.decide import DecisionPolicy


class Family(Protocol):
    """One loaded model's family: raw outputs -> prediction -> decision."""

    def postprocess(
        self, outputs: list[np.ndarray], geometry: Geometry, policy: DecisionPolicy
    ) -> Prediction:
        """One image's raw outputs (a batch axis of one) -> what the model saw."""
        ...

    def decide(self, prediction: Prediction, policy: DecisionPolicy) -> Decision:
        """What the thresholds make of it (the pure rules of `service.stages.decide`)."""
        ...


@dataclass(frozen=True)
class Probe:
    """What resolving a model's outputs may look at; `sources` and `warnings` are filled in."""

    card: ModelCard | None
    meta: ExportMetadata
    outs: dict[str, np.ndarray]  # the outputs of a test inference on zeros, by name
    sources: dict[str, str]  # where each resolved setting came from
    warnings: list[str]
    inputs: dict[str, list[Any]] = field(default_factory=dict)  # declared shapes, image first
    input_size: tuple[int, int] = (0, 0)  # (height, width) of the test inference
    image_shape_input: str | None = None  # the ONNX model zoo's second input, if there is one


@dataclass(frozen=True)
class Outputs:
    """What a family resolved from the outputs."""

    classes: tuple[str, ...]
    layout: str | None = None  # detectors: a `service.inference.layouts` name
    output_kind: str | None = None  # classify: probabilities | logits
    score_output: str | None = None
    map_output: str | None = None
    decoder: Decoder | None = None  # detectors: the resolved output layout
    input_defaults: InputDefaults | None = None  # the layout's own preprocessing, if any
    nms_default: tuple[float, str] | None = None  # (IoU, whose) where no exporter metadata says


class FamilyType(Protocol):
    """The registered class: what the resolver asks before any model of it is loaded."""

    task: ClassVar[str]
    guess_rank: ClassVar[int]  # order of `claims` when neither card nor metadata names a task
    self_describing: ClassVar[bool]  # export metadata is enough to preprocess without a card
    rect_letterbox: ClassVar[bool]  # a dynamic-size input takes the minimum letterbox rectangle

    def __call__(self, spec: ModelSpec, output_names: list[str]) -> Family: ...

    def claims(self, outs: dict[str, np.ndarray]) -> bool:
        """Do these outputs look like this family's (used only when nothing names the task)?"""
        ...

    def outputs(self, probe: Probe) -> Outputs:
        """Classes and output roles; raises ModelError naming what the card should say."""
        ...

    def default_resize(self, meta: ExportMetadata) -> tuple[ResizeMode, str]:
        """(resize mode, why) when the card does not set one."""
        ...


_FAMILIES: dict[str, FamilyType] = {}


def register(cls: Any) -> Any:
    """Class decorator: serve the family's `task`."""
    if cls.task in _FAMILIES:
        raise ValueError(f"two model families for task {cls.task!r}")
    _FAMILIES[cls.task] = cls
    return cls


def family_type(task: str) -> FamilyType:
    try:
        return _FAMILIES[task]
    except KeyError:
        raise KeyError(f"no model family serves task {task!r}; known: {tasks()}") from None


def family_for(spec: ModelSpec, output_names: list[str]) -> Family:
    return family_type(spec.task)(spec, output_names)


def tasks() -> tuple[str, ...]:
    return tuple(sorted(_FAMILIES))


def guess_order() -> list[FamilyType]:
    return sorted(_FAMILIES.values(), key=lambda f: f.guess_rank)


def class_names(
    card: ModelCard | None, meta: ExportMetadata, count: int | None, sources: dict[str, str]
) -> tuple[str, ...] | None:
    """Class names from the card, else the export metadata, else numbered from the output."""
    if card and card.classes is not None:
        sources["classes"] = "card"
        return tuple(card.classes)
    if meta.names is not None:
        sources["classes"] = "metadata"
        return tuple(meta.names)
    if count is not None:
        sources["classes"] = "output shape (unnamed)"
        return tuple(f"class{i}" for i in range(count))
    return None


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

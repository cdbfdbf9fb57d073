"""Detector output layouts: how each exporter's raw outputs become boxes.

One module per family of exporters, each layout one `Decoder` subclass registered with
`@register` (every module here is imported with the package):

| module | layouts | what the graph gives |
|---|---|---|
| `ultralytics.py` | yolov5, yolov8, end2end | Ultralytics and YOLOv5-repository exports |
| `darknet.py` | darknet, boxes_confs | raw per-scale heads; the two-output YOLOv4 export |
| `nms_graph.py` | yolov7_end2end, efficient_nms, onnx_zoo_yolov3 | NMS inside the graph |
| `yolox.py` | yolox | raw grid outputs (no decode in the graph) |

Resolving: the card's `layout`, else the first layout (by `rank`) whose `recognise` accepts the
graph. The class then resolves itself into an instance holding everything decoding needs,
fixed at load (anchors per head, grids, output names by role), or raises a ModelError naming
the card fields that are wrong or missing. `decode` turns one image's outputs into candidate
boxes; NMS (`yolo.suppress`, shared) and the mapping to original pixels are the detect
family's.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from service.inference.card import OUTPUT_ROLES, ColorOrder, ResizeMode
from service.inference.errors import ModelError

if TYPE_CHECKING:
    from service.inference.families import Probe

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Candidates = tuple[F32, F32, I64]  # xyxy, confidence, class id
NmsMode = Literal["class", "agnostic", "graph"]

# Card fields that belong to one layout only: set with another, they are refused.
LAYOUT_FIELDS = {
    "anchors": "darknet",
    "masks": "darknet",
    "scale_x_y": "darknet",
    "strides": "yolox",
    "sigmoid": "yolox",
}


@dataclass(frozen=True)
class InputDefaults:
    """A layout's own preprocessing, used for what the card does not set."""

    resize: ResizeMode
    color: ColorOrder
    scale: float
    pad_value: int
    source: str  # whose preprocessing this is, for `models inspect`


@dataclass(frozen=True, kw_only=True, eq=False)
class Decoder:
    """A resolved layout: what decoding one image's outputs needs, fixed at load."""

    names: ClassVar[tuple[str, ...]]  # the card's `layout` values this class serves
    rank: ClassVar[int]  # order of `recognise` when the card names no layout
    hint: ClassVar[str]  # the card fields that make a model of this layout servable
    input_defaults: ClassVar[InputDefaults | None] = None  # None: the detect family's
    nms_default: ClassVar[tuple[float, str] | None] = None  # (IoU, whose default)
    agnostic_default: ClassVar[bool] = False

    layout: str
    num_classes: int  # 0: the outputs do not say (the card's `classes` must)
    input_size: tuple[int, int]  # (height, width) of the input tensor
    nms: NmsMode = "class"
    boxes_in: Literal["input", "original"] = "input"
    per_image: bool = False  # outputs are not batch-major: one image per session.run
    image_shape_input: str | None = None  # fed with each image's original (height, width)

    @classmethod
    def looks_like(cls, outs: Mapping[str, np.ndarray]) -> bool:
        """Do these outputs alone unmistakably look like this layout (used to guess the task)?"""
        return False

    @classmethod
    def recognise(cls, probe: Probe) -> bool:
        """Is this graph of this layout (the card names none)?"""
        return cls.looks_like(probe.outs)

    @classmethod
    def resolve(cls, probe: Probe) -> Decoder:
        raise NotImplementedError

    def decode(self, outs: Mapping[str, np.ndarray], conf_floor: float) -> Candidates:
        """One image's outputs (by name) -> candidates above `conf_floor`, before any NMS."""
        raise NotImplementedError


_LAYOUTS: dict[str, type[Decoder]] = {}


def register(cls: type[Decoder]) -> type[Decoder]:
    for name in cls.names:
        if name in _LAYOUTS:
            raise ValueError(f"two detector layouts named {name!r}")
        _LAYOUTS[name] = cls
    return cls


def layout_names() -> tuple[str, ...]:
    return tuple(_LAYOUTS)


def _in_rank_order() -> list[type[Decoder]]:
    return sorted(set(_LAYOUTS.values()), key=lambda c: c.rank)


def claims(outs: Mapping[str, np.ndarray]) -> bool:
    """Do a model's outputs look like a detector's (the detect family's `claims`)?"""
    return any(cls.looks_like(outs) for cls in _in_rank_order())


def resolve(probe: Probe) -> Decoder:
    """The model's layout, resolved; a ModelError says what was seen and what would serve it."""
    card = probe.card
    if card and card.layout:
        probe.sources["layout"] = "card"
        decoder = _LAYOUTS[card.layout].resolve(probe)
    else:
        for cls in _in_rank_order():
            if cls.recognise(probe):
                decoder = cls.resolve(probe)
                probe.sources.setdefault("layout", "the graph's inputs and outputs")
                break
        else:
            raise ModelError(
                f"cannot tell the detector layout: {seen(probe)}. A model card can make it "
                f"servable: {card_hints()}"
            )
    _check_fields(probe, decoder)
    return decoder


def seen(probe: Probe) -> str:
    """What the graph shows: its inputs (declared) and outputs (from a test inference)."""
    ins = ", ".join(f"'{n}' {list(s)}" for n, s in probe.inputs.items())
    outs = ", ".join(f"'{n}' {list(v.shape)}" for n, v in probe.outs.items())
    return f"inputs {ins}; outputs {outs}"


def card_hints() -> str:
    """Each layout and the card fields it needs, as a refusal lists them."""
    return "; ".join(f"`layout: {' | '.join(c.names)}` {c.hint}" for c in _in_rank_order())


def _check_fields(probe: Probe, decoder: Decoder) -> None:
    card = probe.card
    if card is None:
        return
    for name, owner in LAYOUT_FIELDS.items():
        if getattr(card, name) is not None and decoder.layout != owner:
            raise ModelError(
                f"card field `{name}` applies to layout {owner} only; this model's layout is "
                f"{decoder.layout} ({probe.sources.get('layout', 'card')})"
            )
    if card.nms_class_agnostic is not None and decoder.nms == "graph":
        probe.warnings.append(
            f"card field `nms_class_agnostic` has no effect: layout {decoder.layout} runs its "
            "NMS inside the graph"
        )


def output_roles(probe: Probe, layout: str, defaults: Mapping[str, str]) -> dict[str, str]:
    """Output name per role: the card's `outputs`, else `defaults` (found from the graph).
    Unknown roles, names the model lacks and missing roles are refused naming the card field."""
    roles = dict(defaults)
    given = dict(probe.card.outputs or {}) if probe.card else {}
    allowed = OUTPUT_ROLES[layout]
    for role, name in given.items():
        if role not in allowed:
            raise ModelError(
                f"card field `outputs.{role}`: layout {layout} has no output role '{role}'; "
                f"its roles are {list(allowed)}"
            )
        if not isinstance(name, str):
            raise ModelError(f"card field `outputs.{role}` must be one output name, got {name}")
        if name not in probe.outs:
            raise ModelError(
                f"card field `outputs.{role}` names '{name}', but the model's outputs are "
                f"{list(probe.outs)}"
            )
        roles[role] = name
    if given:
        probe.sources["outputs"] = "card"
    missing = [r for r in allowed if r not in roles]
    if missing:
        raise ModelError(
            f"layout {layout}: cannot tell which output is {', '.join(missing)} among "
            f"{seen(probe)}; set `outputs` in the card ({', '.join(allowed)})"
        )
    return roles


def nms_mode(probe: Probe, cls: type[Decoder]) -> NmsMode:
    card = probe.card
    if card and card.nms_class_agnostic is not None:
        agnostic = card.nms_class_agnostic
    else:
        agnostic = cls.agnostic_default
    return "agnostic" if agnostic else "class"


def sigmoid(x: np.ndarray) -> F32:
    out: F32 = (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)
    return out


def best_class(scores: np.ndarray, conf_floor: float) -> tuple[npt.NDArray[np.bool_], F32, I64]:
    """Single label per box, as Ultralytics, OpenCV's DetectionModel and the exporters' demos
    do: (rows above the floor, their best score, its class)."""
    if not len(scores):
        return np.zeros((0,), bool), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    conf = scores.max(axis=1)
    keep = conf > conf_floor
    return keep, conf[keep].astype(np.float32), scores[keep].argmax(axis=1).astype(np.int64)


def empty() -> Candidates:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

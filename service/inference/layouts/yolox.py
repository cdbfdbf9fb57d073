"""YOLOX exported without the decode in the graph (its export_onnx.py default): one output
(B, N, 5 + nc) with a row per grid cell of every level (strides 8, 16, 32; 64 as well for P6
models), raw box offsets and, since the head applies them in the graph, sigmoid objectness and
class scores. Decoded as YOLOX's `demo_postprocess`: xy = (offset + cell) * stride,
wh = exp(t) * stride; score = objectness x best class, NMS per class as YOLOX's `postprocess`
(yolox/utils/boxes.py, what its predictor and evaluator run); `nms_class_agnostic: true` for one
NMS across classes, as its ONNX demo's `multiclass_nms` (which also counts box sides with the
old +1 pixel: a rare thin box may differ). Preprocessing as YOLOX's `preproc`: letterbox to the
top-left corner, padding 114, BGR, pixel values as they are (no /255).

A YOLOX export with the decode inside the graph gives (B, N, 5 + nc) in input pixels, which is
the yolov5 layout: set `layout: yolov5` (and YOLOX's preprocessing in `input`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from service.inference import yolo
from service.inference.errors import ModelError
from service.inference.layouts import (
    F32,
    Candidates,
    Decoder,
    InputDefaults,
    best_class,
    nms_mode,
    output_roles,
    register,
    sigmoid,
)

if TYPE_CHECKING:
    from service.inference.families import Probe

STRIDES = (8, 16, 32)


def grid(size: tuple[int, int], strides: tuple[int, ...]) -> tuple[F32, F32]:
    """(cells (N, 2) as x, y; stride per cell (N, 1)), level by level, row-major: the order of
    YOLOX's outputs."""
    cells, steps = [], []
    for s in strides:
        xv, yv = np.meshgrid(np.arange(size[1] // s), np.arange(size[0] // s))
        cells.append(np.stack((xv, yv), 2).reshape(-1, 2))
        steps.append(np.full((cells[-1].shape[0], 1), s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(steps).astype(np.float32)


def _cells(size: tuple[int, int], strides: tuple[int, ...]) -> int:
    return sum((size[0] // s) * (size[1] // s) for s in strides)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Yolox(Decoder):
    names: ClassVar[tuple[str, ...]] = ("yolox",)
    rank: ClassVar[int] = 50
    hint: ClassVar[str] = "(+ `strides` if not [8, 16, 32], `sigmoid`)"
    input_defaults: ClassVar[InputDefaults | None] = InputDefaults(
        "letterbox_top_left", "bgr", 1.0, 114, "YOLOX's preproc"
    )
    nms_default: ClassVar[tuple[float, str] | None] = (0.45, "YOLOX's ONNX demo (nms_thr 0.45)")

    output: str
    strides: tuple[int, ...]
    cells: F32
    steps: F32
    apply_sigmoid: bool

    @classmethod
    def recognise(cls, probe: Probe) -> bool:
        """A rank-3 output with one row per grid cell of strides 8/16/32 (YOLOv5's has three
        per cell), raw offsets (not pixels), and no Ultralytics or YOLOv5 metadata."""
        meta = probe.meta
        if meta.names is not None or meta.author is not None or len(probe.outs) != 1:
            return False
        (v,) = probe.outs.values()
        if v.ndim != 3 or v.shape[2] < 6 or v.shape[1] != _cells(probe.input_size, STRIDES):
            return False
        return bool(np.abs(v[0, :, 0]).mean() < STRIDES[0])

    @classmethod
    def resolve(cls, probe: Probe) -> Decoder:
        card, sources = probe.card, probe.sources
        first = next(iter(probe.outs))
        name = output_roles(probe, "yolox", {"predictions": first})["predictions"]
        v = probe.outs[name]
        if v.ndim != 3 or v.shape[2] < 6:
            raise ModelError(f"layout yolox needs one (B, N, 5 + nc) output; '{name}' is {v.shape}")
        carded = bool(card and card.strides)
        strides = tuple(card.strides) if card and card.strides else STRIDES
        sources.setdefault("layout", "output shape (one row per grid cell, raw offsets)")
        sources["strides"] = "card" if carded else f"YOLOX default {list(strides)}"
        h, w = probe.input_size
        if any(h % s or w % s for s in strides) or v.shape[1] != _cells((h, w), strides):
            given = "card field `strides`" if carded else "the default strides"
            raise ModelError(
                f"{given} {list(strides)} give {_cells((h, w), strides)} grid cells at "
                f"{h}x{w}, but output '{name}' has {v.shape[1]} rows: set card field `strides` "
                "to the model's levels (P6 models: [8, 16, 32, 64])"
            )
        nc = int(v.shape[2]) - 5
        if card and card.classes is not None and len(card.classes) != nc:
            raise ModelError(
                f"card field `classes` lists {len(card.classes)} classes, but output '{name}' "
                f"{list(v.shape)} has {nc} (5 + nc columns)"
            )
        if card and card.sigmoid is not None:
            apply, sources["sigmoid"] = card.sigmoid, "card"
        else:
            scores = v[0, :, 4:]
            apply = bool(scores.min() < 0 or scores.max() > 1)
            sources["sigmoid"] = (
                "test inference: scores outside [0, 1], applied here"
                if apply
                else "test inference: scores in [0, 1], already in the graph"
            )
        cells, steps = grid((h, w), strides)
        return cls(
            layout="yolox",
            output=name,
            strides=strides,
            cells=cells,
            steps=steps,
            apply_sigmoid=apply,
            num_classes=nc,
            input_size=probe.input_size,
            nms=nms_mode(probe, cls),
        )

    def decode(self, outs: Mapping[str, np.ndarray], conf_floor: float) -> Candidates:
        raw = np.asarray(outs[self.output][0], np.float32)
        obj, cls_scores = raw[:, 4:5], raw[:, 5:]
        if self.apply_sigmoid:
            obj, cls_scores = sigmoid(obj), sigmoid(cls_scores)
        keep, conf, cls = best_class(obj * cls_scores, conf_floor)
        box = np.empty((int(keep.sum()), 4), np.float32)
        box[:, :2] = (raw[keep, :2] + self.cells[keep]) * self.steps[keep]
        box[:, 2:] = np.exp(raw[keep, 2:4]) * self.steps[keep]
        return yolo.cxcywh_to_xyxy(box), conf, cls

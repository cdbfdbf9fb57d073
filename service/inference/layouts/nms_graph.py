"""Graphs with NMS inside: their selection is served as it is (filtered by the confidence
floor, capped at `max_detections`), nothing suppressed again.

- yolov7_end2end: YOLOv7's `export.py --end2end` for ONNX Runtime, one output (K, 7): batch
  index, x1, y1, x2, y2 (input pixels), class, score. Not batch-major: one image per run.
- efficient_nms: the four outputs of TensorRT's EfficientNMS (YOLOv7 `--end2end` for TensorRT,
  and other exporters): `num_dets` (B, 1), `det_boxes` (B, M, 4) corners in input pixels,
  `det_scores` (B, M), `det_classes` (B, M); the first num_dets rows of each image count.
- onnx_zoo_yolov3: the ONNX model zoo's YOLOv3 and tiny-YOLOv3: a second input `image_shape`
  (B, 2), fed with each image's original (height, width), so that the graph maps its boxes back
  itself; outputs boxes (1, N, 4) as y1, x1, y2, x2 in original pixels, scores (1, nc, N) and the
  selected (batch, class, box) indices, (K, 3) or (1, K, 3). Letterbox with grey 128, RGB, /255.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from service.inference.errors import ModelError
from service.inference.layouts import (
    Candidates,
    Decoder,
    InputDefaults,
    empty,
    output_roles,
    register,
    seen,
)

if TYPE_CHECKING:
    from service.inference.families import Probe

LETTERBOX_114 = InputDefaults("letterbox", "rgb", 1.0 / 255.0, 114, "YOLOv7's letterbox")
EFFICIENT_NMS_NAMES = {"num_dets": "num", "boxes": "box", "scores": "score", "classes": "class"}


def _rows_of_7(outs: Mapping[str, np.ndarray]) -> bool:
    return len(outs) == 1 and all(v.ndim == 2 and v.shape[1] == 7 for v in outs.values())


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Yolov7End2End(Decoder):
    names: ClassVar[tuple[str, ...]] = ("yolov7_end2end",)
    rank: ClassVar[int] = 20
    hint: ClassVar[str] = "+ `classes`"
    input_defaults: ClassVar[InputDefaults | None] = LETTERBOX_114

    output: str

    @classmethod
    def looks_like(cls, outs: Mapping[str, np.ndarray]) -> bool:
        # (K, 7) with K != 1: a 7-class classifier's (1, 7) stays a classifier unless the card
        # says `task: detect` or `layout: yolov7_end2end`.
        return _rows_of_7(outs) and next(iter(outs.values())).shape[0] != 1

    @classmethod
    def recognise(cls, probe: Probe) -> bool:
        return _rows_of_7(probe.outs)

    @classmethod
    def resolve(cls, probe: Probe) -> Decoder:
        first = next(iter(probe.outs))
        name = output_roles(probe, "yolov7_end2end", {"detections": first})["detections"]
        if probe.outs[name].ndim != 2 or probe.outs[name].shape[1] != 7:
            raise ModelError(f"layout yolov7_end2end needs one (K, 7) output; {seen(probe)}")
        return cls(
            layout="yolov7_end2end",
            output=name,
            num_classes=0,
            input_size=probe.input_size,
            nms="graph",
            per_image=True,
        )

    def decode(self, outs: Mapping[str, np.ndarray], conf_floor: float) -> Candidates:
        rows = np.asarray(outs[self.output], np.float32).reshape(-1, 7)
        rows = rows[(rows[:, 0] == 0) & (rows[:, 6] > conf_floor)]  # one image per run: batch 0
        return rows[:, 1:5].copy(), rows[:, 6].copy(), rows[:, 5].round().astype(np.int64)


def _efficient_roles(outs: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Roles by name (num_dets, det_boxes, det_scores, det_classes), else by shape."""
    if len(outs) != 4:
        return {}
    roles: dict[str, str] = {}
    for role, word in EFFICIENT_NMS_NAMES.items():
        hits = [n for n in outs if re.search(word, n, re.I)]
        if len(hits) == 1:
            roles[role] = hits[0]
    if len(set(roles.values())) == 4:
        return roles
    by_rank = sorted(outs, key=lambda n: (outs[n].ndim, outs[n].size))
    counts, boxes = by_rank[0], [n for n in outs if outs[n].ndim == 3]
    rest = [n for n in outs if outs[n].ndim == 2 and n != counts]
    if outs[counts].shape[1:] != (1,) or len(boxes) != 1 or len(rest) != 2:
        return {}
    if outs[boxes[0]].shape[2] != 4:
        return {}
    # det_scores is float, det_classes an integer type in TensorRT's plugin and YOLOv7's export.
    ints = [n for n in rest if np.issubdtype(outs[n].dtype, np.integer)]
    if len(ints) != 1:
        return {}
    scores = next(n for n in rest if n != ints[0])
    return {"num_dets": counts, "boxes": boxes[0], "scores": scores, "classes": ints[0]}


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class EfficientNms(Decoder):
    names: ClassVar[tuple[str, ...]] = ("efficient_nms",)
    rank: ClassVar[int] = 10
    hint: ClassVar[str] = "+ `classes` (`outputs`: num_dets, boxes, scores, classes)"
    input_defaults: ClassVar[InputDefaults | None] = LETTERBOX_114

    num_dets: str
    boxes: str
    scores: str
    classes: str

    @classmethod
    def looks_like(cls, outs: Mapping[str, np.ndarray]) -> bool:
        return bool(_efficient_roles(outs))

    @classmethod
    def resolve(cls, probe: Probe) -> Decoder:
        roles = output_roles(probe, "efficient_nms", _efficient_roles(probe.outs))
        boxes = probe.outs[roles["boxes"]]
        if boxes.ndim != 3 or boxes.shape[2] != 4:
            raise ModelError(f"layout efficient_nms: boxes must be (B, M, 4); {seen(probe)}")
        return cls(
            layout="efficient_nms",
            num_dets=roles["num_dets"],
            boxes=roles["boxes"],
            scores=roles["scores"],
            classes=roles["classes"],
            num_classes=0,
            input_size=probe.input_size,
            nms="graph",
        )

    def decode(self, outs: Mapping[str, np.ndarray], conf_floor: float) -> Candidates:
        n = int(np.asarray(outs[self.num_dets]).reshape(-1)[0])
        boxes = np.asarray(outs[self.boxes][0, :n], np.float32)
        scores = np.asarray(outs[self.scores][0, :n], np.float32)
        classes = np.asarray(outs[self.classes][0, :n]).round().astype(np.int64)
        keep = scores > conf_floor
        return boxes[keep], scores[keep], classes[keep]


def _zoo_roles(outs: Mapping[str, np.ndarray]) -> dict[str, str]:
    """(1, N, 4) boxes, (1, nc, N) scores, (K, 3) or (1, K, 3) indices, in any order."""
    if len(outs) != 3:
        return {}
    roles: dict[str, str] = {}
    for name, v in outs.items():
        if v.ndim in (2, 3) and v.shape[-1] == 3 and (v.ndim == 2 or v.shape[0] == 1):
            roles.setdefault("indices", name)
        elif v.ndim == 3 and v.shape[2] == 4:
            roles.setdefault("boxes", name)
        elif v.ndim == 3:
            roles.setdefault("scores", name)
    if len(roles) != 3:
        return {}
    if outs[roles["scores"]].shape[2] != outs[roles["boxes"]].shape[1]:
        return {}
    return roles


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class OnnxZooYolov3(Decoder):
    names: ClassVar[tuple[str, ...]] = ("onnx_zoo_yolov3",)
    rank: ClassVar[int] = 15
    hint: ClassVar[str] = "(a second input `image_shape` (B, 2); `outputs`: boxes, scores, indices)"
    input_defaults: ClassVar[InputDefaults | None] = InputDefaults(
        "letterbox", "rgb", 1.0 / 255.0, 128, "the ONNX model zoo's letterbox"
    )

    boxes: str
    scores: str
    indices: str

    @classmethod
    def looks_like(cls, outs: Mapping[str, np.ndarray]) -> bool:
        return bool(_zoo_roles(outs))

    @classmethod
    def recognise(cls, probe: Probe) -> bool:
        return probe.image_shape_input is not None and bool(_zoo_roles(probe.outs))

    @classmethod
    def resolve(cls, probe: Probe) -> Decoder:
        if probe.image_shape_input is None:
            raise ModelError(
                f"layout onnx_zoo_yolov3 needs the second input `image_shape` (B, 2); {seen(probe)}"
            )
        roles = output_roles(probe, "onnx_zoo_yolov3", _zoo_roles(probe.outs))
        return cls(
            layout="onnx_zoo_yolov3",
            num_classes=int(probe.outs[roles["scores"]].shape[1]),
            input_size=probe.input_size,
            nms="graph",
            boxes_in="original",
            per_image=True,
            image_shape_input=probe.image_shape_input,
            boxes=roles["boxes"],
            scores=roles["scores"],
            indices=roles["indices"],
        )

    def decode(self, outs: Mapping[str, np.ndarray], conf_floor: float) -> Candidates:
        picks = np.asarray(outs[self.indices]).reshape(-1, 3).astype(np.int64)
        picks = picks[picks[:, 0] == 0]  # one image per run: batch 0
        if not len(picks):
            return empty()
        yxyx = np.asarray(outs[self.boxes][0], np.float32)[picks[:, 2]]
        scores = np.asarray(outs[self.scores][0], np.float32)[picks[:, 1], picks[:, 2]]
        keep = scores > conf_floor
        xyxy = yxyx[keep][:, [1, 0, 3, 2]]
        return np.ascontiguousarray(xyxy), scores[keep], picks[keep, 1]

"""Detectors (YOLO layouts, decoded by `service.inference.yolo`): boxes above the confidence
floor, judged box by box."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from service.core.types import Decision, Detections, Prediction
from service.inference import yolo
from service.inference.card import Layout, ResizeMode
from service.inference.errors import ModelError
from service.inference.families import Outputs, Probe, class_names, register
from service.stages.decide import DecisionPolicy, decide_detections

if TYPE_CHECKING:
    from service.inference.metadata import ExportMetadata
    from service.inference.preprocess import Geometry
    from service.inference.registry import ModelSpec


def detect_layout(
    shape: tuple[int, ...], num_classes: int | None, end2end: bool | None
) -> tuple[Layout, int]:
    """(layout, num_classes) from a concrete (B, a, b) detector output shape."""
    if len(shape) != 3:
        raise ModelError(f"a detector output must have rank 3 (batch, ., .), got {list(shape)}")
    _, a, b = shape
    if end2end:
        if b != 6:
            raise ModelError(f"end-to-end output must be (batch, K, 6), got {list(shape)}")
        return "end2end", num_classes or 0
    if num_classes is not None:
        v8_fits, v5_fits = a == 4 + num_classes, b == 5 + num_classes
        if v8_fits and (not v5_fits or a < b):  # both fit only for toy shapes: fewer channels
            return "yolov8", num_classes
        if v5_fits:
            return "yolov5", num_classes
        if b == 6 and a <= 1000:
            return "end2end", num_classes
        raise ModelError(
            f"output {list(shape)} fits no known layout for {num_classes} classes: expected "
            f"yolov8 (batch, {4 + num_classes}, N), yolov5 (batch, N, {5 + num_classes}) or "
            "end-to-end (batch, K, 6); set `layout` and `classes` in the model card"
        )
    if a < b and a > 4:
        return "yolov8", a - 4
    if b == 6 and a in (100, 300):
        return "end2end", 0
    if b > 5:
        return "yolov5", b - 5
    raise ModelError(f"cannot tell the detector layout from output {list(shape)}")


@register
class Detect:
    task: ClassVar[str] = "detect"
    guess_rank: ClassVar[int] = 30
    self_describing: ClassVar[bool] = True  # Ultralytics metadata carries size, stride, names
    rect_letterbox: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec, output_names: list[str]) -> None:
        if spec.layout is None:
            raise ValueError(f"detector {spec.name} has no output layout")
        self.spec, self.layout = spec, spec.layout

    @classmethod
    def claims(cls, outs: dict[str, np.ndarray]) -> bool:
        return next(iter(outs.values())).ndim == 3

    @classmethod
    def outputs(cls, probe: Probe) -> Outputs:
        card, meta, sources = probe.card, probe.meta, probe.sources
        first = next(iter(probe.outs.values()))
        known = card.classes if card and card.classes else meta.names
        if card and card.layout:
            layout, sources["layout"] = card.layout, "card"
            _, count = detect_layout(
                first.shape, len(known) if known else None, layout == "end2end"
            )
        else:
            layout, count = detect_layout(first.shape, len(known) if known else None, meta.end2end)
            sources["layout"] = "metadata" if meta.end2end else "output shape"
        classes = class_names(card, meta, count or None, sources)
        if classes is None:
            raise ModelError(
                "an end-to-end detector's output does not say how many classes it has; "
                "set `classes` in the model card"
            )
        return Outputs(classes, layout=layout)

    @classmethod
    def default_resize(cls, meta: ExportMetadata) -> tuple[ResizeMode, str]:
        return "letterbox", "default for detectors"

    def postprocess(
        self, outputs: list[np.ndarray], geometry: Geometry, policy: DecisionPolicy
    ) -> Prediction:
        spec = self.spec
        raw = np.asarray(outputs[0][0], dtype=np.float32)
        boxes, conf, cls = yolo.detect(
            raw,
            self.layout,
            len(spec.classes),
            policy.confidence_floor(),  # nothing below the lowest band can count
            spec.nms_iou,
            spec.max_detections,
        )
        dets = Detections(geometry.to_original(boxes), conf, cls)
        return Prediction(self.task, geometry.image_size, detections=dets)

    def decide(self, prediction: Prediction, policy: DecisionPolicy) -> Decision:
        assert prediction.detections is not None
        return decide_detections(prediction.detections, policy)

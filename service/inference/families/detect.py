"""Detectors: boxes above the confidence floor, judged box by box.

The output layouts (Ultralytics, Darknet, NMS inside the graph, YOLOX) are resolved and decoded
by `service.inference.layouts`; this family adds what they share: the class names, NMS
(`yolo.suppress`, unless the graph ran its own), and the mapping back to original pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from service.core.types import Decision, Detections, Prediction
from service.inference import layouts, yolo
from service.inference.card import ResizeMode
from service.inference.errors import ModelError
from service.inference.families import Outputs, Probe, class_names, register
from service.stages.decide import DecisionPolicy, decide_detections

if TYPE_CHECKING:
    from service.inference.metadata import ExportMetadata
    from service.inference.preprocess import Geometry
    from service.inference.registry import ModelSpec


@register
class Detect:
    task: ClassVar[str] = "detect"
    # After the anomaly family's output names, before the classifier's single 2-D output: a
    # detector layout's outputs are recognised by their structure (`layouts.claims`).
    guess_rank: ClassVar[int] = 15
    self_describing: ClassVar[bool] = True  # Ultralytics metadata carries size, stride, names
    rect_letterbox: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec, output_names: list[str]) -> None:
        if spec.decoder is None:
            raise ValueError(f"detector {spec.name} has no output layout")
        self.spec, self.decoder, self.output_names = spec, spec.decoder, output_names

    @classmethod
    def claims(cls, outs: dict[str, np.ndarray]) -> bool:
        return layouts.claims(outs)

    @classmethod
    def outputs(cls, probe: Probe) -> Outputs:
        decoder = layouts.resolve(probe)
        count = decoder.num_classes
        classes = class_names(probe.card, probe.meta, count or None, probe.sources)
        if classes is None:
            which = "an end-to-end" if decoder.layout == "end2end" else f"a {decoder.layout}"
            raise ModelError(
                f"{which} detector's output does not say how many classes it has; set "
                "`classes` in the model card"
            )
        if count and len(classes) != count:
            raise ModelError(
                f"{probe.sources['classes']} lists {len(classes)} classes, but the "
                f"{decoder.layout} outputs have {count}: check card field `classes`"
            )
        return Outputs(
            classes,
            layout=decoder.layout,
            decoder=decoder,
            input_defaults=type(decoder).input_defaults,
            nms_default=type(decoder).nms_default,
        )

    @classmethod
    def default_resize(cls, meta: ExportMetadata) -> tuple[ResizeMode, str]:
        return "letterbox", "default for detectors"

    def postprocess(
        self, outputs: list[np.ndarray], geometry: Geometry, policy: DecisionPolicy
    ) -> Prediction:
        spec, decoder = self.spec, self.decoder
        named = dict(zip(self.output_names, outputs, strict=True))
        floor = policy.confidence_floor()  # nothing below the lowest band can count
        boxes, conf, cls = decoder.decode(named, floor)
        if decoder.nms == "graph":
            boxes, conf, cls = yolo.top_k(boxes, conf, cls, spec.max_detections)
        else:
            boxes, conf, cls = yolo.suppress(
                boxes, conf, cls, spec.nms_iou, spec.max_detections, decoder.nms == "agnostic"
            )
        if len(cls) and int(cls.max()) >= len(spec.classes):
            raise ModelError(
                f"the model returned class id {int(cls.max())}, but it has "
                f"{len(spec.classes)} classes {list(spec.classes)}: check card field `classes`"
            )
        if decoder.boxes_in == "original":  # the graph mapped them back itself
            dets = Detections(geometry.clip(boxes), conf, cls)
        else:
            dets = Detections(geometry.to_original(boxes), conf, cls)
        return Prediction(self.task, geometry.image_size, detections=dets)

    def decide(self, prediction: Prediction, policy: DecisionPolicy) -> Decision:
        assert prediction.detections is not None
        return decide_detections(prediction.detections, policy)

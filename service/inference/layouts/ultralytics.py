"""Ultralytics and YOLOv5-repository exports: one (batch, ., .) output, decoded by
`service.inference.yolo` exactly as Ultralytics' predict does.

- yolov5:  (B, N, 5 + nc)  cx, cy, w, h, objectness, class scores
- yolov8:  (B, 4 + nc, N)  cx, cy, w, h, class scores (YOLOv8/11, v3u, v5u)
- end2end: (B, K, 6)       x1, y1, x2, y2, score, class, no NMS needed (YOLOv10 / YOLO26)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, cast

import numpy as np

from service.inference import yolo
from service.inference.errors import ModelError
from service.inference.layouts import Candidates, Decoder, output_roles, register

if TYPE_CHECKING:
    from service.inference.families import Probe


def detect_layout(
    shape: tuple[int, ...], num_classes: int | None, end2end: bool | None
) -> tuple[yolo.UltralyticsLayout, int]:
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
@dataclass(frozen=True, kw_only=True, eq=False)
class Ultralytics(Decoder):
    names: ClassVar[tuple[str, ...]] = ("yolov8", "yolov5", "end2end")
    rank: ClassVar[int] = 90  # the catch-all for one rank-3 output: asked last
    hint: ClassVar[str] = "(+ `classes` for end2end)"

    output: str
    kind: yolo.UltralyticsLayout

    @classmethod
    def looks_like(cls, outs: Mapping[str, np.ndarray]) -> bool:
        return next(iter(outs.values())).ndim == 3

    @classmethod
    def resolve(cls, probe: Probe) -> Decoder:
        card, meta, sources = probe.card, probe.meta, probe.sources
        layout_named = card.layout if card and card.layout else None
        first = next(iter(probe.outs))
        name = output_roles(probe, layout_named or "yolov8", {"predictions": first})["predictions"]
        shape = probe.outs[name].shape
        known = card.classes if card and card.classes else meta.names
        count = len(known) if known else None
        if layout_named:
            # the card's layout decodes; the shape says how many classes
            _, found = detect_layout(shape, count, layout_named == "end2end")
            kind = cast(yolo.UltralyticsLayout, layout_named)
        else:
            kind, found = detect_layout(shape, count, meta.end2end)
            sources["layout"] = "metadata" if meta.end2end else "output shape"
        return cls(
            layout=kind,
            kind=kind,
            output=name,
            num_classes=found,
            input_size=probe.input_size,
            nms="graph" if kind == "end2end" else "class",
        )

    def decode(self, outs: Mapping[str, np.ndarray], conf_floor: float) -> Candidates:
        raw = np.asarray(outs[self.output][0], dtype=np.float32)
        return yolo.decode(raw, self.kind, self.num_classes, conf_floor)

"""Darknet YOLOv3 / v4 (and -tiny) exports.

- darknet: the raw heads, one output per scale, (B, A * (5 + nc), H, W) as the last
  convolution leaves it. Decoded as Darknet's [yolo] layer (and OpenCV's reader of it):
  x = (col + sigmoid(tx) * s - (s - 1) / 2) / W, likewise y; w = exp(tw) * anchor_w (input
  pixels); score = sigmoid(objectness) * sigmoid(class), with s the layer's `scale_x_y`
  (YOLOv4; 1 otherwise). The anchors are not in the graph: the card gives them (`anchors`, and
  `masks` saying which anchors each head uses; `scale_x_y`).
- boxes_confs: the two-output export common for YOLOv4 (pytorch-YOLOv4's darknet2onnx), the
  decode inside the graph: `boxes` (B, N, 1, 4) corners normalised to the input, `confs`
  (B, N, nc) objectness x class.

Both: single label per box, class-aware NMS (OpenCV's DetectionModel; pytorch-YOLOv4's
post_processing), plain resize, RGB, /255 unless the card says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from service.inference import yolo
from service.inference.errors import ModelError
from service.inference.layouts import (
    Candidates,
    Decoder,
    InputDefaults,
    best_class,
    empty,
    nms_mode,
    output_roles,
    register,
    seen,
    sigmoid,
)

if TYPE_CHECKING:
    from service.inference.families import Probe

PLAIN_RESIZE = InputDefaults("resize", "rgb", 1.0 / 255.0, 128, "Darknet's default")
EXAMPLE = (
    "e.g. yolov4-tiny: `anchors: [[10,14],[23,27],[37,58],[81,82],[135,169],[344,319]]`, "
    "`masks: [[3,4,5],[1,2,3]]`, `scale_x_y: 1.05`"
)


@dataclass(frozen=True)
class Head:
    output: str
    anchors: tuple[tuple[float, float], ...]  # (w, h) in input pixels
    scale_x_y: float


def _is_head(v: np.ndarray) -> bool:
    return v.ndim == 4 and v.shape[1] >= 6 and v.shape[2] >= 2 and v.shape[3] >= 2


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Darknet(Decoder):
    names: ClassVar[tuple[str, ...]] = ("darknet",)
    rank: ClassVar[int] = 40
    hint: ClassVar[str] = "+ `anchors` (+ `masks`, `scale_x_y`, `classes`; `outputs.heads`)"
    input_defaults: ClassVar[InputDefaults | None] = PLAIN_RESIZE
    nms_default: ClassVar[tuple[float, str] | None] = (0.45, "Darknet's default (nms 0.45)")

    heads: tuple[Head, ...]

    @classmethod
    def looks_like(cls, outs: Mapping[str, np.ndarray]) -> bool:
        return all(_is_head(v) for v in outs.values())

    @classmethod
    def resolve(cls, probe: Probe) -> Decoder:
        card, sources = probe.card, probe.sources
        names = cls._head_names(probe)
        shapes = {n: probe.outs[n].shape for n in names}
        h_in, w_in = probe.input_size
        for n, (_, _, h, w) in shapes.items():
            if h_in % h or w_in % w or h_in // h != w_in // w:
                raise ModelError(
                    f"layout darknet: head '{n}' {list(shapes[n])} is not a grid over the "
                    f"{h_in}x{w_in} input (no whole stride); {seen(probe)}"
                )
        anchors = card.anchors if card else None
        if not anchors:
            strides = ", ".join(str(h_in // s[2]) for s in shapes.values())
            raise ModelError(
                f"outputs {[f'{n} {list(s)}' for n, s in shapes.items()]} look like Darknet YOLO "
                f"heads (strides {strides}), but the anchors are not in the graph: set card "
                f"field `anchors` (and `masks`, `scale_x_y`, `classes` as the cfg's [yolo] "
                f"layers say), {EXAMPLE}"
            )
        masks = cls._masks(probe, names, len(anchors))
        nc = cls._classes(probe, names, masks)
        scales = cls._scales(probe, len(names))
        heads = tuple(
            Head(n, tuple((float(anchors[k][0]), float(anchors[k][1])) for k in m), s)
            for n, m, s in zip(names, masks, scales, strict=True)
        )
        sources["anchors"] = "card"
        return cls(
            layout="darknet",
            heads=heads,
            num_classes=nc,
            input_size=probe.input_size,
            nms=nms_mode(probe, cls),
        )

    @classmethod
    def _head_names(cls, probe: Probe) -> list[str]:
        given = probe.card.outputs if probe.card and probe.card.outputs else {}
        extra = sorted(set(given) - {"heads"})
        if extra:
            raise ModelError(
                f"card field `outputs.{extra[0]}`: layout darknet has one output role, `heads`"
            )
        if "heads" in given:
            names = given["heads"]
            names = [names] if isinstance(names, str) else names
            for n in names:
                if n not in probe.outs:
                    raise ModelError(
                        f"card field `outputs.heads` names '{n}', but the model's outputs are "
                        f"{list(probe.outs)}"
                    )
            probe.sources["outputs"] = "card"
        else:
            names = list(probe.outs)
        bad = [n for n in names if not _is_head(probe.outs[n])]
        if bad or not names:
            raise ModelError(
                f"layout darknet needs raw heads (batch, A*(5+nc), H, W); {seen(probe)}: set "
                "card field `outputs.heads` to the head outputs"
            )
        return names

    @classmethod
    def _masks(cls, probe: Probe, names: list[str], n_anchors: int) -> list[list[int]]:
        card = probe.card
        assert card is not None
        if card.masks is not None:
            if len(card.masks) != len(names):
                raise ModelError(
                    f"card field `masks` has {len(card.masks)} entries but the model has "
                    f"{len(names)} heads {names}: one mask (list of anchor indices) per head"
                )
            for i, mask in enumerate(card.masks):
                if not mask:
                    raise ModelError(f"card field `masks[{i}]` is empty")
                for k in mask:
                    if not 0 <= k < n_anchors:
                        raise ModelError(
                            f"card field `masks[{i}]` refers to anchor {k}, but `anchors` has "
                            f"{n_anchors} pairs (indices 0 to {n_anchors - 1})"
                        )
            probe.sources["masks"] = "card"
            return [list(m) for m in card.masks]
        if n_anchors % len(names):
            raise ModelError(
                f"card field `anchors` has {n_anchors} pairs, which do not split evenly over the "
                f"{len(names)} heads {names}: set `masks` (the anchor indices of each head)"
            )
        per = n_anchors // len(names)
        # Darknet's order: the coarsest head (fewest cells) takes the largest anchors.
        coarse_first = sorted(range(len(names)), key=lambda i: probe.outs[names[i]].shape[2])
        masks: list[list[int]] = [[] for _ in names]
        for rank, i in enumerate(coarse_first):
            first = n_anchors - (rank + 1) * per
            masks[i] = list(range(first, first + per))
        probe.sources["masks"] = f"anchors split evenly, the largest to the coarsest head {masks}"
        probe.warnings.append(
            f"card field `masks` not set: assumed {masks} (yolov3.cfg's order); the official "
            "yolov3-tiny and yolov4-tiny cfgs use [[3,4,5],[1,2,3]]: copy the [yolo] layers' "
            "`mask` into the card"
        )
        return masks

    @classmethod
    def _classes(cls, probe: Probe, names: list[str], masks: list[list[int]]) -> int:
        card = probe.card
        assert card is not None
        counts: list[int] = []
        for i, (n, mask) in enumerate(zip(names, masks, strict=True)):
            channels = probe.outs[n].shape[1]
            field = f"masks[{i}]" if card.masks is not None else "anchors"
            if channels % len(mask) or channels // len(mask) < 6:
                fits = [a for a in range(1, channels // 6 + 1) if channels % a == 0]
                raise ModelError(
                    f"card field `{field}` gives head '{n}' {len(mask)} anchors, but its "
                    f"{channels} channels are not {len(mask)} x (5 + classes); anchor counts "
                    f"that fit: {fits}"
                )
            counts.append(channels // len(mask) - 5)
        if len(set(counts)) != 1:
            raise ModelError(
                f"the heads {names} with `masks` {masks} give different class counts {counts}: "
                "check card fields `masks` and `anchors`"
            )
        nc = counts[0]
        if card.classes is not None and len(card.classes) != nc:
            n = names[0]
            raise ModelError(
                f"card field `classes` lists {len(card.classes)} classes, but head '{n}' has "
                f"{probe.outs[n].shape[1]} channels = {len(masks[0])} anchors x (5 + {nc}): "
                f"check `classes` and `masks`"
            )
        return nc

    @classmethod
    def _scales(cls, probe: Probe, n_heads: int) -> list[float]:
        value = probe.card.scale_x_y if probe.card else None
        if value is None:
            return [1.0] * n_heads
        probe.sources["scale_x_y"] = "card"
        scales = [float(value)] * n_heads if isinstance(value, int | float) else list(value)
        if len(scales) != n_heads:
            raise ModelError(
                f"card field `scale_x_y` has {len(scales)} values but the model has {n_heads} "
                "heads: give one value, or one per head"
            )
        for s in scales:
            if not 1.0 <= s <= 2.0:
                raise ModelError(f"card field `scale_x_y`: {s} is outside Darknet's 1 to 2")
        return scales

    def decode(self, outs: Mapping[str, np.ndarray], conf_floor: float) -> Candidates:
        h_in, w_in = self.input_size
        nc, parts = self.num_classes, []
        for head in self.heads:
            raw = np.asarray(outs[head.output][0], np.float32)  # (A*(5+nc), H, W)
            a, (_, gh, gw) = len(head.anchors), raw.shape
            cells = raw.reshape(a, 5 + nc, gh * gw).transpose(0, 2, 1).reshape(-1, 5 + nc)
            scores = sigmoid(cells[:, 4:5]) * sigmoid(cells[:, 5:])
            keep, conf, cls = best_class(scores, conf_floor)
            if not keep.any():
                continue
            cell = np.tile(np.arange(gh * gw), a)[keep]
            anchor = np.repeat(np.asarray(head.anchors, np.float32), gh * gw, axis=0)[keep]
            t = cells[keep, :4]
            s = head.scale_x_y
            box = np.empty((len(t), 4), np.float32)
            box[:, 0] = (cell % gw + sigmoid(t[:, 0]) * s - (s - 1) / 2) / gw * w_in
            box[:, 1] = (cell // gw + sigmoid(t[:, 1]) * s - (s - 1) / 2) / gh * h_in
            box[:, 2:] = np.exp(t[:, 2:]) * anchor
            parts.append((yolo.cxcywh_to_xyxy(box), conf, cls))
        if not parts:
            return empty()
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
        )


def _split(outs: Mapping[str, np.ndarray]) -> tuple[str, str] | None:
    """(boxes, confs) output names when the outputs are (B, N, 1, 4) and (B, N, nc)."""
    if len(outs) != 2:
        return None
    (n1, a), (n2, b) = outs.items()
    for (bn, bv), (cn, cv) in (((n1, a), (n2, b)), ((n2, b), (n1, a))):
        if bv.ndim == 4 and bv.shape[2:] == (1, 4) and cv.ndim == 3 and cv.shape[1] == bv.shape[1]:
            return bn, cn
    return None


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class BoxesConfs(Decoder):
    names: ClassVar[tuple[str, ...]] = ("boxes_confs",)
    rank: ClassVar[int] = 30
    hint: ClassVar[str] = "(`outputs.boxes`, `outputs.confs` if not (B,N,1,4) and (B,N,nc))"
    input_defaults: ClassVar[InputDefaults | None] = PLAIN_RESIZE
    nms_default: ClassVar[tuple[float, str] | None] = (0.6, "pytorch-YOLOv4's demo (nms 0.6)")

    boxes: str
    confs: str

    @classmethod
    def looks_like(cls, outs: Mapping[str, np.ndarray]) -> bool:
        return _split(outs) is not None

    @classmethod
    def resolve(cls, probe: Probe) -> Decoder:
        found = _split(probe.outs)
        defaults = {"boxes": found[0], "confs": found[1]} if found else {}
        roles = output_roles(probe, "boxes_confs", defaults)
        boxes, confs = probe.outs[roles["boxes"]], probe.outs[roles["confs"]]
        if boxes.ndim != 4 or boxes.shape[2:] != (1, 4) or confs.ndim != 3:
            raise ModelError(
                f"layout boxes_confs needs boxes (B, N, 1, 4) and confs (B, N, nc); {seen(probe)}"
            )
        return cls(
            layout="boxes_confs",
            boxes=roles["boxes"],
            confs=roles["confs"],
            num_classes=int(confs.shape[2]),
            input_size=probe.input_size,
            nms=nms_mode(probe, cls),
        )

    def decode(self, outs: Mapping[str, np.ndarray], conf_floor: float) -> Candidates:
        h_in, w_in = self.input_size
        boxes = np.asarray(outs[self.boxes][0, :, 0], np.float32)  # (N, 4) normalised corners
        keep, conf, cls = best_class(np.asarray(outs[self.confs][0], np.float32), conf_floor)
        xyxy = boxes[keep] * np.array([w_in, h_in, w_in, h_in], np.float32)
        return xyxy.astype(np.float32), conf, cls

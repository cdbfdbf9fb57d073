"""Small seeded YOLO-family networks in every layout lineinspect serves beyond Ultralytics', for
`scripts/dev/darknet_reference.py`: numpy weights from one seed, written as Darknet .cfg +
.weights and as ONNX (built node by node with onnx.helper) in each exporter's layout.

- `tiny_yolov3()`, `tiny_yolov4()`: Darknet networks (conv + BN + leaky, maxpool incl. the
  stride-1 one, route incl. v4's `groups`, upsample, [yolo]) with a few channels per layer.
  `darknet_cfg`, `darknet_weights` write them for Darknet/OpenCV; `darknet_onnx` exports the raw
  heads (as tensorrt_demos' yolo_to_onnx does) or, `boxes_confs=True`, pytorch-YOLOv4's
  two-output form with its `yolo_forward_dynamic` decode in the graph.
- `yolov7_onnx` (YOLOv7's `--end2end` for ONNX Runtime: (K, 7)), `yolov7_onnx(efficient=True)`
  (the four EfficientNMS outputs, made of standard ONNX ops), `zoo_tiny_yolov3_onnx` (the ONNX
  model zoo's interface: `image_shape` input, keras-yolo3's box correction, NonMaxSuppression)
  and `yolox_onnx` (raw grid outputs, sigmoid scores in the graph) share a small conv backbone.

Weights are random but calibrated: the last convolution of every head is rescaled so that, on
the calibration images, offsets, sizes, objectness and class logits have chosen means and
spreads, and a handful of boxes per image clear a 0.3 confidence (some overlapping, so NMS has
work). numpy + onnx + onnxruntime only; nothing from lineinspect.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
NC = 6  # the NEU classes
TINY_ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
V5_ANCHORS = (((10, 13), (16, 30), (33, 23)), ((30, 61), (62, 45), (59, 119)),
              ((116, 90), (156, 198), (373, 326)))  # fmt: skip
# (mean, std) of each head channel's logit after calibration: x, y, w, h, objectness, classes.
# A mean of None (objectness): shifted so that a chosen share of the calibration cells has a
# logit over OBJ_AT, which (times a likely class score) clears a 0.3 confidence.
Target = tuple[float | None, float]
TARGETS: tuple[Target, ...] = (
    (0.0, 1.0),
    (0.0, 1.0),
    (0.0, 0.4),
    (0.0, 0.4),
    (None, 1.6),
    (0.0, 1.6),
)
OBJ_AT = -0.6
FLAT = 2  # the calibration set ends with this many uniform grey images
Feed = Callable[[Path, dict[str, np.ndarray]], list[np.ndarray]]


class G:
    """A graph under construction: nodes, constants, fresh names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op: str, inputs: Sequence[str], out: str | None = None, **attrs: Any) -> str:
        out = out or self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def conv(
        self, x: str, w: np.ndarray, b: np.ndarray, stride: int, out: str | None = None
    ) -> str:
        k = w.shape[2]
        p = k // 2
        return self.op("Conv", [x, self.const(w), self.const(b)], out, kernel_shape=[k, k],
                       strides=[stride, stride], pads=[p, p, p, p])  # fmt: skip

    def model(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], name: str
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def tensor(name: str, shape: Sequence[int | str] | None, dtype: int = TensorProto.FLOAT) -> Any:
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


# -- Darknet networks: layers as the cfg lists them


@dataclass
class Conv:
    filters: int
    size: int = 3
    stride: int = 1
    bn: bool = True
    weights: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class MaxPool:
    size: int = 2
    stride: int = 2


@dataclass
class Route:
    layers: tuple[int, ...]
    groups: int = 1
    group_id: int = 0


@dataclass
class Upsample:
    stride: int = 2


@dataclass
class Yolo:
    mask: tuple[int, ...]
    scale_x_y: float = 1.0


Layer = Conv | MaxPool | Route | Upsample | Yolo


@dataclass
class Darknet:
    width: int
    height: int
    anchors: tuple[tuple[int, int], ...]
    layers: list[Layer]
    classes: int = NC

    def shapes(self) -> list[tuple[int, int, int]]:
        """(channels, height, width) after every layer."""
        out: list[tuple[int, int, int]] = []
        c, h, w = 3, self.height, self.width
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Conv):
                c, h, w = layer.filters, -(-h // layer.stride), -(-w // layer.stride)
            elif isinstance(layer, MaxPool):
                h, w = (h + layer.size - 1 - layer.size) // layer.stride + 1, (
                    w + layer.size - 1 - layer.size) // layer.stride + 1  # fmt: skip
            elif isinstance(layer, Route):
                refs = [out[r if r >= 0 else i + r] for r in layer.layers]
                c, h, w = sum(s[0] for s in refs) // layer.groups, refs[0][1], refs[0][2]
            elif isinstance(layer, Upsample):
                h, w = h * layer.stride, w * layer.stride
            out.append((c, h, w))
        return out

    def init(self, rng: np.random.Generator) -> None:
        shapes = self.shapes()
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Conv):
                continue
            c_in = 3 if i == 0 else shapes[i - 1][0]
            fan = c_in * layer.size**2
            layer.weights["w"] = rng.normal(0, np.sqrt(2 / fan), (layer.filters, c_in,
                                            layer.size, layer.size)).astype(np.float32)  # fmt: skip
            n = layer.filters
            if layer.bn:
                layer.weights["beta"] = rng.normal(0, 0.1, n).astype(np.float32)
                layer.weights["gamma"] = rng.uniform(0.8, 1.2, n).astype(np.float32)
                layer.weights["mean"] = rng.normal(0, 0.1, n).astype(np.float32)
                layer.weights["var"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
            else:
                layer.weights["b"] = rng.normal(0, 0.1, n).astype(np.float32)

    def heads(self) -> list[tuple[int, Yolo]]:
        """(index of the conv feeding it, the [yolo] layer), in cfg order."""
        return [(i - 1, y) for i, y in enumerate(self.layers) if isinstance(y, Yolo)]


def tiny_yolov3() -> Darknet:
    layers: list[Layer] = [Conv(4), MaxPool(), Conv(8), MaxPool(), Conv(8), MaxPool(), Conv(16),
        MaxPool(), Conv(16), MaxPool(), Conv(16), MaxPool(2, 1), Conv(16), Conv(16, 1),
        Conv(16), Conv(3 * (5 + NC), 1, bn=False), Yolo((3, 4, 5)), Route((-4,)), Conv(8, 1),
        Upsample(), Route((-1, 8)), Conv(16), Conv(3 * (5 + NC), 1, bn=False),
        Yolo((1, 2, 3))]  # fmt: skip
    return Darknet(320, 320, TINY_ANCHORS, layers)


def tiny_yolov4() -> Darknet:
    s = 1.05
    layers: list[Layer] = [Conv(8, 3, 2), Conv(16, 3, 2), Conv(16), Route((-1,), 2, 1), Conv(8),
        Conv(8), Route((-1, -2)), Conv(16, 1), Route((-6, -1)), MaxPool(), Conv(8), MaxPool(),
        Conv(16), MaxPool(), Conv(16), Conv(16, 1), Conv(16), Conv(3 * (5 + NC), 1, bn=False),
        Yolo((3, 4, 5), s), Route((-4,)), Conv(8, 1), Upsample(), Route((-1, 12)), Conv(16),
        Conv(3 * (5 + NC), 1, bn=False), Yolo((1, 2, 3), s)]  # fmt: skip
    return Darknet(320, 256, TINY_ANCHORS, layers)


def darknet_cfg(net: Darknet) -> str:
    parts = [f"[net]\nwidth={net.width}\nheight={net.height}\nchannels=3\n"]
    anchors = ", ".join(f"{w},{h}" for w, h in net.anchors)
    for layer in net.layers:
        if isinstance(layer, Conv):
            parts.append(
                f"[convolutional]\n{'batch_normalize=1' + chr(10) if layer.bn else ''}"
                f"filters={layer.filters}\nsize={layer.size}\nstride={layer.stride}\npad=1\n"
                f"activation={'leaky' if layer.bn else 'linear'}\n"
            )
        elif isinstance(layer, MaxPool):
            parts.append(f"[maxpool]\nsize={layer.size}\nstride={layer.stride}\n")
        elif isinstance(layer, Route):
            groups = (
                f"groups={layer.groups}\ngroup_id={layer.group_id}\n" if layer.groups > 1 else ""
            )
            parts.append(f"[route]\nlayers={','.join(map(str, layer.layers))}\n{groups}")
        elif isinstance(layer, Upsample):
            parts.append(f"[upsample]\nstride={layer.stride}\n")
        else:
            parts.append(
                f"[yolo]\nmask={','.join(map(str, layer.mask))}\nanchors={anchors}\n"
                f"classes={net.classes}\nnum={len(net.anchors)}\nscale_x_y={layer.scale_x_y}\n"
                "thresh=0.01\n"  # OpenCV zeroes class scores at or under it: below every floor
            )
    return "\n".join(parts)


def darknet_weights(net: Darknet) -> bytes:
    """Darknet's .weights: major, minor, revision (int32), seen (int64), then per conv layer
    biases (BN: beta), [gamma, rolling mean, rolling variance], weights."""
    out = [struct.pack("<iiiq", 0, 2, 0, 0)]
    for layer in net.layers:
        if isinstance(layer, Conv):
            keys = ("beta", "gamma", "mean", "var", "w") if layer.bn else ("b", "w")
            out += [layer.weights[k].astype("<f4").tobytes() for k in keys]
    return b"".join(out)


def _folded(layer: Conv) -> tuple[np.ndarray, np.ndarray]:
    """BN folded into the convolution, with Darknet's epsilon (1e-6, as OpenCV's reader)."""
    if not layer.bn:
        return layer.weights["w"], layer.weights["b"]
    wt = layer.weights
    k = wt["gamma"].astype(np.float64) / np.sqrt(wt["var"].astype(np.float64) + 1e-6)
    w = (wt["w"] * k[:, None, None, None]).astype(np.float32)
    return w, (wt["beta"] - wt["mean"] * k).astype(np.float32)


def darknet_onnx(net: Darknet, boxes_confs: bool = False, taps: bool = False) -> onnx.ModelProto:
    """Raw heads named like tensorrt_demos' export (`016_convolutional`), input `000_net`, batch
    1; or pytorch-YOLOv4's `boxes` (B, N, 1, 4) + `confs` (B, N, nc), input `input`, any batch;
    or (`taps`) the features each head's last convolution reads, for calibration."""
    g = G()
    x = "input" if boxes_confs else "000_net"
    outs: list[str] = []
    shapes = net.shapes()
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Conv):
            w, b = _folded(layer)
            name = f"{i:03d}_convolutional" if not layer.bn and not boxes_confs else None
            y = g.conv(x if i == 0 else outs[-1], w, b, layer.stride, name)
            if layer.bn:
                y = g.op("LeakyRelu", [y], alpha=0.1)
        elif isinstance(layer, MaxPool):
            p = layer.size - 1
            y = g.op("MaxPool", [outs[-1]], kernel_shape=[layer.size] * 2,
                     strides=[layer.stride] * 2, pads=[p // 2, p // 2, p - p // 2, p - p // 2])  # fmt: skip
        elif isinstance(layer, Route):
            refs = [outs[r if r >= 0 else i + r] for r in layer.layers]
            y = refs[0] if len(refs) == 1 else g.op("Concat", refs, axis=1)
            if layer.groups > 1:
                c = shapes[i][0]
                y = g.op("Slice", [y, g.const([c * layer.group_id], np.int64),
                                   g.const([c * (layer.group_id + 1)], np.int64),
                                   g.const([1], np.int64)])  # fmt: skip
        elif isinstance(layer, Upsample):
            s = float(layer.stride)
            y = g.op("Resize", [outs[-1], "", g.const([1, 1, s, s])], mode="nearest",
                     coordinate_transformation_mode="asymmetric", nearest_mode="floor")  # fmt: skip
        else:
            y = outs[-1]
        outs.append(y)
    heads = net.heads()
    if taps:
        outputs = [tensor(outs[i - 1], [1, *shapes[i - 1]]) for i, _ in heads]
        return g.model([tensor(x, [1, 3, net.height, net.width])], outputs, "taps")
    if not boxes_confs:
        outputs = [tensor(outs[i], [1, *shapes[i]]) for i, _ in heads]
        return g.model([tensor(x, [1, 3, net.height, net.width])], outputs, "darknet")
    boxes, confs = [], []
    for i, yolo in heads:
        bx, cf = _yolo_forward_dynamic(g, net, outs[i], shapes[i], yolo)
        boxes.append(bx)
        confs.append(cf)
    g.op("Concat", boxes, "boxes", axis=1)
    g.op("Concat", confs, "confs", axis=1)
    return g.model(
        [tensor(x, ["batch_size", 3, net.height, net.width])],
        [tensor("boxes", ["batch_size", "N", 1, 4]), tensor("confs", ["batch_size", "N", NC])],
        "yolov4_boxes_confs",
    )


def _cells(g: G, x: str, a: int, per: int, hw: int) -> str:
    """(B, A*per, H, W) -> (B, A, H*W, per): a row per anchor and cell, decoded with small
    broadcast constants, flattened (`_flat`) anchor-major as the exporters do."""
    y = g.op("Reshape", [x, g.const([-1, a, per, hw], np.int64)])
    return g.op("Transpose", [y], perm=[0, 1, 3, 2])


def _flat(g: G, x: str, rows: int, last: Sequence[int]) -> str:
    return g.op("Reshape", [x, g.const([-1, rows, *last], np.int64)])


def _cols(g: G, x: str, start: int, end: int) -> str:
    """Columns start:end of the last axis."""
    return g.op("Slice", [x, g.const([start], np.int64), g.const([end], np.int64),
                          g.const([-1], np.int64)])  # fmt: skip


def _grid(h: int, w: int) -> np.ndarray:
    """(1, 1, H*W, 2): each cell's x, y in row order."""
    yv, xv = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([xv.ravel(), yv.ravel()], 1).astype(np.float32)[None, None]


def _anchors(anchors: Sequence[Any]) -> np.ndarray:
    """(1, A, 1, 2) anchor w, h."""
    return np.asarray(anchors, np.float32)[None, :, None]


def _yolo_forward_dynamic(
    g: G, net: Darknet, x: str, shape: tuple[int, int, int], yolo: Yolo
) -> tuple[str, str]:
    """pytorch-YOLOv4's yolo_forward_dynamic: normalised corners and objectness x class."""
    _, h, w = shape
    a, s = len(yolo.mask), yolo.scale_x_y
    rows = _cells(g, x, a, 5 + net.classes, h * w)
    xy = g.op("Sigmoid", [_cols(g, rows, 0, 2)])
    xy = g.op("Add", [g.op("Mul", [xy, g.const(s)]), g.const(_grid(h, w) - 0.5 * (s - 1))])
    xy = g.op("Div", [xy, g.const([w, h])])
    anchors = _anchors([net.anchors[m] for m in yolo.mask]) / np.float32([net.width, net.height])
    wh = g.op("Mul", [g.op("Exp", [_cols(g, rows, 2, 4)]), g.const(anchors)])
    half = g.op("Mul", [wh, g.const(0.5)])
    corners = g.op("Concat", [g.op("Sub", [xy, half]), g.op("Add", [xy, half])], axis=-1)
    obj = g.op("Sigmoid", [_cols(g, rows, 4, 5)])
    confs = g.op("Mul", [g.op("Sigmoid", [_cols(g, rows, 5, 5 + net.classes)]), obj])
    return _flat(g, corners, a * h * w, [1, 4]), _flat(g, confs, a * h * w, [net.classes])


def calibrate_darknet(
    net: Darknet, run: Callable[[onnx.ModelProto], list[np.ndarray]], share: float
) -> None:
    """Set each head's last (1x1) convolution from its input features on the calibration set
    (`run` gives them, (images, C, H, W) per head)."""
    targets = list(TARGETS[:5]) + [TARGETS[5]] * net.classes
    for (i, _), feats in zip(net.heads(), run(darknet_onnx(net, taps=True)), strict=True):
        layer = net.layers[i]
        assert isinstance(layer, Conv)
        calibrate_head(layer.weights, feats, targets, share)


def calibrate_head(
    wt: dict[str, np.ndarray], feats: np.ndarray, targets: list[Target], share: float
) -> None:
    """A 1x1 head (w, b, and a fixed map `pos` if any) on features (images, C, H, W): each
    output channel c is given targets[c % len(targets)] as mean and spread over the calibration
    cells. Objectness: its weights are first made blind to what differs between whole images
    (projected off the span of the per-image mean features), so that each image has its own
    few salient cells and a uniform area (the last FLAT images, like a letterbox's padding)
    none; then shifted so that `share` of the cells is over OBJ_AT."""
    n, c, h, w_ = feats.shape
    x = feats.astype(np.float64).transpose(0, 2, 3, 1).reshape(n, h * w_, c)
    means = x.mean(axis=1)
    _, sv, vt = np.linalg.svd(means - means.mean(axis=0), full_matrices=False)
    basis = vt[sv > 1e-6 * sv[0]]
    off_images = np.eye(c) - basis.T @ basis
    pos = wt.get("pos", np.zeros((1, 1, h, w_))).reshape(h * w_)  # every channel, unscaled
    for ch in range(len(wt["b"])):
        t_mean, t_std = targets[ch % len(targets)]
        weights = wt["w"][ch].reshape(c).astype(np.float64)
        if t_mean is None:
            weights = off_images @ weights
        v = x @ weights + float(wt["b"][ch]) + pos
        real, flat = v[:-FLAT], v[-FLAT:]
        gain = t_std / max(float(real.std()), 1e-9)
        if t_mean is None:
            at_share = OBJ_AT - float(np.quantile((real - real.mean()) * gain, 1 - share))
            t_mean = min(at_share, OBJ_AT - 1.0 - float(((flat - real.mean()) * gain).max()))
        wt["w"][ch] = (weights * gain).reshape(wt["w"][ch].shape).astype(np.float32)
        wt["b"][ch] = np.float32((float(wt["b"][ch]) - real.mean()) * gain + t_mean)


# -- the other exporters' graphs, on a small backbone (one stride-2 conv per level)


@dataclass
class Small:
    size: tuple[int, int]  # (height, width) of the input
    strides: tuple[int, ...]  # the levels with a head (powers of two, up to 32)
    per_head: int  # channels of each head
    layers: list[dict[str, np.ndarray]] = field(default_factory=list)
    heads: list[dict[str, np.ndarray]] = field(default_factory=list)


def small(rng: np.random.Generator, size: tuple[int, int], strides: tuple[int, ...],
          per_head: int, pixel_scale: float = 1.0) -> Small:  # fmt: skip
    net = Small(size, strides, per_head)
    c_in = 3
    for c in (4, 8, 16, 16, 16):
        w = rng.normal(0, np.sqrt(2 / (9 * c_in)), (c, c_in, 3, 3)).astype(np.float32)
        net.layers.append({"w": w, "b": np.zeros(c, np.float32)})
        c_in = c
    # The first filters sum to zero (they see texture, not brightness; a uniform area gives 0)
    # and are scaled for the input's range (YOLOX: 0-255) and the images' low contrast.
    first = net.layers[0]["w"]
    first -= first.mean(axis=(1, 2, 3), keepdims=True)
    first *= np.float32(8 * pixel_scale)
    for s in strides:
        w = rng.normal(0, 0.25, (per_head, 16, 1, 1)).astype(np.float32)
        # A fixed map added to the head's logits: no two cells answer exactly alike, even over
        # a letterbox's uniform padding (tied scores would make any NMS order-dependent).
        pos = rng.normal(0, 0.02, (1, 1, size[0] // s, size[1] // s)).astype(np.float32)
        net.heads.append({"w": w, "b": np.zeros(per_head, np.float32), "pos": pos})
    return net


def small_heads(g: G, net: Small, x: str, taps: bool = False) -> list[str]:
    """The raw head outputs (B, per_head, H, W), one per stride (`taps`: their inputs)."""
    feats: dict[int, str] = {}
    for k, layer in enumerate(net.layers):
        x = g.op("LeakyRelu", [g.conv(x, layer["w"], layer["b"], 2)], alpha=0.1)
        feats[2 ** (k + 1)] = x
    if taps:
        return [feats[s] for s in net.strides]
    heads = zip(net.strides, net.heads, strict=True)
    return [g.op("Add", [g.conv(feats[s], h["w"], h["b"], 1), g.const(h["pos"])]) for s, h in heads]


def calibrate_small(net: Small, targets: list[Target], run: Callable[[onnx.ModelProto],
                    list[np.ndarray]], in_name: str, share: float) -> None:  # fmt: skip
    g = G()
    taps = small_heads(g, net, in_name, taps=True)
    outputs = [tensor(o, [1, "c", "h", "w"]) for o in taps]
    model = g.model([tensor(in_name, [1, 3, *net.size])], outputs, "taps")
    for head, feats in zip(net.heads, run(model), strict=True):
        calibrate_head(head, feats, targets, share)


def _levels(net: Small) -> list[tuple[int, int, int]]:
    return [(s, net.size[0] // s, net.size[1] // s) for s in net.strides]


def yolov5_decoded(g: G, net: Small, heads: list[str], anchors: Sequence[Any]) -> str:
    """YOLOv5/v7's Detect in the graph: (B, N, 5 + nc) with cx, cy, w, h in input pixels."""
    preds = []
    for head, (s, h, w), anc in zip(heads, _levels(net), anchors, strict=True):
        a = len(anc)
        y = g.op("Sigmoid", [_cells(g, head, a, 5 + NC, h * w)])
        xy = g.op("Mul", [g.op("Add", [g.op("Mul", [_cols(g, y, 0, 2), g.const(2.0)]),
                                       g.const(_grid(h, w) - 0.5)]), g.const(float(s))])  # fmt: skip
        wh = g.op("Mul", [_cols(g, y, 2, 4), g.const(2.0)])
        wh = g.op("Mul", [g.op("Mul", [wh, wh]), g.const(_anchors(anc))])
        level = g.op("Concat", [xy, wh, _cols(g, y, 4, 5 + NC)], axis=-1)
        preds.append(_flat(g, level, a * h * w, [5 + NC]))
    return g.op("Concat", preds, axis=1)


def yolov7_onnx(net: Small, efficient: bool = False, max_out: int = 100, iou: float = 0.45,
                score: float = 0.2) -> onnx.ModelProto:  # fmt: skip
    """YOLOv7 export.py --end2end: ONNX_ORT's (K, 7) output, or (`efficient`) TensorRT
    EfficientNMS's four outputs, built of standard ops (NonMaxSuppression, TopK, Pad)."""
    g = G()
    pred = yolov5_decoded(g, net, small_heads(g, net, "images"), V5_ANCHORS)
    to_xyxy = np.float32([[1, 0, 1, 0], [0, 1, 0, 1], [-0.5, 0, 0.5, 0], [0, -0.5, 0, 0.5]])
    boxes = g.op("MatMul", [_cols(g, pred, 0, 4), g.const(to_xyxy)])  # (B, N, 4) corners
    scores = g.op("Mul", [_cols(g, pred, 5, 5 + NC), _cols(g, pred, 4, 5)])  # (B, N, nc)
    nms_args = [g.const([max_out], np.int64), g.const([iou]), g.const([score])]
    image = tensor("images", [1, 3, *net.size])
    if not efficient:  # ONNX_ORT: one class per box, classes offset apart (max_wh 640)
        best = g.op("ReduceMax", [scores], axes=[2], keepdims=1)
        cls = g.op("Cast", [g.op("ArgMax", [scores], axis=2, keepdims=1)], to=TensorProto.FLOAT)
        shifted = g.op("Add", [boxes, g.op("Mul", [cls, g.const(640.0)])])
        picks = g.op("NonMaxSuppression", [shifted, g.op("Transpose", [best], perm=[0, 2, 1]),
                                           *nms_args])  # fmt: skip
        xy = g.op("Gather", [picks, g.const([0, 2], np.int64)], axis=1)  # (K, 2) batch, box
        batch = g.op("Cast", [g.op("Gather", [picks, g.const([0], np.int64)], axis=1)],
                     to=TensorProto.FLOAT)  # fmt: skip
        cols = [batch, g.op("GatherND", [boxes, xy]), g.op("GatherND", [cls, xy]),
                g.op("GatherND", [best, xy])]  # fmt: skip
        g.op("Concat", cols, "output", axis=1)
        return g.model([image], [tensor("output", ["Concatoutput_dim_0", 7])], "yolov7_e2e")
    # EfficientNMS: per-class NMS, the best max_out by score, padded; classes and count int32
    picks = g.op("NonMaxSuppression", [boxes, g.op("Transpose", [scores], perm=[0, 2, 1]),
                                       *nms_args])  # fmt: skip
    cls_i = g.op("Gather", [picks, g.const(1, np.int64)], axis=1)  # (K,)
    box_i = g.op("Gather", [picks, g.const(2, np.int64)], axis=1)
    flat = g.op("Reshape", [g.op("Transpose", [scores], perm=[0, 2, 1]), g.const([-1], np.int64)])
    n_box = g.const([net_boxes(net)], np.int64)
    sel = g.op("Gather", [flat, g.op("Add", [g.op("Mul", [cls_i, n_box]), box_i])])  # (K,)
    k = g.op("Min", [g.op("Shape", [sel]), g.const([max_out], np.int64)])
    top, order = g.name("top"), g.name("order")
    g.nodes.append(helper.make_node("TopK", [sel, k], [top, order], axis=0))
    det_boxes = g.op("Gather", [g.op("Gather", [boxes, g.const(0, np.int64)], axis=0),
                                g.op("Gather", [box_i, order])], axis=0)  # fmt: skip
    det_cls = g.op("Gather", [cls_i, order])
    pad = g.op("Sub", [g.const([max_out], np.int64), k])
    zero = g.const([0], np.int64)
    outs = {
        "det_boxes": (det_boxes, g.op("Concat", [zero, zero, pad, zero], axis=0), [1, max_out, 4]),
        "det_scores": (top, g.op("Concat", [zero, pad], axis=0), [1, max_out]),
        "det_classes": (det_cls, g.op("Concat", [zero, pad], axis=0), [1, max_out]),
    }
    values = []
    for name, (value, pads, shape) in outs.items():
        padded = g.op("Pad", [value, pads])
        if name == "det_classes":
            padded = g.op("Cast", [padded], to=TensorProto.INT32)
        g.op("Unsqueeze", [padded, g.const([0], np.int64)], name)
        values.append(tensor(name, shape, TensorProto.INT32 if name == "det_classes" else 1))
    g.op(
        "Cast", [g.op("Reshape", [k, g.const([1, 1], np.int64)])], "num_dets", to=TensorProto.INT32
    )
    return g.model([image], [tensor("num_dets", [1, 1], TensorProto.INT32), *values], "yolov7_trt")


def net_boxes(net: Small) -> int:
    return sum(3 * h * w for _, h, w in _levels(net))


def zoo_tiny_yolov3_onnx(net: Small, anchors: Sequence[Any], iou: float = 0.5,
                         score: float = 0.2) -> onnx.ModelProto:  # fmt: skip
    """The ONNX model zoo's tiny-YOLOv3 interface: input_1 (N, 3, 416, 416) and image_shape
    (N, 2); keras-yolo3's yolo_head + yolo_correct_boxes (boxes y1, x1, y2, x2 in original
    pixels), scores (1, nc, N) = objectness x class, NonMaxSuppression indices (1, K, 3)."""
    g = G()
    heads = small_heads(g, net, "input_1")
    ih, iw = net.size
    shape = g.op("Unsqueeze", ["image_shape", g.const([1, 2], np.int64)])  # (N, 1, 1, 2): h, w
    inp = g.const([ih, iw])
    new = g.op("Round", [g.op("Mul", [shape, g.op("ReduceMin", [g.op("Div", [inp, shape])],
                                                   axes=[3], keepdims=1)])])  # fmt: skip
    offset = g.op("Div", [g.op("Div", [g.op("Sub", [inp, new]), g.const(2.0)]), inp])
    scale = g.op("Div", [inp, new])
    boxes, scores = [], []
    for head, (_, h, w), anc in zip(heads, _levels(net), anchors, strict=True):
        a = len(anc)
        rows = _cells(g, head, a, 5 + NC, h * w)
        xy = g.op("Div", [g.op("Add", [g.op("Sigmoid", [_cols(g, rows, 0, 2)]),
                                       g.const(_grid(h, w))]), g.const([w, h])])  # fmt: skip
        wh = g.op("Mul", [g.op("Exp", [_cols(g, rows, 2, 4)]),
                          g.const(_anchors(anc) / np.float32([iw, ih]))])  # fmt: skip
        yx = g.op("Gather", [xy, g.const([1, 0], np.int64)], axis=3)
        hw = g.op("Mul", [g.op("Gather", [wh, g.const([1, 0], np.int64)], axis=3), scale])
        yx = g.op("Mul", [g.op("Sub", [yx, offset]), scale])
        half = g.op("Div", [hw, g.const(2.0)])
        corners = g.op("Concat", [g.op("Sub", [yx, half]), g.op("Add", [yx, half])], axis=3)
        corners = g.op("Mul", [corners, g.op("Concat", [shape, shape], axis=3)])
        boxes.append(_flat(g, corners, a * h * w, [4]))
        conf = g.op("Mul", [g.op("Sigmoid", [_cols(g, rows, 4, 5)]),
                            g.op("Sigmoid", [_cols(g, rows, 5, 5 + NC)])])  # fmt: skip
        scores.append(_flat(g, conf, a * h * w, [NC]))
    g.op("Concat", boxes, "yolonms_layer_1", axis=1)
    g.op("Transpose", [g.op("Concat", scores, axis=1)], "yolonms_layer_1:1", perm=[0, 2, 1])
    picks = g.op("NonMaxSuppression", ["yolonms_layer_1", "yolonms_layer_1:1",
                 g.const([20], np.int64), g.const([iou]), g.const([score])])  # fmt: skip
    g.op("Unsqueeze", [picks, g.const([0], np.int64)], "yolonms_layer_1:2")
    return g.model(
        [tensor("input_1", ["N", 3, ih, iw]), tensor("image_shape", ["N", 2])],
        [tensor("yolonms_layer_1", [1, "n_candidates", 4]),
         tensor("yolonms_layer_1:1", [1, NC, "n_candidates"]),
         tensor("yolonms_layer_1:2", [1, "nbox", 3], TensorProto.INT64)],
        "tiny_yolov3_zoo",
    )  # fmt: skip


def yolox_onnx(net: Small) -> onnx.ModelProto:
    """YOLOX export_onnx.py without --decode_in_inference: per level reg (raw), sigmoid(obj),
    sigmoid(cls), flattened and concatenated: `output` (1, N, 5 + nc)."""
    g = G()
    levels = []
    for head, (_, h, w) in zip(small_heads(g, net, "images"), _levels(net), strict=True):
        parts = [
            g.op("Slice", [head, g.const([0], np.int64), g.const([4], np.int64), g.const([1], np.int64)]),
            g.op("Sigmoid", [g.op("Slice", [head, g.const([4], np.int64), g.const([5 + NC], np.int64),
                                            g.const([1], np.int64)])]),
        ]  # fmt: skip
        y = g.op("Concat", parts, axis=1)
        levels.append(g.op("Reshape", [y, g.const([1, 5 + NC, h * w], np.int64)]))
    g.op("Transpose", [g.op("Concat", levels, axis=2)], "output", perm=[0, 2, 1])
    n = sum(h * w for _, h, w in _levels(net))
    return g.model([tensor("images", [1, 3, *net.size])], [tensor("output", [1, n, 5 + NC])],
                   "yolox")  # fmt: skip

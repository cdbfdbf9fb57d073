"""Reference boxes for the detector layouts beyond Ultralytics', from each project's own
postprocessing (none of it lineinspect's code), on real NEU steel images; writes
tests/data/layouts/ (ONNX files, cards, reference.json), which tests/integration/test_layouts.py
checks lineinspect against.

Run once, from the repository root, in a throw-away virtualenv with OpenCV 4 (the project's
OpenCV 5 has no Darknet reader):

    python -m venv /tmp/cv4
    /tmp/cv4/bin/pip install "opencv-python-headless<5" numpy onnx onnxruntime pyyaml
    LINEINSPECT_DATA=../shared/data /tmp/cv4/bin/python -m scripts.dev.darknet_reference

The models (`scripts/dev/layout_models.py`): seeded, calibrated, a few channels per layer.
The Darknet ones are written as .cfg + .weights (to --darknet-dir, default a temporary folder:
they are rebuilt from the seed) and exported to ONNX with the same weights. The ONNX files and
cards are committed (about 480 KB with the references) rather than rebuilt by the test: the
test then needs nothing but the files and the service, and does not depend on rebuilding
giving the same bytes (the seed fixes the weights, but their calibration runs ONNX Runtime,
whose float rounding may change between versions). reference.json records the sha256 of the
file each reference was computed on, and the test checks it.

The images: 12 NEU images (some cropped to non-square, to catch swapped axes), several with
per-channel gains (NEU images are grey, and colour order must matter to be checked).

The references, per layout:
- darknet (tiny-yolov3, plain resize; tiny-yolov4, letterbox, scale_x_y 1.05, grouped route):
  OpenCV's Darknet reader on the .cfg + .weights (readNetFromDarknet, the [yolo] region output,
  one label per box, per-class cv2.dnn.NMSBoxes as its DetectionModel does), for the letterbox
  Darknet's letterbox_image and correct_yolo_boxes; the plain-resize model is cross-checked
  against cv2.dnn.DetectionModel.detect itself (which rounds its boxes to whole pixels).
- boxes_confs: pytorch-YOLOv4's demo (resize, RGB, /255) and post_processing (nms_cpu per
  class, IoU 0.6) on the ONNX outputs; cross-checked against OpenCV on the same weights.
- yolov7_end2end, efficient_nms: the graph's own NMS, after YOLOv7's letterbox, mapped back as
  YOLOv7's demo does (minus the padding, divided by the ratio).
- onnx_zoo_yolov3: the graph's own selection, fed the original size as `image_shape`, after
  keras-yolo3's letterbox_image (resized bilinear here: the zoo's README uses PIL's bicubic).
- yolox: YOLOX's preproc and demo_postprocess (its ONNXRuntime demo), then the NMS of its
  own predictor (yolox/utils/boxes.py postprocess: per class, torchvision's IoU).
Every reference box is clipped to the image, as lineinspect reports boxes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import yaml

from scripts.dev import layout_models as lm

CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
CONF, SEED = 0.3, 14
# Share of each model's cells whose objectness is set to clear the confidence on the calibration
# images: about 20 candidates per image before NMS.
SHARE = {"tiny-yolov3": 8 / 1500, "tiny-yolov4": 8 / 1200, "yolov7": 8 / 6300,
         "tiny-yolov3-zoo": 8 / 2535, "yolox": 8 / 1344}  # fmt: skip
# (NEU file, crop x0, y0, x1, y1 or None, per-channel gains b, g, r or None)
IMAGES: list[tuple[str, list[int] | None, list[float] | None]] = [
    ("crazing_1.jpg", None, None),
    ("inclusion_1.jpg", None, [0.55, 0.8, 1.0]),
    ("patches_1.jpg", None, [1.0, 0.7, 0.45]),
    ("pitted_surface_1.jpg", None, None),
    ("rolled-in_scale_1.jpg", None, [0.6, 1.0, 0.75]),
    ("scratches_1.jpg", None, None),
    ("crazing_50.jpg", [0, 0, 150, 200], [0.5, 0.75, 1.0]),
    ("inclusion_50.jpg", [0, 25, 200, 175], None),
    ("patches_50.jpg", [50, 0, 200, 200], [1.0, 0.6, 0.6]),
    ("pitted_surface_50.jpg", [0, 50, 200, 200], [0.7, 0.7, 1.0]),
    ("rolled-in_scale_50.jpg", None, None),
    ("scratches_50.jpg", [0, 0, 200, 150], [0.45, 0.65, 1.0]),
]
Box = list[float]  # class, score, x1, y1, x2, y2


def load(data: Path, file: str, crop: list[int] | None, gains: list[float] | None) -> np.ndarray:
    """The test's image: BGR uint8, cropped, contrast stretched, channels scaled (the test does
    exactly this)."""
    path = data / "neu-det" / "IMAGES" / file
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"cannot read {path}: point --data or LINEINSPECT_DATA at shared/data")
    if crop:
        image = image[crop[1] : crop[3], crop[0] : crop[2]]
    lo, hi = float(image.min()), float(image.max())  # contrast stretched to 0-255
    image = np.rint((image.astype(np.float32) - lo) * np.float32(255 / max(hi - lo, 1)))
    image = image.astype(np.uint8)
    if gains:
        scaled = np.rint(image.astype(np.float32) * np.float32(gains))
        image = np.clip(scaled, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def finish(rows: list[Box], h: int, w: int) -> list[Box]:
    out = []
    for c, s, x1, y1, x2, y2 in rows:
        box = [min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)]
        out.append([int(c), round(float(s), 6), *(round(float(v), 4) for v in box)])
    return sorted(out, key=lambda r: -r[1])


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# -- Darknet through OpenCV


def darknet_letterbox(image: np.ndarray, w: int, h: int) -> tuple[np.ndarray, int, int]:
    """Darknet's letterbox_image (integer sizes, grey 0.5 ~ 128), resized with cv2."""
    ih, iw = image.shape[:2]
    if w / iw < h / ih:
        new_w, new_h = w, (ih * w) // iw
    else:
        new_w, new_h = (iw * h) // ih, h
    canvas = np.full((h, w, 3), 128, np.uint8)
    dx, dy = (w - new_w) // 2, (h - new_h) // 2
    canvas[dy : dy + new_h, dx : dx + new_w] = cv2.resize(image, (new_w, new_h))
    return canvas, new_w, new_h


def darknet_blob(d: lm.Darknet, image: np.ndarray, letterbox: bool) -> tuple[Any, int, int]:
    src, new_w, new_h = darknet_letterbox(image, d.width, d.height) if letterbox else (image, 0, 0)
    return cv2.dnn.blobFromImage(src, 1 / 255, (d.width, d.height), swapRB=True), new_w, new_h


def opencv_darknet(
    net: cv2.dnn.Net, d: lm.Darknet, image: np.ndarray, letterbox: bool, nms: float
) -> list[Box]:
    ih, iw = image.shape[:2]
    blob, new_w, new_h = darknet_blob(d, image, letterbox)
    net.setInput(blob)
    outs = net.forward(net.getUnconnectedOutLayersNames())
    rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in outs])
    scores = rows[:, 5:]
    conf, cls = scores.max(1), scores.argmax(1)
    keep = conf >= CONF  # DetectionModel: a row under the threshold is skipped
    x, y, bw, bh = (rows[keep, k].astype(np.float64) for k in range(4))
    if letterbox:  # Darknet's correct_yolo_boxes
        x = (x - (d.width - new_w) / 2 / d.width) / (new_w / d.width)
        y = (y - (d.height - new_h) / 2 / d.height) / (new_h / d.height)
        bw, bh = bw * d.width / new_w, bh * d.height / new_h
    rects = np.stack([(x - bw / 2) * iw, (y - bh / 2) * ih, bw * iw, bh * ih], 1)
    out: list[Box] = []
    conf, cls = conf[keep], cls[keep]
    for c in np.unique(cls):  # DetectionModel's default: NMS per class
        idx = np.flatnonzero(cls == c)
        for k in cv2.dnn.NMSBoxes(rects[idx].tolist(), conf[idx].tolist(), CONF, nms):
            r = rects[idx[int(k)]]
            out.append([c, conf[idx[int(k)]], r[0], r[1], r[0] + r[2], r[1] + r[3]])
    return finish(out, ih, iw)


def detection_model(net: cv2.dnn.Net, d: lm.Darknet, image: np.ndarray, nms: float) -> list[Box]:
    model = cv2.dnn.DetectionModel(net)
    model.setInputParams(scale=1 / 255, size=(d.width, d.height), swapRB=True)
    model.setNmsAcrossClasses(False)
    cls, conf, rects = model.detect(image, confThreshold=CONF, nmsThreshold=nms)
    rows = [
        [c, s, r[0], r[1], r[0] + r[2], r[1] + r[3]]
        for c, s, r in zip(cls, conf, rects, strict=True)
    ]
    return finish(rows, *image.shape[:2])


# -- pytorch-YOLOv4 (Tianxiaomo): demo preprocessing and tool/utils.py post_processing


def nms_cpu(boxes: np.ndarray, confs: np.ndarray, nms_thresh: float) -> np.ndarray:
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = confs.argsort()[::-1]
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        over = inter / (areas[i] + areas[rest] - inter)
        order = order[np.where(over <= nms_thresh)[0] + 1]
    return np.array(keep, dtype=np.int64)


def pytorch_yolov4(sess: ort.InferenceSession, image: np.ndarray, w: int, h: int) -> list[Box]:
    sized = cv2.cvtColor(cv2.resize(image, (w, h)), cv2.COLOR_BGR2RGB)
    img_in = np.expand_dims(np.transpose(sized, (2, 0, 1)).astype(np.float32), 0) / 255.0
    box_array, confs = sess.run(None, {sess.get_inputs()[0].name: img_in})
    box_array = box_array[:, :, 0]
    max_conf, max_id = confs.max(axis=2), confs.argmax(axis=2)
    argwhere = max_conf[0] > CONF
    l_box, l_conf, l_id = box_array[0, argwhere], max_conf[0, argwhere], max_id[0, argwhere]
    ih, iw = image.shape[:2]
    out: list[Box] = []
    for j in range(confs.shape[2]):
        sel = l_id == j
        for k in nms_cpu(l_box[sel], l_conf[sel], 0.6):
            b = l_box[sel][k]
            out.append([j, l_conf[sel][k], b[0] * iw, b[1] * ih, b[2] * iw, b[3] * ih])
    return finish(out, ih, iw)


# -- YOLOv7: utils/datasets.py letterbox (auto=False, as its ONNX demo), graph NMS


def yolov7_letterbox(image: np.ndarray, new: tuple[int, int]) -> tuple[np.ndarray, float, Any]:
    shape = image.shape[:2]
    r = min(new[0] / shape[0], new[1] / shape[1])
    new_unpad = round(shape[1] * r), round(shape[0] * r)
    dw, dh = (new[1] - new_unpad[0]) / 2, (new[0] - new_unpad[1]) / 2
    if shape[::-1] != new_unpad:
        image = cv2.resize(image, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    image = cv2.copyMakeBorder(
        image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114)
    )
    return image, r, (dw, dh)


def yolov7_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    boxed = yolov7_letterbox(image, size)[0]
    x = np.expand_dims(cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB).transpose(2, 0, 1), 0)
    return np.ascontiguousarray(x, np.float32) / 255


def yolov7(sess: ort.InferenceSession, image: np.ndarray, size: tuple[int, int]) -> list[Box]:
    _, ratio, (dw, dh) = yolov7_letterbox(image, size)
    outs = sess.run(None, {"images": yolov7_input(image, size)})
    names = [o.name for o in sess.get_outputs()]
    if names == ["output"]:  # (K, 7): batch, x0, y0, x1, y1, class, score
        rows = [(r[5], r[6], r[1:5]) for r in outs[0] if r[0] == 0]
    else:  # num_dets, det_boxes, det_scores, det_classes
        got = dict(zip(names, outs, strict=True))
        n = int(got["num_dets"][0, 0])
        rows = [(got["det_classes"][0, i], got["det_scores"][0, i], got["det_boxes"][0, i])
                for i in range(n)]  # fmt: skip
    out: list[Box] = []
    for c, s, b in rows:
        if s > CONF:
            box = (np.asarray(b, np.float64) - np.array([dw, dh, dw, dh])) / ratio
            out.append([c, s, *box])
    return finish(out, *image.shape[:2])


# -- the ONNX model zoo's tiny-YOLOv3: keras-yolo3 letterbox_image, image_shape, indices


def zoo_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """keras-yolo3's letterbox_image (int sizes, (w - nw) // 2, grey 128), then RGB, /255."""
    ih, iw = image.shape[:2]
    h, w = size
    scale = min(w / iw, h / ih)
    nw, nh = int(iw * scale), int(ih * scale)
    boxed = np.full((h, w, 3), 128, np.uint8)
    dx, dy = (w - nw) // 2, (h - nh) // 2
    boxed[dy : dy + nh, dx : dx + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    data = cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    return np.ascontiguousarray(np.transpose(data, [2, 0, 1])[None])


def zoo(sess: ort.InferenceSession, image: np.ndarray, size: tuple[int, int]) -> list[Box]:
    ih, iw = image.shape[:2]
    feed = {"input_1": zoo_input(image, size), "image_shape": np.float32([[ih, iw]])}
    boxes, scores, indices = sess.run(None, feed)
    out: list[Box] = []
    for idx in indices[0]:
        s = scores[tuple(idx)]
        y1, x1, y2, x2 = boxes[idx[0], idx[2]]
        if s > CONF:
            out.append([idx[1], s, x1, y1, x2, y2])
    return finish(out, ih, iw)


# -- YOLOX: demo/ONNXRuntime onnx_inference.py (preproc, demo_postprocess, multiclass_nms)


def yolox_preproc(img: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    padded = np.ones((input_size[0], input_size[1], 3), dtype=np.uint8) * 114
    r = min(input_size[0] / img.shape[0], input_size[1] / img.shape[1])
    resized = cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r)),
                         interpolation=cv2.INTER_LINEAR).astype(np.uint8)  # fmt: skip
    padded[: int(img.shape[0] * r), : int(img.shape[1] * r)] = resized
    return np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32), r


def demo_postprocess(outputs: np.ndarray, img_size: tuple[int, int]) -> np.ndarray:
    grids, expanded_strides = [], []
    strides = [8, 16, 32]
    hsizes = [img_size[0] // stride for stride in strides]
    wsizes = [img_size[1] // stride for stride in strides]
    for hsize, wsize, stride in zip(hsizes, wsizes, strides, strict=True):
        xv, yv = np.meshgrid(np.arange(wsize), np.arange(hsize))
        grid = np.stack((xv, yv), 2).reshape(1, -1, 2)
        grids.append(grid)
        expanded_strides.append(np.full((*grid.shape[:2], 1), stride))
    grids_a, strides_a = np.concatenate(grids, 1), np.concatenate(expanded_strides, 1)
    outputs[..., :2] = (outputs[..., :2] + grids_a) * strides_a
    outputs[..., 2:4] = np.exp(outputs[..., 2:4]) * strides_a
    return outputs


def batched_nms(boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray, thr: float) -> list[int]:
    """torchvision.ops.batched_nms: boxes offset per class by (max coordinate + 1), greedy NMS
    suppressing IoU > thr (areas without +1), kept indices by falling score."""
    if not len(boxes):
        return []
    offsets = idxs[:, None] * (boxes.max() + 1)
    b = boxes + offsets
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    order, keep = np.argsort(-scores, kind="stable"), []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.clip(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0, None)
        h = np.clip(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0, None)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thr]
    return keep


def postprocess(prediction: np.ndarray, conf_thre: float, nms_thre: float) -> np.ndarray:
    """yolox/utils/boxes.py postprocess for one image (class-aware, torchvision NMS)."""
    box_corner = np.empty_like(prediction)
    box_corner[:, 0] = prediction[:, 0] - prediction[:, 2] / 2
    box_corner[:, 1] = prediction[:, 1] - prediction[:, 3] / 2
    box_corner[:, 2] = prediction[:, 0] + prediction[:, 2] / 2
    box_corner[:, 3] = prediction[:, 1] + prediction[:, 3] / 2
    prediction[:, :4] = box_corner[:, :4]
    class_conf = prediction[:, 5:].max(1, keepdims=True)
    class_pred = prediction[:, 5:].argmax(1)[:, None].astype(np.float32)
    conf_mask = prediction[:, 4] * class_conf[:, 0] >= conf_thre
    detections = np.concatenate((prediction[:, :5], class_conf, class_pred), 1)[conf_mask]
    keep = batched_nms(detections[:, :4], detections[:, 4] * detections[:, 5],
                       detections[:, 6], nms_thre)  # fmt: skip
    return detections[keep]


def yolox(sess: ort.InferenceSession, image: np.ndarray, size: tuple[int, int]) -> list[Box]:
    """The ONNX demo's preproc and demo_postprocess (the decode), then YOLOX's own postprocess
    (the NMS its predictor runs), boxes divided by the ratio as its `visual` does."""
    img, ratio = yolox_preproc(image, size)
    output = sess.run(None, {sess.get_inputs()[0].name: img[None, :, :, :]})
    predictions = demo_postprocess(output[0], size)[0]
    dets = postprocess(predictions, CONF, 0.45)
    rows = [[d[6], d[4] * d[5], *(d[:4] / ratio)] for d in dets]
    return finish(rows, *image.shape[:2])


# -- building the models and writing the references


def feeder(images: list[np.ndarray], prep: Callable[[np.ndarray], np.ndarray]) -> Any:
    """`run(model)`: the model's outputs on every calibration image (preprocessed as its
    reference does), stacked per output."""

    flat = [np.full((200, 200, 3), v, np.uint8) for v in (114, 128)]
    assert len(flat) == lm.FLAT

    def run(model: onnx.ModelProto) -> list[np.ndarray]:
        sess = session(model)
        name = sess.get_inputs()[0].name
        outs = [sess.run(None, {name: prep(image)}) for image in [*images, *flat]]
        return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]

    return run


def compare(a: list[Box], b: list[Box], tol: float) -> dict[str, Any]:
    """Match each box of `a` to an unmatched box of `b` with its class, a score within 1e-3 and
    coordinates within `tol` pixels (the closest); counts and the largest gaps matched."""
    free, gaps, scores = list(range(len(b))), [], []
    for box in a:
        near = [(max(abs(u - v) for u, v in zip(box[2:], b[j][2:], strict=True)), j)
                for j in free if b[j][0] == box[0] and abs(b[j][1] - box[1]) <= 1e-3]  # fmt: skip
        if near and min(near)[0] <= tol:
            gap, j = min(near)
            free.remove(j)
            gaps.append(gap)
            scores.append(abs(b[j][1] - box[1]))
    return {"boxes": [len(a), len(b)], "matched": len(gaps),
            "max_score_diff": max(scores, default=0.0), "max_coord_diff": max(gaps, default=0.0)}  # fmt: skip


def inside(boxes: list[Box], image: np.ndarray) -> list[Box]:
    h, w = image.shape[:2]
    return [b for b in boxes if b[2] >= 2 and b[3] >= 2 and b[4] <= w - 2 and b[5] <= h - 2]


def worst(checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "boxes": [sum(c["boxes"][0] for c in checks), sum(c["boxes"][1] for c in checks)],
        "matched": sum(c["matched"] for c in checks),
        "max_score_diff": max(c["max_score_diff"] for c in checks),
        "max_coord_diff": max(c["max_coord_diff"] for c in checks),
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_model(out: Path, name: str, model: onnx.ModelProto, card: dict[str, Any]) -> Path:
    path = out / f"{name}.onnx"
    onnx.save(model, str(path))
    card = {"name": name, "version": "1", "classes": CLASSES, **card}
    card["thresholds"] = {"default": CONF, "band": 0.0}
    card["sha256"] = sha256(path)
    text = yaml.safe_dump(card, sort_keys=False, default_flow_style=None)
    (out / f"{name}.card.yaml").write_text(text, encoding="utf-8")
    return path


def dump(result: dict[str, Any]) -> str:
    """JSON with each image's boxes on one line (small, and diffs stay readable)."""
    marks: dict[str, str] = {}
    for name, model in result["models"].items():
        for i, boxes in enumerate(model["boxes"]):
            key = f"@{name}/{i}@"
            marks[f'"{key}"'] = json.dumps(boxes, separators=(",", ":"))
            model["boxes"][i] = key
    text = json.dumps(result, indent=1)
    for key, value in marks.items():
        text = text.replace(key, value)
    return text + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = os.environ.get("LINEINSPECT_DATA", "../shared/data")
    parser.add_argument("--data", type=Path, default=Path(default_data))
    parser.add_argument("--out", type=Path, default=Path("tests/data/layouts"))
    parser.add_argument("--darknet-dir", type=Path, default=None, help="keep .cfg + .weights here")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dark = args.darknet_dir or Path(tempfile.mkdtemp(prefix="darknet-"))
    dark.mkdir(parents=True, exist_ok=True)
    images = [load(args.data, *spec) for spec in IMAGES]
    rng = np.random.default_rng(SEED)
    refs: dict[str, Any] = {}
    checks: dict[str, Any] = {}

    def record(name: str, path: Path, layout: str, how: str, nms: float | None,
               fn: Callable[[np.ndarray], list[Box]]) -> list[list[Box]]:  # fmt: skip
        boxes = [fn(image) for image in images]
        refs[name] = {"onnx": path.name, "sha256": sha256(path), "layout": layout,
                      "reference": how, "conf": CONF, "nms": nms, "boxes": boxes}  # fmt: skip
        print(f"{name}: {sum(map(len, boxes))} boxes ({', '.join(str(len(b)) for b in boxes)})")
        return boxes

    # Darknet: .cfg + .weights for OpenCV, the same weights as raw-head ONNX
    nets = {"tiny-yolov3": lm.tiny_yolov3(), "tiny-yolov4": lm.tiny_yolov4()}
    readers = {}
    for name, net in nets.items():
        net.init(rng)
        letterbox = name == "tiny-yolov4"
        prep = partial(darknet_blob, net, letterbox=letterbox)
        lm.calibrate_darknet(net, feeder(images, lambda im, p=prep: p(im)[0]), SHARE[name])
        (dark / f"{name}.cfg").write_text(lm.darknet_cfg(net), encoding="utf-8")
        (dark / f"{name}.weights").write_bytes(lm.darknet_weights(net))
        readers[name] = cv2.dnn.readNetFromDarknet(str(dark / f"{name}.cfg"),
                                                   str(dark / f"{name}.weights"))  # fmt: skip
        card: dict[str, Any] = {
            "layout": "darknet",
            "anchors": [list(a) for a in net.anchors],
            "masks": [list(y.mask) for _, y in net.heads()],
        }
        if letterbox:
            card |= {"scale_x_y": 1.05, "input": {"resize": "letterbox", "pad_value": 128}}
        path = write_model(args.out, name, lm.darknet_onnx(net), card)
        how = (f"OpenCV {cv2.__version__} readNetFromDarknet on the .cfg + .weights, "
               f"{'Darknet letterbox_image + correct_yolo_boxes, ' if letterbox else ''}"
               "per-class cv2.dnn.NMSBoxes")  # fmt: skip
        reader = readers[name]
        boxes = record(name, path, "darknet", how, 0.45,
                       lambda im, n=net, r=reader, lb=letterbox: opencv_darknet(r, n, im, lb, 0.45))  # fmt: skip
        if not letterbox:
            # DetectionModel keeps whole-pixel rects and clamps a rect's corner into the image
            # without shrinking it: compared on the boxes inside the image.
            dm = [inside(detection_model(reader, net, im, 0.45), im) for im in images]
            boxes = [inside(b, im) for b, im in zip(boxes, images, strict=True)]
            checks[f"{name} vs cv2.dnn.DetectionModel.detect (whole-pixel boxes inside the image)"] = worst(
                [compare(a, b, 1.5) for a, b in zip(boxes, dm, strict=True)])  # fmt: skip

    v4 = nets["tiny-yolov4"]
    path = write_model(args.out, "yolov4-boxes-confs", lm.darknet_onnx(v4, boxes_confs=True), {})
    sess = session(onnx.load(str(path)))
    boxes = record("yolov4-boxes-confs", path, "boxes_confs",
                   "pytorch-YOLOv4 demo preprocessing + post_processing (nms_cpu per class)", 0.6,
                   lambda im: pytorch_yolov4(sess, im, v4.width, v4.height))  # fmt: skip
    cv = [opencv_darknet(readers["tiny-yolov4"], v4, im, False, 0.6) for im in images]
    checks["yolov4-boxes-confs vs OpenCV on the same Darknet weights"] = worst(
        [compare(a, b, 0.01) for a, b in zip(boxes, cv, strict=True)])  # fmt: skip

    # YOLOv7 --end2end: ONNX Runtime (K, 7) and TensorRT EfficientNMS outputs, same weights
    net7 = lm.small(rng, (320, 320), (8, 16, 32), 3 * (5 + lm.NC))
    targets: list[lm.Target] = [(0.0, 1.0), (0.0, 1.0), (0.0, 0.7), (0.0, 0.7), (None, 1.6)]
    targets += [(0.0, 1.6)] * lm.NC
    run7 = feeder(images, lambda im: yolov7_input(im, net7.size))
    lm.calibrate_small(net7, targets, run7, "images", SHARE["yolov7"])
    for name, efficient in (("yolov7-end2end", False), ("yolov7-efficient-nms", True)):
        path = write_model(args.out, name, lm.yolov7_onnx(net7, efficient), {})
        sess7 = session(onnx.load(str(path)))
        record(name, path, "efficient_nms" if efficient else "yolov7_end2end",
               "the graph's own NMS after YOLOv7's letterbox, mapped back as its demo", None,
               lambda im, s=sess7: yolov7(s, im, net7.size))  # fmt: skip

    # the ONNX model zoo's tiny-YOLOv3 interface
    netz = lm.small(rng, (416, 416), (32, 16), 3 * (5 + lm.NC))
    runz = feeder(images, lambda im: zoo_input(im, netz.size))
    lm.calibrate_small(netz, targets, runz, "input_1", SHARE["tiny-yolov3-zoo"])
    anchors = [[lm.TINY_ANCHORS[k] for k in m] for m in ((3, 4, 5), (1, 2, 3))]
    path = write_model(args.out, "tiny-yolov3-zoo", lm.zoo_tiny_yolov3_onnx(netz, anchors), {})
    sessz = session(onnx.load(str(path)))
    record("tiny-yolov3-zoo", path, "onnx_zoo_yolov3",
           "the graph's own selection, fed image_shape, after keras-yolo3's letterbox_image", None,
           lambda im: zoo(sessz, im, netz.size))  # fmt: skip

    # YOLOX without decode in the graph
    netx = lm.small(rng, (256, 256), (8, 16, 32), 5 + lm.NC, pixel_scale=1 / 255)
    xt: list[lm.Target] = [(0.5, 0.3), (0.5, 0.3), (1.2, 0.4), (1.2, 0.4), (None, 1.6)]
    runx = feeder(images, lambda im: yolox_preproc(im, netx.size)[0][None])
    lm.calibrate_small(netx, xt + [(0.0, 1.6)] * lm.NC, runx, "images", SHARE["yolox"])
    path = write_model(args.out, "yolox", lm.yolox_onnx(netx), {})
    sessx = session(onnx.load(str(path)))
    record("yolox", path, "yolox",
           "YOLOX's preproc + demo_postprocess (ONNX demo), postprocess (yolox/utils/boxes.py)", 0.45,
           lambda im: yolox(sessx, im, netx.size))  # fmt: skip

    versions = f"opencv {cv2.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}"
    result = {
        "generated_by": f"python -m scripts.dev.darknet_reference ({versions}), seed {SEED}",
        "box": "class, score, x1, y1, x2, y2 in original pixels, clipped to the image",
        "images": [{"file": f, "crop": c, "gains": g} for f, c, g in IMAGES],
        "cross_checks": checks,
        "models": refs,
    }
    (args.out / "reference.json").write_text(dump(result), encoding="utf-8")
    for what, check in checks.items():
        print(f"cross-check {what}: {check}")
    print(f"wrote {args.out} (.cfg + .weights in {dark})")


if __name__ == "__main__":
    main()

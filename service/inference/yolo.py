"""Ultralytics YOLO outputs -> boxes in input-tensor pixels, and the NMS every layout shares.

Three layouts, one row per image:
- yolov5:  (N, 5 + nc)  cx, cy, w, h, objectness, class scores          (YOLOv5 repo exports)
- yolov8:  (4 + nc, N)  cx, cy, w, h, class scores                      (YOLOv8/11, v3u, v5u)
- end2end: (K, 6)       x1, y1, x2, y2, score, class — already NMS-free (YOLOv10 / YOLO26)

The decoding and the class-aware NMS follow Ultralytics' `non_max_suppression` (single label
per box, candidates capped, `max_det` kept) so that served boxes match theirs. The other
exporters' layouts (`service.inference.layouts`) decode their own way and share `suppress`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
MAX_CANDIDATES = 30_000  # Ultralytics' max_nms
MAX_WH = 7680.0  # class offset for class-aware NMS in one pass (Ultralytics' max_wh)
UltralyticsLayout = Literal["yolov5", "yolov8", "end2end"]


def cxcywh_to_xyxy(b: F32) -> F32:
    out = np.empty_like(b)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    out[:, 0] = b[:, 0] - half_w
    out[:, 1] = b[:, 1] - half_h
    out[:, 2] = b[:, 0] + half_w
    out[:, 3] = b[:, 1] + half_h
    return out


def decode(
    raw: F32, layout: UltralyticsLayout, num_classes: int, conf_floor: float
) -> tuple[F32, F32, npt.NDArray[np.int64]]:
    """One image's raw output -> (xyxy, confidence, class_id) above `conf_floor`, before NMS."""
    if layout == "yolov8":
        scores = raw[4 : 4 + num_classes]  # (nc, N)
        conf = scores.max(axis=0)
        keep = conf > conf_floor
        cls = scores[:, keep].argmax(axis=0)
        boxes = cxcywh_to_xyxy(raw[:4, keep].T)
        return boxes, conf[keep].astype(np.float32), cls.astype(np.int64)
    if layout == "yolov5":
        obj = raw[:, 4]
        cand = raw[obj > conf_floor]
        scores = cand[:, 5 : 5 + num_classes] * cand[:, 4:5]
        cls = scores.argmax(axis=1) if len(cand) else np.zeros((0,), np.int64)
        conf = scores.max(axis=1) if len(cand) else np.zeros((0,), np.float32)
        keep = conf > conf_floor
        return (
            cxcywh_to_xyxy(cand[keep, :4]),
            conf[keep].astype(np.float32),
            cls[keep].astype(np.int64),
        )
    # end2end
    keep = raw[:, 4] > conf_floor
    return (
        raw[keep, :4].astype(np.float32),
        raw[keep, 4].astype(np.float32),
        raw[keep, 5].round().astype(np.int64),
    )


def nms(boxes: F32, scores: F32, iou_threshold: float) -> npt.NDArray[np.int64]:
    """Greedy NMS (torchvision semantics: suppress IoU > threshold), indices by falling score."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def suppress(
    boxes: F32,
    conf: F32,
    cls: npt.NDArray[np.int64],
    iou_threshold: float,
    max_detections: int,
    class_agnostic: bool = False,
) -> tuple[F32, F32, npt.NDArray[np.int64]]:
    """Ultralytics' NMS over decoded candidates: the `MAX_CANDIDATES` best, one greedy pass made
    class-aware by offsetting each class far apart (unless `class_agnostic`), `max_detections`
    kept. Every layout whose graph has no NMS of its own ends here."""
    if not len(conf):
        return boxes, conf, cls
    if len(conf) > MAX_CANDIDATES:
        top = np.argsort(-conf, kind="stable")[:MAX_CANDIDATES]
        boxes, conf, cls = boxes[top], conf[top], cls[top]
    offset = np.zeros_like(boxes) if class_agnostic else (cls[:, None] * MAX_WH).astype(np.float32)
    keep = nms(boxes + offset, conf, iou_threshold)[:max_detections]
    return boxes[keep], conf[keep], cls[keep]


def top_k(
    boxes: F32, conf: F32, cls: npt.NDArray[np.int64], max_detections: int
) -> tuple[F32, F32, npt.NDArray[np.int64]]:
    """Detections already suppressed (NMS inside the graph): by falling score, at most k."""
    order = np.argsort(-conf, kind="stable")[:max_detections]
    return boxes[order], conf[order], cls[order]

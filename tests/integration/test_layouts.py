"""Every detector layout beyond Ultralytics', served by lineinspect on real NEU images, box for
box against an independent reference: OpenCV's Darknet reader for the Darknet models, each
exporter's own postprocessing or the graph's own NMS for the others
(tests/data/layouts/reference.json, written by scripts/dev/darknet_reference.py; its docstring
says which reference each model has). In process, through `lineinspect predict` and through
`POST /v1/predict`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from service.inference.model import Model, load_model
from service.inference.runtime import RuntimeOptions
from tests.integration.conftest import REPO, Running, post_image

LAYOUTS = REPO / "tests" / "data" / "layouts"
REFERENCE: dict[str, Any] = json.loads((LAYOUTS / "reference.json").read_text(encoding="utf-8"))
COORD_TOL, SCORE_TOL = 0.01, 1e-4  # pixels; float32 arithmetic in two runtimes
Box = list[float]  # class, score, x1, y1, x2, y2


def load(data_dir: Path, spec: dict[str, Any]) -> np.ndarray:
    """As the reference script's `load`: the NEU image, cropped, contrast stretched, tinted."""
    image = cv2.imread(str(data_dir / "neu-det" / "IMAGES" / spec["file"]), cv2.IMREAD_COLOR)
    assert image is not None, spec["file"]
    if spec["crop"]:
        x0, y0, x1, y1 = spec["crop"]
        image = image[y0:y1, x0:x1]
    lo, hi = float(image.min()), float(image.max())
    image = np.rint((image.astype(np.float32) - lo) * np.float32(255 / max(hi - lo, 1)))
    image = image.astype(np.uint8)
    if spec["gains"]:
        scaled = np.rint(image.astype(np.float32) * np.float32(spec["gains"]))
        image = np.clip(scaled, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


@pytest.fixture(scope="module")
def images(data_dir: Path) -> list[np.ndarray]:
    return [load(data_dir, spec) for spec in REFERENCE["images"]]


def gaps(got: list[Box], want: list[Box], where: str) -> tuple[float, float]:
    """Every reference box matched by one served box of its class, score and place; (largest
    coordinate gap, largest score gap)."""
    assert len(got) == len(want), f"{where}: {len(got)} boxes served, reference {len(want)}"
    free, coord, score = list(range(len(got))), 0.0, 0.0
    for box in want:
        near = [
            (max(abs(u - v) for u, v in zip(box[2:], got[j][2:], strict=True)), j)
            for j in free
            if got[j][0] == box[0] and abs(got[j][1] - box[1]) <= SCORE_TOL
        ]
        assert near, f"{where}: no served box of class {box[0]} scores {box[1]}; got {got}"
        gap, j = min(near)
        assert gap <= COORD_TOL, f"{where}: {box} served as {got[j]}"
        free.remove(j)
        coord, score = max(coord, gap), max(score, abs(got[j][1] - box[1]))
    return coord, score


def served(model: Model, images: list[np.ndarray]) -> list[list[Box]]:
    """One batch through Model.predict (the runner the line and HTTP use)."""
    out = []
    for result in model.predict(images):
        d = result.prediction.detections
        assert d is not None
        out.append([[int(c), float(s), *map(float, b)]
                    for b, s, c in zip(d.xyxy, d.confidence, d.class_id, strict=True)])  # fmt: skip
    return out


def from_json(detections: list[dict[str, Any]]) -> list[Box]:
    return [[d["class_id"], d["confidence"], *(d["box"][k] for k in ("x1", "y1", "x2", "y2"))]
            for d in detections]  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFERENCE["models"]))
def test_served_boxes_equal_the_reference(name: str, images: list[np.ndarray]) -> None:
    ref = REFERENCE["models"][name]
    path = LAYOUTS / ref["onnx"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ref["sha256"], "model changed"
    model = load_model(path, RuntimeOptions(warmup_runs=0))
    assert model.spec.layout == ref["layout"]
    assert model.policy.confidence_floor() == ref["conf"]
    if ref["nms"] is not None:
        assert model.spec.nms_iou == ref["nms"]
    coord = score = 0.0
    for i, (got, want) in enumerate(zip(served(model, images), ref["boxes"], strict=True)):
        c, s = gaps(got, want, f"{name}, {REFERENCE['images'][i]}")
        coord, score = max(coord, c), max(score, s)
    total = sum(map(len, ref["boxes"]))
    assert total >= 30, "too few reference boxes to tell anything"
    print(f"{name}: {total} boxes equal, max coordinate gap {coord:.5f} px, score {score:.2e}")


def _pngs(images: list[np.ndarray], folder: Path) -> list[Path]:
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{i:02d}.png")
        cv2.imwrite(str(paths[-1]), image)  # lossless: the service decodes the same pixels
    return paths


def test_lineinspect_predict_serves_darknet_letterbox(
    images: list[np.ndarray], tmp_path: Path
) -> None:
    name = "tiny-yolov4"
    r = subprocess.run(
        [sys.executable, "-m", "service", "predict", "--model", LAYOUTS / f"{name}.onnx",
         *_pngs(images, tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == len(images)
    for i, (line, want) in enumerate(zip(lines, REFERENCE["models"][name]["boxes"], strict=True)):
        assert line["model"]["name"] == name
        gaps(from_json(line["detections"]), want, f"{name} via lineinspect predict, image {i}")


def test_http_predict_serves_the_model_zoo_layout(serve: Any, images: list[np.ndarray]) -> None:
    """The model zoo's tiny-YOLOv3 takes each image's original size as a second input: through
    the HTTP micro-batcher too, every request gets its own."""
    name = "tiny-yolov3-zoo"
    running: Running = serve({"LINEINSPECT__MODELS__0__PATH": str(LAYOUTS / f"{name}.onnx")})
    want = REFERENCE["models"][name]["boxes"]
    for i, image in enumerate(images):
        r = post_image(running.client, cv2.imencode(".png", image)[1].tobytes(), "image/png")
        assert r.status_code == 200, r.text
        gaps(from_json(r.json()["detections"]), want[i], f"{name} via /v1/predict, image {i}")

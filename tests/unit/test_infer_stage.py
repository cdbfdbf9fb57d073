"""The infer stage on its own: real ONNX models, real buffers, the publish handoff replaced by a
list. A camera that changes model mid-stream (a recipe change) loses no frame and keeps its
order."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import yaml

from service.core.types import Frame, Judged
from service.inference.model import Model, load_model
from service.inference.runtime import RuntimeOptions
from service.metrics import Metrics
from service.stages.buffer import BufferPolicy, FrameBuffer
from service.stages.infer import InferStage, ModelSlot, Route
from tests import onnx_factory

FAST = RuntimeOptions(warmup_runs=0, intra_op_threads=1)


def classifier(tmp_path: Path, name: str, probs: list[float]) -> Model:
    path = onnx_factory.constant_model(tmp_path / f"{name}.onnx", np.float32(probs), size=(32, 32))
    card = {"name": name, "task": "classify", "classes": ["good", "bad"], "good_classes": ["good"]}
    path.with_name(f"{name}.card.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")
    return load_model(path, FAST)


def test_a_camera_moves_to_another_model_without_losing_or_reordering_frames(
    tmp_path: Path,
) -> None:
    a, b = classifier(tmp_path, "a", [0.9, 0.1]), classifier(tmp_path, "b", [0.1, 0.9])
    routes = {
        "a": Route(ModelSlot(a), [], threading.Event()),
        "b": Route(ModelSlot(b), [], threading.Event()),
    }
    cam = FrameBuffer("cam1", 4, BufferPolicy.BLOCK, ready=routes["a"].ready)
    routes["a"].buffers.append(cam)
    out: list[Judged] = []
    stage = InferStage(routes, out.append, Metrics(), max_batch=3, workers=2)
    stage.start()
    image = np.zeros((32, 32, 3), np.uint8)
    total = 300

    def feed() -> None:
        for i in range(1, total + 1):
            cam.put(Frame("cam1", i, image, time.monotonic(), time.time()))

    feeder = threading.Thread(target=feed)
    feeder.start()
    while len(out) < 50:
        time.sleep(0.001)
    stage.move(cam, "b")
    assert cam not in routes["a"].buffers and cam in routes["b"].buffers
    feeder.join()
    deadline = time.monotonic() + 30
    while len(out) < total and time.monotonic() < deadline:
        time.sleep(0.01)
    stage.stop()
    assert [j.frame.frame_id for j in out] == list(range(1, total + 1))
    models = [j.result.model.name for j in out if j.result is not None]
    assert len(models) == total
    switch = models.index("b")
    assert set(models[:switch]) == {"a"} and set(models[switch:]) == {"b"}, "one clean switch"
    assert 50 <= switch < total

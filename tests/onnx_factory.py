"""Real ONNX files with known outputs, built with onnx.helper, for every layout the service reads.

- `constant_model`: the output is a fixed tensor (broadcast over the batch) whatever the image;
  decoding can then be checked against hand-computed boxes.
- `channel_mean_model`: the output is the per-channel mean of the input tensor, so tests can
  check the preprocessing (colour order, scale, mean/std, resize) and that batching keeps each
  image's result with its image.
- `anomaly_model`: the score is the mean of the input, the map its channel mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _input(
    name: str, batch: int | None, channels: int, size: tuple[int, int] | None
) -> onnx.ValueInfoProto:
    h, w = size if size else ("height", "width")
    return helper.make_tensor_value_info(
        name, TensorProto.FLOAT, [batch if batch else "batch", channels, h, w]
    )


def _save(graph: onnx.GraphProto, path: Path, metadata: Mapping[str, str] | None) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def constant_model(
    path: Path,
    output: np.ndarray,
    *,
    size: tuple[int, int] | None = (640, 640),
    batch: int | None = None,
    metadata: Mapping[str, str] | None = None,
    output_name: str = "output0",
    input_name: str = "images",
) -> Path:
    """Output = `output` broadcast to (batch, *output.shape), for any input image."""
    const = output.astype(np.float32)
    shape_for_batch = np.array([-1] + [1] * const.ndim, dtype=np.int64)
    nodes = [
        helper.make_node("ReduceSum", [input_name, "axes"], ["summed"], keepdims=1),
        helper.make_node("Mul", ["summed", "zero"], ["zeroed"]),
        helper.make_node("Reshape", ["zeroed", "bshape"], ["per_batch"]),
        helper.make_node("Add", ["per_batch", "const"], [output_name]),
    ]
    out_shape: list[int | str] = [batch if batch else "batch", *const.shape]
    graph = helper.make_graph(
        nodes,
        "constant",
        [_input(input_name, batch, 3, size)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape)],
        initializer=[
            numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(shape_for_batch, "bshape"),
            numpy_helper.from_array(const, "const"),
        ],
    )
    return _save(graph, path, metadata)


def channel_mean_model(
    path: Path,
    *,
    size: tuple[int, int] | None = (64, 64),
    batch: int | None = None,
    softmax: bool = False,
    metadata: Mapping[str, str] | None = None,
    output_name: str = "output0",
) -> Path:
    """A 3-class 'classifier' whose logits are the input's per-channel means."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["means" if softmax else output_name], axis=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["means"], [output_name], axis=1))
    graph = helper.make_graph(
        nodes,
        "channel_mean",
        [_input("images", batch, 3, size)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch or "batch", 3])],
    )
    return _save(graph, path, metadata)


def anomaly_model(
    path: Path,
    *,
    size: tuple[int, int] = (64, 64),
    metadata: Mapping[str, str] | None = None,
    with_map: bool = True,
) -> Path:
    """score = mean of the input tensor (batch, 1); map = channel mean (batch, 1, H, W)."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["pred_score"], axes=[1, 2, 3], keepdims=0),
    ]
    outputs = [helper.make_tensor_value_info("pred_score", TensorProto.FLOAT, ["batch"])]
    if with_map:
        nodes.append(
            helper.make_node("ReduceMean", ["images"], ["anomaly_map"], axes=[1], keepdims=1)
        )
        outputs.append(
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", 1, *size])
        )
    graph = helper.make_graph(
        nodes,
        "anomaly",
        [_input("images", None, 3, size)],
        outputs,
    )
    return _save(graph, path, metadata)


def ultralytics_metadata(
    names: list[str], imgsz: tuple[int, int], task: str, **extra: object
) -> dict[str, str]:
    """Metadata as Ultralytics' exporter writes it: Python reprs."""
    meta = {
        "description": f"Ultralytics YOLO {task} model",
        "author": "Ultralytics",
        "version": "8.3.0",
        "stride": "32",
        "task": task,
        "batch": "1",
        "imgsz": repr(list(imgsz)),
        "names": repr(dict(enumerate(names))),
    }
    meta |= {k: repr(v) for k, v in extra.items()}
    return meta

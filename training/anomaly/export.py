"""ONNX export, ONNX Runtime scoring, and the check that lineinspect serves the file."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from service.inference.preprocess import PreprocessSpec
from training.anomaly.config import BANK_NAME, INPUT_NAME, MAP_NAME, OPSET, SCORE_NAME
from training.anomaly.data import Split, _progress, read_image
from training.anomaly.features import load_batches
from training.anomaly.patchcore import PatchCoreModel

# one pHash, union-find and exposure-bracket rule for every split


@torch.no_grad()
def torch_scores(
    model: PatchCoreModel,
    paths: Sequence[Path],
    spec: PreprocessSpec,
    batch_size: int,
    progress: bool,
) -> np.ndarray:
    out = []
    batches = load_batches(paths, spec, batch_size)
    for _, x in _progress(
        batches, progress, "scoring (torch)", total=math.ceil(len(paths) / batch_size)
    ):
        out.append(model(x)[0].numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def export_onnx(
    model: nn.Module,
    path: Path,
    fp16_bank: bool,
    metadata: dict[str, str],
    bank: torch.Tensor | None = None,
    doc: str = "PatchCore-style anomaly model (EfficientNet-Lite0 features, coreset memory bank)",
) -> None:
    """images -> (pred_score, anomaly_map) as one ONNX file. `bank` (default: the model's own
    `bank_t`, if any) is found among the initializers and stored as fp16 when asked."""
    import onnx
    from onnx import helper

    h, w = cast("tuple[int, int]", model.image_size)  # every exported model keeps its input size
    if bank is None:
        bank = getattr(model, "bank_t", None)
    dummy = torch.zeros(2, 3, h, w)
    raw = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no onnxscript and writes opset 17.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(raw),
            input_names=[INPUT_NAME],
            output_names=[SCORE_NAME, MAP_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "batch"},
                SCORE_NAME: {0: "batch"},
                MAP_NAME: {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(raw))
    raw.unlink()
    graph = proto.graph
    if bank is not None:
        _store_bank(graph, bank.numpy(), fp16_bank)
    # The tracer names the map's spatial dims after internal tensors: state the real shapes.
    shapes: dict[str, list[str | int]] = {SCORE_NAME: ["batch"], MAP_NAME: ["batch", 1, h, w]}
    for output in graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for value in shapes[output.name]:
            dim = dims.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value
    proto.doc_string = doc
    helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def _store_bank(graph: Any, bank_np: np.ndarray, fp16_bank: bool) -> None:
    """Give the memory bank initializer a stable name, as fp16 + Cast when asked."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    match = [n for n, t in inits.items() if tuple(t.dims) == bank_np.shape]
    if len(match) != 1:
        raise RuntimeError(f"cannot find the memory bank among the ONNX initializers: {match}")
    old = inits[match[0]]
    values = numpy_helper.to_array(old)
    if not np.array_equal(values, bank_np):
        raise RuntimeError("the exported memory bank differs from the model's")
    graph.initializer.remove(old)
    if fp16_bank:
        graph.initializer.append(
            numpy_helper.from_array(values.astype(np.float16), BANK_NAME + "_fp16")
        )
        graph.node.insert(
            0,
            helper.make_node("Cast", [BANK_NAME + "_fp16"], [BANK_NAME], to=onnx.TensorProto.FLOAT),
        )
    else:
        graph.initializer.append(numpy_helper.from_array(values, BANK_NAME))
    for node in graph.node:
        node.input[:] = [BANK_NAME if i == old.name else i for i in node.input]


def onnx_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_scores(
    session: Any,
    paths: Sequence[Path],
    spec: PreprocessSpec,
    batch_size: int,
    progress: bool,
    desc: str = "scoring",
    keep_maps: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    scores, maps = [], []
    batches = load_batches(paths, spec, batch_size)
    for _, x in _progress(batches, progress, desc, total=math.ceil(len(paths) / batch_size)):
        s, m = session.run([SCORE_NAME, MAP_NAME], {INPUT_NAME: x.numpy()})
        scores.append(s)
        if keep_maps:
            maps.extend(m[:, 0])
    return (np.concatenate(scores) if scores else np.zeros(0, np.float32)), maps


def _parity_sample(split: Split, good_class: str, n: int = 8) -> list[Path]:
    good = split.paths("test", good_class)[: n // 2]
    bad = [p for c, p in split.rows["test"] if c != good_class][: n - len(good)]
    return good + [split.root / p for p in bad]


def serve_check(path: Path, split: Split, good_class: str) -> dict[str, Any]:
    """Load the exported file with lineinspect itself and run one good and one defect image."""
    from service.inference.model import load_model
    from service.inference.runtime import RuntimeOptions

    model = load_model(path, RuntimeOptions(warmup_runs=1, intra_op_threads=1, inter_op_threads=1))
    good = split.paths("test", good_class)[:1]
    bad = [split.root / p for c, p in split.rows["test"] if c != good_class][:1]
    images = [read_image(p) for p in good + bad]
    results = model.predict(images)  # type: ignore[arg-type]
    out: dict[str, Any] = {
        "task": model.spec.task,
        "score_output": model.spec.score_output,
        "map_output": model.spec.map_output,
        "warnings": list(model.spec.warnings),
        "images": [],
    }
    for p, r in zip(good + bad, results, strict=True):
        a = r.prediction.anomaly
        assert a is not None
        out["images"].append(
            {
                "image": p.name,
                "score": round(a.score, 4),
                "raw": round(a.raw, 4),
                "map_shape": list(a.map.shape) if a.map is not None else None,
                "verdict": str(r.decision.verdict),
            }
        )
    return out

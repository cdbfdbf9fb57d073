"""Work out what a model is and how to serve it: card > ONNX metadata > output shapes > defaults.

Every resolved setting records where it came from, so `lineinspect models inspect` can show a
user which guesses were made, and every refusal names the exact reason.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.inference.card import AnomalySpec, InputSpec, Layout, ModelCard, Task
from service.inference.metadata import ExportMetadata, parse_metadata
from service.inference.preprocess import PreprocessSpec

SUPPORTED_TASKS = ("detect", "classify", "anomaly")
UNSUPPORTED_TASKS = {
    "segment": "instance segmentation",
    "pose": "pose estimation",
    "obb": "oriented boxes",
}
INPUT_TYPES: dict[str, type[np.floating[Any]]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}


class ModelError(ValueError):
    """This model cannot be served; the message says exactly why."""


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    name: str
    version: str
    sha256: str
    task: Task
    classes: tuple[str, ...]
    input_name: str
    fixed_batch: int | None  # None: dynamic batch axis
    preprocess: PreprocessSpec
    layout: Layout | None = None
    output_kind: str | None = None  # classify: probabilities | logits
    score_output: str | None = None
    map_output: str | None = None
    anomaly: AnomalySpec | None = None
    nms_iou: float = 0.45
    max_detections: int = 300
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dim(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _probe(session: Any, name: str, shape: tuple[int, ...], dtype: Any) -> dict[str, np.ndarray]:
    try:
        outs = session.run(None, {name: np.zeros(shape, dtype)})
    except Exception as exc:
        raise ModelError(f"a test inference on a {list(shape)} zero tensor failed: {exc}") from exc
    return {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), outs, strict=True)}


def detect_layout(
    shape: tuple[int, ...], num_classes: int | None, end2end: bool | None
) -> tuple[Layout, int]:
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


def _task(
    meta: ExportMetadata, card: ModelCard | None, outs: dict[str, np.ndarray]
) -> tuple[Task, str]:
    if card and card.task:
        return card.task, "card"
    if meta.task:
        if meta.task in UNSUPPORTED_TASKS:
            raise ModelError(
                f"task '{meta.task}' ({UNSUPPORTED_TASKS[meta.task]}) is not served; "
                f"lineinspect serves {', '.join(SUPPORTED_TASKS)}"
            )
        if meta.task not in SUPPORTED_TASKS:
            raise ModelError(f"unknown task '{meta.task}' in the ONNX metadata")
        return meta.task, "metadata"  # type: ignore[return-value]
    names = " ".join(outs).lower()
    if re.search(r"score|anomal", names):
        return "anomaly", "output names"
    first = next(iter(outs.values()))
    if len(outs) == 1 and first.ndim == 2:
        return "classify", "output shape"
    if first.ndim == 3:
        return "detect", "output shape"
    shapes = {k: list(v.shape) for k, v in outs.items()}
    raise ModelError(f"cannot tell the task from outputs {shapes}; set `task` in the model card")


def _classes(
    card: ModelCard | None, meta: ExportMetadata, count: int | None, sources: dict[str, str]
) -> tuple[str, ...] | None:
    if card and card.classes is not None:
        sources["classes"] = "card"
        return tuple(card.classes)
    if meta.names is not None:
        sources["classes"] = "metadata"
        return tuple(meta.names)
    if count is not None:
        sources["classes"] = "output shape (unnamed)"
        return tuple(f"class{i}" for i in range(count))
    return None


def resolve(path: Path, session: Any, card: ModelCard | None) -> ModelSpec:
    """The full serving spec of a loaded session, or a ModelError saying why it cannot be served."""
    meta = parse_metadata(session.get_modelmeta().custom_metadata_map or {})
    warnings = list(meta.problems)
    sources: dict[str, str] = {}
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise ModelError(
            f"model has {len(inputs)} inputs {names}; lineinspect serves one image input"
        )
    inp = inputs[0]
    if inp.type not in INPUT_TYPES:
        raise ModelError(f"input '{inp.name}' has type {inp.type}; float32 or float16 is needed")
    if len(inp.shape) != 4:
        raise ModelError(
            f"input '{inp.name}' has shape {inp.shape}; (batch, channels, H, W) needed"
        )
    batch_dim, chan_dim, h_dim, w_dim = (_dim(d) for d in inp.shape)
    channels = chan_dim or 3
    if channels not in (1, 3):
        raise ModelError(f"input '{inp.name}' has {channels} channels; 1 or 3 needed")

    spec_in = card.input if card else None
    set_in = spec_in.model_fields_set if spec_in else set()
    fixed_size = (h_dim, w_dim) if h_dim and w_dim else None
    if spec_in and spec_in.size:
        if fixed_size and tuple(spec_in.size) != fixed_size:
            raise ModelError(
                f"the card gives input size {list(spec_in.size)} but the model's input is fixed "
                f"at {list(fixed_size)}"
            )
        size, sources["input.size"] = tuple(spec_in.size), "card"
    elif fixed_size:
        size, sources["input.size"] = fixed_size, "input shape"
    elif meta.imgsz:
        size, sources["input.size"] = meta.imgsz, "metadata"
    else:
        raise ModelError(
            f"input '{inp.name}' {inp.shape} has a dynamic size and neither a model card nor the "
            "metadata gives one; set `input.size` in the card"
        )
    dtype = INPUT_TYPES[inp.type]
    outs = _probe(session, inp.name, (batch_dim or 1, channels, *size), dtype)
    task, sources["task"] = _task(meta, card, outs)

    layout: Layout | None = None
    output_kind = score_output = map_output = None
    first_name, first = next(iter(outs.items()))
    if task == "detect":
        known = card.classes if card and card.classes else meta.names
        if card and card.layout:
            layout, sources["layout"] = card.layout, "card"
            _, count = detect_layout(
                first.shape, len(known) if known else None, layout == "end2end"
            )
        else:
            layout, count = detect_layout(first.shape, len(known) if known else None, meta.end2end)
            sources["layout"] = "metadata" if meta.end2end else "output shape"
        classes = _classes(card, meta, count or None, sources)
        if classes is None:
            raise ModelError(
                "an end-to-end detector's output does not say how many classes it has; "
                "set `classes` in the model card"
            )
    elif task == "classify":
        if first.ndim > 2 and all(d == 1 for d in first.shape[2:]):  # (batch, classes, 1, 1)
            first = first.reshape(first.shape[0], -1)
        if first.ndim != 2:
            raise ModelError(
                f"a classifier output must be (batch, classes), got {list(first.shape)}"
            )
        classes = _classes(card, meta, first.shape[1], sources)
        assert classes is not None
        if len(classes) != first.shape[1]:
            raise ModelError(
                f"output '{first_name}' has {first.shape[1]} classes but {sources['classes']} "
                f"lists {len(classes)}: {list(classes)}"
            )
        if card and card.output.kind:
            output_kind, sources["output.kind"] = card.output.kind, "card"
        else:
            row = first[0].astype(np.float64)
            is_prob = bool(np.all(row >= 0) and np.all(row <= 1) and abs(row.sum() - 1) < 1e-3)
            output_kind = "probabilities" if is_prob else "logits"
            sources["output.kind"] = "test inference"
    else:
        classes = ("anomaly",)
        sources["classes"] = "anomaly"
        score_output, map_output = _anomaly_outputs(card, outs)
        sources["anomaly.outputs"] = "card" if card and card.output.score else "output names"
        if not (card and card.anomaly):
            warnings.append(
                "no `anomaly` normalisation in the card: the raw score is compared with the "
                "threshold as it is"
            )

    good = card.good_classes if card else []
    if classes and sources.get("classes", "").startswith("output shape"):
        warnings.append("class names unknown: add `classes` to the model card")

    resize = spec_in.resize if spec_in and spec_in.resize else None
    if resize:
        sources["input.resize"] = "card"
    elif task == "detect":
        resize, sources["input.resize"] = "letterbox", "default for detectors"
    elif task == "classify" and meta.author and "ultralytics" in meta.author.lower():
        resize, sources["input.resize"] = "center_crop", "Ultralytics classifier"
    else:
        resize, sources["input.resize"] = "resize", "default"
    color = spec_in.color if spec_in and "color" in set_in else ("gray" if channels == 1 else "rgb")
    sources["input.normalisation"] = "card" if set_in & {"scale", "mean", "std"} else "default /255"
    if task != "detect" and not card:
        warnings.append(
            "no model card: preprocessing assumed (resize, RGB, /255, no mean/std); "
            "write a card if the model was trained otherwise"
        )
    defaults = spec_in or InputSpec()
    stride = None
    if task == "detect" and resize == "letterbox" and not (h_dim or w_dim) and defaults.rect:
        # A dynamic-size detector takes the minimum rectangle, as Ultralytics' predict gives it.
        stride = meta.stride or 32
        sources["input.rect"] = f"stride {stride} ({'metadata' if meta.stride else 'default'})"
    pre = PreprocessSpec(
        size=(int(size[0]), int(size[1])),
        resize=resize,
        color=color,
        scale=defaults.scale,
        mean=_triple(defaults.mean),
        std=_triple(defaults.std),
        pad_value=defaults.pad_value,
        dtype=dtype,
        stride=stride,
    )
    if pre.channels != channels:
        raise ModelError(
            f"the card's colour '{color}' gives {pre.channels} channels, model wants {channels}"
        )

    sha = file_sha256(path)
    if card and card.sha256 and card.sha256.lower() != sha:
        raise ModelError(
            f"the model card was written for a file with sha256 {card.sha256[:12]}..., but "
            f"{path.name} has sha256 {sha[:12]}...: card and model do not belong together"
        )
    unknown_good = sorted(set(good) - set(classes))
    if unknown_good:
        raise ModelError(f"good_classes {unknown_good} are not model classes {list(classes)}")
    # Ultralytics writes its own package version there, which says nothing about the weights.
    exporter_version = (
        meta.version if meta.author and "ultralytics" in meta.author.lower() else None
    )
    meta_version = None if exporter_version else meta.version
    version = (card.version if card and card.version else None) or meta_version or f"sha-{sha[:12]}"
    return ModelSpec(
        path=path,
        name=(card.name if card and card.name else None) or path.stem,
        version=str(version),
        sha256=sha,
        task=task,
        classes=classes,
        input_name=inp.name,
        fixed_batch=batch_dim,
        preprocess=pre,
        layout=layout,
        output_kind=output_kind,
        score_output=score_output,
        map_output=map_output,
        anomaly=card.anomaly if card else None,
        nms_iou=card.nms_iou if card else 0.45,
        max_detections=card.max_detections if card else 300,
        output_shapes={k: list(v.shape) for k, v in outs.items()},
        sources=sources,
        warnings=tuple(warnings),
    )


def _triple(value: tuple[float, float, float] | float) -> tuple[float, float, float]:
    if isinstance(value, int | float):
        return (float(value),) * 3
    return (float(value[0]), float(value[1]), float(value[2]))


def _anomaly_outputs(card: ModelCard | None, outs: dict[str, np.ndarray]) -> tuple[str, str | None]:
    names = list(outs)
    score = card.output.score if card and card.output.score else None
    amap = card.output.map if card and card.output.map else None
    for name in (score, amap):
        if name is not None and name not in outs:
            raise ModelError(f"the card names output '{name}', but the model's outputs are {names}")
    if score is None:
        small = [n for n in names if outs[n].size == outs[n].shape[0]]  # one value per image
        named = [n for n in small if re.search(r"score", n, re.I)] or small
        if not named:
            shapes = {k: list(v.shape) for k, v in outs.items()}
            raise ModelError(f"no anomaly-score output (one value per image) among {shapes}")
        score = named[0]
    if amap is None:
        maps = [n for n in names if n != score and outs[n].ndim >= 3]
        amap = maps[0] if maps else None
    return score, amap

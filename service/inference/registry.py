"""Work out what a model is and how to serve it: card > ONNX metadata > output shapes > defaults.

Every resolved setting records where it came from, so `lineinspect models inspect` can show a
user which guesses were made, and every refusal names the exact reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.inference.card import AnomalySpec, InputSpec, ModelCard
from service.inference.errors import ModelError
from service.inference.families import FamilyType, Outputs, Probe, family_type, guess_order, tasks
from service.inference.layouts import Decoder, card_hints
from service.inference.metadata import ExportMetadata, parse_metadata
from service.inference.preprocess import PreprocessSpec

UNSUPPORTED_TASKS = {
    "segment": "instance segmentation",
    "pose": "pose estimation",
    "obb": "oriented boxes",
}
INPUT_TYPES: dict[str, type[np.floating[Any]]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}
# The one second input served: the ONNX model zoo's YOLOv3 takes each image's original
# (height, width) beside the image (layout onnx_zoo_yolov3).
IMAGE_SHAPE_INPUT = "image_shape"


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    name: str
    version: str
    sha256: str
    task: str  # a registered model family (service.inference.families)
    classes: tuple[str, ...]
    input_name: str
    fixed_batch: int | None  # None: dynamic batch axis
    preprocess: PreprocessSpec
    layout: str | None = None  # detectors: a `service.inference.layouts` name
    output_kind: str | None = None  # classify: probabilities | logits
    score_output: str | None = None
    map_output: str | None = None
    anomaly: AnomalySpec | None = None
    nms_iou: float = 0.45
    max_detections: int = 300
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    decoder: Decoder | None = None  # detectors: the resolved output layout
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


def _probe(
    session: Any, name: str, shape: tuple[int, ...], dtype: Any, image_shape: str | None
) -> dict[str, np.ndarray]:
    feeds = {name: np.zeros(shape, dtype)}
    if image_shape:  # the image's own size: a letterbox that changes nothing
        feeds[image_shape] = np.tile(np.array(shape[2:], np.float32), (shape[0], 1))
    try:
        outs = session.run(None, feeds)
    except Exception as exc:
        raise ModelError(f"a test inference on a {list(shape)} zero tensor failed: {exc}") from exc
    return {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), outs, strict=True)}


def _inputs(session: Any) -> tuple[Any, str | None]:
    """The image input, and the name of an `image_shape` second input if the model has one."""
    inputs = session.get_inputs()
    if len(inputs) == 2:
        shape_in = [i for i in inputs if i.name == IMAGE_SHAPE_INPUT]
        image = [i for i in inputs if i.name != IMAGE_SHAPE_INPUT]
        if shape_in and len(shape_in[0].shape) == 2 and shape_in[0].shape[1] == 2:
            if shape_in[0].type not in INPUT_TYPES:
                raise ModelError(f"input '{IMAGE_SHAPE_INPUT}' has type {shape_in[0].type}")
            return image[0], IMAGE_SHAPE_INPUT
    if len(inputs) != 1:
        seen = ", ".join(f"'{i.name}' {i.shape}" for i in inputs)
        raise ModelError(
            f"model has {len(inputs)} inputs ({seen}); lineinspect serves one image input, "
            f"and beside it only `{IMAGE_SHAPE_INPUT}` (batch, 2) of the ONNX model zoo's YOLOv3"
        )
    return inputs[0], None


def _task(meta: ExportMetadata, card: ModelCard | None, probe: Probe) -> tuple[FamilyType, str]:
    """The model's family: named by the card, else by the export metadata, else the first family
    whose `claims` recognises the outputs."""
    if card and card.task:
        return _family(card.task, "card"), "card"
    if meta.task:
        if meta.task in UNSUPPORTED_TASKS:
            raise ModelError(
                f"task '{meta.task}' ({UNSUPPORTED_TASKS[meta.task]}) is not served; "
                f"lineinspect serves {', '.join(tasks())}"
            )
        return _family(meta.task, "the ONNX metadata"), "metadata"
    for family in guess_order():
        if family.claims(probe.outs):
            return family, "output names" if family.guess_rank <= 10 else "output shape"
    ins = ", ".join(f"'{k}' {v}" for k, v in probe.inputs.items())
    outs = ", ".join(f"'{k}' {list(v.shape)}" for k, v in probe.outs.items())
    raise ModelError(
        f"cannot tell the task: inputs {ins}; outputs {outs}. Set `task` in the model card "
        f"({', '.join(tasks())}); a detector also needs `layout`: {card_hints()}"
    )


def _family(task: str, named_by: str) -> FamilyType:
    try:
        return family_type(task)
    except KeyError:
        raise ModelError(
            f"unknown task '{task}' in {named_by}; lineinspect serves {', '.join(tasks())}"
        ) from None


# Each exporter's own predict defaults, so a model without a card gives the boxes its users know.
ULTRALYTICS_NMS = (0.7, 300, "Ultralytics predict default (iou 0.7, max_det 300)")  # 8.x and later
YOLOV5_NMS = (0.45, 1000, "YOLOv5 detect.py default (iou_thres 0.45, max_det 1000)")
GENERIC_NMS = (0.45, 300, "default")


def nms_settings(
    card: ModelCard | None, meta: ExportMetadata, layout_default: tuple[float, str] | None = None
) -> tuple[float, int, str]:
    """(NMS IoU, max detections, where they came from): what the card sets, else what the
    exporter's own predict uses for that model generation, as the ONNX metadata tells it, else
    the layout's own exporter's default (`layout_default`: IoU, whose)."""
    if meta.author and "ultralytics" in meta.author.lower():
        iou, max_det, why = ULTRALYTICS_NMS
    elif meta.stride is not None and meta.names is not None and meta.author is None:
        iou, max_det, why = YOLOV5_NMS  # the YOLOv5 repository's export writes only these two
    elif layout_default is not None:
        iou, max_det, why = layout_default[0], GENERIC_NMS[1], layout_default[1]
    else:
        iou, max_det, why = GENERIC_NMS
    set_in_card = card.model_fields_set if card else set()
    if "nms_iou" in set_in_card:
        assert card is not None
        iou, why = card.nms_iou, "card"
    if "max_detections" in set_in_card:
        assert card is not None
        max_det = card.max_detections
        why = "card" if why == "card" else f"card (max_detections), {why}"
    return iou, max_det, why


def resolve(path: Path, session: Any, card: ModelCard | None) -> ModelSpec:
    """The full serving spec of a loaded session, or a ModelError saying why it cannot be served."""
    meta = parse_metadata(session.get_modelmeta().custom_metadata_map or {})
    warnings = list(meta.problems)
    sources: dict[str, str] = {}
    inp, image_shape = _inputs(session)
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
    outs = _probe(session, inp.name, (batch_dim or 1, channels, *size), dtype, image_shape)
    inputs = {i.name: list(i.shape) for i in session.get_inputs()}
    hw = (int(size[0]), int(size[1]))
    probe = Probe(card, meta, outs, sources, warnings, inputs, hw, image_shape)
    family, sources["task"] = _task(meta, card, probe)
    task = family.task
    resolved: Outputs = family.outputs(probe)
    classes, layout, decoder = resolved.classes, resolved.layout, resolved.decoder
    _check_runs(decoder, image_shape, batch_dim)

    good = card.good_classes if card else []
    if classes and sources.get("classes", "").startswith("output shape"):
        warnings.append("class names unknown: add `classes` to the model card")

    own = resolved.input_defaults  # the layout's preprocessing, for what the card leaves unset
    resize = spec_in.resize if spec_in and spec_in.resize else None
    if resize:
        sources["input.resize"] = "card"
    elif own:
        resize, sources["input.resize"] = own.resize, own.source
    else:
        resize, sources["input.resize"] = family.default_resize(meta)
    color = spec_in.color if spec_in and "color" in set_in else ("gray" if channels == 1 else "rgb")
    if own and "color" not in set_in and channels == 3:
        color = own.color
    sources["input.normalisation"] = "card" if set_in & {"scale", "mean", "std"} else "default /255"
    if own and "scale" not in set_in:
        sources["input.normalisation"] = own.source
    if own and not card:
        warnings.append(
            f"no model card: preprocessing assumed as {own.source} ({own.resize}, "
            f"{own.color.upper()}, x{own.scale:.6g}); write a card if the model was trained "
            "otherwise"
        )
    if not family.self_describing and not card:
        warnings.append(
            "no model card: preprocessing assumed (resize, RGB, /255, no mean/std); "
            "write a card if the model was trained otherwise"
        )
    defaults = spec_in or InputSpec()
    stride = None
    rect = family.rect_letterbox and own is None and resize == "letterbox" and defaults.rect
    if rect and not (h_dim or w_dim):
        # A dynamic-size detector takes the minimum rectangle, as Ultralytics' predict gives it.
        stride = meta.stride or 32
        sources["input.rect"] = f"stride {stride} ({'metadata' if meta.stride else 'default'})"
    pre = PreprocessSpec(
        size=(int(size[0]), int(size[1])),
        resize=resize,
        color=color,
        scale=own.scale if own and "scale" not in set_in else defaults.scale,
        mean=_triple(defaults.mean),
        std=_triple(defaults.std),
        pad_value=own.pad_value if own and "pad_value" not in set_in else defaults.pad_value,
        dtype=dtype,
        stride=stride,
    )
    if pre.channels != channels:
        raise ModelError(
            f"the card's colour '{color}' gives {pre.channels} channels, model wants {channels}"
        )

    nms_iou, max_detections, nms_source = nms_settings(card, meta, resolved.nms_default)
    if decoder is not None:  # a detector
        sources["nms"] = {
            "graph": "inside the graph",
            "agnostic": f"{nms_source}, across classes",
            "class": nms_source,
        }[decoder.nms]
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
        output_kind=resolved.output_kind,
        score_output=resolved.score_output,
        map_output=resolved.map_output,
        anomaly=card.anomaly if card else None,
        nms_iou=nms_iou,
        max_detections=max_detections,
        output_shapes={k: list(v.shape) for k, v in outs.items()},
        decoder=decoder,
        sources=sources,
        warnings=tuple(warnings),
    )


def _check_runs(decoder: Decoder | None, image_shape: str | None, batch: int | None) -> None:
    """A second input must be one the layout feeds; per-image outputs need batch 1 or dynamic."""
    if image_shape and (decoder is None or decoder.image_shape_input != image_shape):
        what = decoder.layout if decoder else "this model family"
        raise ModelError(
            f"the model has a second input `{image_shape}`, which only layout onnx_zoo_yolov3 "
            f"feeds, but {what} was resolved"
        )
    if decoder and decoder.per_image and batch not in (None, 1):
        raise ModelError(
            f"layout {decoder.layout} gives outputs per run, not per image, so it runs one image "
            f"at a time, but the model's input has a fixed batch of {batch}"
        )


def _triple(value: tuple[float, float, float] | float) -> tuple[float, float, float]:
    if isinstance(value, int | float):
        return (float(value),) * 3
    return (float(value[0]), float(value[1]), float(value[2]))

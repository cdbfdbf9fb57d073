"""INT8 post-training quantisation of a classifier, with its accuracy cost measured.

Static QDQ quantisation (per-channel INT8 weights, UINT8 activations) calibrated on training
images through the service's own preprocessing; the quantised file is evaluated on the same
untouched test split as the float model, through the service's own `load_model`, and both
figures go into the new model card so the cost is never hidden.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from service.core.types import Detections
from service.inference.card import card_path_for, load_card
from service.inference.model import Model, load_model
from service.inference.runtime import RuntimeOptions
from training import cards, evaluate
from training.dataset import Manifest, Sample, read_image


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, model: Model, samples: Sequence[Sample]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = (
            {model.spec.input_name: model.preprocess(read_image(s.path))[0][None]}  # type: ignore[arg-type]
            for s in samples
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _accuracy(
    model: Model, samples: Sequence[Sample], classes: Sequence[str]
) -> tuple[dict[str, Any], float]:
    # The manifest lists only images that decoded when the dataset was loaded.
    images = [cast(np.ndarray, read_image(s.path)) for s in samples]
    t0 = time.perf_counter()
    probs = np.stack([r.prediction.probabilities for r in model.predict(images)])  # type: ignore[misc]
    per_image = (time.perf_counter() - t0) / max(len(images), 1)
    y = [classes.index(s.label) for s in samples]
    return evaluate.classification_metrics(
        y, probs, classes, list(model.policy.good_classes)
    ), per_image


def quantize_classifier(
    fp32_path: Path,
    out_path: Path,
    manifest: Manifest,
    calibration_images: int = 120,
    seed: int = 0,
) -> dict[str, Any]:
    """Write `out_path` (INT8) + card, calibrated on up to `calibration_images` of the manifest's
    validation split (as detectors and anomaly models are); returns the quantisation summary
    put into the card."""
    val = manifest.samples("val") if "val" in manifest.splits else []
    if not val:
        raise ValueError(
            "the manifest has no validation split: int8 calibration uses the model's validation "
            "images (make the split with `lineinspect dataset split` or train with this tool)"
        )
    fp32 = load_model(fp32_path, RuntimeOptions(warmup_runs=1))
    card = load_card(card_path_for(fp32_path))
    classes = list(fp32.spec.classes)
    rng = np.random.default_rng(seed)
    calib = [val[i] for i in rng.choice(len(val), min(calibration_images, len(val)), replace=False)]
    _quantize(fp32_path, out_path, _Reader(fp32, calib), softmax_nodes)
    fields = card.model_dump(mode="json", exclude_none=True)
    fields.pop("sha256", None)
    fields["name"] = out_path.stem
    cards.write_card(out_path, **fields)  # provisional, so the service can load it
    int8 = load_model(out_path, RuntimeOptions(warmup_runs=1))
    test = manifest.samples("test")
    m32, t32 = _accuracy(fp32, test, classes)
    m8, t8 = _accuracy(int8, test, classes)
    summary = {
        "method": "onnxruntime static QDQ, per-channel int8 weights, uint8 activations",
        "calibration_images": len(calib),
        "calibration_split": "val",
        "fp32": {
            "bytes": fp32_path.stat().st_size,
            "test_accuracy": m32["accuracy"],
            "ms_per_image": round(t32 * 1000, 3),
        },
        "int8": {
            "bytes": out_path.stat().st_size,
            "test_accuracy": m8["accuracy"],
            "ms_per_image": round(t8 * 1000, 3),
        },
        "accuracy_cost_points": round((m32["accuracy"] - m8["accuracy"]) * 100, 2),
    }
    metrics = dict(card.metrics)
    metrics["test"] = m8
    metrics["quantization"] = summary
    # Cards written before the readiness report carry a flat `val_accuracy` instead of `val`.
    val_accuracy = metrics["val"]["accuracy"] if "val" in metrics else metrics.get("val_accuracy")
    readiness_gap = metrics.get("overfitting") or evaluate.overfitting(
        metrics.get("train_accuracy", 1.0), 0.0 if val_accuracy is None else val_accuracy
    )
    metrics["readiness"] = evaluate.readiness_classification(m8, readiness_gap)
    cards.write_card(out_path, **(fields | {"metrics": metrics}))
    return summary


# -- detectors


HEADS = ("fp32", "int8")
SPEED_SIZE = (320, 192)  # (width, height): the line's 720p frame letterboxed to 320 with rect


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """The Detect head's nodes after its last convolutions: DFL, Concat, Sigmoid, box decoding.

    An Ultralytics export names them `/model.N/...`, where `/model.N/dfl/` is the DFL; the
    per-level conv branches (`cv2`, `cv3`, `cv4`) stay quantised.
    """
    prefixes = {n.name.split("/dfl/")[0] for n in model.graph.node if "/dfl/" in n.name}
    if len(prefixes) != 1:
        raise ValueError(
            "cannot find the Detect head (no single '/model.N/dfl/' node group in the graph): "
            "quantise the whole graph with --head int8"
        )
    prefix = prefixes.pop() + "/"
    branches = tuple(f"{prefix}{b}." for b in ("cv2", "cv3", "cv4"))
    return [
        n.name
        for n in model.graph.node
        if n.name.startswith(prefix) and not n.name.startswith(branches)
    ]


def softmax_nodes(model: onnx.ModelProto) -> list[str]:
    """A classifier's Softmax nodes: probabilities stay float (a uint8 softmax would round them
    to 1/255 steps)."""
    return [n.name for n in model.graph.node if n.op_type == "Softmax"]


def _quantize(
    fp32_path: Path,
    out_path: Path,
    reader: CalibrationDataReader,
    keep_fp32: Callable[[onnx.ModelProto], list[str]],
) -> int:
    """Static QDQ quantisation of `fp32_path` (per-channel int8 weights, uint8 activations),
    the nodes `keep_fp32` names left in fp32, the exporter's metadata (names, imgsz, task) kept;
    returns how many nodes were kept in fp32."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        exclude = keep_fp32(onnx.load(str(prepared)))
        quantize_static(
            str(prepared),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
        )
    source, target = onnx.load(str(fp32_path)), onnx.load(str(out_path))
    del target.metadata_props[:]
    target.metadata_props.extend(source.metadata_props)
    onnx.save(target, str(out_path))
    return len(exclude)


def _head_choice(head: str) -> Callable[[onnx.ModelProto], list[str]]:
    """`--head fp32` keeps the Detect head in fp32; `int8` quantises the whole graph."""
    return head_nodes if head == "fp32" else lambda model: []


def raw_frames_per_second(
    paths: Sequence[Path], size: tuple[int, int] = SPEED_SIZE, rounds: int = 5, runs: int = 40
) -> list[float]:
    """Bare ONNX Runtime frames/s of each file, one thread, batch 1, interleaved rounds (median).

    Interleaving puts the same background load on every model of a round.
    """
    import onnxruntime as ort

    w, h = size
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    sessions = []
    for p in paths:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        s = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        for _ in range(5):
            s.run(None, {name: x})
        sessions.append((s, name))
    rates: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, (s, name) in enumerate(sessions):
            t0 = time.perf_counter()
            for _ in range(runs):
                s.run(None, {name: x})
            rates[i].append(runs / (time.perf_counter() - t0))
    return [round(float(np.median(r)), 1) for r in rates]


def machine() -> str:
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (n, 4) and (m, 4) xyxy boxes."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9))


def compare_boxes(
    reference: Sequence[Detections], candidate: Sequence[Detections], match_iou: float = 0.5
) -> dict[str, Any]:
    """Served boxes of two models on the same images: counts, and per reference box the best
    same-class candidate box (matched at IoU >= `match_iou`): its IoU and confidence change."""
    ious: list[float] = []
    dconf: list[float] = []
    count_diff: list[int] = []
    unmatched = 0
    for ref, cand in zip(reference, candidate, strict=True):
        count_diff.append(len(cand.confidence) - len(ref.confidence))
        if not len(ref.confidence):
            continue
        if not len(cand.confidence):
            unmatched += len(ref.confidence)
            continue
        overlap = box_iou(ref.xyxy, cand.xyxy)
        overlap[ref.class_id[:, None] != cand.class_id[None, :]] = 0.0
        for i in range(len(ref.confidence)):
            j = int(overlap[i].argmax())
            if overlap[i, j] >= match_iou:
                ious.append(float(overlap[i, j]))
                dconf.append(abs(float(ref.confidence[i]) - float(cand.confidence[j])))
            else:
                unmatched += 1
    n_ref = sum(len(r.confidence) for r in reference)
    return {
        "images": len(count_diff),
        "reference_boxes": n_ref,
        "candidate_boxes": sum(len(c.confidence) for c in candidate),
        "same_count_images": sum(d == 0 for d in count_diff),
        "max_count_difference": max((abs(d) for d in count_diff), default=0),
        "matched": len(ious),
        "matched_share": round(len(ious) / n_ref, 4) if n_ref else 1.0,
        "unmatched_reference_boxes": unmatched,
        "iou_min": round(min(ious), 4) if ious else None,
        "iou_median": round(float(np.median(ious)), 4) if ious else None,
        "confidence_diff_max": round(max(dconf), 4) if dconf else None,
        "confidence_diff_median": round(float(np.median(dconf)), 4) if dconf else None,
    }


def _detections(model: Model, images: list[np.ndarray]) -> list[Detections]:
    found = [r.prediction.detections for r in model.predict(images)]
    if any(d is None for d in found):
        raise ValueError(f"{model.spec.name} gave no detections: not a detector")
    return cast(list[Detections], found)


def _per_class_ap50(m: dict[str, Any]) -> dict[str, float]:
    return {c: v["ap50"] for c, v in m["per_class"].items()}


def quantize_detector(
    fp32_path: Path,
    out_path: Path,
    manifest: Manifest,
    calibration_images: int | None = None,
    head: str = "fp32",
    compare: bool = True,
    workdir: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write `out_path` (INT8 detector) + card, calibrated on the manifest's validation split.

    mAP50 (overall and per class) of fp32 and int8 on the test split with Ultralytics' own
    validator on the ONNX files (`training.detect.evaluate`, as `lineinspect train detect`
    measures), and the raw frames/s ratio at `SPEED_SIZE` on this machine, go into the card.
    With `compare`, the other head choice is quantised too and its test mAP50 recorded.
    """
    from training import detect
    from training.dataset import export_yolo

    if head not in HEADS:
        raise ValueError(f"--head must be one of {HEADS}, got {head!r}")
    val = manifest.samples("val") if "val" in manifest.splits else []
    if not val:
        raise ValueError(
            "the manifest has no validation split: int8 calibration uses the model's validation "
            "images (never train or test); pass the manifest the model was trained with"
        )
    test = manifest.samples("test") if "test" in manifest.splits else []
    if not test:
        raise ValueError("the manifest has no test split: the int8 cost cannot be measured")
    fp32 = load_model(fp32_path, RuntimeOptions(warmup_runs=1))
    if fp32.spec.task != "detect":
        raise ValueError(f"{fp32_path} is a {fp32.spec.task} model, not a detector")
    card = load_card(card_path_for(fp32_path))
    if calibration_images and calibration_images < len(val):
        rng = np.random.default_rng(seed)
        val = [val[i] for i in sorted(rng.choice(len(val), calibration_images, replace=False))]
    work = Path(workdir or tempfile.mkdtemp(prefix="lineinspect-quantize-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data_yaml = export_yolo(manifest, work / "yolo", list(fp32.spec.classes))
    imgsz = card.input.size[0] if card.input and card.input.size else None

    out_path.parent.mkdir(parents=True, exist_ok=True)
    kept = _quantize(fp32_path, out_path, _Reader(fp32, val), _head_choice(head))
    variants = {head: out_path}
    if compare:
        other = "int8" if head == "fp32" else "fp32"
        variants[other] = work / f"{out_path.stem}-head-{other}.onnx"
        _quantize(fp32_path, variants[other], _Reader(fp32, val), _head_choice(other))

    m32 = detect.evaluate(fp32_path, data_yaml, "test", imgsz, workdir=work / "eval-float")
    measured = {
        h: detect.evaluate(p, data_yaml, "test", imgsz, workdir=work / f"eval-head-{h}")
        for h, p in variants.items()
    }
    m8 = measured[head]
    fps32, fps8 = raw_frames_per_second([fp32_path, out_path])
    summary: dict[str, Any] = {
        "method": "onnxruntime static QDQ, per-channel int8 weights, uint8 activations",
        "calibration": f"{len(val)} images of the validation split",
        "head": (
            f"Detect head after its last convolutions kept in fp32 ({kept} nodes)"
            if head == "fp32"
            else "whole graph quantised"
        ),
        "evaluation": f"test split, {m32['validator']} on the ONNX files",
        "fp32": {
            "bytes": fp32_path.stat().st_size,
            "test_map50": m32["map50"],
            "test_map50_95": m32["map50_95"],
            "test_ap50": _per_class_ap50(m32),
        },
        "int8": {
            "bytes": out_path.stat().st_size,
            "test_map50": m8["map50"],
            "test_map50_95": m8["map50_95"],
            "test_ap50": _per_class_ap50(m8),
        },
        "map50_cost_points": round((m32["map50"] - m8["map50"]) * 100, 2),
        "heads_compared": {f"head_{h}": measured[h]["map50"] for h in measured},
        "speed": {
            "measure": (
                f"bare ONNX Runtime, batch 1, one thread, {SPEED_SIZE[0]}x{SPEED_SIZE[1]}, "
                "median of 5 interleaved rounds of 40 runs"
            ),
            "fp32_frames_per_s": fps32,
            "int8_frames_per_s": fps8,
            "ratio": round(fps8 / fps32, 3),
            "machine": machine(),
        },
    }
    fields = card.model_dump(mode="json", exclude_none=True)
    fields.pop("sha256", None)
    fields["name"] = out_path.stem
    cards.write_card(out_path, **fields)  # provisional, so the service can load it
    int8 = detect.serve(out_path)
    served = detect.served_pass(int8, [s.path for s in test])
    images = [cast(np.ndarray, read_image(s.path)) for s in test]
    summary["served_boxes_vs_fp32"] = {
        "split": "test",
        "floor": "each model's threshold - band (what the service judges)",
        **compare_boxes(_detections(detect.serve(fp32_path), images), _detections(int8, images)),
    }
    metrics = dict(card.metrics)
    metrics["test"] = detect._public(m8) | {
        "served": {
            "verdicts": served["verdicts"],
            "miss_rate": served["miss_rate"],
            "note": "every NEU image holds a defect: PASS on one is a miss",
        }
    }
    if "val" in metrics:  # the int8 file is calibrated on val, so it is not scored there
        metrics["val"] = dict(metrics["val"]) | {"model": f"fp32 source ({fp32_path.name})"}
    summary["source"] = {"file": fp32_path.name, "sha256": card.sha256, "version": card.version}
    metrics["quantization"] = summary
    thresholds = card.thresholds.model_dump(mode="json")
    metrics["readiness"] = detect._readiness(m8, thresholds, served)
    cards.write_card(out_path, **(fields | {"metrics": metrics}))
    return summary

"""INT8 post-training quantisation of an anomaly model (PatchCore, supervised or hybrid), with
its cost measured the way the model was first measured.

The backbone's blocks (`/stem/`, `/blocks.N/`) are quantised; everything after them (the
per-image grey-level normalisation, the local average, the nearest-neighbour distance to the
memory bank, the upsampling and smoothing of the map, the image score) stays fp32 by default
(`--distance fp32`): a distance of 304-d features to 16k bank rows in uint8 steps can move the
top-1 neighbour. `--distance matmul` also quantises the one matrix product of the features with
the bank (per-channel int8 bank, most of the model's arithmetic at 256 px) and keeps the norms,
the minimum, the square root, the map and the score fp32; `--distance int8` quantises the whole
graph. The choices not taken are quantised and measured too, so the card says what each buys.

Calibration uses the good parts of the validation split only (what an anomaly model has seen as
normal; the defects in validation only set the threshold). The int8 raw scores are on a shifted
scale, so the threshold, min and max are re-chosen on validation with the same rule the training
run used (`training.anomaly.evaluate.calibrate`, the card's target miss rate); the test split is
scored once, with that threshold.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from service.inference.card import ModelCard, card_path_for, load_card
from service.inference.model import Model, load_model
from service.inference.runtime import RuntimeOptions
from training import cards, evaluate
from training.anomaly.card import normaliser
from training.anomaly.config import BANK_NAME
from training.anomaly.data import Split, read_image
from training.anomaly.evaluate import _jsonable, calibrate, pixel_auroc, split_metrics
from training.anomaly.export import onnx_scores, onnx_session
from training.quantize import _quantize, machine, raw_frames_per_second

# --distance: what after the backbone is quantised: nothing, the bank's matrix product, all
PARTS = ("fp32", "matmul", "int8")
BACKBONE = re.compile(r"/(stem|blocks\.\d+)/")  # EfficientNet-Lite0's stem and blocks
DEFAULT_CALIBRATION = 32  # chosen on validation AUROC among 16, 32, 64, all 123 (docs/MODELS.md)


def distance_nodes(model: onnx.ModelProto) -> list[str]:
    """Every node outside the backbone's stem and blocks: normalisation, feature aggregation,
    the memory-bank distance (or the supervised head), the map and the score."""
    if not any(BACKBONE.search(n.name) for n in model.graph.node):
        raise ValueError(
            "cannot find the backbone (no '/stem/' or '/blocks.N/' nodes in the graph): "
            "quantise the whole graph with --distance int8"
        )
    return [n.name for n in model.graph.node if n.name and not BACKBONE.search(n.name)]


def bank_product_nodes(model: onnx.ModelProto) -> list[str]:
    """The MatMul of the patch features with the memory bank (the nearest-neighbour search)."""
    found = [n.name for n in model.graph.node if n.op_type == "MatMul" and BANK_NAME in n.input]
    if not found:
        raise ValueError(f"no MatMul with the memory bank ({BANK_NAME}) in the graph")
    return found


def _choice(distance: str) -> Callable[[onnx.ModelProto], list[str]]:
    if distance == "fp32":
        return distance_nodes
    if distance == "matmul":
        return lambda m: sorted(set(distance_nodes(m)) - set(bank_product_nodes(m)))
    return lambda model: []


def restore_fp16_bank(source: Path, target: Path) -> bool:
    """Store the fp32 memory bank of `target` as fp16 + Cast again, as `source` has it.

    quant_pre_process folds the source's Cast into an fp32 initializer, doubling the bank's
    bytes; the values are the fp16 ones widened, so the round trip is exact (checked).
    """
    from onnx import helper, numpy_helper

    src = {t.name: t for t in onnx.load(str(source)).graph.initializer}
    if BANK_NAME + "_fp16" not in src:
        return False
    model = onnx.load(str(target))
    folded = next((t for t in model.graph.initializer if t.name == BANK_NAME), None)
    if folded is None or folded.data_type != onnx.TensorProto.FLOAT:
        return False  # quantised with the whole graph, or still behind its Cast
    half = numpy_helper.to_array(src[BANK_NAME + "_fp16"])
    if not np.array_equal(numpy_helper.to_array(folded), half.astype(np.float32)):
        raise RuntimeError("the quantised file's memory bank differs from the source's")
    model.graph.initializer.remove(folded)
    model.graph.initializer.append(numpy_helper.from_array(half, BANK_NAME + "_fp16"))
    cast = helper.make_node("Cast", [BANK_NAME + "_fp16"], [BANK_NAME], to=onnx.TensorProto.FLOAT)
    model.graph.node.insert(0, cast)
    onnx.save(model, str(target))
    return True


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    """The service's own preprocessing of each calibration image, one image per feed."""

    def __init__(self, model: Model, paths: Sequence[Path]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = (
            {model.spec.input_name: model.preprocess(_image(p))[0][None]} for p in paths
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _image(path: Path) -> Any:
    image = read_image(path)
    if image is None:
        raise ValueError(f"unreadable image {path}")
    return image


def matmul_inputs(path: Path) -> dict[str, str]:
    """Where each MatMul of the graph takes its inputs from: 'float' for a plain tensor,
    'dequantized' for a DequantizeLinear output (a quantised MatMul in QDQ form)."""
    model = onnx.load(str(path))
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {
        f"{n.name or n.output[0]}:{i}": "dequantized" if i in dq else "float"
        for n in model.graph.node
        if n.op_type == "MatMul"
        for i in n.input
    }


def _split(card: ModelCard, data: Path | None) -> Split:
    manifest = card.training.get("split")
    if not manifest or "files" not in manifest:
        raise ValueError(
            "the card records no split (training.split.files): int8 calibration and the "
            "re-tuned threshold need the model's own validation split"
        )
    root = Path(data or card.training.get("data") or "")
    if not root.is_dir():
        raise ValueError(f"data folder {root} not found: pass --data (the set it was trained on)")
    split = Split.from_manifest(root, manifest)
    if not split.paths("val", split.good_class):
        raise ValueError(
            "the card's split has no good images in validation: nothing to calibrate on"
        )
    missing = [p for p in split.paths("val") + split.paths("test") if not p.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} split images missing under {root}, e.g. {missing[0]}")
    return split


def _scores(path: Path, model: Model, paths: Sequence[Path], maps: bool = False) -> Any:
    return onnx_scores(
        onnx_session(path, 1), paths, model.spec.preprocess, 8, False, keep_maps=maps
    )


def _measure(
    path: Path, model: Model, split: Split, good: str, target_miss: float, band: float
) -> dict[str, Any]:
    """Threshold chosen on validation, then val and test metrics at it (test scored once)."""
    val_labels, test_labels = split.labels("val"), split.labels("test")
    val, _ = _scores(path, model, split.paths("val"))
    va = np.asarray(val_labels)
    cal = calibrate(val[va == good], val[va != good], target_miss)
    norm = normaliser(cal)
    test, maps = _scores(path, model, split.paths("test"), maps=True)
    test_m = split_metrics(test_labels, test, good, cal["threshold"], norm, band)
    test_m["pixel_auroc"] = _r(
        pixel_auroc(split.paths("test"), maps, model.spec.preprocess, model.spec.preprocess.resize)
    )
    return {
        "calibration": cal,
        "val": split_metrics(val_labels, val, good, cal["threshold"], norm, band),
        "test": test_m,
        "val_scores": val,
    }


def _r(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(x, n)


def _summary_of(m: dict[str, Any], path: Path) -> dict[str, Any]:
    return {
        "bytes": path.stat().st_size,
        "threshold": round(m["calibration"]["threshold"], 6),
        "val_auroc": m["val"]["auroc"],
        "test_auroc": m["test"]["auroc"],
        "test_auroc_per_class": {c: v["auroc"] for c, v in m["test"]["per_class"].items()},
        "test_pixel_auroc": m["test"]["pixel_auroc"],
        "test_miss_rate": m["test"]["miss_rate"],
        "test_false_reject_rate": m["test"]["false_reject_rate"],
        "readiness_passed": evaluate.readiness_anomaly(m["test"])["passed"],
    }


def quantize_anomaly(
    fp32_path: Path,
    out_path: Path,
    data: Path | None = None,
    calibration_images: int | None = DEFAULT_CALIBRATION,
    distance: str = "fp32",
    compare: bool = True,
    seed: int = 0,
    command: str | None = None,
) -> dict[str, Any]:
    """Write `out_path` (INT8 anomaly model) + card; returns the summary put into the card."""
    if distance not in PARTS:
        raise ValueError(f"--distance must be one of {PARTS}, got {distance!r}")
    card = load_card(card_path_for(fp32_path))
    if card.task != "anomaly" or card.anomaly is None:
        raise ValueError(f"{fp32_path} is a {card.task} model without anomaly calibration")
    if any("/supervised/" in n.name for n in onnx.load(str(fp32_path)).graph.node):
        raise ValueError(
            f"{fp32_path} is a supervised or hybrid model: not quantised, because its threshold "
            "comes from out-of-fold scores of the validation defects it was trained on, and "
            "re-choosing it for the int8 scale on those same images would flatter it"
        )
    split = _split(card, data)
    cfg = card.training.get("config", {})
    good = split.good_class
    target_miss = float(cfg.get("target_miss", 0.05))
    band = card.thresholds.band if card.thresholds else float(cfg.get("band", 0.1))
    fp32 = load_model(fp32_path, RuntimeOptions(warmup_runs=1))
    calib = split.paths("val", good)
    if calibration_images and calibration_images < len(calib):
        rng = np.random.default_rng(seed)
        calib = [
            calib[i] for i in sorted(rng.choice(len(calib), calibration_images, replace=False))
        ]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lineinspect-quantize-anomaly-") as work:
        variants = {distance: out_path}
        for other in PARTS if compare else ():
            if other != distance:
                variants[other] = Path(work) / f"{out_path.stem}-distance-{other}.onnx"
        kept = {}
        for d, p in variants.items():
            kept[d] = _quantize(fp32_path, p, _Reader(fp32, calib), _choice(d))
            restore_fp16_bank(fp32_path, p)
        m32 = _measure(fp32_path, fp32, split, good, target_miss, band)
        measured = {
            d: _measure(p, fp32, split, good, target_miss, band) for d, p in variants.items()
        }
        w, h = fp32.spec.preprocess.size[1], fp32.spec.preprocess.size[0]
        order = [fp32_path, *variants.values()]
        fps = raw_frames_per_second(order, size=(w, h))
        rates = dict(zip(["source", *variants], fps, strict=True))
        sizes = {d: p.stat().st_size for d, p in variants.items()}
    m8 = measured[distance]
    summary: dict[str, Any] = {
        "method": "onnxruntime static QDQ, per-channel int8 weights, uint8 activations",
        "calibration": f"{len(calib)} good images of the validation split",
        "distance": {
            "fp32": f"backbone blocks quantised; the {kept[distance]} nodes after them "
            "(normalisation, memory-bank distance, map, score) kept in fp32",
            "matmul": "backbone blocks and the features x memory-bank MatMul quantised; the "
            f"other {kept[distance]} nodes after the backbone (norms, minimum, square root, map, "
            "score) kept in fp32",
            "int8": "whole graph quantised",
        }[distance],
        "threshold": "re-chosen on validation with the training rule "
        f"(miss rate <= {target_miss} on the validation defects); test scored once at it",
        "fp32": _summary_of(m32, fp32_path),
        "int8": _summary_of(m8, out_path),
        "auroc_cost_points": _cost(m32["test"]["auroc"], m8["test"]["auroc"]),
        "val_auroc_cost_points": _cost(m32["val"]["auroc"], m8["val"]["auroc"]),
        "distance_compared": {
            f"distance_{d}": {"val_auroc": m["val"]["auroc"], "test_auroc": m["test"]["auroc"]}
            | {k: m["test"][k] for k in ("miss_rate", "false_reject_rate")}
            | {"frames_per_s": rates[d], "bytes": sizes[d]}
            for d, m in measured.items()
        },
        "speed": {
            "measure": f"bare ONNX Runtime, batch 1, one thread, {w}x{h}, median of 5 "
            "interleaved rounds of 40 runs",
            "fp32_frames_per_s": rates["source"],
            "int8_frames_per_s": rates[distance],
            "ratio": round(rates[distance] / rates["source"], 3),
            "machine": machine(),
        },
        "source": {"file": fp32_path.name, "sha256": card.sha256, "version": card.version},
        "command": command,
    }
    _write_card(out_path, card, split, m8, summary, band)
    summary["served"] = _serve_check(out_path, split, good)
    return summary


def _cost(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((a - b) * 100, 2)


def _write_card(
    out: Path,
    card: ModelCard,
    split: Split,
    m8: dict[str, Any],
    summary: dict[str, Any],
    band: float,
) -> None:
    """The fp32 card with the int8 file's threshold, metrics and drift reference."""
    cal = m8["calibration"]
    fields = card.model_dump(mode="json", exclude_none=True)
    fields.pop("sha256", None)
    fields["name"] = out.stem
    fields["anomaly"] = {k: cal[k] for k in ("threshold", "min", "max")}
    metrics = {k: v for k, v in card.metrics.items() if k not in ("parity", "fp16_bank_cost")}
    metrics["val"], metrics["test"] = m8["val"], m8["test"]
    metrics["val"]["note"] = (  # in-sample by design: the figures to choose with, not to quote
        "int8 file; its threshold was chosen here and its good parts calibrated the activations"
    )
    metrics["onnx_bytes"] = out.stat().st_size
    metrics["quantization"] = summary
    metrics["readiness"] = evaluate.readiness_anomaly(m8["test"])
    if "reference" in fields:  # the drift reference's image statistics stay; its scores move
        norm = normaliser(cal)(m8["val_scores"]).tolist()
        by_class: dict[str, list[float]] = defaultdict(list)
        for c, s in zip(split.labels("val"), norm, strict=True):
            by_class["good" if c == split.good_class else c].append(s)
        fields["reference"]["class_confidence"] = cards.confidence_reference(by_class)
        fields["reference"]["verdict_mix"] = dict(
            Counter(
                "fail" if s >= 0.5 + band else "uncertain" if s >= 0.5 - band else "pass"
                for s in norm
            )
        )
    cards.write_card(out, **(fields | {"metrics": _jsonable(metrics)}))


def _serve_check(out: Path, split: Split, good: str) -> dict[str, Any]:
    """The int8 file loaded by lineinspect with its card: raw scores equal the ones measured."""
    model = load_model(out, RuntimeOptions(warmup_runs=1, intra_op_threads=1, inter_op_threads=1))
    bad = [p for c, p in zip(split.labels("test"), split.paths("test"), strict=True) if c != good]
    paths = split.paths("test", good)[:2] + bad[:2]
    results = model.predict([_image(p) for p in paths])
    raw = [r.prediction.anomaly.raw for r in results if r.prediction.anomaly is not None]
    measured, _ = _scores(out, model, paths)
    return {
        "images": [p.name for p in paths],
        "verdicts": [str(r.decision.verdict) for r in results],
        "max_abs_raw_diff": float(np.abs(np.asarray(raw) - measured).max()),
    }

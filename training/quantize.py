"""INT8 post-training quantisation of a classifier, with its accuracy cost measured.

Static QDQ quantisation (per-channel INT8 weights, UINT8 activations) calibrated on training
images through the service's own preprocessing; the quantised file is evaluated on the same
untouched test split as the float model, through the service's own `load_model`, and both
figures go into the new model card so the cost is never hidden.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence
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
    """Write `out_path` (INT8) + card; returns the quantisation summary put into the card."""
    fp32 = load_model(fp32_path, RuntimeOptions(warmup_runs=1))
    card = load_card(card_path_for(fp32_path))
    classes = list(fp32.spec.classes)
    rng = np.random.default_rng(seed)
    train = manifest.samples("train")
    calib = [
        train[i] for i in rng.choice(len(train), min(calibration_images, len(train)), replace=False)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        # Probabilities stay float: a uint8 softmax would round them to 1/255 steps.
        softmax = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Softmax"]
        quantize_static(
            str(prepared),
            str(out_path),
            _Reader(fp32, calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=softmax,
        )
    # Keep the exporter's metadata (names, imgsz, task) on the quantised file.
    source, target = onnx.load(str(fp32_path)), onnx.load(str(out_path))
    del target.metadata_props[:]
    target.metadata_props.extend(source.metadata_props)
    onnx.save(target, str(out_path))
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
    readiness_gap = metrics.get("overfitting") or evaluate.overfitting(
        metrics.get("train_accuracy", 1.0), metrics["val"]["accuracy"]
    )
    metrics["readiness"] = evaluate.readiness_classification(m8, readiness_gap)
    cards.write_card(out_path, **(fields | {"metrics": metrics}))
    return summary

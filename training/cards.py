"""Model cards written next to every exported ONNX file, with the drift reference the service uses.

The card schema is the service's own (`service.inference.card.ModelCard`): the trainer writes
exactly what the server reads, and validation happens on write.
"""

from __future__ import annotations

import platform
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.drift import image_stats as drift_image_stats
from service.inference.card import ModelCard, card_path_for, dump_card
from service.inference.registry import file_sha256

CONFIDENCE_BINS = [round(0.05 * i, 2) for i in range(21)]  # 0.00 .. 1.00, 20 bins
STAT_BINS = 20


def sha256_of(path: Path) -> str:
    return file_sha256(path)  # the service's own digest: what it checks at load


def image_stats(image: np.ndarray) -> dict[str, float]:
    """Brightness (mean grey), contrast (grey std) and sharpness (variance of the Laplacian).

    The service's own function: it computes the same three numbers on live frames for drift, so
    the reference and the live values cannot disagree on a definition.
    """
    brightness, contrast, sharpness = drift_image_stats(image)
    return {"brightness": brightness, "contrast": contrast, "sharpness": sharpness}


def _histogram(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> dict[str, Any]:
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=np.asarray(edges))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def stat_reference(stats: Iterable[Mapping[str, float]]) -> dict[str, Any]:
    """Per-statistic summary + histogram (edges from the 1st-99th percentile, open-ended)."""
    rows = list(stats)
    out: dict[str, Any] = {}
    for key in ("brightness", "contrast", "sharpness"):
        values = np.asarray([r[key] for r in rows], dtype=np.float64)
        lo, hi = np.percentile(values, [1, 99]) if len(values) else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        inner = np.linspace(lo, hi, STAT_BINS - 1)
        edges = [-np.inf, *inner.tolist(), np.inf]
        hist = _histogram(values, edges)
        hist["edges"] = [None if not np.isfinite(e) else float(e) for e in edges]  # JSON-safe
        out[key] = {
            "mean": float(values.mean()) if len(values) else 0.0,
            "std": float(values.std()) if len(values) else 0.0,
            "p05": float(np.percentile(values, 5)) if len(values) else 0.0,
            "p95": float(np.percentile(values, 95)) if len(values) else 0.0,
            "histogram": hist,
        }
    return out


def confidence_reference(confidences: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Per-class histogram of the confidence the model gives on the validation split."""
    return {name: _histogram(values, CONFIDENCE_BINS) for name, values in confidences.items()}


def reference_section(
    stats: Iterable[Mapping[str, float]],
    confidences: Mapping[str, Sequence[float]],
    verdicts: Mapping[str, int] | None = None,
    split: str = "val",
) -> dict[str, Any]:
    rows = list(stats)
    return {
        "split": split,
        "images": len(rows),
        "image_stats": stat_reference(rows),
        "class_confidence": confidence_reference(confidences),
        "verdict_mix": dict(verdicts or {}),
    }


def command_line() -> str:
    """How this run was started, without the machine-specific interpreter path."""
    return shlex.join(["python", *sys.argv])


def environment() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "onnx", "onnxruntime", "albumentations", "ultralytics", "sklearn"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = str(getattr(module, "__version__", "?"))
    return versions


def write_card(onnx_path: Path, **fields: Any) -> ModelCard:
    """Validate and write `<stem>.card.yaml` next to `onnx_path`, stamped with its sha256."""
    card = ModelCard.model_validate({**fields, "sha256": sha256_of(onnx_path)})
    dump_card(card, card_path_for(onnx_path))
    return card

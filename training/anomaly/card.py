"""The model card of a good-vs-defect model (PatchCore, supervised or hybrid): what the service
needs to serve it, its metrics and how it was made, and the drift reference of its validation
images."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from training.anomaly.config import MAP_NAME, MEAN, SCORE_NAME, STD, AnomalyConfig
from training.anomaly.data import Split, read_image
from training.anomaly.evaluate import _jsonable


def normaliser(calibration: dict[str, float]) -> Any:
    """raw -> the service's normalised score: the threshold at 0.5 (service/inference/model.py)."""
    thr, lo, hi = calibration["threshold"], calibration["min"], calibration["max"]
    return lambda raw: np.clip((raw - thr) / (hi - lo) + 0.5, 0.0, 1.0)


def write_anomaly_card(
    out: Path,
    name: str,
    cfg: AnomalyConfig,
    split: Split,
    calibration: dict[str, float],
    val_scores: np.ndarray,
    metrics: dict[str, Any],
    training: dict[str, Any],
) -> None:
    from training import cards

    norm = normaliser(calibration)
    normalised = norm(val_scores).tolist()
    stats = [cards.image_stats(read_image(p)) for p in split.paths("val")]  # type: ignore[arg-type]
    by_class: dict[str, list[float]] = defaultdict(list)
    for c, s in zip(split.labels("val"), normalised, strict=True):
        by_class["good" if c == cfg.good_class else c].append(s)
    mix = Counter(
        "fail" if s >= 0.5 + cfg.band else "uncertain" if s >= 0.5 - cfg.band else "pass"
        for s in normalised
    )
    cards.write_card(
        out,
        name=name,
        version=cfg.version,
        task="anomaly",
        classes=["anomaly"],
        input={
            "size": list(cfg.image_size),
            "resize": cfg.resize,
            "color": "rgb",
            "scale": 1.0 / 255.0,
            "mean": MEAN,
            "std": STD,
        },
        output={"score": SCORE_NAME, "map": MAP_NAME},
        anomaly={k: calibration[k] for k in ("threshold", "min", "max")},
        thresholds={"default": 0.5, "band": cfg.band},
        metrics=_jsonable(metrics),
        training=_jsonable(training),
        reference=cards.reference_section(stats, by_class, dict(mix), split="val"),
    )

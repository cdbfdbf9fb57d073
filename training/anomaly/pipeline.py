"""The whole good-only run: split, bank, export, calibrate, evaluate, card."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.anomaly.card import write_anomaly_card
from training.anomaly.config import AnomalyConfig, AnomalyDataError
from training.anomaly.data import Split, discover, make_split, resolve_data_root
from training.anomaly.evaluate import (
    _jsonable,
    _round,
    auroc,
    calibrate,
    histogram_png,
    pixel_auroc,
    split_metrics,
)
from training.anomaly.export import (
    _parity_sample,
    export_onnx,
    onnx_scores,
    onnx_session,
    serve_check,
    torch_scores,
)
from training.anomaly.features import PatchFeatures, load_backbone, preprocess_spec
from training.anomaly.patchcore import PatchCoreModel, build_bank, make_model, store_bank
from training.cards import environment

# one pHash, union-find and exposure-bracket rule for every split


@dataclass
class Trained:
    report: dict[str, Any]
    model: PatchCoreModel  # the PyTorch model the ONNX file was exported from
    split: Split
    scores: dict[str, np.ndarray]  # raw scores of the val and test images, in split order


def train(cfg: AnomalyConfig) -> dict[str, Any]:
    """Split, bank, export, calibrate, evaluate, check, write the card. Returns the report."""
    return fit(cfg).report


def fit(cfg: AnomalyConfig) -> Trained:
    """`train`, also returning the PyTorch model and the split."""
    cfg.validate()
    torch.set_num_threads(max(1, cfg.threads))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    root = resolve_data_root(Path(cfg.data))
    classes, good_class = discover(root, cfg.good_class)
    cfg = replace(cfg, good_class=good_class)
    split = make_split(
        classes,
        root,
        cfg.good_class,
        cfg.seed,
        cfg.good_fractions,
        cfg.calib_per_class,
        cfg.max_good,
        cfg.max_defects,
        cfg.skip_unreadable,
        cfg.progress,
    )
    if not split.paths("val", cfg.good_class) or not [
        c for c in split.labels("val") if c != cfg.good_class
    ]:
        raise AnomalyDataError(
            "too few images to calibrate: validation needs good and defect images"
        )
    out = Path(cfg.out)
    name = cfg.name or out.stem
    report_dir = Path(cfg.report_dir) if cfg.report_dir else Path("build/anomaly") / name
    report_dir.mkdir(parents=True, exist_ok=True)
    spec = preprocess_spec(cfg)
    times: dict[str, float] = {}

    features = PatchFeatures(load_backbone(cfg.backbone), cfg.layers)
    bank_full, bank_info = build_bank(features, split.paths("train", cfg.good_class), cfg)
    bank = store_bank(bank_full, cfg.fp16_bank)
    model = make_model(features, bank, cfg)
    times["bank"] = time.process_time() - cpu0

    t = time.process_time()
    metadata = {
        "task": "anomaly",
        "imgsz": repr(list(cfg.image_size)),
        "author": "lineinspect",
        "version": cfg.version,
        "description": f"{name}: PatchCore-style anomaly model, "
        f"EfficientNet-Lite0 blocks {list(cfg.layers)}",
    }
    export_onnx(model, out, cfg.fp16_bank, metadata)
    session = onnx_session(out, cfg.threads)
    times["export"] = time.process_time() - t

    t = time.process_time()
    val_labels = split.labels("val")
    val_scores, _ = onnx_scores(
        session, split.paths("val"), spec, cfg.batch_size, cfg.progress, "scoring val"
    )
    va = np.asarray(val_labels)
    cal = calibrate(
        val_scores[va == cfg.good_class], val_scores[va != cfg.good_class], cfg.target_miss
    )
    thr, lo, hi = cal["threshold"], cal["min"], cal["max"]

    def norm(raw: np.ndarray) -> np.ndarray:
        return np.clip((raw - thr) / (hi - lo) + 0.5, 0.0, 1.0)

    val_metrics = split_metrics(val_labels, val_scores, cfg.good_class, thr, norm, cfg.band)
    times["val"] = time.process_time() - t

    t = time.process_time()
    test_labels = split.labels("test")
    test_paths = split.paths("test")
    test_scores, test_maps = onnx_scores(
        session, test_paths, spec, cfg.batch_size, cfg.progress, "scoring test", keep_maps=True
    )
    test_metrics = split_metrics(test_labels, test_scores, cfg.good_class, thr, norm, cfg.band)
    test_metrics["pixel_auroc"] = _round(pixel_auroc(test_paths, test_maps, spec, cfg.resize))
    times["test"] = time.process_time() - t

    # parity: PyTorch vs ONNX Runtime on the same preprocessed batch (good and defect images)
    t = time.process_time()
    pick = _parity_sample(split, cfg.good_class)
    torch_s = torch_scores(model, pick, spec, cfg.batch_size, False)
    onnx_s, _ = onnx_scores(session, pick, spec, cfg.batch_size, False)
    diff = float(np.abs(torch_s - onnx_s).max())
    parity = {
        "images": len(pick),
        "max_abs_diff": diff,
        "relative_to_range": diff / (hi - lo),
        "ok": diff / (hi - lo) <= 1e-4,
    }
    fp16_cost = None
    if cfg.fp16_bank:  # what storing the bank in fp16 changes, measured on the validation split
        model32 = make_model(features, bank_full, cfg)
        s32 = torch_scores(model32, split.paths("val"), spec, cfg.batch_size, cfg.progress)
        fp16_cost = {
            "val_auroc_fp32": _round(
                auroc(s32[va == cfg.good_class], s32[va != cfg.good_class]), 5
            ),
            "val_auroc_fp16": _round(val_metrics["auroc"], 5),
            "max_abs_score_diff": float(np.abs(s32 - val_scores).max()),
            "max_rel_score_diff": float(np.abs(s32 - val_scores).max() / (hi - lo)),
        }
    times["checks"] = time.process_time() - t

    histogram_png(
        report_dir / "score_histograms.png",
        {"val": (val_labels, val_scores), "test": (test_labels, test_scores)},
        cfg.good_class,
        thr,
    )
    cpu_total = time.process_time() - cpu0
    wall_total = time.perf_counter() - wall0
    onnx_bytes = out.stat().st_size

    timing = {
        "cpu_s_total": round(cpu_total, 1),
        "wall_s_total": round(wall_total, 1),
        "threads": cfg.threads,
        **{f"cpu_s_{k}": round(v, 1) for k, v in times.items()},
        **{k: v for k, v in bank_info.items() if k.startswith("cpu_s")},
    }
    training_section = {
        "method": "PatchCore-style: in-graph per-image grey-level normalisation "
        f"({cfg.normalize}) and letterbox mask, EfficientNet-Lite0 "
        f"({'ImageNet' if cfg.backbone is None else 'backbone of detector ' + str(cfg.backbone)}) "
        "blocks "
        f"{list(cfg.layers)}, 3x3 local average, greedy coreset memory bank (bank augmented: "
        f"{cfg.augment or 'none'}), nearest-neighbour patch distance"
        + (", padding patches masked" if cfg.mask_padding else "")
        + ", bilinear upsampling, Gaussian smoothing, score = "
        + (f"mean of the top {cfg.topk} patch distances" if cfg.topk > 1 else "max of the map"),
        "command": cfg.command,
        "environment": environment(),
        "data": str(root),
        "config": _jsonable(asdict(cfg)),
        "bank": {
            **{k: v for k, v in bank_info.items() if not k.startswith("cpu_s")},
            "storage": "float16" if cfg.fp16_bank else "float32",
        },
        "calibration": {**{k: round(v, 6) for k, v in cal.items()}, "target_miss": cfg.target_miss},
        "timing": timing,
        "split": split.manifest(),
    }
    metrics = {
        "val": val_metrics,
        "test": test_metrics,
        "parity": parity,
        "fp16_bank_cost": fp16_cost,
        "onnx_bytes": onnx_bytes,
    }
    write_anomaly_card(out, name, cfg, split, cal, val_scores, metrics, training_section)
    served = serve_check(out, split, cfg.good_class)
    report = {
        "onnx": str(out),
        "onnx_bytes": onnx_bytes,
        "calibration": cal,
        **metrics,
        "served": served,
        "timing": timing,
        "split_counts": split.counts(),
        "report_dir": str(report_dir),
    }
    (report_dir / "report.json").write_text(
        json.dumps(_jsonable(report), indent=1), encoding="utf-8"
    )
    (report_dir / "split.json").write_text(json.dumps(split.manifest(), indent=1), encoding="utf-8")
    np.savez(
        report_dir / "scores.npz",
        val=val_scores,
        test=test_scores,
        val_labels=np.asarray(val_labels),
        test_labels=np.asarray(test_labels),
    )
    return Trained(report, model, split, {"val": val_scores, "test": test_scores})

"""Good-only, supervised and hybrid models trained side by side, one recommended.

`fit_all` trains the three on the same split, chooses on validation (each model's own calibration
scores: the bank never saw those tiles, the supervised scores are out-of-fold), reports every
candidate on the test split once, and writes the recommended one to `cfg.out` with its card
and a readiness report (report.md / report.html) that compares all three.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.anomaly.candidates import (
    HybridModel,
    describe,
    extra_labelled,
    fit_supervised,
    hybrid_scores,
    hybrid_stats,
    jsonable_stats,
    val_rows,
)
from training.anomaly.card import normaliser, write_anomaly_card
from training.anomaly.config import SCORE_NAME, AnomalyConfig, AnomalyDataError
from training.anomaly.data import Split, read_image
from training.anomaly.evaluate import _jsonable, calibrate, split_metrics
from training.anomaly.export import export_onnx, onnx_scores, onnx_session, serve_check
from training.anomaly.features import preprocess_spec
from training.anomaly.pipeline import fit


@dataclass
class Scored:
    """One candidate: its file, raw scores per split (val: the calibration scores), calibration."""

    name: str
    path: Path
    scores: dict[str, np.ndarray]
    calibration: dict[str, float]
    method: str


def _parity(model: nn.Module, session: Any, split: Split, cfg: AnomalyConfig) -> float:
    """Largest |PyTorch - ONNX Runtime| score over a few test images (raw units)."""
    spec = preprocess_spec(cfg)
    paths = split.paths("test")[:: max(1, len(split.paths("test")) // 6)][:6]
    from service.inference.preprocess import preprocess

    x = np.stack([preprocess(read_image(p), spec)[0] for p in paths])  # type: ignore[arg-type]
    with torch.no_grad():
        ref = model(torch.from_numpy(x))[0].numpy()
    got = session.run([SCORE_NAME], {"images": x})[0]
    return float(np.abs(ref - got).max())


def _export_and_score(
    model: nn.Module, path: Path, cfg: AnomalyConfig, split: Split, doc: str, bank: Any = None
) -> tuple[np.ndarray, float]:
    metadata = {
        "task": "anomaly",
        "imgsz": repr(list(cfg.image_size)),
        "author": "lineinspect",
        "version": cfg.version,
        "description": f"{path.stem}: {doc}",
    }
    export_onnx(model.eval(), path, cfg.fp16_bank, metadata, bank=bank, doc=doc)
    session = onnx_session(path, cfg.threads)
    spec = preprocess_spec(cfg)
    test, _ = onnx_scores(
        session,
        split.paths("test"),
        spec,
        cfg.batch_size,
        cfg.progress,
        f"scoring test ({path.stem})",
    )
    return test, _parity(model, session, split, cfg)


def fit_all(cfg: AnomalyConfig) -> dict[str, Any]:
    """Train, compare and recommend; returns the run's summary (also written as JSON)."""

    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = Path(cfg.out)
    name = cfg.name or out.stem
    report_dir = Path(cfg.report_dir) if cfg.report_dir else Path("build/anomaly") / name
    cand_dir = report_dir / "candidates"
    _check_labelled(cfg.labelled)  # before any training: a bad folder should cost no time
    anomaly = fit(
        replace(
            cfg,
            out=cand_dir / f"{name}-anomaly.onnx",
            name=f"{name}-anomaly",
            report_dir=report_dir / "anomaly",
        )
    )
    split = anomaly.split
    cfg = replace(cfg, good_class=split.good_class)
    good = cfg.good_class
    val_labels = np.asarray(split.labels("val"))

    try:
        sup = fit_supervised(split, cfg)
    except AnomalyDataError as exc:
        if cfg.mode != "auto":
            raise
        return _good_only_result(anomaly, cfg, out, name, str(exc))
    sup_val = sup.oof_scores[val_rows(sup.labelled, split)]
    sup_path = cand_dir / f"{name}-supervised.onnx"
    sup_test, sup_parity = _export_and_score(
        sup.model, sup_path, cfg, split, describe(cfg, "supervised")
    )
    stats = hybrid_stats(anomaly.scores["val"][val_labels == good], sup_val[val_labels == good])
    hyb_model = HybridModel(anomaly.model, sup.model, stats)
    hyb_val = hybrid_scores(anomaly.scores["val"], sup_val, stats)
    hyb_path = cand_dir / f"{name}-hybrid.onnx"
    hyb_test, hyb_parity = _export_and_score(
        hyb_model, hyb_path, cfg, split, describe(cfg, "hybrid"), bank=anomaly.model.bank_t
    )
    a_cal = anomaly.report["calibration"]
    h_cal = calibrate(hyb_val[val_labels == good], hyb_val[val_labels != good], cfg.target_miss)
    candidates = [
        Scored("anomaly (good only)", cand_dir / f"{name}-anomaly.onnx",
               {"val": anomaly.scores["val"], "test": anomaly.scores["test"]}, a_cal,
               f"PatchCore from good parts only, blocks {list(cfg.layers)}"),
        Scored("supervised", sup_path, {"val": sup_val, "test": sup_test}, sup.calibration,
               describe(cfg, "supervised")),
        Scored("hybrid", hyb_path, {"val": hyb_val, "test": hyb_test}, h_cal,
               describe(cfg, "hybrid")),
    ]  # fmt: skip

    context = RunContext(
        out=out,
        name=name,
        report_dir=report_dir,
        labelled=jsonable_stats(sup),
        train_counts=dict(Counter(sup.labelled.labels)),
        notes=list(sup.labelled.notes),
        hybrid_stats=stats,
        parity={"supervised": sup_parity, "hybrid": hyb_parity},
        anomaly_parity_ok=bool(anomaly.report["parity"]["ok"]),
        cpu0=cpu0,
        wall0=wall0,
    )
    return recommend(cfg, split, candidates, context)


@dataclass
class RunContext:
    """What the final step needs besides the candidates: where to write, and what to record."""

    out: Path
    name: str
    report_dir: Path
    labelled: dict[str, Any]
    train_counts: dict[str, int]
    notes: list[str]
    hybrid_stats: dict[str, float]
    parity: dict[str, float]
    anomaly_parity_ok: bool = True
    cpu0: float = 0.0
    wall0: float = 0.0


def recommend(
    cfg: AnomalyConfig, split: Split, candidates: list[Scored], ctx: RunContext
) -> dict[str, Any]:
    """Choose on validation, measure every candidate on test, write the cards, the recommended
    model (`ctx.out`), the report comparing them and summary.json."""
    from training import report as rp

    good = cfg.good_class
    out, name, report_dir = ctx.out, ctx.name, ctx.report_dir
    val_labels = np.asarray(split.labels("val"))
    test_labels = np.asarray(split.labels("test"))

    def as_candidates(split_name: str, labels: np.ndarray) -> list[Any]:
        return [
            rp.Candidate(c.name, c.scores[split_name], labels, c.calibration["threshold"])
            for c in candidates
        ]

    chosen_on_val = rp.compare_candidates(
        as_candidates("val", val_labels), good_class=good, split="val", max_miss=cfg.target_miss
    )
    on_test = rp.compare_candidates(
        as_candidates("test", test_labels), good_class=good, split="test", max_miss=cfg.target_miss
    )
    best = next(c for c in candidates if c.name == chosen_on_val.recommended)
    metrics_of: dict[str, dict[str, Any]] = {}
    for c in candidates:
        norm = normaliser(c.calibration)
        thr = c.calibration["threshold"]
        metrics_of[c.name] = {
            "val": split_metrics(list(val_labels), c.scores["val"], good, thr, norm, cfg.band),
            "test": split_metrics(list(test_labels), c.scores["test"], good, thr, norm, cfg.band),
        }
    training = {
        "method": best.method,
        "command": cfg.command,
        "recommended_over": {
            c.name: {
                "val": metrics_of[c.name]["val"]["auroc"],
                "test": metrics_of[c.name]["test"]["auroc"],
            }
            for c in candidates
        },
        "choice": f"{chosen_on_val.recommended}: {chosen_on_val.reason} (chosen on validation)",
        "labelled": ctx.labelled,
        "hybrid_stats": ctx.hybrid_stats,
        "calibration": {**best.calibration, "target_miss": cfg.target_miss},
        "split": split.manifest(),
    }
    for c in candidates[1:]:  # the anomaly model's card is written by its own run
        write_anomaly_card(
            c.path, c.path.stem, cfg, split, c.calibration, c.scores["val"], metrics_of[c.name],
            {**training, "method": c.method},
        )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best.path, out)
    write_anomaly_card(
        out, name, cfg, split, best.calibration, best.scores["val"], metrics_of[best.name], training
    )
    served = serve_check(out, split, good)
    written = rp.write_binary_report(
        report_dir,
        title=f"{name}: readiness of the recommended model ({best.name})",
        model_name=name,
        scores={
            "val": (best.scores["val"], val_labels),
            "test": (best.scores["test"], test_labels),
        },
        good_class=good,
        threshold=best.calibration["threshold"],
        band=(
            best.calibration["threshold"]
            - cfg.band * (best.calibration["max"] - best.calibration["min"]),
            best.calibration["threshold"]
            + cfg.band * (best.calibration["max"] - best.calibration["min"]),
        ),
        train_counts=ctx.train_counts,
        extra_tables=[on_test.table(mark=False)],
        comparison=chosen_on_val,
        score_name="raw score",
        notes=[
            "Chosen on validation (each model's calibration scores); the test table shows every "
            "candidate on the held-out test parts, measured once.",
            *ctx.notes,
        ],
    )
    summary = {
        "onnx": str(out),
        "recommended": best.name,
        "reason": chosen_on_val.reason,
        "candidates": {c.name: str(c.path) for c in candidates},
        "metrics": metrics_of,
        "parity_max_abs_diff": ctx.parity,
        # the exported graph must score as the PyTorch model did: 1e-4 of the calibration range
        "parity_ok": ctx.anomaly_parity_ok
        and all(
            diff <= 1e-4 * (c.calibration["max"] - c.calibration["min"])
            for c in candidates
            for key, diff in ctx.parity.items()
            if c.name == key
        ),
        "served": served,
        "report": str(written.markdown),
        "cpu_s_total": round(time.process_time() - ctx.cpu0, 1),
        "wall_s_total": round(time.perf_counter() - ctx.wall0, 1),
        "labelled": ctx.labelled,
    }
    (report_dir / "summary.json").write_text(json.dumps(_jsonable(summary), indent=1))
    np.savez(
        report_dir / "candidate_scores.npz",
        val_labels=val_labels,
        test_labels=test_labels,
        # numpy's stub: a **dict of arrays could also fill savez's `allow_pickle: bool`.
        **{f"{c.path.stem}_{s}": v for c in candidates for s, v in c.scores.items()},  # type: ignore[arg-type]
    )
    return summary


def _check_labelled(folders: tuple[Path, ...]) -> None:
    paths, _, _ = extra_labelled(folders, "good")
    for p in paths:
        if read_image(p) is None:
            raise AnomalyDataError(f"unreadable image {p}: fix or remove it")


def _good_only_result(
    anomaly: Any, cfg: AnomalyConfig, out: Path, name: str, why: str
) -> dict[str, Any]:
    """`auto` with too few labelled defects: the good-only model is the result, and says why."""
    from service.inference.card import card_path_for, dump_card, load_card

    src = Path(anomaly.report["onnx"])
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out)
    card = load_card(card_path_for(src)).model_copy(update={"name": name})
    dump_card(card, card_path_for(out))
    test = anomaly.report["test"]
    return {
        "onnx": str(out),
        "recommended": "anomaly (good only)",
        "reason": f"no supervised candidate: {why}",
        "candidates": {"anomaly (good only)": str(src)},
        "metrics": {"anomaly (good only)": {"val": anomaly.report["val"], "test": test}},
        "report": str(Path(anomaly.report["report_dir"]) / "report.json"),
    }

"""Train the NEU steel-surface defect detector that lineinspect serves, fully offline.

    python scripts/train_detector.py [--data PATH] [--out models/neu-det-demo.onnx]
        [--model yolov8n.yaml] [--imgsz 224] [--epochs 170] [--seed 0]
        [--backbone-epochs 0] [--quick]

Reads NEU-DET (Pascal VOC boxes) with `training.dataset`, makes the shared seeded, stratified
70/15/15 split (duplicates kept inside one split), writes an Ultralytics dataset (symlinks, never
copies) under the work folder, trains a YOLO model built from its YAML (no pretrained weights:
nothing is downloaded), exports ONNX (dynamic batch, opset 17), measures mAP50 / mAP50-95 per
class on the test split with Ultralytics' validator on the exported file, tunes the default
threshold on the validation split, and writes the model card next to the ONNX file with the
drift reference lineinspect computes on it. `--quick` is a CI-sized run (a few images per class,
2 epochs, 64 px) that exercises every step in about a minute.

Needs the `train-yolo` extra: pip install -e '.[train-yolo]'. The data path defaults to
`$LINEINSPECT_DATA/neu-det`, with `../shared/data` (relative to the repository root) when
LINEINSPECT_DATA is unset. CPU use: one thread unless `--threads` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

QUICK_PER_CLASS = {"train": 6, "val": 2, "test": 2}


def default_data() -> Path:
    root = Path(os.environ.get("LINEINSPECT_DATA", REPO_ROOT.parent / "shared" / "data"))
    return root / "neu-det"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=default_data(), help="NEU-DET folder (VOC boxes)")
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "voc", "yolo", "masks"],
        help="label layout (auto: VOC XML, images/ + labels/ for YOLO, or image + PNG mask pairs)",
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "neu-det-demo.onnx")
    p.add_argument("--model", default="yolov8n.yaml", help="Ultralytics model YAML (no .pt)")
    p.add_argument(
        "--imgsz",
        type=int,
        default=None,
        help="input size (default: the images' median long side rounded up to a multiple of 32, "
        "within 224-640: 224 for NEU's 200 px; quick: 64)",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs (default 170, the shipped model; quick: 2)"
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument(
        "--backbone-epochs",
        type=int,
        default=0,
        help="first train the backbone as a classifier on the train split for this many epochs "
        "and start the detector from it (0: random init)",
    )
    p.add_argument("--close-mosaic", type=int, default=10, help="last epochs without mosaic")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    p.add_argument(
        "--workdir",
        type=Path,
        default=REPO_ROOT / "build" / "detector",
        help="Ultralytics dataset + runs (git-ignored)",
    )
    p.add_argument("--quick", action="store_true", help="CI-sized run: every step, tiny data")
    p.add_argument("--version", default="0.2.0", help="model version written into the card")
    return p.parse_args(argv)


def say(message: str) -> None:
    print(f"[train_detector] {message}", flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from training import detect
    from training.dataset import (
        DatasetError,
        export_yolo,
        find_duplicates,
        load_dataset,
        split_dataset,
    )

    epochs = args.epochs or (2 if args.quick else 170)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    say(f"reading {args.data}")
    dataset = load_dataset(args.data, args.format)
    n_boxes = sum(len(s.boxes) for s in dataset.samples)
    if not n_boxes:
        raise DatasetError(
            f"{args.data} ({dataset.fmt}) has no boxes: a detector needs Pascal VOC XML, YOLO txt "
            "or mask labels; class folders train a classifier (scripts/train_classifier.py)"
        )
    imgsz = args.imgsz or (64 if args.quick else detect.default_imgsz(dataset.samples))
    groups = find_duplicates(dataset.samples)
    manifest = split_dataset(
        dataset, seed=args.seed, groups=groups["exact"] + groups["near"] + groups["bracket"]
    )
    manifest.save(workdir / "split.json")
    counts = {k: len(v) for k, v in manifest.splits.items()}
    say(f"{len(dataset.samples)} images, split {counts}, manifest {manifest.digest[:12]}")
    used = detect.subset_manifest(manifest, QUICK_PER_CLASS) if args.quick else manifest
    data_yaml = export_yolo(used, workdir / ("yolo-quick" if args.quick else "yolo"))
    classes = detect.class_names(data_yaml)

    backbone = None
    if args.backbone_epochs > 0 and detect.is_efflite0(args.model):
        raise detect.DetectorError(
            f"--backbone-epochs: {args.model} already starts from ImageNet weights"
        )
    if args.backbone_epochs > 0:
        say(f"backbone: {detect.cls_yaml_for(args.model)}, {args.backbone_epochs} epochs")
        backbone = detect.pretrain_backbone(
            used,
            workdir,
            args.model,
            imgsz=imgsz,
            epochs=args.backbone_epochs,
            seed=args.seed,
            threads=args.threads,
        )
        say(f"backbone done in {backbone.cpu_seconds / 60:.1f} CPU min: {backbone.weights}")

    cfg = detect.TrainConfig(
        model=args.model,
        imgsz=imgsz,
        epochs=epochs,
        batch=args.batch,
        seed=args.seed,
        threads=args.threads,
        close_mosaic=min(args.close_mosaic, epochs),
        backbone_weights=backbone.weights if backbone else None,
    )

    def progress(epoch: int, total: int, metrics: dict[str, float]) -> None:
        m50 = metrics.get("metrics/mAP50(B)", float("nan"))
        m95 = metrics.get("metrics/mAP50-95(B)", float("nan"))
        say(f"epoch {epoch}/{total}: val mAP50 {m50:.3f}, mAP50-95 {m95:.3f}")

    say(f"training {args.model} at {imgsz} px for {epochs} epochs on {counts['train']} images")
    result = detect.train(data_yaml, cfg, workdir, "quick" if args.quick else "detect", progress)
    say(f"trained in {result.cpu_seconds / 60:.1f} CPU min; best weights {result.weights}")

    onnx_path = detect.export_onnx(result.weights, args.out, imgsz)
    say(f"exported {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB)")
    val = detect.evaluate(onnx_path, data_yaml, "val", imgsz, workdir=workdir / "eval")
    thresholds = detect.tune_threshold(val)
    test = detect.evaluate(onnx_path, data_yaml, "test", imgsz, workdir=workdir / "eval")
    say(
        f"test mAP50 {test['map50']:.3f}, mAP50-95 {test['map50_95']:.3f} ({test['images']} images)"
    )
    data_shown = os.path.relpath(args.data.resolve(), REPO_ROOT)
    summary = detect.training_summary(
        result,
        manifest=manifest,
        data_root=data_shown,
        dataset=f"{args.data.resolve().name}: {len(dataset.samples)} images, {n_boxes} boxes "
        f"({dataset.fmt} labels)",
        backbone=backbone,
    )
    if args.quick:
        summary["quick"] = {"images_per_class": QUICK_PER_CLASS}
    card = detect.write_detector_card(
        onnx_path,
        classes=classes,
        imgsz=imgsz,
        thresholds=thresholds,
        training=summary,
        val_metrics=val,
        test_metrics=test,
        val_images=detect.split_images(data_yaml, "val"),
        test_images=detect.split_images(data_yaml, "test"),
        version=args.version,
    )
    say(f"card written; threshold {thresholds['default']} ± {thresholds['band']}")
    say(f"done in {time.perf_counter() - t0:.0f} s wall")
    return {
        "onnx": str(onnx_path),
        "test_map50": test["map50"],
        "test_map50_95": test["map50_95"],
        "per_class_ap50": {c: v["ap50"] for c, v in test["per_class"].items()},
        "cpu_seconds": summary["cpu_seconds"],
        "readiness_passed": card["metrics"].get("readiness", {}).get("passed"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # before torch is imported
    try:
        from training.dataset import DatasetError
        from training.detect import DetectorError
    except ImportError as exc:
        print(f"error: cannot import the training package ({exc})", file=sys.stderr)
        return 2
    if not args.data.is_dir():
        print(
            f"error: dataset folder not found: {args.data} (set --data or LINEINSPECT_DATA)",
            file=sys.stderr,
        )
        return 2
    try:
        summary = run(args)
    except (DatasetError, DetectorError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

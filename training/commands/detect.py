"""`lineinspect train detect`: a YOLO defect detector from your box-labelled images, trained
offline through Ultralytics and exported for lineinspect (ONNX + model card)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training import int8
from training.commands import (
    YOLO_MODULES,
    command_line,
    data_help,
    fail,
    interrupted,
    missing_extra,
    positive_int,
    sample_data,
)

if TYPE_CHECKING:
    from training.dataset import Manifest
    from training.detect import TrainConfig

DESCRIPTION = """\
Train a YOLO defect detector on your box-labelled images and export it for lineinspect.
Fully offline: the model is built from an Ultralytics YAML (no COCO weights are downloaded).

Data (--data), one of:

    Pascal VOC      DATA/**/*.xml beside or apart from the images (<object><name>, <bndbox>)
    YOLO            DATA/images/*.jpg + DATA/labels/*.txt ("class cx cy w h", normalised),
                    class names in DATA/data.yaml (names:) or DATA/classes.txt (one per line)
    masks           DATA/<class>/[Imgs/]x.jpg + x.png (mask pixels above 127 are the defect;
                    one box per connected blob)

Class folders without boxes train a classifier instead (`lineinspect train classify`).
The data is split 70/15/15 (stratified, seeded, duplicates kept together); the split and an
Ultralytics copy of it (links, never copies of the images) go into --workdir.

Out (--out OUT.onnx):
    OUT.onnx          dynamic batch, opset 17, Ultralytics' metadata (names, imgsz, stride)
    OUT.card.yaml     classes, letterbox preprocessing, threshold tuned on validation (F1 peak),
                      mAP50 / mAP50-95 per class on the held-out test split measured on the
                      exported file, the served miss rate, drift reference: what
                      `lineinspect serve` reads
    WORKDIR/          split.json, the YOLO dataset, Ultralytics' run (weights/best.pt, last.pt)

Before training starts, two real training steps are run and the run's CPU time estimated; above
--budget-minutes a warning names settings that fit (the run goes on). After the first epoch
an ETA is printed. An interrupted run continues with --resume (same --workdir).

examples:
  lineinspect train detect --data DIR --out models/parts-det.onnx
  lineinspect train detect --data DIR --out models/parts-det.onnx --resume     # after an interruption
  lineinspect train detect --data DIR --model efflite0 --epochs 80 --out models/parts-det.onnx
  lineinspect train detect --quick --out /tmp/det.onnx --workdir /tmp/det       # CI-sized, sample data
"""

QUICK_PER_CLASS = {"train": 6, "val": 2, "test": 2}
QUICK_IMGSZ, QUICK_EPOCHS, DEFAULT_EPOCHS = 64, 2, 170
# Relative training cost of the Ultralytics models the advice may name (GFLOPs at 640 px, from
# Ultralytics' tables; efflite0: measured at 1.5x yolov8n, docs/DETECTOR.md). A model is only
# offered in place of a bigger one of its own family.
MODEL_COST = {
    "yolov8n": 8.7, "yolov8s": 28.6, "yolov8m": 78.9, "yolov8l": 165.2, "yolov8x": 257.8,
    "yolo11n": 6.5, "yolo11s": 21.5, "yolo11m": 68.0, "yolo11l": 86.9, "yolo11x": 194.9,
    "efflite0": 13.0,
}  # fmt: skip


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "detect",
        help="train a YOLO detector on box labels: VOC, YOLO txt or masks (needs lineinspect[train-yolo])",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        type=Path,
        default=sample_data("neu-det"),
        help=data_help("dataset folder", "neu-det"),
    )
    data.add_argument(
        "--format",
        default="auto",
        choices=["auto", "voc", "yolo", "masks"],
        help="label layout (default auto: VOC if there is XML, YOLO if images/ + labels/, "
        "else image + PNG mask pairs)",
    )
    data.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")

    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        help="ONNX file to write (default: models/<data folder>-detector.onnx in the current folder)",
    )
    out.add_argument("--version", default="0.1.0", help="model version in the card (default 0.1.0)")
    out.add_argument("--int8", action="store_true", help=int8.HELP)
    out.add_argument(
        "--workdir",
        type=Path,
        help="split, YOLO dataset and Ultralytics' run (default: build/<output stem>)",
    )
    out.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --workdir from its last.pt, with the settings it "
        "was started with",
    )

    model = p.add_argument_group("model and training")
    model.add_argument(
        "--model",
        default="yolov8n.yaml",
        help="an Ultralytics model YAML (yolov8n.yaml, yolov8s.yaml, yolo11n.yaml, ...; .pt names "
        "are refused: they download) or efflite0 (yolov8n's head on the ImageNet "
        "EfficientNet-Lite0 backbone, early blocks frozen) (default yolov8n.yaml)",
    )
    model.add_argument(
        "--image-size",
        "--imgsz",
        dest="imgsz",
        type=positive_int,
        help="input size (default: the images' median long side rounded up to a multiple of 32, "
        f"within 224-640; --quick: {QUICK_IMGSZ})",
    )
    model.add_argument(
        "--epochs",
        type=positive_int,
        help=f"epochs (default {DEFAULT_EPOCHS}, the recipe of the shipped sample detector; "
        f"--quick: {QUICK_EPOCHS})",
    )
    model.add_argument(
        "--batch-size", "--batch", dest="batch", type=positive_int, default=16, help="default 16"
    )
    model.add_argument(
        "--backbone-epochs",
        type=int,
        default=0,
        help="first train the backbone as a classifier on the train split for this many epochs "
        "and start the detector from it (default 0: random init)",
    )
    model.add_argument(
        "--close-mosaic", type=int, default=10, help="last epochs without mosaic (default 10)"
    )

    run_group = p.add_argument_group("run")
    run_group.add_argument(
        "--threads", type=positive_int, default=1, help="CPU threads for torch (default 1)"
    )
    run_group.add_argument(
        "--budget-minutes",
        type=float,
        default=60.0,
        help="warn before a run estimated above this much CPU time (default 60; never blocks)",
    )
    run_group.add_argument(
        "--no-estimate", action="store_true", help="skip the cost estimate before training"
    )
    run_group.add_argument(
        "--quick",
        action="store_true",
        help=f"CI-sized run: {QUICK_PER_CLASS['train']} training images per class, "
        f"{QUICK_EPOCHS} epochs, {QUICK_IMGSZ} px; every step of a real run",
    )
    p.set_defaults(func=run)


def say(message: str) -> None:
    print(f"[train detect] {message}", flush=True)


def default_out(args: argparse.Namespace) -> Path:
    return Path("models") / f"{args.data.resolve().name or 'model'}-detector.onnx"


def run(args: argparse.Namespace) -> int:
    problem = missing_extra(YOLO_MODULES, "train-yolo")
    if problem:
        return fail(f"`lineinspect train detect` needs the train-yolo extra: {problem}")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # before torch is imported
    from training.dataset import DatasetError
    from training.detect import DetectorError

    if not args.data.is_dir():
        return fail(f"dataset folder not found: {args.data} (set --data or LINEINSPECT_DATA)")
    try:
        summary = _run(args)
    except (DatasetError, DetectorError, OSError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return interrupted()
    print(json.dumps(summary, indent=1))
    return 0


def model_alternatives(model: str, cost_s: float) -> dict[str, float]:
    """Smaller models of `model`'s family (efflite0: yolov8n) -> the run's cost with them."""
    name = Path(model).stem
    if name not in MODEL_COST:
        return {}
    family = "yolov8" if name == "efflite0" else name[:-1]
    return {
        f"{other}.yaml": cost_s * MODEL_COST[other] / MODEL_COST[name]
        for other in MODEL_COST
        if other.startswith(family) and MODEL_COST[other] < MODEL_COST[name]
    }


def estimate(
    cfg: TrainConfig, manifest: Manifest, classes: int, done: int, budget_s: float
) -> None:
    """Time two real steps, print the run's estimated cost, and warn (stderr) above budget."""
    from training import budget, detect

    images = {k: len(v) for k, v in manifest.splits.items()}
    steps = budget.steps_per_epoch(images["train"], cfg.batch)
    epochs = cfg.epochs - done
    # Validation every epoch is forward passes only (about a third of a training step per image).
    eval_share = images["val"] / max(images["train"], 1) / 3
    cpu, wall = detect.probe_step_seconds(cfg, classes)
    cpu_s = budget.run_cost(cpu, steps, epochs, eval_share)
    wall_s = budget.run_cost(wall, steps, epochs, eval_share)
    detail = (
        f"{budget.plural(epochs, 'epoch')} × {budget.plural(steps, 'step')} of {cfg.batch} images at {cfg.imgsz} px with "
        f"{cfg.model}; about {budget.format_duration(wall_s)} wall at --threads {cfg.threads}"
    )
    say(f"estimate: about {budget.format_duration(cpu_s)} of CPU ({detail})")
    suggestions = budget.advice(
        cpu_s,
        budget_s,
        epochs=epochs,
        epochs_done=done,
        image_size=None if done else cfg.imgsz,  # a resumed run keeps its size and model
        alternatives={} if done else model_alternatives(cfg.model, cpu_s),
    )
    message = budget.budget_warning(cpu_s, budget_s, detail, suggestions)
    if message:
        print(message, file=sys.stderr, flush=True)


class EpochClock:
    """Prints each epoch's validation mAP, the full ETA after the first epoch, and the
    expected finish after the later ones."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first = 1

    def start(self, first: int, epochs: int) -> None:
        self.t0, self.first = time.perf_counter(), first
        if first > 1:
            say(f"resumed at epoch {first} of {epochs}")

    def epoch(self, epoch: int, total: int, metrics: dict[str, float]) -> None:
        from training import budget

        now = datetime.now()
        e = budget.eta(
            time.perf_counter() - self.t0, epoch - self.first + 1, total - self.first + 1, now
        )
        m50 = metrics.get("metrics/mAP50(B)", float("nan"))
        m95 = metrics.get("metrics/mAP50-95(B)", float("nan"))
        finish = f", {budget.finish_text(e, now)}" if epoch > self.first else ""
        say(f"epoch {epoch}/{total}: val mAP50 {m50:.3f}, mAP50-95 {m95:.3f}{finish}")
        if epoch == self.first and epoch < total:
            say(budget.eta_line(e, now))


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from training import detect
    from training.dataset import (
        DatasetError,
        export_yolo,
        find_duplicates,
        load_dataset,
        split_dataset,
    )

    out: Path = args.out or default_out(args)
    workdir = (args.workdir or Path("build") / out.stem).resolve()
    run_name = "quick" if args.quick else "detect"
    done = 0
    resumed_args: dict[str, Any] = {}
    if args.resume:  # before reading the data: say at once when there is nothing to resume
        done, resumed_args = detect.resume_point(detect.last_checkpoint(workdir, run_name))
    workdir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    say(f"reading {args.data}")
    dataset = load_dataset(args.data, args.format)
    n_boxes = sum(len(s.boxes) for s in dataset.samples)
    if not n_boxes:
        raise DatasetError(
            f"{args.data} ({dataset.fmt}) has no boxes: a detector needs Pascal VOC XML, YOLO txt "
            "or mask labels; class folders train a classifier (lineinspect train classify)"
        )
    groups = find_duplicates(dataset.samples)
    manifest = split_dataset(
        dataset, seed=args.seed, groups=groups["exact"] + groups["near"] + groups["bracket"]
    )
    split_path = workdir / "split.json"
    if args.resume and split_path.is_file():
        from training.dataset import Manifest

        if Manifest.load(split_path).digest != manifest.digest:
            raise detect.DetectorError(
                f"cannot resume: {args.data} no longer gives the split the run in {workdir} "
                "trained on (images or --seed changed)"
            )
    manifest.save(split_path)
    counts = {k: len(v) for k, v in manifest.splits.items()}
    say(f"{len(dataset.samples)} images, split {counts}, manifest {manifest.digest[:12]}")
    used = detect.subset_manifest(manifest, QUICK_PER_CLASS) if args.quick else manifest
    data_yaml = export_yolo(used, workdir / ("yolo-quick" if args.quick else "yolo"))
    classes = detect.class_names(data_yaml)

    backbone = None
    if args.resume:
        cfg = detect.config_from_train_args(resumed_args, args.threads)
        say(
            f"resuming {workdir / run_name}: {done} of {cfg.epochs} epochs done; the run's own settings apply"
        )
    else:
        imgsz = args.imgsz or (QUICK_IMGSZ if args.quick else detect.default_imgsz(dataset.samples))
        epochs = args.epochs or (QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS)
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
    if not args.no_estimate:
        estimate(cfg, used, len(classes), done, args.budget_minutes * 60)

    clock = EpochClock()
    say(
        f"training {cfg.model} at {cfg.imgsz} px for {cfg.epochs} epochs on {len(used.splits['train'])} images"
    )
    result = detect.train(
        data_yaml, cfg, workdir, run_name, clock.epoch, resume=args.resume, on_start=clock.start
    )
    say(f"trained in {result.cpu_seconds / 60:.1f} CPU min; best weights {result.weights}")

    onnx_path = detect.export_onnx(result.weights, out, cfg.imgsz)
    say(f"exported {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB)")
    val = detect.evaluate(onnx_path, data_yaml, "val", cfg.imgsz, workdir=workdir / "eval")
    thresholds = detect.tune_threshold(val)
    test = detect.evaluate(onnx_path, data_yaml, "test", cfg.imgsz, workdir=workdir / "eval")
    say(
        f"test mAP50 {test['map50']:.3f}, mAP50-95 {test['map50_95']:.3f} ({test['images']} images)"
    )
    data_shown = os.path.relpath(args.data.resolve(), Path.cwd())
    summary = detect.training_summary(
        result,
        manifest=manifest,
        data_root=data_shown,
        dataset=f"{args.data.resolve().name}: {len(dataset.samples)} images, {n_boxes} boxes ({dataset.fmt} labels)",
        backbone=backbone,
        command=command_line(args),
    )
    if args.resume:
        summary["resumed_after_epoch"] = done  # cpu/wall seconds count the resumed part only
    if args.quick:
        summary["quick"] = {"images_per_class": QUICK_PER_CLASS}
    card = detect.write_detector_card(
        onnx_path,
        classes=classes,
        imgsz=cfg.imgsz,
        thresholds=thresholds,
        training=summary,
        val_metrics=val,
        test_metrics=test,
        val_images=detect.split_images(data_yaml, "val"),
        test_images=detect.split_images(data_yaml, "test"),
        version=args.version,
    )
    say(f"card written; threshold {thresholds['default']} ± {thresholds['band']}")
    quantized = None
    if args.int8:
        quantized = int8.write_int8(
            "detect",
            onnx_path,
            onnx_path.with_name(onnx_path.stem + "-report"),
            manifest=used,
            workdir=workdir / "int8",
        )
        say(int8.describe(quantized))
    say(f"done in {time.perf_counter() - t0:.0f} s wall")
    return {
        "onnx": str(onnx_path),
        "test_map50": test["map50"],
        "test_map50_95": test["map50_95"],
        "per_class_ap50": {c: v["ap50"] for c, v in test["per_class"].items()},
        "cpu_seconds": summary["cpu_seconds"],
        "readiness_passed": card["metrics"].get("readiness", {}).get("passed"),
        **({"int8": quantized} if quantized else {}),
    }

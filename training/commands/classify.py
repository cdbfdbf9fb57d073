"""`lineinspect train classify`: an image classifier from your labelled images, exported for
lineinspect (ONNX + model card + readiness report)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training import int8
from training.commands import (
    TRAIN_MODULES,
    command_line,
    csv_list,
    data_help,
    fail,
    interrupted,
    missing_extra,
    positive_int,
    sample_data,
)

if TYPE_CHECKING:
    from training.classify import ClassifierConfig
    from training.dataset import Manifest

DESCRIPTION = """\
Train an image classifier on your labelled images and export it for lineinspect.

Data (--data), one folder per class, the folder name being the class:

    DATA/
      good/       part-0001.jpg, part-0002.png, ...
      scratch/    ...
      dent/       ...

Pascal VOC (XML beside the images), YOLO (images/ + labels/ with data.yaml or classes.txt) and
mask folders (image + PNG mask pairs per class folder) work too: an image gets the class its
file name starts with, else that of most of its boxes. Say which class is a good part with
--good-classes, and which defects must not be missed with --critical. Every class needs at
least 3 distinct images (the split is 70/15/15, stratified, seeded, duplicates kept together).

Out (--out OUT.onnx):
    OUT.onnx          the model: input `images` [batch, 3, size, size], softmax in the graph
    OUT.card.yaml     classes, preprocessing, thresholds tuned on validation, metrics on the
                      held-out test split, drift reference: what `lineinspect serve` reads
    OUT-report/       report.md/.html (readiness, what to do next, confusion matrix, PR
                      curves, thresholds, training curves), best.pt
    OUT-split.json    the split (reuse it with --manifest)
    OUT-work/         a checkpoint after every epoch: --resume continues an interrupted run

Before training starts, two real training steps are run and the run's CPU time estimated; above
--budget-minutes a warning names settings that fit (the run goes on). After the first epoch
an ETA is printed.

examples:
  lineinspect train classify --data DIR --good-classes good --critical crack --out models/parts.onnx
  lineinspect train classify --data DIR --flips "" --out models/parts.onnx   # orientation matters
  lineinspect train classify --data DIR --out models/parts.onnx --resume     # after an interruption
  lineinspect train classify --quick --out /tmp/cls.onnx                     # CI-sized run, sample data
"""

QUICK_PER_CLASS = 8  # CI-sized: 8 training images per class (2 for validation and test)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "classify",
        help="train an image classifier on class folders (needs lineinspect[train])",
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
        choices=["auto", "folders", "masks", "voc", "yolo"],
        help="label layout (default auto: VOC if there is XML, YOLO if images/ + labels/, "
        "masks if class folders hold image + PNG pairs, else class folders)",
    )
    data.add_argument(
        "--manifest",
        type=Path,
        help="use this split (OUT-split.json of an earlier run) instead of making one",
    )
    data.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")

    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        help="ONNX file to write (default: models/<data folder>-classifier.onnx in the current folder)",
    )
    out.add_argument("--name", help="model name in the card (default: the output file's stem)")
    out.add_argument("--version", default="0.1.0", help="model version in the card (default 0.1.0)")
    out.add_argument("--int8", action="store_true", help=int8.HELP)
    out.add_argument(
        "--workdir", type=Path, help="checkpoint folder (default: OUT-work/ beside the output)"
    )
    out.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run whose checkpoint is in the work folder (same --out, "
        "--workdir and settings; --epochs may grow)",
    )

    model = p.add_argument_group("model and training")
    model.add_argument(
        "--model",
        default="efficientnet-lite0",
        choices=["efficientnet-lite0", "small-cnn"],
        help="efficientnet-lite0: fine-tunes ImageNet weights (default, most accurate); "
        "small-cnn: a 0.3 M-parameter CNN from scratch, many times cheaper per step",
    )
    model.add_argument(
        "--width",
        type=positive_int,
        default=24,
        help="small-cnn: channels of its first stage (default 24)",
    )
    model.add_argument(
        "--epochs", type=positive_int, help="at most this many epochs (default 20; --quick: 1)"
    )
    model.add_argument(
        "--image-size",
        type=positive_int,
        default=224,
        help="square input size in pixels (default 224)",
    )
    model.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    model.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    model.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW's (default 1e-4)")
    model.add_argument(
        "--warmup-share",
        type=float,
        default=0.15,
        help="share of the one-cycle schedule spent warming up (default 0.15)",
    )
    model.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        help="cross-entropy label smoothing (default 0)",
    )
    model.add_argument(
        "--patience",
        type=int,
        default=5,
        help="stop after this many epochs without validation improvement; 0: never (default 5)",
    )
    model.add_argument(
        "--augment",
        default="standard",
        choices=["standard", "light"],
        help="standard: crops, ±10° rotation, flips, brightness/contrast, blur/sharpen, sensor "
        "noise; light: flips and brightness/contrast only (default standard)",
    )
    model.add_argument(
        "--flips",
        default="hv",
        help="allowed flips: hv, h, v, or '' when the defects are orientation-specific (default hv)",
    )

    decide = p.add_argument_group("thresholds")
    decide.add_argument(
        "--good-classes",
        type=csv_list,
        default=[],
        help="comma-separated classes meaning a good part",
    )
    decide.add_argument(
        "--critical",
        type=csv_list,
        default=[],
        help="comma-separated defect classes whose threshold is tuned for miss rate <= --max-miss",
    )
    decide.add_argument("--max-miss", type=float, default=0.05, help="default 0.05")
    decide.add_argument(
        "--review-share",
        type=float,
        default=0.05,
        help="share of frames the uncertainty band routes to review (default 0.05)",
    )

    run_group = p.add_argument_group("run")
    run_group.add_argument(
        "--threads", type=positive_int, default=2, help="CPU threads for torch (default 2)"
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
        help=f"CI-sized run: {QUICK_PER_CLASS} images per class, 1 epoch unless --epochs says otherwise",
    )
    p.set_defaults(func=run)


def default_out(args: argparse.Namespace) -> Path:
    """models/<data folder>-classifier.onnx: named after the data, never a shipped model."""
    data = args.data
    if args.manifest and args.manifest.is_file():
        from training.dataset import Manifest

        data = Path(Manifest.load(args.manifest).root)
    return Path("models") / f"{data.resolve().name or 'model'}-classifier.onnx"


def config_from(args: argparse.Namespace, out: Path) -> ClassifierConfig:
    from training.classify import ClassifierConfig

    return ClassifierConfig(
        name=args.name or out.stem,
        version=args.version,
        model=args.model,
        width=args.width,
        image_size=args.image_size,
        epochs=args.epochs or (1 if args.quick else 20),
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_share=args.warmup_share,
        label_smoothing=args.label_smoothing,
        patience=args.patience,
        seed=args.seed,
        augment=args.augment,
        flips=args.flips,
        threads=args.threads,
        limit_per_class=QUICK_PER_CLASS if args.quick else None,
        good_classes=args.good_classes,
        critical_classes=args.critical,
        max_miss=args.max_miss,
        review_share=args.review_share,
    )


def run(args: argparse.Namespace) -> int:
    problem = missing_extra(TRAIN_MODULES, "train")
    if problem:
        return fail(f"`lineinspect train classify` needs the train extra: {problem}")
    from training.classify import ResumeError
    from training.dataset import DatasetError

    try:
        return _run(args)
    except (DatasetError, ResumeError, ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return interrupted()


def _manifest(args: argparse.Namespace, out: Path, workdir: Path) -> Manifest:
    from training.classify import checkpoint_progress
    from training.dataset import Manifest, find_duplicates, load_dataset, split_dataset

    split_path = out.with_name(out.stem + "-split.json")
    if args.resume:
        if checkpoint_progress(workdir) is None:
            raise FileNotFoundError(
                f"nothing to resume: no checkpoint in {workdir} (a run leaves one after each "
                "epoch; give the interrupted run's --out and --workdir)"
            )
        path = args.manifest or split_path
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: the run's split {path} is gone (--manifest)")
        return Manifest.load(path)
    if args.manifest:
        if not args.manifest.is_file():
            raise FileNotFoundError(f"manifest not found: {args.manifest}")
        return Manifest.load(args.manifest)
    if not args.data.is_dir():
        raise FileNotFoundError(
            f"dataset folder not found: {args.data} (set --data or LINEINSPECT_DATA)"
        )
    ds = load_dataset(args.data, args.format)
    for line in ds.problems[:10] + [f"unreadable: {u}" for u in ds.unreadable[:10]]:
        print(f"warning: {line}", file=sys.stderr)
    dups = find_duplicates(ds.samples)
    manifest = split_dataset(
        ds, seed=args.seed, groups=dups["exact"] + dups["near"] + dups["bracket"]
    )
    manifest.save(split_path)
    return manifest


def estimate(cfg: ClassifierConfig, manifest: Manifest, epochs_done: int, budget_s: float) -> None:
    """Time two real steps, print the run's estimated cost, and warn (stderr) above budget."""
    from dataclasses import replace

    from training import budget
    from training.classify import MODELS, batch_starts, probe_step_seconds, split_samples

    splits = split_samples(manifest, cfg)
    classes = len({s.label for rows in splits.values() for s in rows})
    steps = max(1, len(batch_starts(len(splits["train"]), cfg.batch_size)))
    epochs = cfg.epochs - epochs_done
    if epochs <= 0:
        return
    # Validation is forward passes only (about a third of a training step per image).
    eval_share = len(splits["val"]) / max(len(splits["train"]), 1) / 3

    def cost(c: ClassifierConfig) -> tuple[float, float]:
        cpu, wall = probe_step_seconds(c, classes)
        return budget.run_cost(cpu, steps, epochs, eval_share), budget.run_cost(
            wall, steps, epochs, eval_share
        )

    cpu_s, wall_s = cost(cfg)
    detail = (
        f"{budget.plural(epochs, 'epoch')} × {budget.plural(steps, 'step')} of {cfg.batch_size} images at {cfg.image_size} px "
        f"with {cfg.model}; about {budget.format_duration(wall_s)} wall at --threads {cfg.threads}"
    )
    print(f"estimate: about {budget.format_duration(cpu_s)} of CPU ({detail})", flush=True)
    if cpu_s <= budget_s:
        return
    # A resumed run keeps its model and input size: only its epochs can change.
    others = (
        {} if epochs_done else {m: cost(replace(cfg, model=m))[0] for m in MODELS if m != cfg.model}
    )
    suggestions = budget.advice(
        cpu_s,
        budget_s,
        epochs=epochs,
        epochs_done=epochs_done,
        image_size=None if epochs_done else cfg.image_size,
        alternatives={m: c for m, c in others.items() if c < cpu_s},
    )
    message = budget.budget_warning(cpu_s, budget_s, detail, suggestions)
    if message:
        print(message, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    from training.classify import checkpoint_progress, train_classifier, workdir_for

    out: Path = args.out or default_out(args)
    workdir: Path = args.workdir or workdir_for(out)
    cfg = config_from(args, out)
    manifest = _manifest(args, out, workdir)
    if not args.no_estimate:
        progress = checkpoint_progress(workdir) if args.resume else None
        estimate(cfg, manifest, progress[0] if progress else 0, args.budget_minutes * 60)
    metrics = train_classifier(
        manifest, out, cfg, workdir=workdir, resume=args.resume, command=command_line(args)
    )
    test = metrics["test"]
    verdict = "PASS" if metrics["readiness"]["passed"] else "FAIL"
    lowest = min(c["f1"] for c in test["per_class"].values())
    print(f"test accuracy {test['accuracy']:.4f}; lowest F1 {lowest:.4f}; readiness {verdict}")
    stem = out.with_suffix("").as_posix()
    print(f"wrote {out}, {stem}.card.yaml, {stem}-report/ (checkpoints in {workdir})")
    if args.int8:
        report_dir = out.with_name(out.stem + "-report")
        print(int8.describe(int8.write_int8("classify", out, report_dir, manifest=manifest)))
    return 0

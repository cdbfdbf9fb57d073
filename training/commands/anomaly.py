"""`lineinspect train anomaly`: a good-vs-defect model for one part type, from good parts only
or, when defects are labelled, also supervised and hybrid models with one recommended."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from training import int8
from training.commands import (
    TRAIN_MODULES,
    command_line,
    data_help,
    fail,
    missing_extra,
    positive_int,
    sample_data,
)

DESCRIPTION = """\
Train a good-vs-defect model for one part type and export it for lineinspect.

Data (--data): one folder of good parts and one folder per defect class:

    DATA/
      good/         part-0001.jpg, ...        (found by name: good, ok, normal, *_free, ...)
      crack/        img-17.jpg, img-17.png    (a same-name PNG beside an image is its mask)
      blowhole/     ...

MVTec AD's layout (train/good, test/<defect>, ground_truth/) works too. The images are split
by physical part (exposure brackets and near-duplicates stay together): good parts 70/15/15
train/validation/test; per defect class a few images (--calib-per-class) to validation, the
rest to test. The test split is only used for the final figures.

Modes (--mode):
  good-only  PatchCore from good parts only; the defects in validation set the threshold
             (the first weeks on a line, when defects are rare).
  all        (default when defects are labelled) also a supervised patch classifier trained on
             the validation defects (+ --labelled folders, e.g. `lineinspect review export`)
             and a hybrid of both; all three are scored on the same test parts and the one
             chosen on validation is written to --out, with a report comparing them.

Out (--out OUT.onnx): OUT.onnx + OUT.card.yaml (what `lineinspect serve` reads); in
--report-dir: report.md/.html (readiness, histograms with the threshold, ROC, per-class miss
rates, advice), summary.json, the candidates' ONNX files and cards.

Before it starts, the run times one backbone pass and announces its CPU cost; above
--budget-minutes it says which settings fit.

examples:
  lineinspect train anomaly --data DIR --out models/tiles.onnx
  lineinspect train anomaly --data DIR --labelled review-export/ --out models/tiles.onnx
  lineinspect train anomaly --data DIR --mode good-only --image-size 256 --out models/tiles.onnx
  lineinspect train anomaly --quick --out /tmp/a.onnx            # CI-sized run on sample data
"""


def parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use 512 or 256x320)") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"not a size: {text!r} (use 512 or 256x320)")


def parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of block indices: {text!r}") from None


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "anomaly",
        help="train a good-vs-defect model (good-only, supervised, hybrid; needs lineinspect[train])",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--data", type=Path, default=sample_data("magnetic-tile"),
        help=data_help("folder of good and defect class folders", "magnetic-tile"),
    )  # fmt: skip
    data.add_argument(
        "--good-class", default="auto",
        help="folder of good parts (default auto: the one named like good, ok, normal, *_free)",
    )  # fmt: skip
    data.add_argument(
        "--labelled", type=Path, action="append", default=[],
        help="more labelled class folders for the supervised models (a `lineinspect review "
        "export --format folders`); `unlabelled/` is left out; repeatable",
    )  # fmt: skip
    data.add_argument("--calib-per-class", type=positive_int, default=20,
                      help="validation defects per class (at most half the class; default 20)")  # fmt: skip
    data.add_argument("--skip-unreadable", action="store_true",
                      help="leave unreadable images out instead of stopping")  # fmt: skip
    data.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")
    data.add_argument("--limit-good", type=positive_int,
                      help="use at most this many good images (a smaller trial run)")  # fmt: skip
    data.add_argument("--limit-per-class", type=positive_int,
                      help="use at most this many images per defect class")  # fmt: skip

    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path,
                     help="ONNX file to write (default: models/<data folder>-anomaly.onnx)")  # fmt: skip
    out.add_argument("--report-dir", type=Path, help="default: build/anomaly/<name>")
    out.add_argument("--name", help="model name in the card (default: the output file's stem)")
    out.add_argument("--version", default="1", help="model version in the card (default 1)")
    out.add_argument("--int8", action="store_true", help=int8.HELP)

    model = p.add_argument_group("model")
    model.add_argument("--mode", choices=("auto", "good-only", "all"), default="auto",
                       help="auto (default): all when defects are labelled, else good-only")  # fmt: skip
    model.add_argument("--image-size", type=parse_size, default=None,
                       help="input HxW, multiples of 32 (default 512: tiles keep their thin "
                       "cracks; 256 is 4x cheaper; --quick: 128)")  # fmt: skip
    model.add_argument("--resize", choices=("letterbox", "resize"), default="letterbox")
    model.add_argument("--normalize", choices=("none", "mean", "std"), default="std",
                       help="per-image grey-level normalisation in the graph (default std)")  # fmt: skip
    model.add_argument("--layers", type=parse_layers, default=(10, 15),
                       help="PatchCore: EfficientNet-Lite0 blocks (default 10,15)")  # fmt: skip
    model.add_argument("--bank-size", type=positive_int, default=12288,
                       help="PatchCore: memory-bank patches (default 12288)")  # fmt: skip
    model.add_argument("--augment", default="hvt",
                       help="PatchCore bank flips: h, v, t (180 deg) or none (default hvt)")  # fmt: skip
    model.add_argument("--topk", type=positive_int, default=20,
                       help="PatchCore score = mean of the k highest patch distances (default 20)")  # fmt: skip
    model.add_argument("--sigma", type=float, default=4.0, help="map smoothing in pixels")
    model.add_argument("--mask-padding", action=argparse.BooleanOptionalAction, default=True,
                       help="keep the letterbox padding out of scores and maps (default on)")  # fmt: skip
    model.add_argument("--backbone", type=Path,
                       help="EfficientNet-Lite0 of an efflite0 detector (its best.pt) instead of ImageNet's")  # fmt: skip
    model.add_argument("--sup-layers", type=parse_layers, default=(4, 7, 10, 15),
                       help="supervised: blocks of the patch features (default 4,7,10,15)")  # fmt: skip
    model.add_argument("--sup-hidden", type=int, default=0,
                       help="supervised head: 0 linear (default), >0 MLP width")  # fmt: skip
    model.add_argument("--sup-epochs", type=positive_int, default=20, help="default 20")
    model.add_argument("--target-miss", type=float, default=0.05,
                       help="miss rate allowed on the calibration defects (default 0.05)")  # fmt: skip
    model.add_argument("--band", type=float, default=0.1,
                       help="uncertainty band around the normalised threshold 0.5")  # fmt: skip

    run = p.add_argument_group("run")
    run.add_argument("--threads", type=positive_int, default=1, help="CPU threads (default 1)")
    run.add_argument("--batch-size", type=positive_int, default=8)
    run.add_argument("--budget-minutes", type=float, default=60.0,
                     help="warn before runs estimated above this much CPU time (default 60)")  # fmt: skip
    run.add_argument("--no-estimate", action="store_true", help="skip the cost probe")
    run.add_argument("--quick", action="store_true",
                     help="CI-sized run: 60 good images, 6 per defect class, 128 px, bank 500")  # fmt: skip
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_command)


def build_config(args: argparse.Namespace) -> Any:
    from training.anomaly import AnomalyConfig

    out = args.out or Path("models") / f"{Path(args.data).name}-anomaly.onnx"
    cfg = AnomalyConfig(
        data=args.data, out=out, report_dir=args.report_dir,
        image_size=args.image_size or ((128, 128) if args.quick else (512, 512)),
        resize=args.resize, layers=args.layers, backbone=args.backbone, bank_size=args.bank_size,
        sigma=args.sigma, normalize=args.normalize,
        augment="" if args.augment.lower() in ("", "none") else args.augment,
        topk=args.topk, mask_padding=args.mask_padding, seed=args.seed, good_class=args.good_class,
        calib_per_class=args.calib_per_class, target_miss=args.target_miss, band=args.band,
        threads=args.threads, batch_size=args.batch_size, skip_unreadable=args.skip_unreadable,
        progress=not args.no_progress, name=args.name, version=args.version,
        command=command_line(args), mode=args.mode,
        labelled=tuple(args.labelled), sup_layers=args.sup_layers, sup_hidden=args.sup_hidden,
        sup_epochs=args.sup_epochs,
    )  # fmt: skip
    if args.quick:
        cfg.bank_size, cfg.max_good, cfg.max_defects = 500, 60, 6
        cfg.calib_per_class, cfg.topk, cfg.sup_epochs, cfg.folds = 3, 3, 10, 3
    if args.limit_good:
        cfg.max_good = args.limit_good
    if args.limit_per_class:
        cfg.max_defects = args.limit_per_class
    return cfg


def image_passes(cfg: Any, n_images: int) -> float:
    """Backbone passes a run makes, in units of one image (pure; table-tested)."""
    bank = 0.7 * n_images * (1 + len(cfg.augment))  # the good training share, flipped copies
    scoring = 0.3 * n_images * 2  # val + test, plus the parity and serving checks
    if cfg.mode == "good-only":
        return bank + scoring
    # supervised: features of every labelled image once, test twice (supervised + hybrid x2)
    return bank + scoring + 0.85 * n_images + 0.3 * n_images * 3


def estimate(cfg: Any) -> float:
    """CPU seconds of the run: one timed backbone pass at the input size times the passes."""
    import torch

    from training import budget
    from training.anomaly import PatchFeatures, discover, load_backbone, resolve_data_root

    classes, _ = discover(resolve_data_root(Path(cfg.data)), cfg.good_class)
    n = sum(len(v) for v in classes.values())
    if cfg.max_good is not None:
        n = min(n, cfg.max_good + cfg.max_defects * (len(classes) - 1))
    torch.set_num_threads(max(1, cfg.threads))
    deepest = max((*cfg.layers, *cfg.sup_layers))
    net = PatchFeatures(load_backbone(cfg.backbone), (deepest,))
    x = torch.zeros(1, 3, *cfg.image_size)
    with torch.no_grad():
        per, _ = budget.best_step_seconds(lambda: net(x))
    # PatchCore's nearest-neighbour search costs about as much as the backbone at these sizes
    return per * image_passes(cfg, n) * 2.0


def run_command(args: argparse.Namespace) -> int:
    problem = missing_extra(TRAIN_MODULES, "train")
    if problem:
        return fail(problem)
    from training import budget
    from training.anomaly import AnomalyDataError, fit_all, train

    try:
        cfg = build_config(args)
        cfg.validate()
        if not args.no_estimate:
            cost = estimate(cfg)
            print(f"estimated CPU time: {budget.format_duration(cost)} "
                  f"({cfg.mode}, {cfg.image_size[0]}x{cfg.image_size[1]} px, {cfg.threads} thread(s))",
                  file=sys.stderr)  # fmt: skip
            if cost > args.budget_minutes * 60:
                print(
                    f"warning: above --budget-minutes {args.budget_minutes:g}; to fit, try "
                    "--image-size 256 (about 4x cheaper), --mode good-only or --augment none "
                    "(more --threads shortens the wall time, not the CPU time)",
                    file=sys.stderr,
                )
        started = time.process_time()
        if cfg.mode == "good-only":
            report = train(cfg)
            _print_good_only(report)
            if not report["parity"]["ok"]:
                return fail("ONNX and PyTorch scores differ by more than 1e-4 of the score range")
            if args.int8:  # the card records the resolved data folder and the split
                report_dir = Path(report["report_dir"])
                q = int8.write_int8(
                    "anomaly", Path(report["onnx"]), report_dir, command=cfg.command
                )
                print(int8.describe(q))
        else:
            summary = fit_all(cfg)
            _print_all(summary)
            if not summary.get("parity_ok", True):
                return fail(
                    f"the ONNX files score unlike PyTorch: {summary['parity_max_abs_diff']}"
                )
            if args.int8:  # a supervised or hybrid pick is refused with the reason
                try:
                    q = int8.write_int8(
                        "anomaly", Path(summary["onnx"]), Path(summary["report"]).parent,
                        command=cfg.command,
                    )  # fmt: skip
                except ValueError as exc:
                    return fail(f"--int8: {exc} (the fp32 model and its report are written)")
                print(int8.describe(q))
        print(f"CPU time: {budget.format_duration(time.process_time() - started)}", file=sys.stderr)
    except (AnomalyDataError, ValueError) as exc:  # ValueError: an int8 request it refuses
        return fail(str(exc))
    except KeyboardInterrupt:
        print("lineinspect: interrupted", file=sys.stderr)
        return 130
    return 0


def _print_good_only(report: dict[str, Any]) -> None:
    test, cal = report["test"], report["calibration"]
    per = ", ".join(f"{c} {v['miss_rate']:.1%}" for c, v in test["per_class"].items())
    print(
        f"model: {report['onnx']} ({report['onnx_bytes'] / 1e6:.1f} MB), report: {report['report_dir']}"
    )
    print(f"threshold {cal['threshold']:.4f} (val miss {cal['val_miss_rate']:.1%}, "
          f"val false rejects {cal['val_false_reject_rate']:.1%})")  # fmt: skip
    print(f"test: AUROC {test['auroc']:.4f}, miss {test['miss_rate']:.1%} ({per}), "
          f"false rejects {test['false_reject_rate']:.1%}")  # fmt: skip
    print(json.dumps(report["served"]["images"]))


def _print_all(summary: dict[str, Any]) -> None:
    print(f"recommended: {summary['recommended']} ({summary['reason']}) -> {summary['onnx']}")
    for name, m in summary["metrics"].items():
        t = m["test"]
        per = ", ".join(f"{c} {v['auroc']}" for c, v in t["per_class"].items())
        print(f"  {name:<20} test AUROC {t['auroc']}, miss {t['miss_rate']:.1%}, "
              f"false rejects {t['false_reject_rate']:.1%}  (AUROC per class: {per})")  # fmt: skip
    print(f"report: {summary['report']}")

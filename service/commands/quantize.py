"""`lineinspect models quantize`: quantise a trained classifier, detector or anomaly model to
INT8 and measure what it costs on the untouched test split.

    lineinspect models quantize models/neu-cls-fp32.onnx --manifest models/neu-cls-split.json \\
        --out models/neu-cls.onnx
    lineinspect models quantize models/neu-det-demo.onnx --manifest models/neu-cls-split.json \\
        --out models/neu-det-int8.onnx            # detector: calibrated on the validation split
    lineinspect models quantize models/mt-anomaly.onnx --out models/mt-anomaly-int8.onnx

A classifier or a detector is calibrated on its validation split (an error when the manifest
has none); the detector's Detect head after its last convolutions stays fp32
unless `--head int8`. An anomaly model uses the split its card records (no --manifest; --data
when the images moved): calibrated on the validation split's good parts, its backbone quantised
and the memory-bank distance, map and score kept fp32 unless `--distance matmul` (the bank's
matrix product int8 too) or `int8` (whole graph), its threshold re-chosen on validation for the
int8 score scale.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from service.commands import fail


def add_parser(models: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = models.add_parser(
        "quantize",
        help="quantise a classifier, detector or anomaly model to INT8 and measure its accuracy "
        "cost (needs onnx)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="float ONNX model with its card")
    p.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="classifier, detector: the split it was trained on (anomaly: read from its card)",
    )
    p.add_argument(
        "--data", type=Path, default=None, help="anomaly: the image folder (default: the card's)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--calibration-images",
        type=int,
        default=None,
        help="classifier: validation images (default 120); detector: validation images (default "
        "all); anomaly: good validation images (default 32)",
    )
    p.add_argument(
        "--head",
        choices=("fp32", "int8"),
        default="fp32",
        help="detector: keep the Detect head's DFL, Sigmoid and box decoding in fp32 (default) "
        "or quantise the whole graph",
    )
    p.add_argument(
        "--distance",
        choices=("fp32", "matmul", "int8"),
        default="fp32",
        help="anomaly: keep everything after the backbone (memory-bank distance, map, score) in "
        "fp32 (default), quantise only the features x memory-bank MatMul of it, or quantise the "
        "whole graph",
    )
    p.add_argument(
        "--no-compare",
        action="store_true",
        help="detector, anomaly: do not quantise and measure the other --head / --distance "
        "choices too",
    )
    p.add_argument("--workdir", type=Path, default=None, help="detector: evaluation files")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="readiness report folder to add the fp32/int8 comparison to (report.md/.html; "
        "written when absent), e.g. the model's OUT-report/",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from training.commands import missing_extra

    problem = missing_extra(["onnx"], "train")
    if problem:
        return fail(problem)
    from service.inference.card import CardError, card_path_for, load_card
    from training.commands import command_line
    from training.dataset import Manifest
    from training.quantize import quantize_classifier, quantize_detector

    try:
        card_file = card_path_for(args.model)
        task = load_card(card_file).task if card_file.is_file() else None
        if task is None:
            return fail(
                f"{args.model}: quantize needs the model's card ({card_file}) with its task"
            )
        if task == "anomaly":
            problem = missing_extra(["torch", "sklearn"], "train")  # its scoring and AUROC
            if problem:
                return fail(problem)
            from training.quantize_anomaly import DEFAULT_CALIBRATION, quantize_anomaly

            summary = quantize_anomaly(
                args.model,
                args.out,
                args.data,
                args.calibration_images or DEFAULT_CALIBRATION,
                distance=args.distance,
                compare=not args.no_compare,
                command=command_line(args),
            )
            return _done(args, summary)
        if args.manifest is None:
            return fail(f"{args.model}: a {task} model needs --manifest (its training split)")
        manifest = Manifest.load(args.manifest)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if task == "detect":
            summary = quantize_detector(
                args.model,
                args.out,
                manifest,
                args.calibration_images,
                head=args.head,
                compare=not args.no_compare,
                workdir=args.workdir,
            )
        elif task == "classify":
            summary = quantize_classifier(
                args.model, args.out, manifest, args.calibration_images or 120
            )
        else:
            return fail(f"{args.model}: cannot quantise a {task!r} model")
    except (FileNotFoundError, ValueError, CardError) as exc:
        return fail(str(exc))
    return _done(args, summary)


def _done(args: argparse.Namespace, summary: dict[str, Any]) -> int:
    print(json.dumps(summary, indent=1))
    if args.report:
        from training.report.int8 import add_int8_section

        print(f"report: {add_int8_section(args.report, args.model, args.out)}")
    return 0

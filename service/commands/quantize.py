"""`lineinspect models quantize`: quantise a trained classifier to INT8 and measure what it
costs on the untouched test split.

    lineinspect models quantize models/neu-cls-fp32.onnx --manifest models/neu-cls-split.json \\
        --out models/neu-cls.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from service.commands import fail


def add_parser(models: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = models.add_parser(
        "quantize",
        help="quantise a classifier to INT8 and measure its accuracy cost (needs onnx)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="float ONNX classifier with its card")
    p.add_argument("--manifest", type=Path, required=True, help="the split it was trained on")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--calibration-images", type=int, default=120)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from training.commands import missing_extra

    problem = missing_extra(["onnx"], "train")
    if problem:
        return fail(problem)
    from training.dataset import Manifest
    from training.quantize import quantize_classifier

    try:
        summary = quantize_classifier(
            args.model, args.out, Manifest.load(args.manifest), args.calibration_images
        )
    except (FileNotFoundError, ValueError) as exc:
        return fail(str(exc))
    print(json.dumps(summary, indent=1))
    return 0

"""Quantise a trained classifier to INT8 and measure what it costs on the untouched test split.

    python scripts/quantize_model.py models/neu-cls-fp32.onnx --manifest models/neu-cls-split.json \
        --out models/neu-cls.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.dataset import Manifest
from training.quantize import quantize_classifier


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", type=Path, help="float ONNX classifier with its card")
    p.add_argument("--manifest", type=Path, required=True, help="the split it was trained on")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--calibration-images", type=int, default=120)
    args = p.parse_args(argv)
    try:
        summary = quantize_classifier(
            args.model, args.out, Manifest.load(args.manifest), args.calibration_images
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"quantize_model: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

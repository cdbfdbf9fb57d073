"""Train the magnetic-tile anomaly model (PatchCore-style, EfficientNet-Lite0 features) from good
parts only, calibrate its threshold on a few real defects, evaluate it on held-out images, export
it to ONNX and write its model card.

    python scripts/train_anomaly.py [--data PATH] [--out models/mt-anomaly.onnx] [--quick]

The data path defaults to `$LINEINSPECT_DATA/magnetic-tile`, with `../shared/data` (relative to
the repository root) when LINEINSPECT_DATA is unset; a folder that holds `magnetic-tile/` works
too. Images are only read, never copied. Reports (score histograms, metrics, the split) go to
`--report-dir` (default build/anomaly/<model name>). See docs/ANOMALY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def default_data() -> Path:
    base = Path(os.environ.get("LINEINSPECT_DATA", REPO_ROOT.parent / "shared" / "data"))
    return base / "magnetic-tile"


def parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use 256 or 256x320)") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"not a size: {text!r} (use 256 or 256x320)")


def parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of block indices: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data",
        type=Path,
        default=default_data(),
        help="folder with MT_Free/ and one folder per defect class (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "models" / "mt-anomaly.onnx",
        help="ONNX file to write; the card goes next to it",
    )
    p.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="histograms, metrics and split (default: build/anomaly/<name>)",
    )
    p.add_argument(
        "--image-size",
        type=parse_size,
        default=(256, 256),
        help="model input HxW, multiples of 32 (default 256)",
    )
    p.add_argument(
        "--resize",
        choices=("letterbox", "resize"),
        default="letterbox",
        help="how images become the input size; the card tells the service (default letterbox)",
    )
    p.add_argument(
        "--layers",
        type=parse_layers,
        default=(10, 14),
        help="EfficientNet-Lite0 blocks whose features are used (default 10,14)",
    )
    p.add_argument(
        "--backbone",
        type=Path,
        default=None,
        help="EfficientNet-Lite0 weights from a detector trained by `train_detector.py --model "
        "efflite0` (its best.pt) instead of ImageNet's",
    )
    p.add_argument(
        "--bank-size",
        type=int,
        default=16384,
        help="memory-bank patches kept by the greedy coreset (default %(default)s)",
    )
    p.add_argument(
        "--coreset-pool",
        type=int,
        default=0,
        help="random patches the coreset chooses from (0: all)",
    )
    p.add_argument(
        "--sigma",
        type=float,
        default=4.0,
        help="Gaussian smoothing of the map in input pixels (0: none)",
    )
    p.add_argument(
        "--normalize",
        choices=("none", "mean", "std"),
        default="none",
        help="per-image grey-level normalisation inside the graph (default %(default)s)",
    )
    p.add_argument(
        "--augment",
        default="none",
        help="bank augmentation letters: h (flip left-right), v (up-down), t (180 degrees); "
        "'none' for none (default %(default)s)",
    )
    p.add_argument(
        "--topk",
        type=int,
        default=1,
        help="score = mean of the k highest patch distances; 1 = max of the smoothed map "
        "(default %(default)s)",
    )
    p.add_argument(
        "--mask-padding",
        action="store_true",
        help="keep the letterbox padding out of the score and the map",
    )
    p.add_argument(
        "--fp32-bank",
        action="store_true",
        help="store the bank as float32 (default float16: half the file)",
    )
    p.add_argument(
        "--good-class",
        default="auto",
        help="folder of good parts (default auto: the one folder named like good, ok, normal, "
        "defect-free or *_free, such as MT_Free; MVTec AD layouts use train/good + test/good)",
    )
    p.add_argument(
        "--calib-per-class",
        type=int,
        default=20,
        help="calibration defects per class (at most half the class)",
    )
    p.add_argument(
        "--target-miss",
        type=float,
        default=0.05,
        help="miss rate allowed on the calibration defects",
    )
    p.add_argument(
        "--band",
        type=float,
        default=0.1,
        help="uncertainty band around the normalised threshold 0.5",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1, help="CPU threads for torch and ONNX Runtime (default 1)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave unreadable images out instead of stopping",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI-sized run: 60 good images, 6 per defect class, 128 px, bank 500",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--name", default=None, help="model name in the card (default: the file's stem)")
    p.add_argument("--version", default="1", help="model version in the card")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from training.anomaly import AnomalyConfig, AnomalyDataError, train
    except ImportError as exc:
        print(
            f"error: missing training dependency ({exc}); install the `train` extra",
            file=sys.stderr,
        )
        return 2
    cfg = AnomalyConfig(
        data=args.data,
        out=args.out,
        report_dir=args.report_dir,
        image_size=args.image_size,
        resize=args.resize,
        layers=args.layers,
        backbone=args.backbone,
        bank_size=args.bank_size,
        coreset_pool=args.coreset_pool,
        sigma=args.sigma,
        normalize=args.normalize,
        augment="" if args.augment.lower() in ("", "none") else args.augment,
        topk=args.topk,
        mask_padding=args.mask_padding,
        fp16_bank=not args.fp32_bank,
        seed=args.seed,
        good_class=args.good_class,
        calib_per_class=args.calib_per_class,
        target_miss=args.target_miss,
        band=args.band,
        threads=args.threads,
        batch_size=args.batch_size,
        skip_unreadable=args.skip_unreadable,
        progress=not args.no_progress,
        name=args.name,
        version=args.version,
        command=shlex.join(
            ["python", "scripts/train_anomaly.py", *(sys.argv[1:] if argv is None else argv)]
        ),
    )
    if args.quick:
        cfg.image_size, cfg.bank_size, cfg.max_good, cfg.max_defects, cfg.calib_per_class = (
            (128, 128),
            500,
            60,
            6,
            3,
        )
    try:
        report = train(cfg)
    except AnomalyDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    test, cal = report["test"], report["calibration"]
    per = ", ".join(f"{c} {v['miss_rate']:.1%}" for c, v in test["per_class"].items())
    print(
        f"model: {report['onnx']} ({report['onnx_bytes'] / 1e6:.1f} MB), report: {report['report_dir']}"
    )
    print(
        f"threshold {cal['threshold']:.4f} (val miss {cal['val_miss_rate']:.1%}, "
        f"val false rejects {cal['val_false_reject_rate']:.1%})"
    )
    print(
        f"test: AUROC {test['auroc']:.4f}, miss {test['miss_rate']:.1%} ({per}), "
        f"false rejects {test['false_reject_rate']:.1%}, pixel AUROC {test['pixel_auroc']}"
    )
    print(
        f"parity: max |torch - onnx| {report['parity']['max_abs_diff']:.2e} "
        f"({report['parity']['relative_to_range']:.1e} of the score range); "
        f"CPU {report['timing']['cpu_s_total']:.0f} s, wall {report['timing']['wall_s_total']:.0f} s"
    )
    if not report["parity"]["ok"]:
        print(
            "error: ONNX and PyTorch scores differ by more than 1e-4 of the score range",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(report["served"]["images"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

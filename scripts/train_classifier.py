"""Train an image classifier (EfficientNet-Lite0 transfer learning) and export ONNX + model card +
readiness report.

    python scripts/train_classifier.py --data ../shared/data/neu-det --out models/neu-cls.onnx
    python scripts/train_classifier.py --data DIR --good-classes good --critical crack --flips ""

The dataset is checked and split (70/15/15, stratified, seeded, duplicates kept together) unless
--manifest gives an existing split. The test split is only used for the final report.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.dataset import DatasetError, Manifest, find_duplicates, load_dataset, split_dataset  # noqa: E402


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    data_default = (
        Path(os.environ.get("LINEINSPECT_DATA", ROOT.parent / "shared" / "data")) / "neu-det"
    )
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=data_default, help="labelled dataset folder")
    p.add_argument("--format", default="auto", choices=["auto", "folders", "masks", "voc", "yolo"])
    p.add_argument("--manifest", type=Path, help="use this split instead of making one")
    p.add_argument("--out", type=Path, default=ROOT / "models" / "neu-cls.onnx")
    p.add_argument("--name", help="model name (default: the output file's stem)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=5, help="early stopping on validation")
    p.add_argument(
        "--flips",
        default="hv",
        help="allowed flips: hv, h, v or '' for orientation-specific defects",
    )
    p.add_argument(
        "--good-classes", type=_csv, default=[], help="comma-separated classes meaning a good part"
    )
    p.add_argument(
        "--critical", type=_csv, default=[], help="defect classes tuned for miss rate <= --max-miss"
    )
    p.add_argument("--max-miss", type=float, default=0.05)
    p.add_argument(
        "--review-share", type=float, default=0.05, help="share of frames to route to review"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--quick", action="store_true", help="CI-sized run: 8 images per class, 1 epoch")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from training.classify import ClassifierConfig, train_classifier

    cfg = ClassifierConfig(
        name=args.name or args.out.stem,
        version=args.version,
        image_size=args.image_size,
        epochs=1 if args.quick else args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        flips=args.flips,
        threads=args.threads,
        limit_per_class=8 if args.quick else None,
        good_classes=args.good_classes,
        critical_classes=args.critical,
        max_miss=args.max_miss,
        review_share=args.review_share,
    )
    try:
        if args.manifest:
            manifest = Manifest.load(args.manifest)
        else:
            ds = load_dataset(args.data, args.format)
            for line in ds.problems[:10] + [f"unreadable: {u}" for u in ds.unreadable[:10]]:
                print(f"warning: {line}", file=sys.stderr)
            dups = find_duplicates(ds.samples)
            manifest = split_dataset(
                ds, seed=args.seed, groups=dups["exact"] + dups["near"] + dups["bracket"]
            )
            manifest.save(args.out.with_name(args.out.stem + "-split.json"))
        metrics = train_classifier(manifest, args.out, cfg)
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        print(f"train_classifier: error: {exc}", file=sys.stderr)
        return 2
    test = metrics["test"]
    verdict = "PASS" if metrics["readiness"]["passed"] else "FAIL"
    print(
        f"test accuracy {test['accuracy']:.4f}; lowest F1 {min(c['f1'] for c in test['per_class'].values()):.4f}; readiness {verdict}"
    )
    print(
        f"wrote {args.out}, {args.out.with_suffix('').as_posix()}.card.yaml, {args.out.stem}-report/"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

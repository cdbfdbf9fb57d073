"""Dataset import and QA: read a labelled folder, check it, split it, export it for YOLO.

    python scripts/dataset.py qa ../shared/data/neu-det --out var/datasets/neu
    python scripts/dataset.py export-yolo var/datasets/neu/manifest.json --out var/datasets/neu/yolo

`qa` writes `qa.json`, `qa.md` and the split `manifest.json` (70/15/15, stratified by class,
seeded, duplicate groups kept inside one split) into --out and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.dataset import (
    DatasetError,
    Manifest,
    export_yolo,
    find_duplicates,
    load_dataset,
    quality_report,
    report_markdown,
    split_dataset,
)


def cmd_qa(args: argparse.Namespace) -> int:
    classes = args.classes.split(",") if args.classes else None
    ds = load_dataset(args.root, args.format, classes)
    dups = find_duplicates(ds.samples)
    manifest = split_dataset(
        ds, seed=args.seed, groups=dups["exact"] + dups["near"] + dups["bracket"]
    )
    report = quality_report(ds, manifest)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest.save(args.out / "manifest.json")
    (args.out / "qa.json").write_text(json.dumps(report, indent=1))
    markdown = report_markdown(report)
    (args.out / "qa.md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.out / 'qa.md'}, {args.out / 'qa.json'}, {args.out / 'manifest.json'}")
    return 0


def cmd_export_yolo(args: argparse.Namespace) -> int:
    data_yaml = export_yolo(Manifest.load(args.manifest), args.out)
    print(f"wrote {data_yaml}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    qa = sub.add_parser("qa", help="check a dataset and write the split manifest")
    qa.add_argument("root", type=Path)
    qa.add_argument("--format", default="auto", choices=["auto", "folders", "masks", "voc", "yolo"])
    qa.add_argument(
        "--classes", help="comma-separated expected classes (unknown labels are errors)"
    )
    qa.add_argument("--seed", type=int, default=0)
    qa.add_argument("--out", type=Path, required=True)
    qa.set_defaults(func=cmd_qa)
    ex = sub.add_parser("export-yolo", help="write an Ultralytics dataset from a manifest")
    ex.add_argument("manifest", type=Path)
    ex.add_argument("--out", type=Path, required=True)
    ex.set_defaults(func=cmd_export_yolo)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (DatasetError, FileNotFoundError) as exc:
        print(f"dataset: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""`lineinspect dataset qa` and `lineinspect dataset export-yolo`: check a labelled dataset,
split it, and write it in Ultralytics' layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training.commands import fail

QA_DESCRIPTION = """\
Check a labelled dataset and write its split.

Layouts read (--format auto picks one):
    class folders   DATA/<class>/*.jpg|png|bmp                       (classifiers)
    masks           DATA/<class>/[Imgs/]x.jpg + x.png mask pairs     (boxes from the masks)
    Pascal VOC      XML files beside or apart from the images         (boxes)
    YOLO            DATA/images/ + DATA/labels/*.txt, class names in data.yaml or classes.txt

Reports images and boxes per class, the 3:1 class-balance rule, boxes under 20×20 px, exact and
near-duplicate images (also across splits), and unreadable files; writes a seeded 70/15/15
split, stratified by class, that keeps duplicate groups inside one split.

Out (--out DIR): qa.md (printed too), qa.json, manifest.json (the split: give it to
`lineinspect train classify --manifest` or `lineinspect dataset export-yolo`).
"""

EXPORT_DESCRIPTION = """\
Write an Ultralytics (YOLO) dataset from a split manifest: DIR/images/{train,val,test} (links to
the original images, never copies), DIR/labels/... (normalised txt boxes) and DIR/data.yaml.
"""


def add_parser(subparsers: Any) -> None:
    qa = subparsers.add_parser(
        "qa",
        help="check a dataset and write the split manifest",
        description=QA_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    qa.add_argument("root", type=Path, help="the dataset folder")
    qa.add_argument("--format", default="auto", choices=["auto", "folders", "masks", "voc", "yolo"])
    qa.add_argument(
        "--classes", help="comma-separated expected classes (labels naming others are errors)"
    )
    qa.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    qa.add_argument(
        "--out", type=Path, required=True, help="folder for qa.md, qa.json, manifest.json"
    )
    qa.set_defaults(func=run_qa)

    ex = subparsers.add_parser(
        "export-yolo",
        help="write an Ultralytics dataset from a split manifest",
        description=EXPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("manifest", type=Path, help="manifest.json written by `lineinspect dataset qa`")
    ex.add_argument("--out", type=Path, required=True, help="folder for the YOLO dataset")
    ex.set_defaults(func=run_export_yolo)


def run_qa(args: argparse.Namespace) -> int:
    from training.dataset import (
        DatasetError,
        find_duplicates,
        load_dataset,
        quality_report,
        report_markdown,
        split_dataset,
    )

    classes = args.classes.split(",") if args.classes else None
    try:
        ds = load_dataset(args.root, args.format, classes)
        dups = find_duplicates(ds.samples)
        groups = dups["exact"] + dups["near"] + dups["bracket"]
        manifest = split_dataset(ds, seed=args.seed, groups=groups)
    except DatasetError as exc:
        return fail(str(exc))
    report = quality_report(ds, manifest)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest.save(args.out / "manifest.json")
    (args.out / "qa.json").write_text(json.dumps(report, indent=1))
    markdown = report_markdown(report)
    (args.out / "qa.md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.out / 'qa.md'}, {args.out / 'qa.json'}, {args.out / 'manifest.json'}")
    return 0


def run_export_yolo(args: argparse.Namespace) -> int:
    from training.dataset import DatasetError, Manifest, export_yolo

    if not args.manifest.is_file():
        return fail(
            f"manifest not found: {args.manifest} (write one with `lineinspect dataset qa`)"
        )
    try:
        manifest = Manifest.load(args.manifest)
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        return fail(f"{args.manifest} is not a split manifest ({exc})")
    try:
        data_yaml = export_yolo(manifest, args.out)
    except (DatasetError, OSError) as exc:
        return fail(str(exc))
    print(f"wrote {data_yaml}")
    return 0

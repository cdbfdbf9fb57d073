"""Dataset import, quality checks, stratified splits and YOLO export.

Reads the layouts quality engineers actually bring:
- `folders`: `ROOT/<class>/*.jpg` (image-level labels);
- `masks`:   `ROOT/<class>/[Imgs/]*.jpg` with a same-name `.png` mask (pixels > 127 = defect),
             boxes from the mask's connected components (magnetic-tile style);
- `voc`:     Pascal VOC XML files beside an image folder (NEU style: ANNOTATIONS/ + IMAGES/);
- `yolo`:    `images/` + `labels/*.txt` with `data.yaml` / `classes.txt` names.
It tolerates the quirks of real data: VOC file names without an extension, several classes in
one image, grey images stored as RGB, varying sizes, empty masks, unreadable files. Problems are
collected, never raised one at a time, so one report lists them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from training.hygiene import (
    NEAR_DUPLICATE_BITS,
    UnionFind,
    bracket_groups,
    near_pairs,
    phash,
)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
MIN_BOX_PX = 20  # the domain's smallest reliably detectable defect
BALANCE_LIMIT = 3.0  # no class more than 3x the images of the smallest
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """The dataset cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Box:
    cls: str
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def short_side(self) -> float:
        return min(self.x2 - self.x1, self.y2 - self.y1)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str  # image-level class, used for stratification and classification
    width: int
    height: int
    boxes: tuple[Box, ...] = ()
    grey: bool = False  # three identical channels (or one)


@dataclass
class Dataset:
    root: Path
    fmt: str
    classes: list[str]
    samples: list[Sample]
    problems: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def per_class(self) -> dict[str, int]:
        counts = Counter(s.label for s in self.samples)
        return {c: counts.get(c, 0) for c in self.classes}


# -- reading images


def read_image(path: Path) -> np.ndarray | None:
    """BGR uint8, or None when the file cannot be decoded."""
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)


def _is_grey(image: np.ndarray) -> bool:
    if image.ndim == 2 or image.shape[2] == 1:
        return True
    b, g, r = image[..., 0], image[..., 1], image[..., 2]
    return bool(np.array_equal(b, g) and np.array_equal(g, r))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


# -- formats


def detect_format(root: Path) -> str:
    if any(root.rglob("*.xml")):
        return "voc"
    if (root / "labels").is_dir() and (root / "images").is_dir():
        return "yolo"
    class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir()]
    for d in class_dirs:
        folder = d / "Imgs" if (d / "Imgs").is_dir() else d
        jpgs = [p for p in _images_in(folder) if p.suffix.lower() != ".png"]
        if jpgs and any(p.with_suffix(".png").exists() for p in jpgs[:20]):
            return "masks"
    if class_dirs:
        return "folders"
    raise DatasetError(
        f"cannot tell the layout of {root}: expected class folders, VOC XML files, "
        "or images/ + labels/ (YOLO)"
    )


def _load_folders(root: Path, ds: Dataset, masks: bool) -> None:
    for class_dir in sorted(d for d in root.iterdir() if d.is_dir()):
        folder = class_dir / "Imgs" if (class_dir / "Imgs").is_dir() else class_dir
        images = _images_in(folder)
        if masks:  # the .png files next to .jpg files are masks, not images
            images = [
                p
                for p in images
                if not (p.suffix.lower() == ".png" and p.with_suffix(".jpg").exists())
            ]
        if not images:
            ds.problems.append(f"class folder {class_dir.name} holds no images")
            continue
        ds.classes.append(class_dir.name)
        for path in images:
            image = read_image(path)
            if image is None:
                ds.unreadable.append(str(path))
                continue
            boxes: tuple[Box, ...] = ()
            if masks:
                mask_path = path.with_suffix(".png")
                if mask_path.exists():
                    boxes = _mask_boxes(mask_path, class_dir.name, ds)
            h, w = image.shape[:2]
            ds.samples.append(Sample(path, class_dir.name, w, h, boxes, _is_grey(image)))


def _mask_boxes(mask_path: Path, cls: str, ds: Dataset) -> tuple[Box, ...]:
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        ds.unreadable.append(str(mask_path))
        return ()
    n, _, stats, _ = cv2.connectedComponentsWithStats((mask > 127).astype(np.uint8), connectivity=8)
    boxes = tuple(
        Box(cls, float(x), float(y), float(x + w), float(y + h))
        for x, y, w, h, _area in stats[1:n].tolist()
    )
    return boxes


def _voc_pairs(root: Path) -> list[tuple[Path, list[Path]]]:
    """(xml, candidate image folders) for every XML, pairing ANNOTATIONS with IMAGES etc."""
    pairs = []
    for xml in sorted(root.rglob("*.xml")):
        parent = xml.parent
        siblings = [d for d in parent.parent.iterdir() if d.is_dir() and d != parent]
        stem = parent.name.lower().replace("annotations", "")
        ranked = sorted(
            siblings,
            key=lambda d: (
                0 if d.name.lower().replace("images", "").replace("jpegimages", "") == stem else 1,
                d.name,
            ),
        )
        pairs.append((xml, [parent, *ranked]))
    return pairs


def _load_voc(root: Path, ds: Dataset) -> None:
    per_image: dict[Path, list[Box]] = {}
    for xml, folders in _voc_pairs(root):
        try:
            tree = ET.parse(xml)
        except ET.ParseError as exc:
            ds.problems.append(f"{xml.name}: not valid XML ({exc})")
            continue
        node = tree.getroot()
        name = (node.findtext("filename") or xml.stem).strip()
        image_path = _find_image(name, xml.stem, folders)
        if image_path is None:
            ds.problems.append(f"{xml.name}: image {name!r} not found")
            continue
        boxes = per_image.setdefault(image_path, [])
        for obj in node.iter("object"):
            cls = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            if not cls or bb is None:
                ds.problems.append(f"{xml.name}: object without name or bndbox")
                continue
            try:
                x1, y1, x2, y2 = (
                    float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")
                )
            except ValueError:
                ds.problems.append(f"{xml.name}: non-numeric box for {cls}")
                continue
            if not (x2 > x1 and y2 > y1):
                ds.problems.append(f"{xml.name}: empty box {x1, y1, x2, y2} for {cls}")
                continue
            boxes.append(Box(cls, x1, y1, x2, y2))
    classes = sorted({b.cls for boxes in per_image.values() for b in boxes})
    ds.classes.extend(classes)
    for path, boxes in sorted(per_image.items()):
        image = read_image(path)
        if image is None:
            ds.unreadable.append(str(path))
            continue
        h, w = image.shape[:2]
        clipped = tuple(
            Box(b.cls, max(0.0, b.x1), max(0.0, b.y1), min(float(w), b.x2), min(float(h), b.y2))
            for b in boxes
        )
        ds.samples.append(
            Sample(path, _image_label(path, clipped, classes), w, h, clipped, _is_grey(image))
        )


def _find_image(name: str, stem: str, folders: Sequence[Path]) -> Path | None:
    names = [name] if Path(name).suffix.lower() in IMAGE_EXTS else []
    names += [Path(name).stem + ext for ext in IMAGE_EXTS] + [stem + ext for ext in IMAGE_EXTS]
    for folder in folders:
        for candidate in names:
            path = folder / candidate
            if path.is_file():
                return path
    return None


def _image_label(path: Path, boxes: Sequence[Box], classes: Sequence[str]) -> str:
    """The file-name prefix when it names a class (NEU), else the most frequent box class."""
    prefix = path.stem.rsplit("_", 1)[0]
    if prefix in classes:
        return prefix
    if boxes:
        return Counter(b.cls for b in boxes).most_common(1)[0][0]
    return "background"


def _load_yolo(root: Path, ds: Dataset) -> None:
    names = _yolo_names(root)
    if names is None:
        raise DatasetError(
            f"YOLO dataset {root} has no class names: add data.yaml (names) or classes.txt"
        )
    ds.classes.extend(names)
    for path in sorted(p for p in (root / "images").rglob("*") if p.suffix.lower() in IMAGE_EXTS):
        label_path = root / "labels" / path.relative_to(root / "images").with_suffix(".txt")
        image = read_image(path)
        if image is None:
            ds.unreadable.append(str(path))
            continue
        h, w = image.shape[:2]
        boxes = []
        if label_path.exists():
            for n, line in enumerate(label_path.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    cid, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:5])
                except (ValueError, IndexError):
                    ds.problems.append(f"{label_path.name}:{n}: not 'class cx cy w h'")
                    continue
                if not 0 <= cid < len(names):
                    ds.problems.append(
                        f"{label_path.name}:{n}: class index {cid} is not one of the {len(names)} classes"
                    )
                    continue
                boxes.append(
                    Box(
                        names[cid],
                        (cx - bw / 2) * w,
                        (cy - bh / 2) * h,
                        (cx + bw / 2) * w,
                        (cy + bh / 2) * h,
                    )
                )
        ds.samples.append(
            Sample(path, _image_label(path, boxes, names), w, h, tuple(boxes), _is_grey(image))
        )


def _yolo_names(root: Path) -> list[str] | None:
    for candidate in (root / "data.yaml", root / "dataset.yaml"):
        if candidate.is_file():
            names = (yaml.safe_load(candidate.read_text()) or {}).get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
    if (root / "classes.txt").is_file():
        return [n.strip() for n in (root / "classes.txt").read_text().splitlines() if n.strip()]
    return None


def load_dataset(root: Path, fmt: str = "auto", classes: Sequence[str] | None = None) -> Dataset:
    """Read a labelled dataset; `classes` (optional) is the expected class list to check against."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    if not any(p.suffix.lower() in IMAGE_EXTS for p in root.rglob("*") if p.is_file()):
        raise DatasetError(f"no images found under {root} (looked for {', '.join(IMAGE_EXTS)})")
    fmt = detect_format(root) if fmt == "auto" else fmt
    ds = Dataset(root=root.resolve(), fmt=fmt, classes=[], samples=[])
    if fmt in ("folders", "masks"):
        _load_folders(root, ds, masks=fmt == "masks")
    elif fmt == "voc":
        _load_voc(root, ds)
    elif fmt == "yolo":
        _load_yolo(root, ds)
    else:
        raise DatasetError(f"unknown format {fmt!r}: use auto, folders, masks, voc or yolo")
    if classes is not None:
        unknown = sorted(
            {b.cls for s in ds.samples for b in s.boxes} | {s.label for s in ds.samples}
        )
        unknown = [c for c in unknown if c not in classes and c != "background"]
        if unknown:
            raise DatasetError(f"labels name unknown classes {unknown}; expected {list(classes)}")
        ds.classes = list(classes)
    if not ds.samples:
        raise DatasetError(
            f"no readable labelled images under {root} ({len(ds.unreadable)} unreadable)"
        )
    if "background" in {s.label for s in ds.samples} and "background" not in ds.classes:
        ds.classes.append("background")
    return ds


# -- duplicates


def find_duplicates(
    samples: Sequence[Sample], max_bits: int = NEAR_DUPLICATE_BITS
) -> dict[str, list[list[int]]]:
    """Groups of sample indices: `exact` (same pixels), `near` (pHash within max_bits) and
    `bracket` (exposure brackets of one part, by file name; see EXPOSURE_BRACKET). A split must
    keep every group of all three kinds whole."""
    pixel_hash: dict[str, list[int]] = defaultdict(list)
    hashes = np.zeros(len(samples), dtype=np.uint64)
    for i, s in enumerate(samples):
        image = read_image(s.path)
        if image is None:
            continue
        pixel_hash[hashlib.sha256(image.tobytes()).hexdigest()].append(i)
        hashes[i] = phash(image)
    exact = [g for g in pixel_hash.values() if len(g) > 1]
    near_sets = UnionFind(len(samples))
    for i, j in near_pairs(hashes, max_bits):
        near_sets.union(i, j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(samples)):
        groups[near_sets.find(i)].append(i)
    exact_sets = {frozenset(g) for g in exact}
    near = [g for g in groups.values() if len(g) > 1 and frozenset(g) not in exact_sets]
    return {"exact": exact, "near": near, "bracket": bracket_groups([s.path.name for s in samples])}


# -- split and manifest


@dataclass
class Manifest:
    root: str
    fmt: str
    classes: list[str]
    seed: int
    fractions: tuple[float, float, float]
    splits: dict[str, list[dict[str, Any]]]
    version: int = 1

    @property
    def digest(self) -> str:
        body = json.dumps({"classes": self.classes, "splits": self.splits}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def samples(self, split: str) -> list[Sample]:
        root = Path(self.root)
        return [
            Sample(
                root / row["path"],
                row["label"],
                row["width"],
                row["height"],
                tuple(Box(**b) for b in row["boxes"]),
                row.get("grey", False),
            )
            for row in self.splits[split]
        ]

    def save(self, path: Path) -> None:
        """JSON with the data root relative to the manifest, so the pair can move together."""
        path.parent.mkdir(parents=True, exist_ok=True)
        root = os.path.relpath(self.root, path.parent.resolve())
        data = asdict(self) | {"root": root, "sha256": self.digest}
        path.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Manifest:
        path = Path(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        data.pop("sha256", None)
        data["fractions"] = tuple(data["fractions"])
        data["root"] = str((path.parent / data["root"]).resolve())
        return cls(**data)


def _row(s: Sample, root: Path) -> dict[str, Any]:
    return {
        "path": str(s.path.relative_to(root)),
        "label": s.label,
        "width": s.width,
        "height": s.height,
        "grey": s.grey,
        "boxes": [asdict(b) for b in s.boxes],
    }


def split_dataset(
    ds: Dataset,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    groups: Iterable[Sequence[int]] = (),
) -> Manifest:
    """Stratified by class and seeded; each duplicate group stays inside one split (no leakage)."""
    if abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise DatasetError(f"split fractions must be positive and sum to 1, got {fractions}")
    owner = UnionFind(len(ds.samples))
    for group in groups:
        for i in group[1:]:
            owner.union(group[0], i)
    units: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i in range(len(ds.samples)):
        root_i = owner.find(i)
        units[ds.samples[root_i].label][root_i].append(i)
    too_small = {c: len(u) for c, u in units.items() if len(u) < 3}
    if too_small:
        raise DatasetError(
            f"classes with fewer than 3 distinct images cannot be split 70/15/15: {too_small}; "
            "collect more images or merge the class"
        )
    rng = random.Random(seed)
    splits: dict[str, list[dict[str, Any]]] = {k: [] for k in SPLITS}
    for label in sorted(units):
        keys = sorted(units[label])
        rng.shuffle(keys)
        n = len(keys)
        n_val = max(1, round(n * fractions[1]))
        n_test = max(1, round(n * fractions[2]))
        n_train = n - n_val - n_test
        parts = {
            "train": keys[:n_train],
            "val": keys[n_train : n_train + n_val],
            "test": keys[n_train + n_val :],
        }
        for split, chosen in parts.items():
            for key in chosen:
                splits[split].extend(_row(ds.samples[i], ds.root) for i in units[label][key])
    for rows in splits.values():
        rows.sort(key=lambda r: r["path"])
    return Manifest(str(ds.root), ds.fmt, list(ds.classes), seed, fractions, splits)


# -- quality report


def quality_report(ds: Dataset, manifest: Manifest | None = None) -> dict[str, Any]:
    per_class = ds.per_class()
    counted = {c: n for c, n in per_class.items() if n > 0}
    ratio = max(counted.values()) / min(counted.values()) if counted else float("inf")
    boxes_per_class = Counter(b.cls for s in ds.samples for b in s.boxes)
    small = [
        {
            "image": str(s.path.relative_to(ds.root)),
            "class": b.cls,
            "size": [round(b.x2 - b.x1, 1), round(b.y2 - b.y1, 1)],
        }
        for s in ds.samples
        for b in s.boxes
        if b.short_side < MIN_BOX_PX
    ]
    dups = find_duplicates(ds.samples)
    split_of: dict[Path, str] = {}
    if manifest is not None:
        for split in SPLITS:
            for row in manifest.splits[split]:
                split_of[Path(manifest.root) / row["path"]] = split

    def describe(groups: list[list[int]]) -> list[dict[str, Any]]:
        out = []
        for g in groups:
            paths = [ds.samples[i].path for i in g]
            splits = sorted({split_of.get(p, "-") for p in paths})
            out.append({"images": [str(p.relative_to(ds.root)) for p in paths], "splits": splits})
        return out

    exact, near = describe(dups["exact"]), describe(dups["near"])
    bracket = describe(dups["bracket"])
    straddling = [
        g for g in exact + near + bracket if len([s for s in g["splits"] if s != "-"]) > 1
    ]
    widths = [s.width for s in ds.samples]
    heights = [s.height for s in ds.samples]
    multi = sum(1 for s in ds.samples if len({b.cls for b in s.boxes}) > 1)
    return {
        "root": str(ds.root),
        "format": ds.fmt,
        "images": len(ds.samples),
        "classes": ds.classes,
        "images_per_class": per_class,
        "boxes_per_class": {c: boxes_per_class.get(c, 0) for c in ds.classes},
        "balance": {
            "ratio": round(ratio, 2),
            "limit": BALANCE_LIMIT,
            "ok": ratio <= BALANCE_LIMIT,
            "largest": max(counted, key=lambda c: counted[c]) if counted else None,
            "smallest": min(counted, key=lambda c: counted[c]) if counted else None,
        },
        "small_boxes": {"min_side_px": MIN_BOX_PX, "count": len(small), "examples": small[:20]},
        "images_with_several_classes": multi,
        "grey_images": sum(s.grey for s in ds.samples),
        "image_size": {
            "width": [min(widths), max(widths)] if widths else [],
            "height": [min(heights), max(heights)] if heights else [],
        },
        "exact_duplicates": exact,
        "near_duplicates": near,
        "exposure_brackets": bracket,
        "duplicates_across_splits": straddling,
        "unreadable": ds.unreadable,
        "problems": ds.problems,
        "manifest_sha256": manifest.digest if manifest else None,
        "split_sizes": {k: len(v) for k, v in manifest.splits.items()} if manifest else None,
    }


def report_markdown(report: dict[str, Any]) -> str:
    bal = report["balance"]
    lines = [
        f"# Dataset quality report: {report['root']}",
        "",
        f"- format: {report['format']}, images: {report['images']}, classes: {len(report['classes'])}",
        f"- balance: largest/smallest = {bal['ratio']} ({bal['largest']} / {bal['smallest']}) — "
        f"{'OK' if bal['ok'] else 'FAILS'} the {bal['limit']:.0f}:1 rule",
        f"- boxes under {report['small_boxes']['min_side_px']} px on their short side: {report['small_boxes']['count']}",
        f"- images with several classes: {report['images_with_several_classes']}; grey images: {report['grey_images']}",
        f"- image width {report['image_size']['width']}, height {report['image_size']['height']}",
        f"- exact duplicate groups: {len(report['exact_duplicates'])}; near-duplicate groups: {len(report['near_duplicates'])}; "
        f"exposure-bracket groups: {len(report['exposure_brackets'])}; "
        f"groups straddling splits: {len(report['duplicates_across_splits'])}",
        f"- unreadable files: {len(report['unreadable'])}; other problems: {len(report['problems'])}",
        "",
        "| class | images | boxes |",
        "|---|---:|---:|",
    ]
    for c in report["classes"]:
        lines.append(f"| {c} | {report['images_per_class'][c]} | {report['boxes_per_class'][c]} |")
    if report["split_sizes"]:
        lines += [
            "",
            f"Split (manifest sha256 {report['manifest_sha256'][:12]}): {report['split_sizes']}",
        ]
    for title, key in (("Unreadable", "unreadable"), ("Problems", "problems")):
        if report[key]:
            lines += ["", f"## {title}", *[f"- {p}" for p in report[key][:50]]]
    if report["exact_duplicates"] or report["near_duplicates"]:
        lines += ["", "## Duplicates"]
        for g in (report["exact_duplicates"] + report["near_duplicates"])[:50]:
            lines.append(f"- {', '.join(g['images'])} (splits: {', '.join(g['splits'])})")
    return "\n".join(lines) + "\n"


# -- YOLO export


def export_yolo(
    manifest: Manifest, out_dir: Path, label_classes: Sequence[str] | None = None
) -> Path:
    """Write an Ultralytics dataset (symlinked images, normalised txt labels) -> data.yaml."""
    names = list(label_classes or [c for c in manifest.classes if c != "background"])
    index = {c: i for i, c in enumerate(names)}
    out_dir = Path(out_dir).resolve()
    for split in SPLITS:
        img_dir, lbl_dir = out_dir / "images" / split, out_dir / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for s in manifest.samples(split):
            # Unique, stable names even when two source folders hold the same file name.
            tag = hashlib.sha1(str(s.path).encode()).hexdigest()[:8]
            name = f"{s.path.stem}_{tag}{s.path.suffix.lower()}"
            link = img_dir / name
            if not link.exists():
                try:
                    link.symlink_to(s.path)
                except OSError:
                    link.write_bytes(s.path.read_bytes())
            rows = []
            for b in s.boxes:
                if b.cls not in index:
                    raise DatasetError(f"{s.path.name}: box class {b.cls!r} is not one of {names}")
                cx, cy = (b.x1 + b.x2) / 2 / s.width, (b.y1 + b.y2) / 2 / s.height
                w, h = (b.x2 - b.x1) / s.width, (b.y2 - b.y1) / s.height
                rows.append(f"{index[b.cls]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            (lbl_dir / f"{Path(name).stem}.txt").write_text(
                "\n".join(rows) + ("\n" if rows else "")
            )
    data = {
        "path": str(out_dir),
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "names": dict(enumerate(names)),
    }
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    return data_yaml

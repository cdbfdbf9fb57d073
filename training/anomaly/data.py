"""Data: discover the class folders, read images and masks, split by physical tile."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.anomaly.config import IMAGE_EXTS, AnomalyDataError

# one pHash, union-find and exposure-bracket rule for every split
from training.hygiene import BRACKET_GAP, EXPOSURE_BRACKET, TILE_NEAR_BITS, part_groups, phash


def read_image(path: Path) -> np.ndarray | None:
    """BGR uint8, or None when the file cannot be decoded."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return image if image is not None and image.size else None


def _images_in(folder: Path) -> list[Path]:
    """Images of a class folder (`<class>/Imgs/` or `<class>/`), same-name .png masks left out."""
    inner = folder / "Imgs" if (folder / "Imgs").is_dir() else folder
    files = sorted(p for p in inner.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    stems_non_png = {p.stem for p in files if p.suffix.lower() != ".png"}
    return [p for p in files if not (p.suffix.lower() == ".png" and p.stem in stems_non_png)]


def resolve_data_root(data: Path) -> Path:
    """`data` itself when it holds class folders, else `data/magnetic-tile` when that exists."""
    if data.is_dir() and not any(d.is_dir() and d.name.startswith("MT_") for d in data.iterdir()):
        candidate = data / "magnetic-tile"
        if candidate.is_dir():
            return candidate
    return data


GOOD_NAMES = ("good", "ok", "free", "normal", "pass", "defect_free", "no_defect", "nodefect")


def _is_good_name(name: str) -> bool:
    """`good`, `OK`, `MT_Free`, `defect-free`, `parts_good`...: a folder of good parts."""
    low = name.lower().replace("-", "_")
    return low in GOOD_NAMES or any(low.endswith(f"_{g}") for g in GOOD_NAMES)


def _mvtec_classes(data: Path) -> dict[str, list[Path]] | None:
    """MVTec AD layout (`train/good/`, `test/good/`, `test/<defect>/`, masks in
    `ground_truth/`): good = train/good + test/good, one defect class per test folder.
    The trainer makes its own split, so MVTec's train/test division is not kept."""
    train_good, test = data / "train" / "good", data / "test"
    if not (train_good.is_dir() and test.is_dir()):
        return None
    classes = {"good": _images_in(train_good)}
    for d in sorted(p for p in test.iterdir() if p.is_dir()):
        images = _images_in(d)
        if d.name == "good":
            classes["good"] += images
        else:
            classes[d.name] = images
    return classes


def discover(data: Path, good_class: str = "auto") -> tuple[dict[str, list[Path]], str]:
    """(class name -> image paths, the good class); raises AnomalyDataError with a one-line
    reason. Layouts: one folder per class (the good one named by `good_class`, or found by its
    name when "auto": good, ok, normal, ..._free), or MVTec AD's train/ + test/ folders."""
    if not data.exists():
        raise AnomalyDataError(
            f"data folder {data} does not exist (set --data or LINEINSPECT_DATA)"
        )
    if not data.is_dir():
        raise AnomalyDataError(f"data path {data} is not a folder")
    mvtec = _mvtec_classes(data)
    if mvtec is not None:
        classes = mvtec
        good_class = "good" if good_class == "auto" else good_class
    else:
        folders = sorted(d for d in data.iterdir() if d.is_dir())
        if not folders:
            raise AnomalyDataError(
                f"data folder {data} is empty: expected one folder of good images and one "
                "folder per defect class"
            )
        classes = {d.name: _images_in(d) for d in folders}
    if good_class == "auto":
        named = [c for c in classes if _is_good_name(c)]
        if not named:
            raise AnomalyDataError(
                f"no good-image folder in {data}: none is named like good, ok, normal or *_free "
                f"(found: {', '.join(classes)}); pass --good-class"
            )
        if len(named) > 1:
            raise AnomalyDataError(
                f"several folders of {data} could hold the good parts ({', '.join(named)}); "
                "pass --good-class"
            )
        good_class = named[0]
    if good_class not in classes:
        raise AnomalyDataError(
            f"no good-image folder {good_class}/ in {data} (found: {', '.join(classes)}); "
            "pass --good-class"
        )
    if not classes[good_class]:
        raise AnomalyDataError(f"the good-image folder {data / good_class} holds no images")
    defects = {k: v for k, v in classes.items() if k != good_class and v}
    if not defects:
        raise AnomalyDataError(
            f"no defect images in {data}: the threshold is calibrated on a few real defects per "
            "class (one folder per class)"
        )
    return {good_class: classes[good_class], **defects}, good_class


# Magnetic-tile file names: `exp<exposure>_num_<frame>` (see training.hygiene).
TILE_NAME = EXPOSURE_BRACKET
TILE_GAP = BRACKET_GAP


def duplicate_groups(
    hashes: Sequence[int], max_bits: int = TILE_NEAR_BITS, names: Sequence[str] | None = None
) -> list[int]:
    """Group id per image: pHash near duplicates and, when `names` are given, exposure brackets
    (the same tile shot at several exposures): training.hygiene's one rule."""
    return part_groups(hashes, names, max_bits)


@dataclass
class Split:
    root: Path
    good_class: str
    seed: int
    rows: dict[str, list[tuple[str, str]]]  # split -> [(class, path relative to root)]
    groups: int = 0
    grouped_images: int = 0
    unreadable: list[str] = field(default_factory=list)
    # pHash per image (path relative to root), as make_split computed it; empty for a split read
    # back from a manifest
    hashes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, root: Path, manifest: dict[str, Any]) -> Split:
        """The split a run recorded (`split.json`, or a card's `training.split`)."""
        rows = {
            s: sorted((c, p) for c, paths in by_class.items() for p in paths)
            for s, by_class in manifest["files"].items()
        }
        return cls(
            root, manifest["good_class"], manifest["seed"], rows,
            manifest.get("duplicate_groups", 0), manifest.get("images_in_groups", 0),
        )  # fmt: skip

    def paths(self, split: str, label: str | None = None) -> list[Path]:
        return [self.root / p for c, p in self.rows[split] if label is None or c == label]

    def labels(self, split: str) -> list[str]:
        return [c for c, _ in self.rows[split]]

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: dict(sorted(Counter(self.labels(s)).items())) for s in self.rows}

    def manifest(self) -> dict[str, Any]:
        body = {
            s: {c: sorted(p for cc, p in rows if cc == c) for c in sorted({c for c, _ in rows})}
            for s, rows in self.rows.items()
        }
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return {
            "seed": self.seed,
            "good_class": self.good_class,
            "rule": "tile groups kept whole (pHash within 4 of 64 bits, or expN_num_M names with "
            "frame numbers within 60: the exposures of one tile); good groups "
            "70/15/15 train/val/test; per defect class min(calib, half) images to val "
            "(calibration), the rest to test",
            "duplicate_groups": self.groups,
            "images_in_groups": self.grouped_images,
            "counts": self.counts(),
            "sha256": digest,
            "files": body,
        }


def make_split(
    classes: dict[str, list[Path]],
    root: Path,
    good_class: str,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    calib_per_class: int = 20,
    max_good: int | None = None,
    max_defects: int | None = None,
    skip_unreadable: bool = False,
    progress: bool = True,
) -> Split:
    rng = random.Random(seed)
    chosen: list[tuple[str, Path]] = []
    for label, paths in classes.items():
        limit = max_good if label == good_class else max_defects
        picked = list(paths)
        if limit is not None and len(picked) > limit:
            picked = sorted(rng.sample(picked, limit))
        chosen.extend((label, p) for p in picked)
    hashes, kept, unreadable = [], [], []
    for label, path in _progress(chosen, progress, "hashing"):
        image = read_image(path)
        if image is None:
            unreadable.append(str(path))
            continue
        hashes.append(phash(image))
        kept.append((label, path))
    if unreadable and not skip_unreadable:
        raise AnomalyDataError(
            f"{len(unreadable)} unreadable image(s), e.g. {unreadable[0]}: fix or remove them "
            "(or pass --skip-unreadable)"
        )
    group_of = duplicate_groups(hashes, names=[p.name for _, p in kept])
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(group_of):
        members[g].append(i)
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    placed: set[int] = set()

    def rel(i: int) -> tuple[str, str]:
        label, path = kept[i]
        return label, str(path.relative_to(root))

    # Defect groups first: a group holding a defect goes (whole) to val or test, never to train.
    for label in classes:
        if label == good_class:
            continue
        units = sorted({group_of[i] for i, (c, _) in enumerate(kept) if c == label} - placed)
        rng.shuffle(units)
        total = sum(sum(kept[i][0] == label for i in members[g]) for g in units)
        want = min(calib_per_class, total // 2) if total > 1 else 0
        in_val = 0
        for g in units:
            n_label = sum(kept[i][0] == label for i in members[g])
            split = (
                "val" if in_val < want and (in_val + n_label <= want + 2 or in_val == 0) else "test"
            )
            if split == "val":
                in_val += n_label
            rows[split].extend(rel(i) for i in members[g])
            placed.add(g)
    units = sorted({group_of[i] for i, (c, _) in enumerate(kept) if c == good_class} - placed)
    rng.shuffle(units)
    n_good = sum(len(members[g]) for g in units)
    targets = (fractions[0] * n_good, (fractions[0] + fractions[1]) * n_good)
    seen = 0
    for g in units:
        split = "train" if seen < targets[0] else "val" if seen < targets[1] else "test"
        seen += len(members[g])
        rows[split].extend(rel(i) for i in members[g])
    for split_rows in rows.values():
        split_rows.sort()
    if not any(c == good_class for c, _ in rows["train"]):
        raise AnomalyDataError("too few good images to build a memory bank")
    grouped = [g for g in members.values() if len(g) > 1]
    known = {str(p.relative_to(root)): h for (_, p), h in zip(kept, hashes, strict=True)}
    return Split(
        root, good_class, seed, rows, len(grouped), sum(map(len, grouped)), unreadable, known
    )


def _progress(
    items: Iterable[Any], enabled: bool, desc: str, total: int | None = None
) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm import tqdm

    bar: Iterable[Any] = tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
    return bar

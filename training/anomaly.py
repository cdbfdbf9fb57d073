"""PatchCore-style anomaly model trained from good parts only, exported to one ONNX file.

Method (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022), with the
pretrained EfficientNet-Lite0 ImageNet backbone instead of WideResNet-50:

0. in-graph input normalisation: the graph finds the letterbox padding in its own input (rows
   and columns that are all exactly the padding value) and standardises each image's grey level
   over the tile pixels (the tiles are shot at about five exposures), so the service's declared
   preprocessing stays unchanged;
1. features: the outputs of two MBConv blocks (default block 10, stride 16, 112 channels, and
   block 15, stride 32, 320 channels), each averaged over its 3x3 neighbourhood (PatchCore's
   local aggregation), the deeper one upsampled to the finer grid, concatenated per position;
2. memory bank: every patch feature of the good training images and of their left-right,
   up-down and 180-degree flips, reduced by greedy k-center coreset subsampling (on a random
   projection, as in the paper) to a fixed number of patches;
3. scoring: each patch's Euclidean distance to its nearest bank entry (|a|^2 + |b|^2 - 2ab, min
   over the bank), padding-only patches set to 0 -> `pred_score` [B] = the mean of the `topk`
   highest patch distances; the patch map, bilinearly upsampled to the input size,
   Gaussian-smoothed and zeroed on the padding -> `anomaly_map` [B, 1, H, W].

Everything runs inside the ONNX graph (the bank is an initializer, stored as fp16 by default).
The bank is position-free: the tiles are not aligned and vary in size, so PaDiM's per-position
Gaussians would model the crop geometry rather than the surface.

The split keeps every tile group (the same tile shot at several exposures, `expN_num_M` with
close frame numbers, plus pHash near-duplicates) inside one split, so no physical tile is both in the bank and in
the evaluation. Good images: 70/15/15 train/val/test by group; each defect class: a calibration
subset (`calib_per_class`, at most half of the class) to validation, the rest to test.
The threshold is calibrated on validation: the highest raw score that keeps the miss rate on the
calibration defects at or under `target_miss`; the card's min/max come from validation scores.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from service.inference.preprocess import PreprocessSpec, preprocess

# one pHash, union-find and exposure-bracket rule for every split
from training.dataset import BRACKET_GAP, EXPOSURE_BRACKET, UnionFind, phash

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
INPUT_NAME = "images"
SCORE_NAME = "pred_score"
MAP_NAME = "anomaly_map"
OPSET = 17
# The backbone's normalisation: RGB, /255, mean = std = 0.5 (values in [-1, 1]).
MEAN = 0.5
STD = 0.5
BANK_NAME = "memory_bank_t"
PAD_VALUE = 114  # the service's letterbox padding (PreprocessSpec.pad_value)
NORMALIZE_MODES = ("none", "mean", "std")
AUGMENTS = "hvt"


class AnomalyDataError(ValueError):
    """The data cannot be used; the message says what to fix (one line)."""


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class AnomalyConfig:
    data: Path
    out: Path = Path("models/mt-anomaly.onnx")
    report_dir: Path | None = None  # default: build/anomaly/<model stem>
    image_size: tuple[int, int] = (256, 256)  # (height, width), multiples of 32
    resize: str = "letterbox"  # the service's resize mode: letterbox | resize (stretch)
    layers: tuple[int, ...] = (10, 14)  # EfficientNet-Lite0 block indices
    backbone: Path | None = None  # None: ImageNet; or an efflite0 detector's best.pt
    bank_size: int = 16384
    coreset_pool: int = 0  # random patches the greedy coreset chooses from (0: all)
    coreset_chunk: int = 40_000  # the coreset runs per chunk of this many patches
    projection_dim: int = 64  # random projection used only for the coreset selection
    sigma: float = 4.0  # Gaussian smoothing of the map, in input pixels (0: none)
    normalize: str = "none"  # in-graph per-image grey-level normalisation: none | mean | std
    norm_mean: float = -0.2  # ... the normalised image's mean and std (backbone units, [-1, 1])
    norm_std: float = 0.25
    augment: str = ""  # bank augmentation: h (flip left-right), v (up-down), t (180 deg)
    topk: int = 1  # pred_score = mean of the k highest patch distances (1: the maximum)
    mask_padding: bool = False  # letterbox padding neither scores nor shows in the map
    fp16_bank: bool = True
    seed: int = 0
    good_class: str = "auto"  # "auto": the one folder named like good, ok, normal, ..._free
    good_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    calib_per_class: int = 20
    target_miss: float = 0.05
    band: float = 0.1
    max_good: int | None = None  # CI-sized runs: subsample the good images
    max_defects: int | None = None  # ... and each defect class
    batch_size: int = 8
    threads: int = 1
    skip_unreadable: bool = False
    progress: bool = True
    name: str | None = None
    version: str = "1"
    command: str | None = None

    def validate(self) -> None:
        h, w = self.image_size
        if h % 32 or w % 32 or h < 64 or w < 64:
            raise AnomalyDataError(
                f"image size {h}x{w}: height and width must be multiples of 32 and at least 64 "
                "(the backbone's static 'same' padding is exact only there)"
            )
        if self.resize not in ("resize", "letterbox"):
            raise AnomalyDataError(f"resize must be 'resize' or 'letterbox', got {self.resize!r}")
        if not self.layers or min(self.layers) < 0 or max(self.layers) > 15:
            raise AnomalyDataError(
                f"layers must be EfficientNet-Lite0 blocks 0..15, got {self.layers}"
            )
        if self.bank_size < 1:
            raise AnomalyDataError("bank size must be at least 1")
        if self.normalize not in NORMALIZE_MODES:
            raise AnomalyDataError(
                f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {self.normalize!r}"
            )
        if set(self.augment) - set(AUGMENTS) or len(set(self.augment)) != len(self.augment):
            raise AnomalyDataError(
                f"augment must be letters from {AUGMENTS!r} (each at most once), got {self.augment!r}"
            )
        if self.topk < 1:
            raise AnomalyDataError("topk must be at least 1")
        if self.norm_std <= 0:
            raise AnomalyDataError("norm std must be positive")


# ---------------------------------------------------------------------------------------------
# data: discovery, split


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


# Magnetic-tile file names: `exp<exposure>_num_<frame>`; the exposures of one tile have frame
# numbers a few dozen apart, different tiles hundreds apart (gaps <= 40 inside a tile; 60 leaves
# a margin and still separates tiles). pHash alone misses many of these siblings.
TILE_NAME = EXPOSURE_BRACKET
TILE_GAP = BRACKET_GAP


def duplicate_groups(
    hashes: Sequence[int], max_bits: int = 4, names: Sequence[str] | None = None
) -> list[int]:
    """Group id per image: union-find over pairs whose pHashes differ in <= max_bits bits and,
    when `names` are given, over chains of `expN_num_M` names whose frame numbers M lie within
    TILE_GAP of each other (the same tile shot at several exposures)."""
    n = len(hashes)
    sets = UnionFind(n)
    find, union = sets.find, sets.union

    arr = np.asarray(hashes, dtype=np.uint64).view(np.uint8).reshape(-1, 8)
    for start in range(0, n, 256):
        block = arr[start : start + 256]
        dist = np.unpackbits(np.bitwise_xor(block[:, None, :], arr[None, :, :]), axis=2).sum(2)
        for a, b in zip(*np.nonzero(dist <= max_bits), strict=True):
            union(start + int(a), int(b))
    if names is not None:
        frames = []
        for i, name in enumerate(names):
            m = TILE_NAME.search(name)
            if m:
                frames.append((int(m.group(1)), i))
        frames.sort()
        for (fa, a), (fb, b) in itertools.pairwise(frames):
            if fb - fa <= TILE_GAP:
                union(a, b)
    return [find(i) for i in range(n)]


@dataclass
class Split:
    root: Path
    good_class: str
    seed: int
    rows: dict[str, list[tuple[str, str]]]  # split -> [(class, path relative to root)]
    groups: int = 0
    grouped_images: int = 0
    unreadable: list[str] = field(default_factory=list)

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
    return Split(root, good_class, seed, rows, len(grouped), sum(map(len, grouped)), unreadable)


def _progress(
    items: Iterable[Any], enabled: bool, desc: str, total: int | None = None
) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# model


def preprocess_spec(cfg: AnomalyConfig) -> PreprocessSpec:
    return PreprocessSpec(
        size=(int(cfg.image_size[0]), int(cfg.image_size[1])),
        resize=cfg.resize,  # type: ignore[arg-type]
        color="rgb",
        scale=1.0 / 255.0,
        mean=(MEAN, MEAN, MEAN),
        std=(STD, STD, STD),
    )


def load_backbone(weights: Path | None = None) -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, or with the backbone of a detector that
    `scripts/train_detector.py --model efflite0` trained (its best.pt): ImageNet features
    further trained on the detector's images."""
    from training import effdet

    net = effdet.efficientnet_lite0()
    if weights is not None:
        trained = _detector_backbone(Path(weights))
        # The same module objects; PatchFeatures reads only the stem and the blocks.
        net._conv_stem, net._bn0, net._blocks = trained.stem.conv, trained.stem.bn, trained.blocks
    return net.eval()


def _detector_backbone(weights: Path) -> nn.Module:
    """The EfficientNetLite0 (float32) at the head of an efflite0 detector checkpoint."""
    import pickle

    from training import effdet

    if not weights.is_file():
        raise AnomalyDataError(f"backbone {weights}: no such file")
    try:
        ckpt = torch.load(weights, map_location="cpu", weights_only=False)
        first = ckpt["model"].model[0]
    except (
        OSError, RuntimeError, EOFError, pickle.UnpicklingError,
        KeyError, AttributeError, TypeError, IndexError,
    ) as exc:  # fmt: skip
        raise AnomalyDataError(
            f"backbone {weights}: not a detector checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(first, effdet.EfficientNetLite0):
        raise AnomalyDataError(
            f"backbone {weights}: its first layer is {type(first).__name__}, not the "
            "EfficientNet-Lite0 of `train_detector.py --model efflite0`"
        )
    return first.float()


class PatchFeatures(nn.Module):
    """Stem + MBConv blocks up to the deepest chosen one -> locally aggregated patch features
    (B, D, h, w) on the grid of the shallowest chosen block."""

    def __init__(self, backbone: nn.Module, layers: Sequence[int]) -> None:
        super().__init__()
        self.layers = tuple(sorted(layers))
        self.stem = nn.Sequential(backbone._conv_stem, backbone._bn0, nn.ReLU6())
        self.blocks = nn.ModuleList(list(backbone._blocks)[: self.layers[-1] + 1])
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        taken = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.layers:
                taken.append(F.avg_pool2d(h, 3, stride=1, padding=1, count_include_pad=False))
        size = taken[0].shape[-2:]
        out = [taken[0]] + [
            F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in taken[1:]
        ]
        return torch.cat(out, dim=1)


class InputNorm(nn.Module):
    """The graph's own photometric normalisation and letterbox mask, computed from its input.

    The tiles are shot at about five exposures, so the same surface arrives at very different
    grey levels. Inside the graph (the service's preprocessing stays the declared one):

    - `valid` (B, 1, H, W): 0 on the letterbox padding, 1 elsewhere. A padding row (column) is
      one whose pixels all equal the padding value in every channel: the service pads after
      resizing, so padding pixels are exact, and a whole image row of exactly 114 does not occur
      in a real tile;
    - `none`: the input unchanged; `mean`: each image's grey mean (over the valid pixels) moved
      to `target_mean`; `std`: also its standard deviation scaled to `target_std`. The padding
      is refilled with `target_mean` so the tile's border is not a bright/dark edge.
    """

    def __init__(
        self, mode: str, pad_value: float, target_mean: float = -0.2, target_std: float = 0.25
    ) -> None:
        super().__init__()
        self.mode = mode
        self.pad_value = float(pad_value)
        self.target_mean = float(target_mean)
        self.target_std = float(target_std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        is_pad = ((x - self.pad_value).abs().amax(1, keepdim=True) < 2e-3).float()
        row_pad = is_pad.amin(3, keepdim=True)  # (B, 1, H, 1)
        col_pad = is_pad.amin(2, keepdim=True)  # (B, 1, 1, W)
        valid = (1.0 - row_pad) * (1.0 - col_pad)  # (B, 1, H, W)
        if self.mode == "none":
            return x, valid
        grey = x.mean(1, keepdim=True)
        n = valid.sum((2, 3), keepdim=True).clamp_min(1.0)
        mean = (grey * valid).sum((2, 3), keepdim=True) / n
        if self.mode == "mean":
            xn = x - mean + self.target_mean
        else:
            var = (((grey - mean) ** 2) * valid).sum((2, 3), keepdim=True) / n
            xn = (x - mean) * (self.target_std / (var + 1e-4).sqrt()) + self.target_mean
        return xn * valid + self.target_mean * (1.0 - valid), valid


def input_norm(cfg: AnomalyConfig) -> InputNorm:
    pad = (PAD_VALUE / 255.0 - MEAN) / STD  # the padding value as the graph sees it
    return InputNorm(cfg.normalize, pad, cfg.norm_mean, cfg.norm_std)


def augmentations(letters: str) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The identity plus one geometric transform per letter (on preprocessed NCHW batches)."""
    table: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "h": lambda t: torch.flip(t, dims=(3,)),
        "v": lambda t: torch.flip(t, dims=(2,)),
        "t": lambda t: torch.flip(t, dims=(2, 3)),
    }
    return [lambda t: t] + [table[c] for c in letters]


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, round(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float()


class PatchCoreModel(nn.Module):
    """images [B, 3, H, W] -> (pred_score [B], anomaly_map [B, 1, H, W]).

    pred_score is the mean of the `topk` highest patch distances (padding patches count 0 when
    `mask_padding`); the map is the patch distances upsampled, smoothed and (with
    `mask_padding`) zero on the padding."""

    def __init__(
        self,
        features: PatchFeatures,
        bank: torch.Tensor,
        image_size: tuple[int, int],
        sigma: float,
        norm: InputNorm | None = None,
        topk: int = 1,
        mask_padding: bool = False,
    ) -> None:
        super().__init__()
        self.features = features
        self.norm = norm if norm is not None else InputNorm("none", 0.0)
        self.topk = int(topk)
        self.mask_padding = bool(mask_padding)
        with torch.no_grad():  # the patch grid, fixed by the input size (static in the graph)
            grid = features(torch.zeros(1, 3, *image_size)).shape[-2:]
        self.grid = (int(grid[0]), int(grid[1]))
        self.image_size = (int(image_size[0]), int(image_size[1]))
        bank = bank.float()
        self.register_buffer("bank_t", bank.t().contiguous())  # (D, M)
        self.register_buffer("bank_sq", (bank.double() ** 2).sum(1).float())  # (M,)
        self.sigma = float(sigma)
        if sigma > 0:
            k = gaussian_kernel(sigma)
            self.register_buffer("kx", k.view(1, 1, 1, -1))
            self.register_buffer("ky", k.view(1, 1, -1, 1))
            self.radius = (k.numel() - 1) // 2

    def patch_distances(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) distance of every (normalised) patch to its nearest bank entry."""
        f = self.features(x)
        h, w = int(f.shape[-2]), int(f.shape[-1])
        flat = f.flatten(2).transpose(1, 2)  # (B, N, D)
        sq = (flat * flat).sum(-1, keepdim=True)  # (B, N, 1)
        d2 = sq + self.bank_sq - 2.0 * torch.matmul(flat, self.bank_t)  # (B, N, M)
        nearest = d2.amin(dim=-1).clamp_min(0.0).sqrt()  # (B, N)
        return nearest.reshape(-1, 1, h, w)

    def smooth(self, amap: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return amap
        r = self.radius
        amap = F.conv2d(F.pad(amap, (r, r, 0, 0), mode="reflect"), self.kx)
        return F.conv2d(F.pad(amap, (0, 0, r, r), mode="reflect"), self.ky)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xn, valid = self.norm(x)
        patch = self.patch_distances(xn)
        if self.mask_padding:  # a patch counts when any of its pixels is tile, not padding
            stride = (self.image_size[0] // self.grid[0], self.image_size[1] // self.grid[1])
            patch = patch * F.max_pool2d(valid, stride, stride)
        amap = F.interpolate(patch, size=self.image_size, mode="bilinear", align_corners=False)
        amap = self.smooth(amap)
        if self.mask_padding:
            amap = amap * valid
        flat = patch.flatten(1)
        if self.topk > 1:
            k = min(self.topk, self.grid[0] * self.grid[1])
            score = flat.topk(k, dim=1).values.mean(dim=1)
        else:
            score = amap.flatten(1).amax(dim=1)  # the original rule: the smoothed map's maximum
        return score, amap


# ---------------------------------------------------------------------------------------------
# memory bank


def load_batches(
    paths: Sequence[Path], spec: PreprocessSpec, batch_size: int
) -> Iterable[tuple[list[Path], torch.Tensor]]:
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        arrays = []
        for p in chunk:
            image = read_image(p)
            if image is None:
                raise AnomalyDataError(f"unreadable image {p}")
            arrays.append(preprocess(image, spec)[0])
        yield chunk, torch.from_numpy(np.stack(arrays))


@torch.no_grad()
def extract_patches(
    features: PatchFeatures,
    paths: Sequence[Path],
    spec: PreprocessSpec,
    batch_size: int,
    progress: bool,
    desc: str = "features",
    norm: InputNorm | None = None,
    augment: str = "",
) -> torch.Tensor:
    """(N_images * (1 + len(augment)) * h * w, D) float32 patch features of the images as the
    graph sees them (after `norm`), plus their flipped copies when `augment` asks."""
    out = []
    transforms = augmentations(augment)
    batches = load_batches(paths, spec, batch_size)
    for _, batch in _progress(batches, progress, desc, total=math.ceil(len(paths) / batch_size)):
        x = norm(batch)[0] if norm is not None else batch
        for transform in transforms:
            f = features(transform(x))
            out.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
    return torch.cat(out)


@torch.no_grad()
def _greedy(z: torch.Tensor, n: int, start: int) -> torch.Tensor:
    """Greedy k-center on the rows of z: each step takes the row farthest from those chosen."""
    z_sq = (z * z).sum(1)
    chosen = torch.empty(n, dtype=torch.long)
    chosen[0] = start
    min_d = torch.addmv(z_sq, z, z[start], alpha=-2).add_(z_sq[start]).clamp_min_(0)
    d_new = torch.empty_like(min_d)
    for k in range(1, n):
        i = int(torch.argmax(min_d))
        chosen[k] = i
        torch.addmv(z_sq, z, z[i], alpha=-2, out=d_new)
        d_new.add_(z_sq[i]).clamp_min_(0)
        torch.minimum(min_d, d_new, out=min_d)
    return chosen


@torch.no_grad()
def greedy_coreset(
    patches: torch.Tensor,
    n: int,
    projection_dim: int,
    seed: int,
    chunk: int = 40_000,
    progress: bool = False,
) -> torch.Tensor:
    """Indices of `n` patches chosen by greedy k-center selection (PatchCore's coreset), run on
    a Johnson-Lindenstrauss random projection of the features.

    The patches are shuffled into chunks of at most `chunk` rows and each chunk contributes its
    share of the bank: every patch is considered, and a chunk's projection stays in the CPU
    cache (a 40k x 64 step takes ~0.3 ms; one pass over 540k x 152 rows takes ~10 ms).
    """
    total = patches.shape[0]
    if n >= total:
        return torch.arange(total)
    g = torch.Generator().manual_seed(seed)
    d = patches.shape[1]
    if 0 < projection_dim < d:
        proj = torch.randn(d, projection_dim, generator=g) / math.sqrt(projection_dim)
        z = patches @ proj
    else:
        z = patches
    order = torch.randperm(total, generator=g)
    parts = max(1, math.ceil(total / chunk)) if chunk > 0 else 1
    pieces = torch.tensor_split(order, parts)
    shares = [n * len(p) // total for p in pieces]
    for j in range(n - sum(shares)):  # hand out the remainder, one each
        shares[j % parts] += 1
    out = []
    for piece, share in _progress(
        list(zip(pieces, shares, strict=True)), progress, "coreset", total=parts
    ):
        if share == 0:
            continue
        start = int(torch.randint(len(piece), (1,), generator=g))
        out.append(piece[_greedy(z[piece].contiguous(), min(share, len(piece)), start)])
    return torch.cat(out)


def build_bank(
    features: PatchFeatures, train_paths: Sequence[Path], cfg: AnomalyConfig
) -> tuple[torch.Tensor, dict[str, Any]]:
    spec = preprocess_spec(cfg)
    t0 = time.process_time()
    patches = extract_patches(
        features,
        train_paths,
        spec,
        cfg.batch_size,
        cfg.progress,
        "bank features",
        input_norm(cfg),
        cfg.augment,
    )
    t1 = time.process_time()
    g = torch.Generator().manual_seed(cfg.seed)
    pool = patches
    if cfg.coreset_pool and patches.shape[0] > cfg.coreset_pool:
        pool = patches[torch.randperm(patches.shape[0], generator=g)[: cfg.coreset_pool]]
    idx = greedy_coreset(
        pool, cfg.bank_size, cfg.projection_dim, cfg.seed, cfg.coreset_chunk, cfg.progress
    )
    bank = pool[idx].contiguous()
    t2 = time.process_time()
    info = {
        "train_images": len(train_paths),
        "augment": cfg.augment or "none",
        "patches": int(patches.shape[0]),
        "coreset_pool": int(pool.shape[0]),
        "bank_size": int(bank.shape[0]),
        "feature_dim": int(bank.shape[1]),
        "cpu_s_features": round(t1 - t0, 1),
        "cpu_s_coreset": round(t2 - t1, 1),
    }
    return bank, info


def make_model(features: PatchFeatures, bank: torch.Tensor, cfg: AnomalyConfig) -> PatchCoreModel:
    return PatchCoreModel(
        features,
        bank,
        cfg.image_size,
        cfg.sigma,
        input_norm(cfg),
        cfg.topk,
        cfg.mask_padding,
    ).eval()


def store_bank(bank: torch.Tensor, fp16: bool) -> torch.Tensor:
    """The bank exactly as the ONNX file holds it (fp16 rounding applied when asked)."""
    return bank.half().float() if fp16 else bank.float()


# ---------------------------------------------------------------------------------------------
# scoring, export, calibration


@torch.no_grad()
def torch_scores(
    model: PatchCoreModel,
    paths: Sequence[Path],
    spec: PreprocessSpec,
    batch_size: int,
    progress: bool,
) -> np.ndarray:
    out = []
    batches = load_batches(paths, spec, batch_size)
    for _, x in _progress(
        batches, progress, "scoring (torch)", total=math.ceil(len(paths) / batch_size)
    ):
        out.append(model(x)[0].numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def export_onnx(
    model: PatchCoreModel, path: Path, fp16_bank: bool, metadata: dict[str, str]
) -> None:
    import onnx
    from onnx import helper, numpy_helper

    h, w = model.image_size
    dummy = torch.zeros(2, 3, h, w)
    raw = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no onnxscript and writes opset 17.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(raw),
            input_names=[INPUT_NAME],
            output_names=[SCORE_NAME, MAP_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "batch"},
                SCORE_NAME: {0: "batch"},
                MAP_NAME: {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(raw))
    raw.unlink()
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    bank_np = model.bank_t.numpy()
    match = [n for n, t in inits.items() if tuple(t.dims) == bank_np.shape]
    if len(match) != 1:
        raise RuntimeError(f"cannot find the memory bank among the ONNX initializers: {match}")
    old = inits[match[0]]
    values = numpy_helper.to_array(old)
    if not np.array_equal(values, bank_np):
        raise RuntimeError("the exported memory bank differs from the model's")
    graph.initializer.remove(old)
    if fp16_bank:
        graph.initializer.append(
            numpy_helper.from_array(values.astype(np.float16), BANK_NAME + "_fp16")
        )
        graph.node.insert(
            0,
            helper.make_node("Cast", [BANK_NAME + "_fp16"], [BANK_NAME], to=onnx.TensorProto.FLOAT),
        )
    else:
        graph.initializer.append(numpy_helper.from_array(values, BANK_NAME))
    for node in graph.node:
        node.input[:] = [BANK_NAME if i == old.name else i for i in node.input]
    # The tracer names the map's spatial dims after internal tensors: state the real shapes.
    shapes = {SCORE_NAME: ["batch"], MAP_NAME: ["batch", 1, h, w]}
    for output in graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for value in shapes[output.name]:
            dim = dims.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value
    proto.doc_string = (
        "PatchCore-style anomaly model (EfficientNet-Lite0 features, coreset memory bank)"
    )
    helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def onnx_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_scores(
    session: Any,
    paths: Sequence[Path],
    spec: PreprocessSpec,
    batch_size: int,
    progress: bool,
    desc: str = "scoring",
    keep_maps: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    scores, maps = [], []
    batches = load_batches(paths, spec, batch_size)
    for _, x in _progress(batches, progress, desc, total=math.ceil(len(paths) / batch_size)):
        s, m = session.run([SCORE_NAME, MAP_NAME], {INPUT_NAME: x.numpy()})
        scores.append(s)
        if keep_maps:
            maps.extend(m[:, 0])
    return (np.concatenate(scores) if scores else np.zeros(0, np.float32)), maps


def calibrate(good: np.ndarray, defects: np.ndarray, target_miss: float) -> dict[str, float]:
    """Highest threshold whose miss rate on the calibration defects is <= target_miss (a part is
    flagged when raw score >= threshold); min/max from all validation scores."""
    ordered = np.sort(defects.astype(np.float64))
    allowed = math.floor(target_miss * len(ordered) + 1e-9)
    threshold = float(ordered[allowed])
    every = np.concatenate([good, defects]).astype(np.float64)
    return {
        "threshold": threshold,
        "min": float(every.min()),
        "max": float(every.max()),
        "val_miss_rate": float((defects < threshold).mean()),
        "val_false_reject_rate": float((good >= threshold).mean()),
    }


def auroc(good: np.ndarray, defects: np.ndarray) -> float | None:
    if len(good) == 0 or len(defects) == 0:
        return None
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(good)), np.ones(len(defects))]
    return float(roc_auc_score(y, np.r_[good, defects]))


def split_metrics(
    labels: Sequence[str],
    scores: np.ndarray,
    good_class: str,
    threshold: float,
    norm: Callable[[np.ndarray], np.ndarray] | None = None,
    band: float = 0.1,
) -> dict[str, Any]:
    labels_a = np.asarray(labels)
    good = scores[labels_a == good_class]
    bad = scores[labels_a != good_class]
    per_class: dict[str, Any] = {}
    for c in sorted(set(labels) - {good_class}):
        s = scores[labels_a == c]
        per_class[c] = {
            "images": len(s),
            "miss_rate": round(float((s < threshold).mean()), 4),
            "auroc": _round(auroc(good, s)),
        }
    out: dict[str, Any] = {
        "good_images": len(good),
        "defect_images": len(bad),
        "auroc": _round(auroc(good, bad)),
        "miss_rate": round(float((bad < threshold).mean()), 4) if len(bad) else None,
        "false_reject_rate": round(float((good >= threshold).mean()), 4) if len(good) else None,
        "per_class": per_class,
    }
    if norm is not None:  # what the service's PASS / UNCERTAIN / FAIL would be (0.5 +- band)
        n = norm(scores)
        verdict = np.where(n >= 0.5 + band, "fail", np.where(n >= 0.5 - band, "uncertain", "pass"))
        out["service_verdicts"] = {
            c: dict(sorted(Counter(verdict[labels_a == c].tolist()).items()))
            for c in sorted(set(labels))
        }
    return out


def _round(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(x, n)


def histogram_png(
    path: Path,
    splits: dict[str, tuple[Sequence[str], np.ndarray]],
    good_class: str,
    threshold: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4), squeeze=False)
    every = np.concatenate([s for _, s in splits.values()])
    bins = np.linspace(float(every.min()), float(every.max()), 41)
    for ax, (name, (labels, scores)) in zip(axes[0], splits.items(), strict=True):
        labels_a = np.asarray(labels)
        for c in sorted(set(labels), key=lambda c: (c != good_class, c)):
            ax.hist(
                scores[labels_a == c],
                bins=bins,
                alpha=0.55,
                label=f"{c} ({(labels_a == c).sum()})",
                histtype="stepfilled" if c == good_class else "step",
                linewidth=1.5,
            )
        ax.axvline(threshold, color="k", linestyle="--", label="threshold")
        ax.set_title(f"{name} split: raw anomaly score")
        ax.set_xlabel("raw anomaly score (pred_score)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the whole run


@dataclass
class Trained:
    report: dict[str, Any]
    model: PatchCoreModel  # the PyTorch model the ONNX file was exported from
    split: Split


def train(cfg: AnomalyConfig) -> dict[str, Any]:
    """Split, bank, export, calibrate, evaluate, check, write the card. Returns the report."""
    return fit(cfg).report


def fit(cfg: AnomalyConfig) -> Trained:
    """`train`, also returning the PyTorch model and the split."""
    cfg.validate()
    torch.set_num_threads(max(1, cfg.threads))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    root = resolve_data_root(Path(cfg.data))
    classes, good_class = discover(root, cfg.good_class)
    cfg = replace(cfg, good_class=good_class)
    split = make_split(
        classes,
        root,
        cfg.good_class,
        cfg.seed,
        cfg.good_fractions,
        cfg.calib_per_class,
        cfg.max_good,
        cfg.max_defects,
        cfg.skip_unreadable,
        cfg.progress,
    )
    if not split.paths("val", cfg.good_class) or not [
        c for c in split.labels("val") if c != cfg.good_class
    ]:
        raise AnomalyDataError(
            "too few images to calibrate: validation needs good and defect images"
        )
    out = Path(cfg.out)
    name = cfg.name or out.stem
    report_dir = Path(cfg.report_dir) if cfg.report_dir else Path("build/anomaly") / name
    report_dir.mkdir(parents=True, exist_ok=True)
    spec = preprocess_spec(cfg)
    times: dict[str, float] = {}

    features = PatchFeatures(load_backbone(cfg.backbone), cfg.layers)
    bank_full, bank_info = build_bank(features, split.paths("train", cfg.good_class), cfg)
    bank = store_bank(bank_full, cfg.fp16_bank)
    model = make_model(features, bank, cfg)
    times["bank"] = time.process_time() - cpu0

    t = time.process_time()
    metadata = {
        "task": "anomaly",
        "imgsz": repr(list(cfg.image_size)),
        "author": "lineinspect",
        "version": cfg.version,
        "description": f"{name}: PatchCore-style anomaly model, "
        f"EfficientNet-Lite0 blocks {list(cfg.layers)}",
    }
    export_onnx(model, out, cfg.fp16_bank, metadata)
    session = onnx_session(out, cfg.threads)
    times["export"] = time.process_time() - t

    t = time.process_time()
    val_labels = split.labels("val")
    val_scores, _ = onnx_scores(
        session, split.paths("val"), spec, cfg.batch_size, cfg.progress, "scoring val"
    )
    va = np.asarray(val_labels)
    cal = calibrate(
        val_scores[va == cfg.good_class], val_scores[va != cfg.good_class], cfg.target_miss
    )
    thr, lo, hi = cal["threshold"], cal["min"], cal["max"]

    def norm(raw: np.ndarray) -> np.ndarray:
        return np.clip((raw - thr) / (hi - lo) + 0.5, 0.0, 1.0)

    val_metrics = split_metrics(val_labels, val_scores, cfg.good_class, thr, norm, cfg.band)
    times["val"] = time.process_time() - t

    t = time.process_time()
    test_labels = split.labels("test")
    test_paths = split.paths("test")
    test_scores, test_maps = onnx_scores(
        session, test_paths, spec, cfg.batch_size, cfg.progress, "scoring test", keep_maps=True
    )
    test_metrics = split_metrics(test_labels, test_scores, cfg.good_class, thr, norm, cfg.band)
    test_metrics["pixel_auroc"] = _round(pixel_auroc(test_paths, test_maps, spec, cfg.resize))
    times["test"] = time.process_time() - t

    # parity: PyTorch vs ONNX Runtime on the same preprocessed batch (good and defect images)
    t = time.process_time()
    pick = _parity_sample(split, cfg.good_class)
    torch_s = torch_scores(model, pick, spec, cfg.batch_size, False)
    onnx_s, _ = onnx_scores(session, pick, spec, cfg.batch_size, False)
    diff = float(np.abs(torch_s - onnx_s).max())
    parity = {
        "images": len(pick),
        "max_abs_diff": diff,
        "relative_to_range": diff / (hi - lo),
        "ok": diff / (hi - lo) <= 1e-4,
    }
    fp16_cost = None
    if cfg.fp16_bank:  # what storing the bank in fp16 changes, measured on the validation split
        model32 = make_model(features, bank_full, cfg)
        s32 = torch_scores(model32, split.paths("val"), spec, cfg.batch_size, cfg.progress)
        fp16_cost = {
            "val_auroc_fp32": _round(
                auroc(s32[va == cfg.good_class], s32[va != cfg.good_class]), 5
            ),
            "val_auroc_fp16": _round(val_metrics["auroc"], 5),
            "max_abs_score_diff": float(np.abs(s32 - val_scores).max()),
            "max_rel_score_diff": float(np.abs(s32 - val_scores).max() / (hi - lo)),
        }
    times["checks"] = time.process_time() - t

    histogram_png(
        report_dir / "score_histograms.png",
        {"val": (val_labels, val_scores), "test": (test_labels, test_scores)},
        cfg.good_class,
        thr,
    )
    cpu_total = time.process_time() - cpu0
    wall_total = time.perf_counter() - wall0
    onnx_bytes = out.stat().st_size

    from training import cards

    images_stats = [cards.image_stats(read_image(p)) for p in split.paths("val")]  # type: ignore[arg-type]
    by_class: dict[str, list[float]] = defaultdict(list)
    for c, s in zip(val_labels, norm(val_scores).tolist(), strict=True):
        by_class["good" if c == cfg.good_class else c].append(s)
    verdict_mix = Counter(
        "fail" if s >= 0.5 + cfg.band else "uncertain" if s >= 0.5 - cfg.band else "pass"
        for s in norm(val_scores).tolist()
    )
    timing = {
        "cpu_s_total": round(cpu_total, 1),
        "wall_s_total": round(wall_total, 1),
        "threads": cfg.threads,
        **{f"cpu_s_{k}": round(v, 1) for k, v in times.items()},
        **{k: v for k, v in bank_info.items() if k.startswith("cpu_s")},
    }
    training_section = {
        "method": "PatchCore-style: in-graph per-image grey-level normalisation "
        f"({cfg.normalize}) and letterbox mask, EfficientNet-Lite0 "
        f"({'ImageNet' if cfg.backbone is None else 'backbone of detector ' + str(cfg.backbone)}) "
        "blocks "
        f"{list(cfg.layers)}, 3x3 local average, greedy coreset memory bank (bank augmented: "
        f"{cfg.augment or 'none'}), nearest-neighbour patch distance"
        + (", padding patches masked" if cfg.mask_padding else "")
        + ", bilinear upsampling, Gaussian smoothing, score = "
        + (f"mean of the top {cfg.topk} patch distances" if cfg.topk > 1 else "max of the map"),
        "command": cfg.command,
        "environment": cards.environment(),
        "data": str(root),
        "config": _jsonable(asdict(cfg)),
        "bank": {
            **{k: v for k, v in bank_info.items() if not k.startswith("cpu_s")},
            "storage": "float16" if cfg.fp16_bank else "float32",
        },
        "calibration": {**{k: round(v, 6) for k, v in cal.items()}, "target_miss": cfg.target_miss},
        "timing": timing,
        "split": split.manifest(),
    }
    metrics = {
        "val": val_metrics,
        "test": test_metrics,
        "parity": parity,
        "fp16_bank_cost": fp16_cost,
        "onnx_bytes": onnx_bytes,
    }
    cards.write_card(
        out,
        name=name,
        version=cfg.version,
        task="anomaly",
        classes=["anomaly"],
        input={
            "size": list(cfg.image_size),
            "resize": cfg.resize,
            "color": "rgb",
            "scale": 1.0 / 255.0,
            "mean": MEAN,
            "std": STD,
        },
        output={"score": SCORE_NAME, "map": MAP_NAME},
        anomaly={"threshold": thr, "min": lo, "max": hi},
        thresholds={"default": 0.5, "band": cfg.band},
        metrics=_jsonable(metrics),
        training=training_section,
        reference=cards.reference_section(images_stats, by_class, dict(verdict_mix), split="val"),
    )
    served = serve_check(out, split, cfg.good_class)
    report = {
        "onnx": str(out),
        "onnx_bytes": onnx_bytes,
        "calibration": cal,
        **metrics,
        "served": served,
        "timing": timing,
        "split_counts": split.counts(),
        "report_dir": str(report_dir),
    }
    (report_dir / "report.json").write_text(
        json.dumps(_jsonable(report), indent=1), encoding="utf-8"
    )
    (report_dir / "split.json").write_text(json.dumps(split.manifest(), indent=1), encoding="utf-8")
    np.savez(
        report_dir / "scores.npz",
        val=val_scores,
        test=test_scores,
        val_labels=np.asarray(val_labels),
        test_labels=np.asarray(test_labels),
    )
    return Trained(report, model, split)


def _parity_sample(split: Split, good_class: str, n: int = 8) -> list[Path]:
    good = split.paths("test", good_class)[: n // 2]
    bad = [p for c, p in split.rows["test"] if c != good_class][: n - len(good)]
    return good + [split.root / p for p in bad]


def pixel_auroc(
    paths: Sequence[Path], maps: Sequence[np.ndarray], spec: PreprocessSpec, resize: str
) -> float | None:
    """Per-pixel AUROC over the test images that have masks (maps at model resolution; masks
    geometrically transformed the same way as the images)."""
    from service.inference.preprocess import letterbox, stretch

    ys, ss = [], []
    rng = np.random.default_rng(0)
    for p, m in zip(paths, maps, strict=True):
        mask_path = p.with_suffix(".png")
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) if mask_path.is_file() else None
        if mask is None:
            continue
        mask = cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR)
        if resize == "letterbox":
            mask, _ = letterbox(mask, spec.size, 0)
        else:
            mask, _ = stretch(mask, spec.size)
        y = (mask[..., 0] > 127).reshape(-1)
        s = m.reshape(-1)
        keep = rng.random(y.size) < 0.05  # subsample pixels: enough for a stable AUROC
        ys.append(y[keep])
        ss.append(s[keep])
    if not ys:
        return None
    y = np.concatenate(ys)
    if y.all() or not y.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, np.concatenate(ss)))


def serve_check(path: Path, split: Split, good_class: str) -> dict[str, Any]:
    """Load the exported file with lineinspect itself and run one good and one defect image."""
    from service.inference.model import load_model
    from service.inference.runtime import RuntimeOptions

    model = load_model(path, RuntimeOptions(warmup_runs=1, intra_op_threads=1, inter_op_threads=1))
    good = split.paths("test", good_class)[:1]
    bad = [split.root / p for c, p in split.rows["test"] if c != good_class][:1]
    images = [read_image(p) for p in good + bad]
    results = model.predict(images)  # type: ignore[arg-type]
    out = {
        "task": model.spec.task,
        "score_output": model.spec.score_output,
        "map_output": model.spec.map_output,
        "warnings": list(model.spec.warnings),
        "images": [],
    }
    for p, r in zip(good + bad, results, strict=True):
        a = r.prediction.anomaly
        assert a is not None
        out["images"].append(
            {
                "image": p.name,
                "score": round(a.score, 4),
                "raw": round(a.raw, 4),
                "map_shape": list(a.map.shape) if a.map is not None else None,
                "verdict": str(r.decision.verdict),
            }
        )
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x

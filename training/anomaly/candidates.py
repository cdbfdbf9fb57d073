"""Supervised and hybrid candidates beside the good-only model, all judged on the same test parts.

The path a line walks: first weeks, good parts only (PatchCore); as reviewers label defects, a
supervised patch classifier, and a hybrid of the two. This run trains both from the labelled
defects of the split's validation set (the calibration defects, never the test ones) plus any
`labelled` folders (a `lineinspect review export`, class folders), and the good parts of train
and validation. Every labelled image is then training data, so thresholds are calibrated on
*out-of-fold* scores: each image scored by a head trained without its tile group.

The hybrid adds the two scores after putting each on the scale of its good parts
(z = (s - mean_good) / std_good, from validation): a part is suspicious when it is unlike the
good ones *or* like a labelled defect. Its threshold is calibrated on validation, where both
scores are honest (the bank never saw validation tiles; the head's scores are out-of-fold).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from service.inference.preprocess import PreprocessSpec, letterbox, preprocess, stretch
from training.anomaly.config import AnomalyConfig, AnomalyDataError
from training.anomaly.data import (
    Split,
    _images_in,
    _is_good_name,
    _progress,
    duplicate_groups,
    read_image,
)
from training.anomaly.evaluate import calibrate
from training.anomaly.features import input_norm, load_backbone, preprocess_spec
from training.anomaly.supervised import (
    Cached,
    HeadConfig,
    SupervisedModel,
    Taps,
    fit_head,
    out_of_fold,
)
from training.hygiene import phash

UNLABELLED = "unlabelled"  # the folder `lineinspect review export` puts unlabelled items in
MIN_DEFECTS = 5  # fewer labelled defect images cannot train or calibrate a supervised model


@dataclass
class Labelled:
    """The images a supervised model learns from (never a test image)."""

    paths: list[Path]
    labels: list[str]  # class names; the good class for good parts
    groups: np.ndarray  # tile group per image: out-of-fold keeps a group together
    notes: list[str] = field(default_factory=list)

    def defects(self, good_class: str) -> int:
        return sum(label != good_class for label in self.labels)


def extra_labelled(
    folders: Sequence[Path], good_class: str
) -> tuple[list[Path], list[str], list[str]]:
    """Images of labelled class folders (a review export in `folders` format, or any class
    folders): a folder named like good / ok / pass / `good_class` holds good parts, `unlabelled`
    is skipped and said so, every other folder is a defect class."""
    paths: list[Path] = []
    labels: list[str] = []
    notes: list[str] = []
    for root in folders:
        if not root.is_dir():
            raise AnomalyDataError(f"labelled folder {root} does not exist")
        classes = sorted(d for d in root.iterdir() if d.is_dir())
        if not classes:
            raise AnomalyDataError(
                f"labelled folder {root} has no class folders (expected e.g. good/, crack/ as "
                "`lineinspect review export --format folders` writes them)"
            )
        for d in classes:
            images = _images_in(d)
            if d.name == UNLABELLED:
                if images:
                    notes.append(
                        f"{len(images)} unlabelled item(s) in {d} left out: label them in the "
                        "review queue (operator page) and export again"
                    )
                continue
            label = good_class if d.name == good_class or _is_good_name(d.name) else d.name
            paths.extend(images)
            labels.extend([label] * len(images))
    return paths, labels, notes


def _phash_of(path: Path) -> int:
    image = read_image(path)
    if image is None:
        raise AnomalyDataError(f"unreadable image {path}: fix or remove it")
    return phash(image)


def labelled_set(split: Split, cfg: AnomalyConfig, extra: Sequence[Path] = ()) -> Labelled:
    """Good parts of train + val, the val (calibration) defects, and `extra` folders."""
    good = cfg.good_class
    rows = [(c, p) for s in ("train", "val") for c, p in split.rows[s]]
    paths = [split.root / p for _, p in rows]
    labels = [c for c, _ in rows]
    # the split hashed its images already; a split read back from a manifest did not
    hashes = [split.hashes[p] if p in split.hashes else _phash_of(split.root / p) for _, p in rows]
    more_paths, more_labels, notes = extra_labelled(extra, good)
    paths += more_paths
    labels += more_labels
    hashes += [_phash_of(path) for path in more_paths]
    groups = np.asarray(duplicate_groups(hashes, names=[p.name for p in paths]))
    data = Labelled(paths, labels, groups, notes)
    n_def = data.defects(good)
    n_def_groups = len({int(g) for g, c in zip(groups, labels, strict=True) if c != good})
    if n_def < MIN_DEFECTS or n_def_groups < 2:
        raise AnomalyDataError(
            f"a supervised model needs labelled defects: found {n_def} defect image(s) in "
            f"{n_def_groups} part(s) for training (at least {MIN_DEFECTS} images of 2 parts; "
            "15-25 per defect class to calibrate well). Label more, or train good-only "
            "(--mode good-only)"
        )
    return data


def read_mask(path: Path) -> np.ndarray | None:
    """The defect mask of an image: a same-name PNG beside it (magnetic-tile layout) or MVTec's
    ground_truth/<class>/<name>_mask.png; None when there is none."""
    candidates = []
    if path.suffix.lower() != ".png":
        candidates.append(path.with_suffix(".png"))
    parts = path.parts
    if "test" in parts:  # MVTec AD: <root>/test/<class>/<name>.png -> ground_truth/...
        i = len(parts) - 1 - parts[::-1].index("test")
        candidates.append(
            Path(*parts[:i], "ground_truth", *parts[i + 1 : -1], f"{path.stem}_mask.png")
        )
    for c in candidates:
        if c.is_file():
            mask = cv2.imread(str(c), cv2.IMREAD_GRAYSCALE)
            if mask is not None:
                return mask
    return None


def _mask_like_input(mask: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The mask through the same geometry as the image (letterbox or stretch), as 0/1 float."""
    m = cv2.cvtColor(np.where(mask > 127, 255, 0).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    m = letterbox(m, spec.size, 0)[0] if spec.resize == "letterbox" else stretch(m, spec.size)[0]
    return (m[..., 0] > 127).astype(np.float32)


@torch.no_grad()
def cache_features(
    taps: Taps,
    cfg: AnomalyConfig,
    paths: Sequence[Path],
    labels: Sequence[str],
    desc: str,
) -> Cached:
    """Frozen features of every image once (fp16), with validity and mask shares per patch."""
    spec = preprocess_spec(cfg)
    norm = input_norm(cfg)
    stride = taps.grid_stride
    feats, valids, masks, has = [], [], [], []
    batch = max(1, cfg.batch_size)
    for start in _progress(range(0, len(paths), batch), cfg.progress, desc):
        xs, ms, hs = [], [], []
        for p, label in zip(
            paths[start : start + batch], labels[start : start + batch], strict=True
        ):
            image = read_image(p)
            if image is None:
                raise AnomalyDataError(f"unreadable image {p}: fix or remove it")
            xs.append(preprocess(image, spec)[0])
            mask = read_mask(p) if label != cfg.good_class else None
            hs.append(mask is not None and bool((mask > 127).any()))
            ms.append(
                _mask_like_input(mask, spec)
                if mask is not None
                else np.zeros(spec.size, np.float32)
            )
        xn, valid = norm(torch.from_numpy(np.stack(xs)))
        feats.append(taps(xn).half())
        valids.append(F.avg_pool2d(valid, stride, stride) > 0.5)
        masks.append(F.avg_pool2d(torch.from_numpy(np.stack(ms))[:, None], stride, stride).half())
        has.extend(hs)
    return Cached(
        features=torch.cat(feats),
        valid=torch.cat(valids),
        mask=torch.cat(masks),
        has_mask=torch.tensor(has, dtype=torch.bool),
        defect=torch.tensor([label != cfg.good_class for label in labels], dtype=torch.bool),
    )


def head_config(cfg: AnomalyConfig) -> HeadConfig:
    return HeadConfig(
        hidden=cfg.sup_hidden, epochs=cfg.sup_epochs, topk=cfg.sup_topk, seed=cfg.seed
    )


@dataclass
class SupervisedFit:
    model: SupervisedModel
    oof_scores: np.ndarray  # out-of-fold scores of the labelled set, in its order
    labelled: Labelled
    calibration: dict[str, float]
    seconds: dict[str, float]


def fit_supervised(split: Split, cfg: AnomalyConfig) -> SupervisedFit:
    """Cache features, calibrate on out-of-fold scores, train the final head on everything."""
    torch.set_num_threads(max(1, cfg.threads))
    t0 = time.process_time()
    data = labelled_set(split, cfg, cfg.labelled)
    taps = Taps(load_backbone(cfg.backbone), cfg.sup_layers)
    cache = cache_features(taps, cfg, data.paths, data.labels, "supervised features")
    t1 = time.process_time()
    rows = np.arange(len(cache))
    hcfg = head_config(cfg)
    oof = out_of_fold(cache, rows, data.groups, hcfg, cfg.folds)
    y = np.asarray(data.labels)
    cal = calibrate(oof[y == cfg.good_class], oof[y != cfg.good_class], cfg.target_miss)
    head = fit_head(cache, rows, hcfg)
    model = SupervisedModel(taps, head, input_norm(cfg), cfg.image_size, cfg.sup_topk).eval()
    t2 = time.process_time()
    return SupervisedFit(
        model, oof, data, cal, {"features": round(t1 - t0, 1), "heads": round(t2 - t1, 1)}
    )


class HybridModel(nn.Module):
    """images -> (z_anomaly + z_supervised, the same sum of the two maps): each part's score
    on the scale of the good calibration parts."""

    def __init__(
        self, anomaly: nn.Module, supervised: SupervisedModel, stats: dict[str, float]
    ) -> None:
        super().__init__()
        self.anomaly, self.supervised = anomaly, supervised
        self.image_size = supervised.image_size
        self.stats = {k: float(v) for k, v in stats.items()}
        self.bank_t = getattr(anomaly, "bank_t", None)  # for the exporter's fp16 bank

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stats
        sa, ma = self.anomaly(x)
        ss, ms = self.supervised(x)
        za = (sa - s["anomaly_mean"]) / s["anomaly_std"]
        zs = (ss - s["supervised_mean"]) / s["supervised_std"]
        map_a = (ma - s["anomaly_mean"]) / s["anomaly_std"]
        map_s = (ms - s["supervised_mean"]) / s["supervised_std"]
        return za + zs, map_a + map_s


def hybrid_stats(anomaly_good: np.ndarray, supervised_good: np.ndarray) -> dict[str, float]:
    """Mean and std of each score over the good calibration parts."""
    return {
        "anomaly_mean": float(np.mean(anomaly_good)),
        "anomaly_std": float(np.std(anomaly_good) + 1e-6),
        "supervised_mean": float(np.mean(supervised_good)),
        "supervised_std": float(np.std(supervised_good) + 1e-6),
    }


def hybrid_scores(
    anomaly: np.ndarray, supervised: np.ndarray, stats: dict[str, float]
) -> np.ndarray:
    za = (anomaly - stats["anomaly_mean"]) / stats["anomaly_std"]
    zs = (supervised - stats["supervised_mean"]) / stats["supervised_std"]
    return np.asarray(za + zs, np.float32)


def val_rows(data: Labelled, split: Split) -> np.ndarray:
    """Positions of the split's validation images inside the labelled set (same order)."""
    where = {p: i for i, p in enumerate(data.paths)}
    return np.asarray([where[p] for p in split.paths("val")])


def describe(cfg: AnomalyConfig, which: str) -> str:
    sup = (
        f"supervised patch classifier ({'linear' if cfg.sup_hidden <= 0 else f'MLP {cfg.sup_hidden}'}) "
        f"on frozen EfficientNet-Lite0 (ImageNet) blocks {list(cfg.sup_layers)} at stride 16, "
        f"image score = mean of the top {cfg.sup_topk} patch logits; trained on labelled defects "
        "(masks where present) and good parts; threshold from grouped "
        f"{cfg.folds}-fold out-of-fold scores"
    )
    if which == "supervised":
        return sup
    return (
        "hybrid: z-score of the PatchCore (good-only) score + z-score of the "
        + sup
        + "; each z on the good validation parts, threshold calibrated on validation"
    )


def jsonable_stats(fit: SupervisedFit) -> dict[str, Any]:
    data = fit.labelled
    counts: dict[str, int] = {}
    for label in data.labels:
        counts[label] = counts.get(label, 0) + 1
    return {
        "labelled_images": counts,
        "labelled_groups": len(set(data.groups.tolist())),
        "notes": data.notes,
        "cpu_s": fit.seconds,
    }

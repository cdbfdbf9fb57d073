"""Supervised good-vs-defect scorer: a patch classifier on frozen backbone features.

When reviewers have labelled some defects, a classifier learns what they look like instead of
only how far a patch is from the good ones. The backbone stays frozen (ImageNet EfficientNet-Lite0:
a few hundred images cannot retrain it without overfitting), so training is a small head on
cached features and takes seconds:

- features: several MBConv blocks, each 3x3-averaged and brought to the stride-16 grid (finer
  blocks average- and max-pooled down, coarser ones bilinearly upsampled), standardised per
  channel with the good training images' statistics;
- head: a 1x1 linear (or small MLP) layer, one defect logit per patch;
- image logit: the mean of the `topk` highest patch logits over the tile (letterbox padding
  excluded), so one small blowhole is enough;
- loss: image-level binary cross-entropy (works with class folders alone) plus, where a defect
  image has a mask, a patch-level loss: patches under the mask are defects, the others and every
  patch of a good image are not. Masks teach it *where*, which is what makes ~100 defect images
  enough for thin cracks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from training.anomaly.features import InputNorm, frozen_trunk


class Taps(nn.Module):
    """Stem + blocks up to the deepest chosen one -> the chosen blocks' 3x3-averaged outputs on
    one grid (stride `grid_stride`), concatenated: (B, C, H/stride, W/stride)."""

    def __init__(
        self,
        backbone: nn.Module,
        layers: Sequence[int],
        grid_stride: int = 16,
        max_pool: bool = True,
    ) -> None:
        super().__init__()
        self.layers = tuple(sorted(layers))
        self.grid_stride = int(grid_stride)
        self.max_pool = bool(max_pool)
        self.stem, self.blocks = frozen_trunk(backbone, self.layers[-1])
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[-2] // self.grid_stride, x.shape[-1] // self.grid_stride)
        h = self.stem(x)
        out = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i not in self.layers:
                continue
            t = F.avg_pool2d(h, 3, stride=1, padding=1, count_include_pad=False)
            factor = t.shape[-2] // grid[0]
            if factor > 1:  # finer than the grid: the average, and the maximum for small dark spots
                out.append(F.avg_pool2d(t, factor))
                if self.max_pool:
                    out.append(F.max_pool2d(t, factor))
            elif t.shape[-2] < grid[0]:
                out.append(F.interpolate(t, size=grid, mode="bilinear", align_corners=False))
            else:
                out.append(t)
        return torch.cat(out, dim=1)


def grid_valid(valid: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, 1, H, W) pixel validity -> (B, 1, h, w): a patch counts when most of it is tile."""
    return F.avg_pool2d(valid, stride, stride) > 0.5


def topk_pool(logits: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 1, h, w) patch logits -> (B,) mean of the k highest over valid patches."""
    flat = logits.masked_fill(~valid, -1e4).flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(dim=1)


def make_head(channels: int, hidden: int) -> nn.Module:
    if hidden <= 0:
        return nn.Conv2d(channels, 1, 1)
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Dropout(0.2), nn.Conv2d(hidden, 1, 1)
    )


@dataclass
class HeadConfig:
    hidden: int = 0  # 0: linear (logistic regression per patch); >0: MLP width
    epochs: int = 20
    topk: int = 5
    mask_weight: float = 1.0  # weight of the patch-level (mask) loss
    mask_min: float = 0.1  # a patch is a defect patch when this share of it is under the mask
    positive_weight: float = 20.0  # defect patches are rare: weight them up in the patch loss
    lr: float = 3e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    seed: int = 0


@dataclass
class Cached:
    """Frozen features of a set of images, computed once: (N, C, h, w) fp16 features, (N, 1, h, w)
    validity, (N, 1, h, w) defect share of each patch (0 without a mask), and (N,) labels."""

    features: torch.Tensor
    valid: torch.Tensor
    mask: torch.Tensor
    has_mask: torch.Tensor
    defect: torch.Tensor

    def __len__(self) -> int:
        return int(self.features.shape[0])


class PatchHead(nn.Module):
    """Standardisation + head: (B, C, h, w) features -> (B, 1, h, w) defect logits."""

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, head: nn.Module) -> None:
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).float())
        self.register_buffer("std", std.reshape(1, -1, 1, 1).float())
        self.head = head

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head((f - self.mean) / self.std)
        return out


def channel_stats(cache: Cached, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over the valid patches of the given (good) images."""
    total = torch.zeros(cache.features.shape[1], dtype=torch.float64)
    sq = torch.zeros_like(total)
    n = 0.0
    for i in rows:
        f = cache.features[int(i)].double().flatten(1)  # (C, h*w)
        v = cache.valid[int(i)].flatten().bool()
        f = f[:, v]
        total += f.sum(1)
        sq += (f * f).sum(1)
        n += float(v.sum())
    mean = total / max(n, 1.0)
    std = (sq / max(n, 1.0) - mean * mean).clamp_min(1e-8).sqrt()
    return mean.float(), std.float() + 1e-5


def fit_head(cache: Cached, rows: np.ndarray, cfg: HeadConfig) -> PatchHead:
    """Train a head on the cached features of `rows` (indices into the cache)."""
    rows = np.asarray(rows)
    good_rows = rows[~cache.defect[rows].numpy().astype(bool)]
    mean, std = channel_stats(cache, good_rows if len(good_rows) else rows)
    torch.manual_seed(cfg.seed)
    model = PatchHead(mean, std, make_head(cache.features.shape[1], cfg.hidden))
    opt = torch.optim.AdamW(model.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    labels = cache.defect.float()
    n_def = float(labels[rows].sum())
    image_pos_weight = (len(rows) - n_def) / max(n_def, 1.0)
    rng = np.random.default_rng(cfg.seed)
    model.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(rows)
        for start in range(0, len(order), cfg.batch_size):
            idx = torch.from_numpy(order[start : start + cfg.batch_size])
            f, v = cache.features[idx].float(), cache.valid[idx]
            m, has_m, y = cache.mask[idx].float(), cache.has_mask[idx], labels[idx]
            if rng.random() < 0.5:  # flips: the features of a flipped tile, approximately
                f, v, m = f.flip(3), v.flip(3), m.flip(3)
            if rng.random() < 0.5:
                f, v, m = f.flip(2), v.flip(2), m.flip(2)
            z = model(f)
            weight = torch.where(y > 0, image_pos_weight, 1.0)
            loss = F.binary_cross_entropy_with_logits(topk_pool(z, v, cfg.topk), y, weight=weight)
            if cfg.mask_weight > 0:
                target = (m > cfg.mask_min).float()
                # patch labels are known for good images and for defects with a mask
                known = v & (has_m | (y == 0)).view(-1, 1, 1, 1)
                w = torch.where(target > 0, cfg.positive_weight, 1.0) * known.float()
                if float(known.sum()) > 0:
                    patch_loss = F.binary_cross_entropy_with_logits(
                        z, target, weight=w, reduction="sum"
                    )
                    loss = loss + cfg.mask_weight * patch_loss / known.float().sum()
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    return model.eval()


@torch.no_grad()
def head_scores(model: PatchHead, cache: Cached, rows: np.ndarray, topk: int) -> np.ndarray:
    out = []
    for start in range(0, len(rows), 64):
        idx = torch.from_numpy(np.asarray(rows[start : start + 64]))
        out.append(topk_pool(model(cache.features[idx].float()), cache.valid[idx], topk))
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def out_of_fold(
    cache: Cached, rows: np.ndarray, groups: np.ndarray, cfg: HeadConfig, folds: int = 5
) -> np.ndarray:
    """Scores of `rows`, each from a head trained without its tile group (grouped k-fold): the
    honest scores the threshold is calibrated on when every labelled defect is also training
    data."""
    rows = np.asarray(rows)
    uniq = np.unique(groups)
    rng = np.random.default_rng(cfg.seed)
    rng.shuffle(uniq)
    fold_of_group = {int(g): i % folds for i, g in enumerate(uniq)}
    fold = np.array([fold_of_group[int(g)] for g in groups])
    scores = np.zeros(len(rows), np.float32)
    for k in range(folds):
        held = fold == k
        if not held.any():
            continue
        model = fit_head(cache, rows[~held], cfg)
        scores[held] = head_scores(model, cache, rows[held], cfg.topk)
    return scores


class SupervisedModel(nn.Module):
    """images [B, 3, H, W] -> (pred_score [B]: the image's defect logit, anomaly_map
    [B, 1, H, W]: the patch logits upsampled; padding at the lowest logit)."""

    def __init__(
        self, taps: Taps, head: PatchHead, norm: InputNorm, image_size: tuple[int, int], topk: int
    ) -> None:
        super().__init__()
        self.taps, self.head, self.norm = taps, head, norm
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.topk = int(topk)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xn, valid = self.norm(x)
        z = self.head(self.taps(xn))
        v = grid_valid(valid, self.taps.grid_stride)
        score = topk_pool(z, v, self.topk)
        low = z.masked_fill(~v, 1e4).flatten(1).amin(1).view(-1, 1, 1, 1)
        z = torch.where(v, z, low)
        amap = F.interpolate(z, size=self.image_size, mode="bilinear", align_corners=False)
        return score, amap

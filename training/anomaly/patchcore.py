"""PatchCore scorer: coreset memory bank of good patches, nearest-neighbour patch distance."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from training.anomaly.config import AnomalyConfig
from training.anomaly.data import _progress
from training.anomaly.features import (
    InputNorm,
    PatchFeatures,
    extract_patches,
    input_norm,
    preprocess_spec,
)

# one pHash, union-find and exposure-bracket rule for every split


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

    bank_t: torch.Tensor  # buffers
    bank_sq: torch.Tensor
    kx: torch.Tensor
    ky: torch.Tensor

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
        f: torch.Tensor = self.features(x)
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

"""Backbone features: EfficientNet-Lite0 blocks, in-graph grey-level normalisation, batches."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from service.inference.preprocess import PreprocessSpec, preprocess
from training.anomaly.config import MEAN, PAD_VALUE, STD, AnomalyConfig, AnomalyDataError
from training.anomaly.data import _progress, read_image

if TYPE_CHECKING:
    from training.effdet import EfficientNetLite0

# one pHash, union-find and exposure-bracket rule for every split


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


def _detector_backbone(weights: Path) -> EfficientNetLite0:
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


def frozen_trunk(backbone: nn.Module, last: int) -> tuple[nn.Sequential, nn.ModuleList]:
    """EfficientNet's stem and its blocks 0..last, frozen, in eval mode."""
    # nn.Module types its attributes Tensor | Module; these are EfficientNet's layers.
    stem_conv, bn = cast(nn.Module, backbone._conv_stem), cast(nn.Module, backbone._bn0)
    stem = nn.Sequential(stem_conv, bn, nn.ReLU6())
    blocks = nn.ModuleList(list(cast(nn.ModuleList, backbone._blocks))[: last + 1])
    for part in (stem, blocks):
        part.eval()
        for p in part.parameters():
            p.requires_grad_(False)
    return stem, blocks


class PatchFeatures(nn.Module):
    """Stem + MBConv blocks up to the deepest chosen one -> locally aggregated patch features
    (B, D, h, w) on the grid of the shallowest chosen block."""

    def __init__(self, backbone: nn.Module, layers: Sequence[int]) -> None:
        super().__init__()
        self.layers = tuple(sorted(layers))
        self.stem, self.blocks = frozen_trunk(backbone, self.layers[-1])
        self.eval()

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

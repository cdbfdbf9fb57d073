"""Image -> input tensor, and the inverse mapping of boxes back to original pixels.

The letterbox reproduces Ultralytics' `LetterBox` (centred, pad 114, INTER_LINEAR, the same
rounding of the padding), because a served detector must see the pixels it was trained on. With
a stride (models whose height and width are dynamic) it pads only to the next multiple of the
stride, as Ultralytics' predict does for such models (`rect`): a 1280x720 frame becomes 640x384
instead of 640x640, 40 % fewer pixels to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from service.inference.card import ColorOrder, ResizeMode

# Decoded uint8 BGR (or grey) pixels; typed loosely because OpenCV's stubs return any dtype.
UInt8Image = npt.NDArray[Any]


@dataclass(frozen=True)
class PreprocessSpec:
    size: tuple[int, int]  # (height, width) of the model input
    resize: ResizeMode
    color: ColorOrder
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_value: int = 114
    dtype: type[np.floating[Any]] = np.float32
    # letterbox only: pad to a multiple of this instead of the full size (None: full size)
    stride: int | None = None

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3


@dataclass(frozen=True)
class Geometry:
    """How input-tensor pixels map to the original image: original = (input - pad) / scale."""

    image_size: tuple[int, int]  # original (height, width)
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_original(self, xyxy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = np.empty_like(xyxy)
        h, w = self.image_size
        out[:, [0, 2]] = ((xyxy[:, [0, 2]] - self.pad_x) / self.scale_x).clip(0, w)
        out[:, [1, 3]] = ((xyxy[:, [1, 3]] - self.pad_y) / self.scale_y).clip(0, h)
        return out

    def unreduced(self, factor: int, original_size: tuple[int, int]) -> Geometry:
        """The geometry of an image decoded at 1/`factor` scale (`imageio.decode_reduced`),
        mapped to the original's pixels: reduced pixel x covers original x * factor."""
        if factor == 1:
            return self
        f = float(factor)
        return Geometry(original_size, self.scale_x / f, self.scale_y / f, self.pad_x, self.pad_y)

    def clip(self, xyxy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Boxes already in original pixels (a graph that maps them back itself), clipped."""
        h, w = self.image_size
        out = np.empty_like(xyxy)
        out[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w)
        out[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h)
        return out


def letterbox(
    image: UInt8Image, size: tuple[int, int], pad_value: int = 114, stride: int | None = None
) -> tuple[UInt8Image, Geometry]:
    h, w = image.shape[:2]
    new_h, new_w = size
    r = min(new_h / h, new_w / w)
    unpad_w, unpad_h = max(round(w * r), 1), max(round(h * r), 1)
    pad_w, pad_h = new_w - unpad_w, new_h - unpad_h
    if stride:  # the minimum rectangle: each side only up to the next multiple of the stride
        pad_w, pad_h = pad_w % stride, pad_h % stride
    dw, dh = pad_w / 2, pad_h / 2
    if (w, h) != (unpad_w, unpad_h):
        image = cv2.resize(image, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    if top or bottom or left or right:
        value = (pad_value,) * (image.shape[2] if image.ndim == 3 else 1)
        image = cv2.copyMakeBorder(
            image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value
        )
    # Map back by the size the image was really resized to (as Ultralytics' scale_boxes does):
    # round(w * r) / w differs from r by up to half a pixel per axis.
    return image, Geometry((h, w), unpad_w / w, unpad_h / h, float(left), float(top))


def letterbox_top_left(
    image: UInt8Image, size: tuple[int, int], pad_value: int = 114
) -> tuple[UInt8Image, Geometry]:
    """YOLOX's `preproc`: resize by r = min(H / h, W / w) to (int(w r), int(h r)), top-left
    corner, the rest `pad_value`; boxes map back by dividing by r."""
    h, w = image.shape[:2]
    new_h, new_w = size
    r = min(new_h / h, new_w / w)
    rw, rh = int(w * r), int(h * r)
    out = np.full((new_h, new_w, *image.shape[2:]), pad_value, np.uint8)
    out[:rh, :rw] = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
    return out, Geometry((h, w), r, r, 0.0, 0.0)


def stretch(image: UInt8Image, size: tuple[int, int]) -> tuple[UInt8Image, Geometry]:
    h, w = image.shape[:2]
    new_h, new_w = size
    if (h, w) != (new_h, new_w):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return image, Geometry((h, w), new_w / w, new_h / h, 0.0, 0.0)


def center_crop(image: UInt8Image, size: tuple[int, int]) -> tuple[UInt8Image, Geometry]:
    """Resize so the image covers `size`, then crop the centre (torchvision/Ultralytics style)."""
    h, w = image.shape[:2]
    new_h, new_w = size
    r = max(new_h / h, new_w / w)
    rh, rw = max(new_h, round(h * r)), max(new_w, round(w * r))
    if (h, w) != (rh, rw):
        image = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
    top, left = (rh - new_h) // 2, (rw - new_w) // 2
    image = image[top : top + new_h, left : left + new_w]
    return image, Geometry((h, w), r, r, -float(left), -float(top))


def preprocess(image: UInt8Image, spec: PreprocessSpec) -> tuple[npt.NDArray[Any], Geometry]:
    """A decoded BGR (or grey) uint8 image -> a (C, H, W) tensor and its geometry."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if spec.resize == "letterbox":
        image, geom = letterbox(image, spec.size, spec.pad_value, spec.stride)
    elif spec.resize == "center_crop":
        image, geom = center_crop(image, spec.size)
    elif spec.resize == "letterbox_top_left":
        image, geom = letterbox_top_left(image, spec.size, spec.pad_value)
    else:
        image, geom = stretch(image, spec.size)
    if spec.color == "rgb":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif spec.color == "gray":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    chw = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    # (x * scale - mean) / std folded into one multiply-add per channel.
    n = spec.channels
    mean = np.asarray(spec.mean[:n], np.float32).reshape(n, 1, 1)
    std = np.asarray(spec.std[:n], np.float32).reshape(n, 1, 1)
    gain = np.float32(spec.scale) / std
    chw *= gain
    if np.any(mean):
        chw -= mean / std
    return chw.astype(spec.dtype, copy=False), geom

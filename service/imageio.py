"""Decode untrusted image bytes safely: sniff the format, read the declared size from the header
before decoding (decompression bombs), refuse truncated files instead of decoding grey filler.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from service.inference.card import ResizeMode
from service.inference.preprocess import UInt8Image

FORMATS = ("jpeg", "png", "bmp")
MEDIA_TYPES = {
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/png": "png",
    "image/bmp": "bmp",
    "image/x-bmp": "bmp",
    "image/x-ms-bmp": "bmp",
}
GENERIC_MEDIA_TYPES = ("application/octet-stream",)


class ImageError(ValueError):
    """Bytes that are not a usable image. `status` is the HTTP status a client should get."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def sniff(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    return None


def _other_format(data: bytes) -> str | None:
    for magic, name in (
        (b"GIF8", "GIF"),
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
        (b"RIFF", "WebP/RIFF"),
        (b"%PDF", "PDF"),
        (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
    ):
        if data.startswith(magic):
            return name
    return None


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ImageError("corrupt JPEG: bad marker structure")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2:
            raise ImageError("corrupt JPEG: bad segment length")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return h, w
        if marker == 0xDA:  # start of scan before any frame header
            raise ImageError("corrupt JPEG: no frame header before the image data")
        i += 2 + length
    raise ImageError("truncated JPEG: it ends before its frame header")


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageError("corrupt PNG: no IHDR header")
    w, h = struct.unpack(">II", data[16:24])
    return h, w


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise ImageError("truncated BMP: header incomplete")
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:
        w, h = struct.unpack("<HH", data[18:22])
    else:
        w, h = struct.unpack("<ii", data[18:26])
    return abs(h), abs(w)


def header_size(data: bytes, fmt: str) -> tuple[int, int]:
    """(height, width) as the header declares them."""
    return {"jpeg": _jpeg_size, "png": _png_size, "bmp": _bmp_size}[fmt](data)


def _check_complete(data: bytes, fmt: str) -> None:
    # libjpeg and libpng pad a truncated image with grey and return it; a missing end marker
    # means the inspection would run on pixels that were never captured.
    if fmt == "jpeg" and b"\xff\xd9" not in data[-64:]:
        raise ImageError("truncated JPEG: no end-of-image marker")
    if fmt == "png" and b"IEND" not in data[-32:]:
        raise ImageError("truncated PNG: no IEND chunk")
    if fmt == "bmp" and len(data) >= 6:
        (declared,) = struct.unpack("<I", data[2:6])
        if declared and len(data) < declared:
            raise ImageError(f"truncated BMP: {len(data)} of {declared} bytes")


MAX_SIDE = 1 << 20  # CV_IO_MAX_IMAGE_WIDTH / HEIGHT


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:160] if text else type(exc).__name__


def _checked_size(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """(format, height, width) of bytes that may be decoded, or ImageError."""
    if not data:
        raise ImageError("empty body: no image bytes were sent")
    fmt = sniff(data)
    if fmt is None:
        other = _other_format(data)
        if other:
            raise ImageError(f"unsupported image format {other}: send JPEG, PNG or BMP", 415)
        raise ImageError("not an image: the bytes are not JPEG, PNG or BMP")
    h, w = header_size(data, fmt)
    if h <= 0 or w <= 0:
        raise ImageError(f"corrupt {fmt.upper()}: declared size {w}x{h}")
    if h * w > max_pixels:
        raise ImageError(
            f"image too large: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}", 413
        )
    if max(h, w) > MAX_SIDE:  # OpenCV's own limit: it would raise instead of returning None
        raise ImageError(f"image too large: {w}x{h}, a side exceeds {MAX_SIDE} pixels", 413)
    _check_complete(data, fmt)
    return fmt, h, w


# libjpeg's DCT scaling: 1/2, 1/4, 1/8 of each side, rounded up.
_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def reduced_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """(height, width) libjpeg gives when decoding at 1/factor: each side rounded up."""
    return -(-height // factor), -(-width // factor)


def reduction_factor(
    height: int, width: int, size: tuple[int, int], resize: ResizeMode | str
) -> int:
    """The largest of 8, 4, 2 (else 1) at which a `height` x `width` JPEG can be decoded so that
    preprocessing to `size` (model input, (height, width)) with `resize` still only shrinks it:
    letterbox (either form) and centre crop scale both axes by one ratio, so the reduced image
    must keep that ratio <= 1; a plain resize needs each axis at least the input's."""
    in_h, in_w = size
    for factor in (8, 4, 2):
        rh, rw = reduced_size(height, width, factor)
        if resize in ("letterbox", "letterbox_top_left"):
            fits = min(in_h / rh, in_w / rw) <= 1
        elif resize == "center_crop":
            fits = max(in_h / rh, in_w / rw) <= 1
        else:  # resize: each axis stretched on its own
            fits = rh >= in_h and rw >= in_w
        if fits:
            return factor
    return 1


def _decode(data: bytes, fmt: str, flag: int) -> UInt8Image:
    buf = np.frombuffer(data, np.uint8)
    # Line cameras do not rotate: EXIF orientation would only swap the axes of the boxes.
    try:
        image = cv2.imdecode(buf, flag | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:  # a decoder assertion on hostile bytes is the client's error
        raise ImageError(
            f"corrupt {fmt.upper()}: the decoder refused it ({_first_line(exc)})"
        ) from exc
    if image is None:
        raise ImageError(f"corrupt {fmt.upper()}: the decoder could not read it")
    return image


def decode_image(data: bytes, max_pixels: int, declared_format: str | None = None) -> UInt8Image:
    """Bytes -> BGR uint8 image (H, W, 3), or ImageError with a reason and an HTTP status."""
    del declared_format  # the bytes decide; a mislabelled but valid image is still decoded
    fmt, h, w = _checked_size(data, max_pixels)
    image = _decode(data, fmt, cv2.IMREAD_COLOR)
    if image.shape[:2] != (h, w):
        raise ImageError(
            f"corrupt {fmt.upper()}: header says {w}x{h}, decoded {image.shape[1]}x{image.shape[0]}"
        )
    return image


@dataclass(frozen=True)
class Reduced:
    """An image decoded at 1/`factor` scale, and the size of the original it stands for."""

    image: UInt8Image
    factor: int
    original_size: tuple[int, int]  # (height, width) the header declares


def decode_reduced(
    data: bytes, max_pixels: int, size: tuple[int, int], resize: ResizeMode | str
) -> Reduced:
    """Like `decode_image`, but a JPEG much larger than the model input `size` is decoded at
    1/2, 1/4 or 1/8 scale in the DCT (`reduction_factor`); other formats decode in full. Map
    the preprocessing geometry back with `Geometry.unreduced(factor, original_size)`."""
    fmt, h, w = _checked_size(data, max_pixels)
    factor = reduction_factor(h, w, size, resize) if fmt == "jpeg" else 1
    image = _decode(data, fmt, _REDUCED_FLAGS[factor])
    expected = reduced_size(h, w, factor)
    if image.shape[:2] != expected:
        raise ImageError(
            f"corrupt {fmt.upper()}: header says {w}x{h}, decoded {image.shape[1]}x"
            f"{image.shape[0]} at 1/{factor} scale (expected {expected[1]}x{expected[0]})"
        )
    return Reduced(image, factor, (h, w))

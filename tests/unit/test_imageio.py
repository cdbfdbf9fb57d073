"""Untrusted bytes: every bad input is a precise ImageError with the right HTTP status."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.imageio import ImageError, decode_image, header_size

LIMIT = 40_000_000


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def test_real_jpeg_png_bmp_decode(neu_images: list[Path]) -> None:
    data = neu_images[0].read_bytes()
    image = decode_image(data, LIMIT)
    assert image.shape == (200, 200, 3) and image.dtype == np.uint8
    for ext in (".png", ".bmp"):
        ok, buf = cv2.imencode(ext, image)
        assert ok
        np.testing.assert_array_equal(decode_image(buf.tobytes(), LIMIT), image)
    assert header_size(data, "jpeg") == (200, 200)


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"", 400, "empty body"),
        (b"hello world", 400, "not an image"),
        (b"GIF89a" + b"\x00" * 20, 415, "unsupported image format GIF"),
        (png_header(20000, 20000) + b"\x00" * 100, 413, "20000x20000"),
        (png_header(0, 10), 400, "declared size"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 8, 400, "no IHDR"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", 400, "truncated JPEG"),
        (b"BM" + b"\x00" * 10, 400, "truncated BMP"),
    ],
)
def test_hostile_bytes(data: bytes, status: int, message: str) -> None:
    with pytest.raises(ImageError, match=message) as err:
        decode_image(data, LIMIT)
    assert err.value.status == status


def test_truncated_real_images_are_refused_not_padded(neu_images: list[Path]) -> None:
    data = neu_images[1].read_bytes()
    with pytest.raises(ImageError, match="truncated JPEG"):
        decode_image(data[: len(data) // 2], LIMIT)
    image = decode_image(data, LIMIT)
    _, png = cv2.imencode(".png", image)
    with pytest.raises(ImageError, match="truncated PNG"):
        decode_image(png.tobytes()[:-40], LIMIT)
    _, bmp = cv2.imencode(".bmp", image)
    with pytest.raises(ImageError, match="truncated BMP"):
        decode_image(bmp.tobytes()[:-100], LIMIT)


def test_pixel_limit_checked_before_decoding(neu_images: list[Path]) -> None:
    with pytest.raises(ImageError, match="exceeds the limit of 39999") as err:
        decode_image(neu_images[0].read_bytes(), 39_999)  # 200x200 = 40,000
    assert err.value.status == 413


def test_corrupt_body_with_valid_markers() -> None:
    data = (
        png_header(64, 64)
        + b"\x00\x00\x00\x00IDAT\x00\x00\x00\x00"
        + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    )
    with pytest.raises(ImageError, match="corrupt PNG"):
        decode_image(data, LIMIT)

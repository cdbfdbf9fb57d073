"""Seeded generators of hostile `/v1/predict` requests, built from real images.

Each generator returns (headers, body, params). Kinds: truncated and bit-flipped real JPEG / PNG /
BMP files, foreign magic numbers, headers declaring giant or zero sizes, decompression bombs just
under and over the pixel limit, wrong or missing content types, broken and oversized multipart
bodies, random bytes, empty bodies and hostile query strings.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2

Request = tuple[dict[str, str], bytes, dict[str, str]]

FOREIGN_MAGIC = [
    b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"II*\x00", b"MM\x00*", b"%PDF-1.7",
    b"\x00\x00\x00\x0cjP  ", b"\x00\x00\x00\x18ftypheic", b"<svg", b"PK\x03\x04", b"\x1f\x8b",
]  # fmt: skip
CONTENT_TYPES = [
    "image/jpeg", "image/png", "image/bmp", "application/octet-stream", "image/gif",
    "text/plain", "application/json", "image/webp", "multipart/form-data", "image/jpeg; q=1",
    "IMAGE/JPEG", "", "x/y/z", "image/*", "application/x-www-form-urlencoded",
]  # fmt: skip


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, idat: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)


def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid grey PNG of zeros: tiny on the wire, width*height bytes once decoded."""
    raw = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    data = b"".join(raw.compress(row) for _ in range(height)) + raw.flush()
    return png_header(width, height, data) + _png_chunk(b"IEND", b"")


def jpeg_with_size(real_jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose SOF0/SOF2 frame header claims another size."""
    data = bytearray(real_jpeg)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        i = data.find(marker)
        if i > 0:
            data[i + 5 : i + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
            break
    return bytes(data)


def bmp_header(width: int, height: int) -> bytes:
    header = b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 16, 2835, 2835, 0, 0)
    return header + info + b"\x00" * 16


class Corpus:
    """Real images in the three accepted formats, encoded once."""

    def __init__(self, images: list[Path]) -> None:
        self.files: list[tuple[str, bytes]] = []
        for path in images:
            image = cv2.imread(str(path))
            assert image is not None, path
            for ext, media in (
                (".jpg", "image/jpeg"),
                (".png", "image/png"),
                (".bmp", "image/bmp"),
            ):
                ok, buf = cv2.imencode(ext, image)
                assert ok
                self.files.append((media, buf.tobytes()))
        # Bombs: valid PNGs just under and just over a 40 MP limit, built once (a few seconds).
        self.bomb_under = png_bomb(6000, 6000)
        self.bomb_over = png_bomb(8000, 8000)


def _real(rng: random.Random, corpus: Corpus) -> tuple[str, bytes]:
    return rng.choice(corpus.files)


def truncated(rng: random.Random, corpus: Corpus) -> Request:
    media, data = _real(rng, corpus)
    cut = rng.randrange(0, len(data))
    return {"content-type": media}, data[:cut], {}


def bit_flipped(rng: random.Random, corpus: Corpus) -> Request:
    media, data = _real(rng, corpus)
    buf = bytearray(data)
    for _ in range(rng.randint(1, 64)):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return {"content-type": media}, bytes(buf), {}


def foreign_magic(rng: random.Random, corpus: Corpus) -> Request:
    _, data = _real(rng, corpus)
    magic = rng.choice(FOREIGN_MAGIC)
    return {"content-type": rng.choice(CONTENT_TYPES[:5])}, magic + data[len(magic) :], {}


def giant_dimensions(rng: random.Random, corpus: Corpus) -> Request:
    # zero, or over the limits (40 MP, or a side over OpenCV's 2**20): never a judgeable image
    w = rng.choice([0, 65535, 2**31 - 1, 2**32 - 1, rng.randrange(2**20 + 1, 2**31)])
    h = rng.choice([0, 65535, 2**31 - 1, rng.randrange(2**20 + 1, 2**31)])
    kind = rng.randrange(3)
    if kind == 0:
        body = png_header(w, h, rng.randbytes(rng.randrange(0, 256)))
        media = "image/png"
    elif kind == 1:
        jpegs = [d for m, d in corpus.files if m == "image/jpeg"]
        body, media = jpeg_with_size(rng.choice(jpegs), w, h), "image/jpeg"
    else:
        signed_h = h if rng.random() < 0.5 else -(h & 0x7FFFFFFF)  # BMP heights may be negative
        body = bmp_header(w & 0x7FFFFFFF, max(min(signed_h, 2**31 - 1), -(2**31)))
        media = "image/bmp"
    return {"content-type": media}, body, {}


def bomb(rng: random.Random, corpus: Corpus) -> Request:
    body = corpus.bomb_under if rng.random() < 0.3 else corpus.bomb_over
    return {"content-type": "image/png"}, body, {}


def wrong_content_type(rng: random.Random, corpus: Corpus) -> Request:
    _, data = _real(rng, corpus)
    media = rng.choice(CONTENT_TYPES)
    return ({"content-type": media} if media else {}), data, {}


def broken_multipart(rng: random.Random, corpus: Corpus) -> Request:
    _, data = _real(rng, corpus)
    boundary = rng.choice(["b0undary", "x" * 70, "", "a b", "--", "é"])
    field = rng.choice(["image", "file", "other", "", 'image"; filename="../../etc/passwd'])
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n",
    ]
    if rng.random() < 0.3:  # many parts
        parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nv\r\n'.encode()
                  for i in range(rng.randint(5, 40))]  # fmt: skip
    body = b"".join(parts)
    if rng.random() < 0.7:
        body += f"--{boundary}--\r\n".encode()
    if rng.random() < 0.3:
        body = body[: rng.randrange(len(body))]
    header_boundary = boundary if rng.random() < 0.8 else "different"
    ctype = rng.choice([f"multipart/form-data; boundary={header_boundary}", "multipart/form-data"])
    return {"content-type": ctype}, body, {}


def huge_multipart(rng: random.Random, corpus: Corpus) -> Request:
    size = rng.choice([2 * 1024 * 1024 + 1, 3 * 1024 * 1024, 8 * 1024 * 1024])
    body = (
        b'--B\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n\r\n'
        + b"\xff" * size
        + b"\r\n--B--\r\n"
    )
    return {"content-type": "multipart/form-data; boundary=B"}, body, {}


def random_bytes(rng: random.Random, corpus: Corpus) -> Request:
    del corpus
    return {"content-type": rng.choice(CONTENT_TYPES)}, rng.randbytes(rng.randrange(0, 65536)), {}


def empty(rng: random.Random, corpus: Corpus) -> Request:
    del corpus
    return {"content-type": rng.choice(CONTENT_TYPES[:4])}, b"", {}


def hostile_params(rng: random.Random, corpus: Corpus) -> Request:
    media, data = _real(rng, corpus)
    value = rng.choice(["", " ", "../../etc/passwd", "x" * 5000, "\x00", "%00", "neu-cls-demo\n",
                        "ü", "{}", "-1", "1e309", "NaN"])  # fmt: skip
    key = rng.choice(["model", "conf", "threshold", "max_detections", "debug", "model[]"])
    return {"content-type": media}, data, {key: value}


# kind -> (generator, how many of the 10,000): oversized bodies are few because each is megabytes
KINDS: dict[str, tuple[Callable[[random.Random, Corpus], Request], int]] = {
    "truncated": (truncated, 2000),
    "bit_flipped": (bit_flipped, 1500),
    "foreign_magic": (foreign_magic, 800),
    "giant_dimensions": (giant_dimensions, 1500),
    "bomb": (bomb, 20),
    "wrong_content_type": (wrong_content_type, 1000),
    "broken_multipart": (broken_multipart, 1200),
    "huge_multipart": (huge_multipart, 30),
    "random_bytes": (random_bytes, 850),
    "empty": (empty, 300),
    "hostile_params": (hostile_params, 800),
}


def requests(corpus: Corpus, seed: int = 0) -> list[tuple[str, Request]]:
    rng = random.Random(seed)
    out = [(kind, gen(rng, corpus)) for kind, (gen, n) in KINDS.items() for _ in range(n)]
    rng.shuffle(out)
    return out

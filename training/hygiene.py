"""Dataset hygiene: which images show the same physical part, so a split keeps them together.

One module for every trainer (classifier, detector, anomaly/supervised): a perceptual hash for
near duplicates, the exposure-bracket rule for parts shot several times, and the union of both
as one group id per image. A split that separates two images of one part measures the model on
parts it has seen (on magnetic tiles that leak lifted validation AUROC from 0.78 to 0.88).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

# pHash Hamming distance (of 64 bits) that counts as a near duplicate. 8 finds only real
# duplicates on NEU (dHash and larger distances join unrelated low-contrast textures).
NEAR_DUPLICATE_BITS = 8
# The magnetic-tile split (its file list is recorded in the shipped cards) was made with 4;
# the exposure-bracket rule finds those tiles' siblings, so the pHash part matters little there.
TILE_NEAR_BITS = 4

# `exp<exposure>_num_<frame>` (the magnetic-tile set): the exposures of one part have frame
# numbers a few dozen apart (gaps <= 40 inside a tile), different parts hundreds apart; 60 leaves
# a margin and still separates parts. pHash alone misses many of these siblings.
EXPOSURE_BRACKET = re.compile(r"exp\d+_num_(\d+)", re.IGNORECASE)
BRACKET_GAP = 60


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def phash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash: robust to re-encoding, brightness shifts and resizing.

    Chosen over dHash because on low-contrast textures (steel, tiles) dHash calls unrelated
    images of different classes near-duplicates; pHash at 8 bits finds only real ones on NEU.
    """
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


def near_pairs(hashes: Sequence[int] | np.ndarray, max_bits: int) -> Iterator[tuple[int, int]]:
    """(i, j), i < j, of every pair whose pHashes differ in at most `max_bits` bits; computed
    block-wise so memory stays small."""
    arr = np.asarray(hashes, dtype=np.uint64).view(np.uint8).reshape(-1, 8)
    for start in range(0, len(arr), 512):
        block = arr[start : start + 512]
        dist = np.unpackbits(np.bitwise_xor(block[:, None, :], arr[None, :, :]), axis=2).sum(2)
        for a, b in zip(*np.nonzero(dist <= max_bits), strict=True):
            i, j = start + int(a), int(b)
            if i < j:
                yield i, j


def bracket_groups(names: Sequence[str], gap: int = BRACKET_GAP) -> list[list[int]]:
    """Indices of `exp<N>_num_<frame>` names chained by frame numbers at most `gap` apart: the
    exposures of one part. Names without that pattern are in no group."""
    frames = sorted(
        (int(m.group(1)), i) for i, name in enumerate(names) if (m := EXPOSURE_BRACKET.search(name))
    )
    groups: list[list[int]] = []
    last: int | None = None
    for frame, i in frames:
        if last is not None and frame - last <= gap:
            groups[-1].append(i)
        else:
            groups.append([i])
        last = frame
    return [sorted(g) for g in groups if len(g) > 1]


def part_groups(
    hashes: Sequence[int] | np.ndarray, names: Sequence[str] | None, max_bits: int
) -> list[int]:
    """One group id per image: near duplicates (pHash within `max_bits`) and exposure brackets
    (by file name, when `names` are given) joined transitively."""
    sets = UnionFind(len(hashes))
    for i, j in near_pairs(hashes, max_bits):
        sets.union(i, j)
    for group in bracket_groups(names) if names is not None else []:
        for i in group[1:]:
            sets.union(group[0], i)
    return [sets.find(i) for i in range(len(hashes))]

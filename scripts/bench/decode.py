"""Full vs reduced-scale JPEG decoding (issue 15 item 2): time and effect on what is served.

    python -m scripts.bench.decode
    python -m scripts.bench.decode --images 200 --repeat 5

For each image set and shipped model whose input is small enough for libjpeg's DCT scaling
(`service.imageio.reduction_factor`), the HTTP path's decode + preprocess (`api.predict._prepare`)
is timed with `reduced_decode` off and on (one OpenCV thread, best of `--repeat`), and both
tensors are judged by the same model: verdict changes, largest score difference (classifier
probabilities, anomaly score, detection confidence of matched boxes; for anomaly models also
the relative difference of the raw distance, since the normalised score saturates), smallest IoU of a box with
its match in original pixels, and boxes found by only one of the two. Image sets: NEU steel
(200x200), magnetic tile (about 120-600 px a side), frames of the 1280x720 conveyor clip
encoded as JPEG quality 90. The detector runs at 320 px (`harness.at_size`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from scripts.harness import DATA_ENV, REPO, at_size, clip_frame_jpeg, data_root
from service.api.predict import _prepare
from service.core.types import Result
from service.imageio import header_size, reduction_factor
from service.inference.model import Model, load_model
from service.inference.runner import run_batch

MAX_PIXELS = 40_000_000
# The parity tolerances of tests/training/test_detector.py; verdicts must not change.
MIN_IOU = 0.99
MAX_SCORE_DIFF = 1e-3


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass
class Diff:
    images: int = 0
    reduced: int = 0  # images decoded at a reduced scale
    factors: set[int] = field(default_factory=set)
    verdict_changes: int = 0
    max_score_diff: float = 0.0
    max_raw_rel: float = 0.0  # anomaly models: relative difference of the raw distance
    min_iou: float = 1.0
    unmatched_boxes: int = 0
    full_s: float = 0.0
    reduced_s: float = 0.0

    @property
    def within(self) -> bool:
        return (
            self.verdict_changes == 0
            and self.unmatched_boxes == 0
            and self.max_score_diff <= MAX_SCORE_DIFF
            and self.max_raw_rel <= MAX_SCORE_DIFF
            and self.min_iou >= MIN_IOU
        )


def compare(full: Result, red: Result, diff: Diff) -> None:
    """Accumulate the differences of two results of one image into `diff`."""
    a, b = full.prediction, red.prediction
    assert a.image_size == b.image_size, (a.image_size, b.image_size)
    diff.verdict_changes += full.decision.verdict != red.decision.verdict
    if a.probabilities is not None and b.probabilities is not None:
        d = float(np.abs(a.probabilities - b.probabilities).max())
        diff.max_score_diff = max(diff.max_score_diff, d)
    if a.anomaly is not None and b.anomaly is not None:
        diff.max_score_diff = max(diff.max_score_diff, abs(a.anomaly.score - b.anomaly.score))
        # the normalised score saturates at 0 and 1: the raw distance shows what moved
        rel = abs(a.anomaly.raw - b.anomaly.raw) / max(abs(a.anomaly.raw), 1e-9)
        diff.max_raw_rel = max(diff.max_raw_rel, rel)
    if a.detections is not None and b.detections is not None:
        da, db = a.detections, b.detections
        taken: set[int] = set()
        if len(da.confidence) and len(db.confidence):
            m = iou(da.xyxy, db.xyxy)
            m[da.class_id[:, None] != db.class_id[None, :]] = 0
            for i in np.argsort(-da.confidence):
                j = int(np.argmax(np.where(np.isin(np.arange(m.shape[1]), list(taken)), -1, m[i])))
                if m[i, j] <= 0 or j in taken:
                    diff.unmatched_boxes += 1
                    continue
                taken.add(j)
                diff.min_iou = min(diff.min_iou, float(m[i, j]))
                d = abs(float(da.confidence[i]) - float(db.confidence[j]))
                diff.max_score_diff = max(diff.max_score_diff, d)
        else:
            diff.unmatched_boxes += len(da.confidence)
        diff.unmatched_boxes += len(db.confidence) - len(taken)


def judge(model: Model, data: bytes, reduced: bool) -> Result:
    tensor, geometry, times = _prepare(model, data, MAX_PIXELS, reduced)
    out = run_batch(model, [tensor], [geometry], [times])[0]
    if isinstance(out, Exception):
        raise out
    return out


def best_s(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Best time of each function, run in turn `repeat` times after one warm-up each (the two
    paths alternate, so neither gets the warmer cache)."""
    best = [float("inf")] * len(fns)
    for fn in fns:
        fn()
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def measure(model: Model, blobs: list[bytes], repeat: int) -> Diff:
    spec = model.spec.preprocess
    diff = Diff()
    for data in blobs:
        h, w = header_size(data, "jpeg")
        f = reduction_factor(h, w, spec.size, spec.resize)
        diff.images += 1
        diff.reduced += f > 1
        diff.factors.add(f)
        full_s, reduced_s = best_s(
            [
                lambda d=data: _prepare(model, d, MAX_PIXELS, False),
                lambda d=data: _prepare(model, d, MAX_PIXELS, True),
            ],
            repeat,
        )
        diff.full_s += full_s
        diff.reduced_s += reduced_s
        compare(judge(model, data, False), judge(model, data, True), diff)
    return diff


def image_sets(n: int, tmp: Path) -> dict[str, list[bytes]]:
    root = data_root()
    neu = sorted((root / "neu-det" / "IMAGES").glob("*.jpg"))
    tiles = sorted((root / "magnetic-tile").glob("MT_*/Imgs/*.jpg"))
    clip = root / "video" / "checkweigher_conveyor_h264_1280x720.mp4"
    if not neu or not tiles or not clip.is_file():
        raise SystemExit(f"data not found under {root} (set {DATA_ENV})")
    step = max(len(tiles) // n, 1)
    frames = [clip_frame_jpeg(clip, i, tmp / f"f{i}.jpg") for i in range(0, 5 * min(n, 40), 5)]
    return {
        "neu 200x200": [p.read_bytes() for p in neu[:: max(len(neu) // n, 1)][:n]],
        "tile": [p.read_bytes() for p in tiles[::step][:n]],
        "clip 1280x720 q90": [p.read_bytes() for p in frames],
    }


def main() -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench.decode", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--images", type=int, default=100, help="images per set (clip: at most 40)")
    p.add_argument("--repeat", type=int, default=3, help="timings per image, best kept")
    args = p.parse_args()
    cv2.setNumThreads(1)  # one preprocessing thread, like one HTTP worker
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = {
            "neu-det-demo@320": load_model(at_size(REPO / "models/neu-det-demo.onnx", 320, tmp)),
            "neu-cls-demo": load_model(REPO / "models/neu-cls-demo.onnx"),
            "mt-defect": load_model(REPO / "models/mt-defect.onnx"),
        }
        sets = image_sets(args.images, tmp)
        print(
            f"{'images':<18} {'model':<17} {'n':>4} {'reduced':>8} {'factors':<8} "
            f"{'full ms':>8} {'reduced ms':>10} {'saved':>6} {'verdicts':>8} "
            f"{'max score d':>11} {'raw rel d':>9} {'min IoU':>8} {'unmatched':>9}  within"
        )
        all_within = True
        for set_name, blobs in sets.items():
            for model_name, model in models.items():
                d = measure(model, blobs, args.repeat)
                full_ms, red_ms = d.full_s * 1000 / d.images, d.reduced_s * 1000 / d.images
                saved = 1 - red_ms / full_ms
                all_within &= d.within
                print(
                    f"{set_name:<18} {model_name:<17} {d.images:>4} {d.reduced:>8} "
                    f"{','.join(map(str, sorted(d.factors))):<8} {full_ms:>8.2f} {red_ms:>10.2f} "
                    f"{saved:>6.0%} {d.verdict_changes:>8} {d.max_score_diff:>11.4f} "
                    f"{d.max_raw_rel:>9.4f} {d.min_iou:>8.3f} {d.unmatched_boxes:>9}  {'yes' if d.within else 'NO'}"
                )
        print(
            f"tolerances: verdicts unchanged, score within {MAX_SCORE_DIFF}, IoU >= {MIN_IOU}, "
            f"no unmatched box: {'all within' if all_within else 'NOT all within'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

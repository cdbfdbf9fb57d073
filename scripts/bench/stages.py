"""CPU cost per frame of each stage around the model, measured alone on one thread.

    python -m scripts.bench.stages
    python -m scripts.bench.stages --sizes 320,640 --frames 200

What the line and the HTTP path spend per frame besides `session.run`, so that a benchmark's
ratio against a bare session can be checked against its floor: a session fed preprocessed
tensors never decodes H.264, never decodes a JPEG and never letterboxes. Stages:
- video decode: `cv2.VideoCapture.read()` on the clip (FFmpeg H.264 decode + conversion to
  BGR), what a camera thread does per frame;
- JPEG decode: `cv2.imdecode` of one frame of the clip encoded at quality 90, what an HTTP
  request does;
- preprocess at each size: lineinspect's letterbox (rect, stride 32) + colour + scale.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cv2

from scripts.harness import DATA_ENV, data_root
from service.inference.preprocess import PreprocessSpec, preprocess

CLIP = data_root() / "video" / "checkweigher_conveyor_h264_1280x720.mp4"


def per_call_ms(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call, after two warm-up calls."""
    fn()
    fn()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return (time.process_time() - c0) * 1000 / n, (time.perf_counter() - t0) * 1000 / n


def main() -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench.stages", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--source", type=Path, default=CLIP)
    p.add_argument("--sizes", default="320,640")
    p.add_argument("--frames", type=int, default=200)
    args = p.parse_args()
    if not args.source.is_file():
        raise SystemExit(f"clip not found: {args.source} (set {DATA_ENV})")
    cv2.setNumThreads(1)  # one thread, like one preprocessing worker

    cap = cv2.VideoCapture(str(args.source))

    def read() -> None:
        ok, _ = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)

    rows = [("video decode (H.264 -> BGR)", *per_call_ms(read, args.frames))]
    cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, frame = cap.read()
    cap.release()
    if not ok:
        raise SystemExit(f"{args.source} has fewer than 101 frames")
    h, w = frame.shape[:2]
    jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
    rows.append(
        (
            f"JPEG decode ({len(jpeg):,} bytes)",
            *per_call_ms(lambda: cv2.imdecode(jpeg, cv2.IMREAD_COLOR), args.frames),
        )
    )
    for size in (int(s) for s in args.sizes.split(",") if s):
        spec = PreprocessSpec(
            (size, size), "letterbox", "rgb", 1 / 255, (0.0,) * 3, (1.0,) * 3, stride=32
        )
        shape = preprocess(frame, spec)[0].shape
        rows.append(
            (
                f"preprocess -> {shape[1]}x{shape[2]}",
                *per_call_ms(lambda spec=spec: preprocess(frame, spec), args.frames),
            )
        )
    print(f"frame {w}x{h} from {args.source.name}, {args.frames} calls per stage, one thread")
    print(f"{'stage':<34} {'CPU ms':>8} {'wall ms':>8}")
    for name, cpu, wall in rows:
        print(f"{name:<34} {cpu:>8.2f} {wall:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

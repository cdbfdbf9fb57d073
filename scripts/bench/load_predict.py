"""Load test of `POST /v1/predict` with a real HTTP load generator (wrk), level by level.

    python -m scripts.bench.load_predict                          # shipped detector, a NEU JPEG
    python -m scripts.bench.load_predict --size 640 --clip-frame 100 \
        --image ../shared/data/video/checkweigher_conveyor_h264_1280x720.mp4 \
        --clients 1,4,16,64 --seconds 20 --json build/load_predict.json

The server is a separate `python -m service serve` process on a free loopback port (uvicorn,
uvloop, httptools, as deployed). wrk (Debian's `wrk`, C, one thread) keeps `clients` connections
busy, each POSTing the same real JPEG body with `content-type: image/jpeg`, for `--seconds` per
level after a short unmeasured warm-up at that level. Per level: req/s, latency p50/p90/p99 (wrk's
own histogram, from send to the last byte of the response), non-2xx responses and socket errors,
and the server's CPU seconds per request. The server's RSS is read before the first level and
after the last (VmRSS), with its peak (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import httpx

from scripts.bench.wrk import measure_level, write_lua
from scripts.harness import (
    REPO,
    at_size,
    clip_frame_jpeg,
    data_root,
    proc_status_mb,
    start_server,
    stop_server,
)


def main() -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench.load_predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, default=REPO / "models" / "neu-det-demo.onnx")
    p.add_argument(
        "--image", type=Path, default=data_root() / "neu-det" / "IMAGES" / "scratches_1.jpg"
    )
    p.add_argument("--clients", default="1,4,16,64", help="concurrency levels")
    p.add_argument("--seconds", type=float, default=20, help="measured seconds per level")
    p.add_argument(
        "--clip-frame",
        type=int,
        help="--image is a video: send its frame N as a JPEG (quality 90), as bench.peers",
    )
    p.add_argument(
        "--size", type=int, help="run a dynamic-size detector at this input size (a copy)"
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.clip_frame is not None:
            args.image = clip_frame_jpeg(args.image, args.clip_frame, Path(tmp) / "frame.jpg")
        if args.image.suffix.lower() not in (".jpg", ".jpeg"):
            raise SystemExit("--image must be a JPEG (the body is sent as image/jpeg)")
        if args.size:
            args.model = at_size(args.model, args.size, Path(tmp))
        lua = write_lua(Path(tmp))
        server, url = start_server(args.model)
        try:
            pid = server.pid
            # A few requests first: the first ones pay for lazy imports and allocations.
            with httpx.Client(base_url=url, timeout=60) as c:
                for _ in range(5):
                    c.post("/v1/predict", content=args.image.read_bytes(),
                           headers={"content-type": "image/jpeg"}).raise_for_status()  # fmt: skip
            rss_before = proc_status_mb(pid, "VmRSS")
            rows = [
                measure_level(url, pid, args.image, int(c), args.seconds, lua)
                for c in args.clients.split(",")
            ]
            rss_after = proc_status_mb(pid, "VmRSS")
            peak = proc_status_mb(pid, "VmHWM")
        finally:
            stop_server(server)
        body_bytes = args.image.stat().st_size

    print(f"model {args.model.name}, body {args.image.name} ({body_bytes} bytes), "
          f"{args.seconds:.0f} s per level, wrk -t1, server pid {pid}")  # fmt: skip
    print(f"{'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
          f"{'sock err':>8} {'CPU ms/req':>10} {'RSS MB':>7} {'load1':>6}")  # fmt: skip
    for r in rows:
        print(f"{r['clients']:>7} {r['req_per_s']:>8.1f} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['non2xx']:>8} {r['socket_errors']:>8} "
              f"{r['server_cpu_s_per_req'] * 1000:>10.2f} {r['server_rss_mb']:>7.1f} "
              f"{r['load1_before']:>6.2f}")  # fmt: skip
    print(f"server RSS before {rss_before:.1f} MB, after {rss_after:.1f} MB, peak {peak:.1f} MB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": str(args.model), "image": str(args.image), "seconds": args.seconds,
            "rss_before_mb": rss_before, "rss_after_mb": rss_after, "peak_rss_mb": peak,
            "levels": rows,
        }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

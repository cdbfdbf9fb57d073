"""Benchmark: raw ONNX Runtime `session.run` vs lineinspect's in-process predict vs the whole
`POST /v1/predict` round trip, on the same model and the same real image, printed as ratios.

    python -m scripts.bench.predict                        # demo model, a NEU image
    python -m scripts.bench.predict --model M.onnx --image I.jpg --n 500 --clients 1,4,16

Latencies are per image. The HTTP server runs as a separate `lineinspect serve` process on
loopback; the load generator shares the machine's cores with it, as it would on an edge box.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from scripts.harness import REPO, data_root, pct, start_server, stop_server
from service.imageio import decode_image
from service.inference.model import load_model
from service.inference.runtime import RuntimeOptions, import_onnxruntime


def timed(fn: Callable[[], object], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def row(name: str, lat: list[float], wall: float, count: int) -> dict[str, float | str]:
    return {
        "path": name,
        "p50_ms": pct(lat, 50) * 1000,
        "p99_ms": pct(lat, 99) * 1000,
        "mean_ms": statistics.fmean(lat) * 1000,
        "throughput_per_s": count / wall,
    }


def http_load(url: str, data: bytes, clients: int, total: int) -> tuple[list[float], float]:
    per_client = max(1, total // clients)
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker() -> None:
        headers = {"content-type": "image/jpeg"}
        mine = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(5):  # warm the connection
                client.post("/v1/predict", content=data, headers=headers).raise_for_status()
            barrier.wait()
            for _ in range(per_client):
                t0 = time.perf_counter()
                client.post("/v1/predict", content=data, headers=headers).raise_for_status()
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=REPO / "models" / "neu-cls-demo.onnx")
    parser.add_argument(
        "--image", type=Path, default=data_root() / "neu-det" / "IMAGES" / "scratches_1.jpg"
    )
    parser.add_argument("--n", type=int, default=500, help="measured iterations per path")
    parser.add_argument("--clients", default="1,4,16", help="HTTP concurrency levels")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    data = args.image.read_bytes()
    image = decode_image(data, 100_000_000)
    model = load_model(args.model, RuntimeOptions(warmup_runs=5))
    tensor = model.preprocess(image)[0][None]
    ort = import_onnxruntime()
    # Raw: a plain session with ONNX Runtime's defaults, fed the same preprocessed tensor.
    raw = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    feed = {raw.get_inputs()[0].name: tensor}

    rows = []
    t0 = time.perf_counter()
    lat = timed(lambda: raw.run(None, feed), args.n)
    rows.append(row("raw session.run (preprocessed tensor)", lat, time.perf_counter() - t0, args.n))
    t0 = time.perf_counter()
    lat = timed(lambda: model.predict([image]), args.n)
    rows.append(row("in-process predict (decoded image)", lat, time.perf_counter() - t0, args.n))
    t0 = time.perf_counter()
    lat = timed(lambda: model.predict([decode_image(data, 100_000_000)]), args.n)
    rows.append(
        row("in-process decode + predict (JPEG bytes)", lat, time.perf_counter() - t0, args.n)
    )

    server, url = start_server(args.model)
    try:
        for clients in (int(c) for c in args.clients.split(",")):
            lat, wall = http_load(url, data, clients, args.n)
            rows.append(row(f"HTTP POST /v1/predict, {clients} client(s)", lat, wall, len(lat)))
    finally:
        stop_server(server)

    base = rows[0]
    h, w = image.shape[:2]
    print(
        f"model {model.spec.name} {model.spec.version} input {model.spec.preprocess.size}, "
        f"image {args.image.name} {w}x{h}, {args.n} iterations, providers {model.providers}"
    )
    print(
        f"{'path':<44} {'p50 ms':>8} {'p99 ms':>8} {'img/s':>8} {'p50 x raw':>10} {'img/s x raw':>12}"
    )
    for r in rows:
        print(
            f"{r['path']:<44} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['throughput_per_s']:>8.1f} "
            f"{float(r['p50_ms']) / float(base['p50_ms']):>10.2f} "
            f"{float(r['throughput_per_s']) / float(base['throughput_per_s']):>12.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Local ONNX Runtime against the same model on a Triton Inference Server on loopback: what the
protocol costs per frame (issue 15). The server is pytriton's tritonserver
(scripts/dev/triton_server.py, in .venv-triton), serving a repository written by
`lineinspect models export-triton`, its ONNX Runtime session on one thread; the local session
gets one thread too, so the difference is serialisation, the wire and Triton's scheduling.

    python -m scripts.bench.triton                                  # the shipped detector
    python -m scripts.bench.triton --model models/neu-cls-demo.onnx --batches 1,8

For each batch size, the same preprocessed frames of the conveyor clip go through, interleaved
round by round: `local` (session.run in this process), `grpc` and `http` (lineinspect's Triton
session, tritonclient). Columns: ms per frame (median of the rounds), this process's CPU
seconds per frame, and the server's (its whole process tree: tritonserver and the Python
backend stub running ONNX Runtime). Run on a quiet machine: both sides share its cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scripts.harness import REPO, TritonServer, cpu_seconds, data_root, load1
from service.cli import main as cli_main
from service.inference.model import load_model
from service.inference.runtime import CPU, RuntimeOptions
from service.inference.triton import TritonOptions

CLIP = "video/checkweigher_conveyor_h264_1280x720.mp4"


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU so far of a process and all its descendants (the server's Python,
    tritonserver and the backend stubs)."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(cpu_seconds(p.pid) for p in procs)


def frames(n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(data_root() / CLIP))
    out = []
    while len(out) < n:
        ok, image = cap.read()
        if not ok:
            break
        out.append(image)
    cap.release()
    return out


def timed(run: Any, batches: list[np.ndarray], server_pid: int) -> tuple[float, float, float]:
    """(wall s, this process's CPU s, the server's CPU s) for running every batch once."""
    c0, s0, t0 = time.process_time(), tree_cpu_seconds(server_pid), time.perf_counter()
    for batch in batches:
        run(batch)
    wall = time.perf_counter() - t0
    return wall, time.process_time() - c0, tree_cpu_seconds(server_pid) - s0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "models" / "neu-det-demo.onnx")
    p.add_argument("--batches", default="1,8", help="batch sizes")
    p.add_argument("--frames", type=int, default=64, help="frames per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    assert cli_main(["models", "export-triton", str(args.model), "--out", str(work / "repo")]) == 0
    server = TritonServer(work / "repo", work / "triton.log")
    server.start()
    assert server.proc is not None
    try:
        opts = RuntimeOptions(providers=(CPU,), intra_op_threads=1, warmup_runs=3)
        models = {"local": load_model(args.model, opts)}
        for protocol in ("grpc", "http"):
            triton = TritonOptions(url=server.url(protocol), protocol=protocol, max_batch=8)
            models[protocol] = load_model(args.model, RuntimeOptions(
                providers=(CPU,), warmup_runs=3, triton=triton))  # fmt: skip
        local = models["local"]
        tensors = [local.preprocess(f)[0] for f in frames(args.frames)]
        shape = tensors[0].shape
        tensors = [t for t in tensors if t.shape == shape]  # one letterbox shape per batch
        rows = []
        print(f"model {args.model.name}, input {list(shape)}, {len(tensors)} frames a round, "
              f"{args.rounds} rounds, load1 {load1():.2f}")  # fmt: skip
        for size in [int(b) for b in args.batches.split(",")]:
            batches = [np.stack(tensors[i : i + size]) for i in range(0, len(tensors), size)]
            batches = [b for b in batches if len(b) == size]
            n = sum(len(b) for b in batches)
            per: dict[str, list[tuple[float, float, float]]] = {k: [] for k in models}
            for _ in range(args.rounds):
                for name, model in models.items():
                    per[name].append(timed(model.run, batches, server.proc.pid))
            for name, samples in per.items():
                walls = [w / n * 1000 for w, _, _ in samples]
                rows.append({
                    "path": name, "batch": size, "ms_per_frame": statistics.median(walls),
                    "client_cpu_s_per_frame": statistics.median(c / n for _, c, _ in samples),
                    "server_cpu_s_per_frame": statistics.median(s / n for _, _, s in samples),
                })  # fmt: skip
        base = {r["batch"]: r["ms_per_frame"] for r in rows if r["path"] == "local"}
        print("| path | batch | ms/frame | vs local | + ms/frame | client CPU s/frame | "
              "server CPU s/frame |\n|---|---:|---:|---:|---:|---:|---:|")  # fmt: skip
        for r in rows:
            b = base[r["batch"]]
            print(f"| {r['path']} | {r['batch']} | {r['ms_per_frame']:.2f} | "
                  f"{r['ms_per_frame'] / b:.2f}x | {r['ms_per_frame'] - b:+.2f} | "
                  f"{r['client_cpu_s_per_frame']:.4f} | {r['server_cpu_s_per_frame']:.4f} |")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

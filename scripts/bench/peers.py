"""lineinspect against its peers, in one run, on the same machine, model, input size and frames.

    python -m scripts.bench.peers --models models/neu-det-demo.onnx --sizes 320,640
    python -m scripts.bench.peers --models build/issue6/det-320.onnx,build/issue6/det-640.onnx
    python -m scripts.bench.peers --models M.onnx --paths raw,line --frames 744 --json out.json

Paths, each measured in its own process so that CPU seconds and peak RSS belong to that path:
- raw: a plain `InferenceSession` with ONNX Runtime's default options, batch 1, fed frames of
  the clip decoded and preprocessed beforehand (in chunks of 16, outside the timed region) with
  lineinspect's own preprocessing (the rect letterbox for a dynamic-size detector: 1280x720 ->
  640x384). The issue's "limit". References, not peers: `raw b8` (the same session fed
  batches of 8: what batching alone buys on this CPU), `raw b1 square` (the full-square
  letterbox lineinspect fed before the rect letterbox) and `raw Nx1 thread` (a session with
  one intra-op thread, run by N threads at once, one per core: what lineinspect's parallel
  runs do, without capture, decoding or publishing: the real limit of the line).
- line: the clip played as a camera as fast as it goes (buffer policy `block`, nothing dropped)
  through capture (H.264 decode) -> preprocessing -> inference (batched) -> decision -> SQLite
  outbox -> a real mosquitto -> a real subscriber in this process, where verdicts are counted
  and frame -> verdict latency is taken (capture timestamp in the payload vs arrival). The
  service runs in a child process; mosquitto and the subscriber are not in its CPU figures.
  Flat out, its latency is mostly time queued in the buffers; `line @50% load` plays the clip
  paced at half the throughput just measured, for the frame -> verdict latency of a line that
  keeps up.
- http1 / http16: `POST /v1/predict` through a real uvicorn (`python -m service serve`), driven
  by wrk with 1 and 16 connections, body: one frame of the clip as a JPEG (quality 90). CPU and
  RSS are the server's; the latency is wrk's (send to last byte).
- http-reduced: the same with `api.reduced_decode` on (the JPEG decoded at 1/2-1/8 scale in
  libjpeg where the model input allows; off by default, docs/BENCHMARKS.md "reduced-scale").
- ultralytics: Ultralytics' own loop, `YOLO(onnx, task="detect").predict(frame)` per frame read
  with cv2.VideoCapture (offline as in training/detect.py). Latency: the predict call; throughput:
  frames / wall time, decode included (as in the line).

Columns: frames/s, p50/p99 latency (ms), process CPU seconds per frame (all threads), peak RSS
(VmHWM, MB), and the 1-minute load average when the path started.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scripts.bench.wrk import measure_level, write_lua, wrk_exe
from scripts.harness import (
    REPO,
    Broker,
    Subscriber,
    at_size,
    clip_frame_jpeg,
    data_root,
    load1,
    pct,
    proc_status_mb,
    start_server,
    stop_server,
)

CLIP = data_root() / "video" / "checkweigher_conveyor_h264_1280x720.mp4"
ALL_PATHS = ("raw", "line", "http", "http-reduced", "ultralytics")


def clip_length(source: Path) -> int:
    cap = cv2.VideoCapture(str(source))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def summary(
    frames: int, wall: float, lat_ms: list[float], cpu_s: float, peak_mb: float, la: float
) -> dict[str, float]:
    return {
        "frames": frames,
        "fps": frames / wall,
        "p50_ms": pct(lat_ms, 50),
        "p99_ms": pct(lat_ms, 99),
        "cpu_s_per_frame": cpu_s / frames,
        "peak_rss_mb": peak_mb,
        "load1": la,
    }


# -- workers: each runs in its own process and prints one JSON line last


def worker_raw(model_path: Path, source: Path, frames: int) -> dict[str, Any]:
    import onnxruntime as ort

    from service.inference.preprocess import preprocess
    from service.inference.registry import resolve
    from service.inference.runtime import usable_cores

    la = load1()
    # One plain session with ONNX Runtime's defaults; lineinspect's preprocessing (the
    # Ultralytics-exact letterbox, spec read from the same session) makes its input tensors.
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    served = resolve(model_path, session, None).preprocess
    name = session.get_inputs()[0].name
    cap = cv2.VideoCapture(str(source))
    rows: dict[str, Any] = {}
    # The tensors lineinspect feeds (the rect letterbox for a dynamic-size detector), batch 1
    # and 8; and, for reference, the full square that it fed before the rect letterbox.
    variants = [("raw b1", served, 1, session, 1), ("raw b8", served, 8, session, 1)]
    if served.stride:
        square = dataclasses.replace(served, stride=None)
        variants.append(("raw b1 square", square, 1, session, 1))
    # What lineinspect does on a CPU (runtime.parallel_runs auto): one single-threaded run per
    # core at once, batch 1. A reference for the technique, not the plain-session limit.
    cores = usable_cores()
    if cores > 1:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        single = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        variants.append((f"raw {cores}x1 thread", served, 1, single, cores))
    for label, spec, batch, sess, threads in variants:
        pool = ThreadPoolExecutor(threads)

        def timed_run(x: np.ndarray, sess: Any = sess) -> float:
            t1 = time.perf_counter()
            sess.run(None, {name: x})
            return (time.perf_counter() - t1) * 1000

        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        lat: list[float] = []
        wall = cpu = 0.0
        done = 0
        warm = False
        while done < frames:
            chunk = []
            while len(chunk) < min(16, frames - done):
                ok, image = cap.read()
                if not ok:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                chunk.append(preprocess(image, spec)[0])
            feeds = [np.stack(chunk[i : i + batch]) for i in range(0, len(chunk), batch)]
            if not warm:
                for _ in range(3):
                    sess.run(None, {name: feeds[0]})
                warm = True
            c0, t0 = time.process_time(), time.perf_counter()
            if threads == 1:
                lat.extend(timed_run(x) for x in feeds)
            else:
                lat.extend(pool.map(timed_run, feeds))
            wall += time.perf_counter() - t0
            cpu += time.process_time() - c0
            done += len(chunk)
        pool.shutdown()
        rows[label] = summary(done, wall, lat, cpu, proc_status_mb(os.getpid(), "VmHWM"), la)
    cap.release()
    return rows


def worker_ultralytics(model_path: Path, source: Path, frames: int, size: int) -> dict[str, Any]:
    from training.detect import prepare_offline

    prepare_offline(threads=None)  # offline; no thread cap: let it use the machine as it would
    from ultralytics import YOLO

    la = load1()
    yolo = YOLO(str(model_path), task="detect")
    cap = cv2.VideoCapture(str(source))
    _, first = cap.read()
    for _ in range(3):
        yolo.predict(first, imgsz=size, verbose=False)
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    lat: list[float] = []
    stages: dict[str, list[float]] = {}
    n = 0
    c0, t0 = time.process_time(), time.perf_counter()
    while n < frames:
        ok, image = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        t1 = time.perf_counter()
        result = yolo.predict(image, imgsz=size, verbose=False)[0]
        lat.append((time.perf_counter() - t1) * 1000)
        for stage, ms in result.speed.items():  # its own split: preprocess, inference, postprocess
            stages.setdefault(stage, []).append(ms)
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cap.release()
    peak = proc_status_mb(os.getpid(), "VmHWM")
    row = summary(n, wall, lat, cpu, peak, la)
    row |= {f"{stage}_p50_ms": pct(ms, 50) for stage, ms in stages.items()}
    return {"ultralytics": row}


def worker_line(config: Path) -> dict[str, Any]:
    """Start the service (models first, then the line), report CPU/RSS when told to stop."""
    from service.app import LineInspect
    from service.config import load_settings

    service = LineInspect(load_settings(config, {}))
    service.served.start()  # loading and warming the model is not part of the measurement
    c0 = time.process_time()
    service.start_line()
    service.started = True
    print("STARTED", flush=True)
    sys.stdin.readline()  # the parent's subscriber has every verdict
    cpu = time.process_time() - c0
    peak = proc_status_mb(os.getpid(), "VmHWM")
    service.stop()
    return {"cpu_s": cpu, "peak_rss_mb": peak}


# -- the parent


def child(args: list[str], stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "scripts.bench.peers", *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin else None,
        text=True,
        cwd=REPO,
    )


def last_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def run_line(
    model: Path, source: Path, frames: int, clip_frames: int, port: int, workdir: Path,
    line_overrides: dict[str, Any], fps: float = 0, runtime: dict[str, Any] | None = None,
) -> dict[str, float]:  # fmt: skip
    config = {
        "models": [{"path": str(model)}],
        "runtime": runtime or {},
        "line": {"name": "bench"} | line_overrides,
        "cameras": [{
            "name": "cam", "source": f"file:{source}", "fps": fps, "loop": frames > clip_frames,
            "buffer": {"size": 8, "policy": "block"},
        }],
        "mqtt": {"port": port, "topic_prefix": "bench", "client_id": f"peers-{model.stem}"},
        "outbox": {"path": str(workdir / f"outbox-{model.stem}-{fps:g}.sqlite")},
        "review": {"enabled": False},
        "logging": {"level": "WARNING"},
    }  # fmt: skip
    cfg = workdir / f"line-{model.stem}-{fps:g}.json"
    cfg.write_text(json.dumps(config))
    la = load1()
    sub = Subscriber(port, "bench/#", client_id="bench-plc")
    sub.connect()
    proc = child(["--worker", "line", "--config", str(cfg)], stdin=True)
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        if proc.stdout.readline().strip() != "STARTED":
            raise SystemExit("the line worker did not start")
        sub.wait_for(frames, timeout=1200)
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        res = last_json(proc)
    finally:
        sub.close()
        if proc.poll() is None:
            proc.kill()
    got = sorted(sub.received(), key=lambda m: m.payload["sequence"])[:frames]
    if len(got) < frames:
        raise SystemExit(f"line: only {len(got)} of {frames} verdicts arrived")
    seqs = [m.payload["sequence"] for m in got]
    if seqs != list(range(seqs[0], seqs[0] + frames)):
        raise SystemExit("line: sequence gap at the subscriber")
    t0 = min(m.payload["captured_at"] for m in got)  # the first frame captured, not start
    wall = max(m.arrived for m in got) - t0
    lat = [(m.arrived - m.payload["captured_at"]) * 1000 for m in got]
    return summary(frames, wall, lat, res["cpu_s"], res["peak_rss_mb"], la)


def run_http(
    model: Path, source: Path, clients: list[int], seconds: float, workdir: Path,
    runtime: dict[str, Any] | None = None, api: dict[str, Any] | None = None, suffix: str = "",
) -> dict[str, dict[str, float]]:  # fmt: skip
    body = clip_frame_jpeg(source, 100, workdir / "frame.jpg")  # a mid-clip frame, JPEG q90
    lua = write_lua(workdir)
    rows: dict[str, dict[str, float]] = {}
    env = {f"LINEINSPECT__RUNTIME__{k.upper()}": str(v) for k, v in (runtime or {}).items()}
    env |= {f"LINEINSPECT__API__{k.upper()}": str(v).lower() for k, v in (api or {}).items()}
    server, url = start_server(model, env)
    try:
        for c in clients:
            r = measure_level(url, server.pid, body, c, seconds, lua)
            rows[f"http {c}{suffix}"] = {
                "frames": r["requests"], "fps": r["req_per_s"], "p50_ms": r["p50_ms"],
                "p99_ms": r["p99_ms"], "cpu_s_per_frame": r["server_cpu_s_per_req"],
                "peak_rss_mb": r["server_peak_rss_mb"], "load1": r["load1_before"],
                "non2xx": r["non2xx"] + r["socket_errors"], "body_bytes": body.stat().st_size,
            }  # fmt: skip
    finally:
        stop_server(server)
    return rows


def bench_model(
    model: Path, source: Path, frames: int, clip_frames: int, paths: list[str], http_s: float,
    clients: list[int], line_overrides: dict[str, Any], runtime: dict[str, Any],
) -> dict[str, dict[str, float]]:  # fmt: skip
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    size = int(json.loads(meta.get("imgsz", "[640]").replace("'", '"'))[0])
    rows: dict[str, dict[str, float]] = {}
    common = ["--model", str(model), "--source", str(source), "--frames", str(frames)]
    if "raw" in paths:
        rows |= last_json(child(["--worker", "raw", *common]))
    with tempfile.TemporaryDirectory() as tmp:
        if "line" in paths:
            with Broker(Path(tmp), persistent=False, max_queued_messages=1_000_000) as broker:
                rows["line"] = run_line(
                    model, source, frames, clip_frames, broker.port, Path(tmp), line_overrides,
                    runtime=runtime,
                )  # fmt: skip
                # Latency without queueing: the clip paced at half what the line just sustained.
                half = round(rows["line"]["fps"] / 2, 1)
                n = min(frames, max(50, int(15 * half)))
                rows["line @50% load"] = run_line(
                    model, source, n, clip_frames, broker.port, Path(tmp), line_overrides,
                    fps=half, runtime=runtime,
                )  # fmt: skip
        if "http" in paths:
            rows |= run_http(model, source, clients, http_s, Path(tmp), runtime)
        if "http-reduced" in paths:
            rows |= run_http(model, source, clients, http_s, Path(tmp), runtime,
                             {"reduced_decode": True}, " reduced")  # fmt: skip
    if "ultralytics" in paths:
        rows |= last_json(child(["--worker", "ultralytics", *common, "--size", str(size)]))
    return rows


def print_table(model: Path, rows: dict[str, dict[str, float]]) -> None:
    raw = rows.get("raw b1")
    print(f"\nmodel {model}")
    print(f"{'path':<14} {'frames':>6} {'frames/s':>9} {'x raw':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'CPU s/frame':>11} {'peak RSS MB':>11} {'load1':>6}")  # fmt: skip
    for label, r in rows.items():
        ratio = r["fps"] / raw["fps"] if raw else float("nan")
        print(f"{label:<14} {int(r['frames']):>6} {r['fps']:>9.1f} {ratio:>6.2f} "
              f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['cpu_s_per_frame']:>11.4f} "
              f"{r['peak_rss_mb']:>11.1f} {r['load1']:>6.2f}")  # fmt: skip
    u = rows.get("ultralytics", {})
    if "inference_p50_ms" in u:
        print(f"  Ultralytics' own split, p50 ms: preprocess {u['preprocess_p50_ms']:.2f}, "
              f"inference {u['inference_p50_ms']:.2f}, postprocess {u['postprocess_p50_ms']:.2f}")  # fmt: skip


def targets(rows: dict[str, dict[str, float]]) -> list[str]:
    """The issue's targets, each with the figures it was judged on."""
    out: list[str] = []
    raw = rows.get("raw b1")
    if raw is None:
        return out

    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    if "line" in rows:
        r = rows["line"]["fps"] / raw["fps"]
        out.append(f"line >= 1.0x raw throughput: {r:.2f}x -> {mark(r >= 1.0)}")
        if "ultralytics" in rows:
            u = rows["line"]["fps"] / rows["ultralytics"]["fps"]
            out.append(f"line >= 1.5x Ultralytics loop: {u:.2f}x -> {mark(u >= 1.5)}")
    if "http 16" in rows:
        r = rows["http 16"]["fps"] / raw["fps"]
        out.append(f"HTTP 16 clients >= 0.9x raw throughput: {r:.2f}x -> {mark(r >= 0.9)}")
    for key in ("http 1", "http 16"):
        if key in rows:
            p50, lim = rows[key]["p50_ms"], raw["p50_ms"] + 3
            out.append(
                f"{key} p50 <= raw p50 + 3 ms: {p50:.2f} vs {lim:.2f} ms -> {mark(p50 <= lim)}"
            )
    for key in ("line", "http 16"):
        if key in rows:
            mb = rows[key]["peak_rss_mb"]
            out.append(f"{key} peak RSS <= 400 MB: {mb:.0f} MB -> {mark(mb <= 400)}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench.peers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default="models/neu-det-demo.onnx")
    p.add_argument(
        "--sizes",
        default="",
        help="input sizes to run each model at, e.g. 320,640 (a dynamic-size ONNX only: a copy "
        "with its metadata imgsz set to each size, no card); empty: the model's own size",
    )
    p.add_argument("--source", type=Path, default=CLIP)
    p.add_argument("--frames", type=int, default=0, help="frames per path; 0: one pass of the clip")
    p.add_argument("--paths", default=",".join(ALL_PATHS))
    p.add_argument("--clients", default="1,16", help="HTTP concurrency levels")
    p.add_argument("--http-seconds", type=float, default=20)
    p.add_argument(
        "--line", default="{}", help='JSON overrides of the line section, e.g. {"max_batch": 4}'
    )
    p.add_argument(
        "--runtime",
        default="{}",
        help="JSON overrides of the runtime section for the line and HTTP paths, e.g. "
        '{"parallel_runs": 1, "intra_op_threads": 2} (latency first)',
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    # worker mode (internal)
    p.add_argument("--worker", choices=("raw", "line", "ultralytics"), help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker == "raw":
        print(json.dumps(worker_raw(args.model, args.source, args.frames)))
        return 0
    if args.worker == "ultralytics":
        print(json.dumps(worker_ultralytics(args.model, args.source, args.frames, args.size)))
        return 0
    if args.worker == "line":
        print(json.dumps(worker_line(args.config)))
        return 0

    clip_frames = clip_length(args.source)
    frames = args.frames or clip_frames
    paths = args.paths.split(",")
    clients = [int(c) for c in args.clients.split(",")]
    if {"http", "http-reduced"} & set(paths):
        wrk_exe()  # fail now, not after the other paths have run
    print(f"clip {args.source.name}: {clip_frames} frames; {frames} frames per path; "
          f"load average {os.getloadavg()}")  # fmt: skip
    results: dict[str, Any] = {}
    sizes = [int(x) for x in args.sizes.split(",") if x]
    work = tempfile.TemporaryDirectory(prefix="bench_peers-")
    models = []
    for i, m in enumerate(args.models.split(",")):
        folder = Path(work.name) / f"model{i}"  # two models may share a file name
        folder.mkdir()
        models += [at_size(Path(m), size, folder) if size else Path(m) for size in sizes or [0]]
    for model in models:
        rows = bench_model(
            model, args.source, frames, clip_frames, paths, args.http_seconds, clients,
            json.loads(args.line), json.loads(args.runtime),
        )  # fmt: skip
        print_table(model, rows)
        verdicts = targets(rows)
        for t in verdicts:
            print("  " + t)
        results[str(model)] = {"rows": rows, "targets": verdicts}
    work.cleanup()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

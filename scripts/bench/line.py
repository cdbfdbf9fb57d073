"""Benchmark the line against raw ONNX Runtime on the same model, input size and frames.

    python -m scripts.bench.line                                   # demo model, conveyor video
    python -m scripts.bench.line --model models/neu-det-demo.onnx --source ../shared/data/video/cctv_box_conveyor_hevc_720x720.mp4

Prints, side by side from one run:
- raw: `session.run` on frames preprocessed beforehand (batch 1), the ceiling for one stream;
- line, as fast as possible: the clip through capture -> inference -> outbox -> MQTT, counted
  at a real subscriber (a mosquitto started here on a free port);
- line at the clip's own frame rate: frame -> verdict latency p50/p99 measured at the subscriber
  (capture timestamp in the payload vs arrival), against raw inference p99 + 10 ms;
- Ultralytics' own ONNX predict loop on the same clip when the model is a YOLO detector and
  Ultralytics is installed (the `train-yolo` extra), as the peer.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2

from scripts.harness import REPO, Broker, Subscriber, data_root, pct
from service.app import LineInspect
from service.config import load_settings
from service.inference.model import load_model
from service.inference.runtime import RuntimeOptions


def run_line(
    model: Path, source: Path, fps: float, frames: int, port: int, workdir: Path
) -> dict[str, float]:
    sub = Subscriber(port, "bench/#", client_id="bench-plc")
    sub.connect()
    config = {
        "models": [{"path": str(model)}],
        "runtime": {"warmup_runs": 3},
        "line": {"name": "bench"},
        "cameras": [
            {
                "name": "cam",
                "source": f"file:{source}",
                "fps": fps,
                "loop": False,
                "buffer": {"size": 8, "policy": "block"},
            }
        ],
        "mqtt": {"port": port, "topic_prefix": "bench", "client_id": f"bench-{fps}"},
        "outbox": {"path": str(workdir / f"outbox-{fps}.sqlite")},
        "review": {"enabled": False},
    }
    cfg_path = workdir / f"line-{fps}.json"
    cfg_path.write_text(json.dumps(config))
    service = LineInspect(load_settings(cfg_path, {}))
    t0 = time.time()
    service.start()
    try:
        sub.wait_for(frames, timeout=600)
    finally:
        service.stop()
        sub.close()
    got = sub.received()
    wall = (max(m.arrived for m in got) - t0) if got else float("nan")
    latencies = [(m.arrived - m.payload["captured_at"]) * 1000 for m in got]
    return {
        "verdicts": len(got),
        "throughput_fps": len(got) / wall if got else 0.0,
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
    }


def main() -> int:
    data = data_root()
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench.line",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, default=REPO / "models" / "neu-cls-demo.onnx")
    p.add_argument(
        "--source", type=Path, default=data / "video" / "checkweigher_conveyor_h264_1280x720.mp4"
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    cap = cv2.VideoCapture(str(args.source))
    clip_fps = cap.get(cv2.CAP_PROP_FPS) or 20.0
    images = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        images.append(image)
    cap.release()
    if not images:
        raise SystemExit(f"no frames in {args.source}")
    model = load_model(args.model, RuntimeOptions(warmup_runs=5))
    tensors = [model.preprocess(img)[0][None] for img in images]
    name = model.spec.input_name
    raw_lat = []
    t0 = time.perf_counter()
    for t in tensors:
        t1 = time.perf_counter()
        model.session.run(None, {name: t})
        raw_lat.append((time.perf_counter() - t1) * 1000)
    raw_fps = len(tensors) / (time.perf_counter() - t0)
    rows: dict[str, dict[str, float]] = {
        "raw session.run": {
            "verdicts": len(tensors),
            "throughput_fps": raw_fps,
            "p50_ms": pct(raw_lat, 50),
            "p99_ms": pct(raw_lat, 99),
        },
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        Broker(Path(tmp), persistent=False, max_queued_messages=1_000_000) as broker,
    ):
        rows["line, as fast as possible"] = run_line(
            args.model, args.source, 0, len(images), broker.port, Path(tmp)
        )
        rows[f"line at the clip's {clip_fps:.0f} fps"] = run_line(
            args.model, args.source, clip_fps, len(images), broker.port, Path(tmp)
        )
    peer = ultralytics_peer(args.model, args.source, model.spec.task, model.spec.preprocess.size)
    if peer:
        rows["Ultralytics ONNX predict loop"] = peer
    h, w = images[0].shape[:2]
    print(f"model {model.spec.name} ({model.spec.task}, input {model.spec.preprocess.size}), clip {args.source.name} "
          f"{w}x{h} {len(images)} frames @ {clip_fps:.0f} fps, providers {model.providers}")  # fmt: skip
    print(f"{'path':<34} {'verdicts':>8} {'frames/s':>9} {'x raw':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for label, r in rows.items():
        print(f"{label:<34} {int(r['verdicts']):>8} {r['throughput_fps']:>9.1f} {r['throughput_fps'] / raw_fps:>6.2f} "
              f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}")  # fmt: skip
    if not peer:
        print("Ultralytics peer: skipped (needs a YOLO detector and the train-yolo extra)")
    paced = rows[f"line at the clip's {clip_fps:.0f} fps"]
    budget = rows["raw session.run"]["p99_ms"] + 10
    print(f"frame->verdict p99 at {clip_fps:.0f} fps: {paced['p99_ms']:.2f} ms vs raw p99 + 10 ms = {budget:.2f} ms "
          f"-> {'met' if paced['p99_ms'] <= budget else 'MISSED'}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def ultralytics_peer(
    model: Path, source: Path, task: str, size: tuple[int, int]
) -> dict[str, float] | None:
    if task != "detect":
        return None
    try:
        from ultralytics import YOLO
    except ImportError:
        return None
    yolo = YOLO(str(model), task="detect")
    lat: list[float] = []
    n = 0
    t0 = time.perf_counter()
    for result in yolo.predict(str(source), stream=True, imgsz=list(size), verbose=False):
        speed = result.speed  # ms per stage for this frame
        lat.append(sum(speed.values()))
        n += 1
    wall = time.perf_counter() - t0
    return {
        "verdicts": n,
        "throughput_fps": n / wall,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
    }


if __name__ == "__main__":
    raise SystemExit(main())

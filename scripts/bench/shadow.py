"""What a candidate model beside the live one costs the live path.

    python -m scripts.bench.shadow                         # 300 NEU frames at 20 fps, then flat out
    python -m scripts.bench.shadow --frames 600 --fps 30

The line (shipped classifier live, its INT8 sibling renamed as the candidate) plays the same NEU
images twice per mode, without and with the candidate, through capture -> inference -> outbox ->
a real mosquitto started here, and a subscriber counts the verdicts:
- at `--fps` (a paced camera): frame -> verdict latency p50 / p95 / p99 at the subscriber;
- flat out (`fps: 0`, buffer policy `block`): verdicts per second.
With the candidate it also prints what the candidate judged, dropped (its queue was full: the
live path never waits for it) and its own time per frame.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from scripts.harness import REPO, Broker, Subscriber, data_root, pct
from service.app import LineInspect
from service.config import load_settings

LIVE = "neu-cls-demo"


def candidate_copy(folder: Path) -> Path:
    stem = "neu-cls-int8"
    shutil.copy(REPO / "models" / f"{stem}.onnx", folder / f"{stem}.onnx")
    card = yaml.safe_load((REPO / "models" / f"{stem}.card.yaml").read_text())
    (folder / f"{stem}.card.yaml").write_text(yaml.safe_dump(card | {"name": LIVE}))
    return folder / f"{stem}.onnx"


def run(
    frames: Path, n: int, fps: float, candidate: Path | None, port: int, work: Path, tag: str
) -> dict[str, Any]:
    sub = Subscriber(port, f"{tag}/#", client_id=f"plc-{tag}")
    sub.connect()
    model: dict[str, Any] = {"path": str(REPO / "models" / f"{LIVE}.onnx")}
    if candidate is not None:
        model["candidate"] = str(candidate)
    config = {
        "models": [model],
        "runtime": {"warmup_runs": 3},
        "line": {"name": "bench"},
        "cameras": [{"name": "cam", "source": f"folder:{frames}", "fps": fps, "loop": False,
                     "buffer": {"size": 8, "policy": "block"}}],
        "mqtt": {"port": port, "topic_prefix": tag, "client_id": f"bench-{tag}"},
        "outbox": {"path": str(work / f"outbox-{tag}.sqlite")},
        "review": {"enabled": False},
        "drift": {"enabled": False},
        "history": {"path": str(work / "history")},
    }  # fmt: skip
    path = work / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(config))
    service = LineInspect(load_settings(path, {}))
    service.start()
    t0 = time.time()
    try:
        sub.wait_for(n, timeout=600)
        time.sleep(1.0)  # the candidate finishes what it has queued
        report = service.control.candidate_report(LIVE)["cameras"]["cam"] if candidate else None
    finally:
        service.stop()
        sub.close()
    got = sub.received()
    wall = max(m.arrived for m in got) - t0 if got else float("nan")
    latencies = [(m.arrived - m.payload["captured_at"]) * 1000 for m in got]
    out: dict[str, Any] = {
        "verdicts": len({m.payload["sequence"] for m in got}),
        "verdicts_per_s": round(len(got) / wall, 1) if got else 0.0,
        "p50_ms": round(pct(latencies, 50), 2),
        "p95_ms": round(pct(latencies, 95), 2),
        "p99_ms": round(pct(latencies, 99), 2),
    }
    if report is not None:
        out["candidate"] = {
            "compared": report["compared"],
            "dropped": report["dropped"],
            "agreement": report["agreement"],
            "candidate_p50_ms": report["latency_ms"]["candidate"]["p50"],
            "live_p50_ms": report["latency_ms"]["live"]["p50"],
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench.shadow", description=__doc__)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--fps", type=float, default=20.0)
    p.add_argument("--modes", default="paced,flat_out", help="paced and/or flat_out")
    p.add_argument("--repeat", type=int, default=1, help="runs of each pair, alternating")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    images = sorted((data_root() / "neu-det" / "IMAGES").glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        frames = work / "frames"
        frames.mkdir()
        step = max(1, len(images) // args.frames)
        for i, image in enumerate(images[::step][: args.frames]):
            shutil.copy(image, frames / f"{i:05d}.jpg")
        n = len(list(frames.iterdir()))
        candidate = candidate_copy(work)
        broker = Broker(work)
        broker.start()
        results: dict[str, list[dict[str, Any]]] = {}
        modes = [(m, args.fps if m == "paced" else 0.0) for m in args.modes.split(",")]
        try:
            for mode, fps in modes:
                for i in range(args.repeat):  # alternating: a busy neighbour hits both alike
                    for label, cand in (("live_only", None), ("with_candidate", candidate)):
                        tag = f"{mode}-{label}-{i}".replace("_", "")
                        got = run(frames, n, fps, cand, broker.port, work, tag)
                        results.setdefault(f"{mode}/{label}", []).append(got)
                        print(f"{mode:9s} {label:15s} {json.dumps(got)}", flush=True)
        finally:
            broker.stop()
        for key, runs in results.items():
            rates = sorted(r["verdicts_per_s"] for r in runs)
            p99 = sorted(r["p99_ms"] for r in runs)
            print(f"{key:25s} median of {len(runs)}: {rates[len(rates) // 2]} verdicts/s, "
                  f"p99 {p99[len(p99) // 2]} ms")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

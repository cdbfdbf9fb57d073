"""Soak: the whole service for `--minutes` at twice the nominal frame rate on four cameras.

    python -m scripts.bench.soak                  # 10 minutes, shipped detector, build/soak.json
    python -m scripts.bench.soak --minutes 1 --model models/neu-cls-int8.onnx

Cameras (live-camera buffer policy `drop_oldest`, size 4, so overload shows as counted drops):
- `neu`:      folder of real NEU steel images, 10 fps (the demo plays them at 5),
- `tile`:     folder of real magnetic-tile images (MT_Free), 10 fps (nominal 5, as the demo),
- `conveyor`: the checkweigher clip (H.264 1280x720, 20 fps), looped, 40 fps,
- `cctv`:     the roller-conveyor clip (HEVC 720x720, 24 fps), looped, 48 fps.

The service runs in a child process with its real HTTP server (uvicorn, /metrics), the outbox,
review queue and drift monitor on; a mosquitto started here on a free port; a subscriber here
counts verdicts per camera and checks sequence numbers. Every `--interval` seconds: the child's
RSS, threads and open fds, the outbox depth and frames captured/dropped (from /metrics), verdicts
received. At the end capture stops, the line and outbox drain, and the script asserts:
- no deadlock: every camera's verdicts kept arriving in every interval;
- every frame accounted for: per camera, captured = verdicts + counted drops, and the frame ids
  with no verdict are exactly as many as the counted drops;
- sequence numbers gap-free (and in order) at the subscriber;
- RSS growth bounded: least-squares slope over the last half of the samples <= --max-rss-slope.
Prints a table and writes JSON (samples, per-camera totals, checks) to --json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from scripts.harness import REPO, Broker, Message, Subscriber, data_root, free_port

PREFIX, LINE = "soak", "soak-line"


def cameras(data: Path, speed: float) -> list[dict[str, Any]]:
    video = data / "video"
    nominal = [
        ("neu", f"folder:{data / 'neu-det' / 'IMAGES'}", "*.jpg", 5.0),
        ("tile", f"folder:{data / 'magnetic-tile' / 'MT_Free' / 'Imgs'}", "*.jpg", 5.0),
        ("conveyor", f"file:{video / 'checkweigher_conveyor_h264_1280x720.mp4'}", "*", 20.0),
        ("cctv", f"file:{video / 'cctv_box_conveyor_hevc_720x720.mp4'}", "*", 24.0),
    ]
    return [
        {"name": n, "source": s, "pattern": p, "fps": fps * speed, "loop": True,
         "buffer": {"size": 4, "policy": "drop_oldest"}}
        for n, s, p, fps in nominal
    ]  # fmt: skip


class Counter(Subscriber):
    """A QoS 1 subscriber: verdicts per camera, sequence gaps, order, duplicates."""

    def __init__(self, port: int) -> None:
        self.seqs: dict[str, list[int]] = {}
        self.frame_ids: dict[str, set[int]] = {}
        self.errors: dict[str, int] = {}
        super().__init__(port, f"{PREFIX}/+/+/verdict", client_id="soak-plc")
        if not self.connect():
            raise SystemExit("the subscriber could not subscribe")

    def on_message(self, message: Message) -> None:
        p = message.payload
        cam = p["camera"]
        with self.lock:
            self.seqs.setdefault(cam, []).append(p["sequence"])
            self.frame_ids.setdefault(cam, set()).add(p["frame_id"])
            self.errors[cam] = self.errors.get(cam, 0) + bool(p.get("error"))

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {c: len(set(s)) for c, s in self.seqs.items()}

    def sequence_report(self, camera: str) -> dict[str, int]:
        with self.lock:
            s = list(self.seqs.get(camera, []))
        unique = sorted(set(s))
        span = unique[-1] - unique[0] + 1 if unique else 0
        out_of_order = sum(1 for a, b in itertools.pairwise(s) if b < a)
        return {
            "received": len(s),
            "unique": len(unique),
            "duplicates": len(s) - len(unique),
            "gaps": span - len(unique),
            "out_of_order": out_of_order,
            "first": unique[0] if unique else 0,
            "last": unique[-1] if unique else 0,
        }


def scrape(url: str) -> dict[str, Any]:
    """Per-camera captured / dropped / verdicts, and the outbox depth, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, Any] = {"captured": {}, "dropped": {}, "verdicts": {}, "outbox": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            cam = s.labels.get("camera")
            if s.name == "lineinspect_frames_captured_total":
                out["captured"][cam] = int(s.value)
            elif s.name == "lineinspect_frames_dropped_total":
                out["dropped"][cam] = out["dropped"].get(cam, 0) + int(s.value)
            elif s.name == "lineinspect_verdicts_total":
                out["verdicts"][cam] = out["verdicts"].get(cam, 0) + int(s.value)
            elif s.name == "lineinspect_outbox_messages":
                out["outbox"] = s.value
    return out


def worker(config: Path) -> int:
    """The service as `lineinspect serve` runs it, plus a stdin protocol to stop capture first."""
    import uvicorn

    from service.api.server import create_app, uvicorn_config
    from service.app import LineInspect
    from service.cli import setup_logging
    from service.config import load_settings

    settings = load_settings(config, {})
    setup_logging(settings.logging.level)
    service = LineInspect(settings)
    service.start()
    server = uvicorn.Server(
        uvicorn_config(create_app(service.api()), settings.api.host, settings.api.port)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    print("STARTED", flush=True)
    sys.stdin.readline()  # "stop capture"
    for camera in service.cameras.values():
        camera.stop()
    print("CAPTURE_STOPPED", flush=True)
    sys.stdin.readline()  # "stop": the parent has its final scrape
    server.should_exit = True
    thread.join(15)
    service.stop()
    return 0


def slope_mb_per_min(samples: list[dict[str, Any]]) -> float:
    half = samples[len(samples) // 2 :]
    if len(half) < 2:
        return float("nan")
    t = np.array([s["t_s"] for s in half]) / 60
    rss = np.array([s["rss_mb"] for s in half])
    return float(np.polyfit(t, rss, 1)[0])


def main() -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--interval", type=float, default=10, help="seconds between samples")
    p.add_argument("--model", type=Path, default=REPO / "models" / "neu-det-demo.onnx")
    p.add_argument("--speed", type=float, default=2.0, help="x nominal frame rate")
    p.add_argument("--max-rss-slope", type=float, default=1.0, help="MB/min, last half")
    p.add_argument("--json", type=Path, default=REPO / "build" / "soak.json")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker)

    with tempfile.TemporaryDirectory(prefix="lineinspect-soak-") as tmp:
        work = Path(tmp)
        broker = Broker(work, persistent=False, max_queued_messages=1_000_000)
        broker.start()
        mqtt_port = broker.port
        api_port = free_port()
        cams = cameras(data_root(), args.speed)
        config = {
            "models": [{"path": str(args.model.resolve())}],
            "api": {"port": api_port},
            "line": {"name": LINE},
            "cameras": cams,
            "mqtt": {"port": mqtt_port, "topic_prefix": PREFIX, "client_id": "soak-line"},
            "outbox": {"path": str(work / "outbox.sqlite")},
            "review": {"path": str(work / "review")},
            "logging": {"level": "WARNING"},
        }
        cfg = work / "soak.json"
        cfg.write_text(json.dumps(config))
        sub = Counter(mqtt_port)
        proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.bench.soak", "--worker", str(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        try:
            result = soak(args, proc, sub, f"http://127.0.0.1:{api_port}", cams)
        finally:
            sub.close()
            if proc.poll() is None:
                proc.kill()
            broker.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"\nJSON: {args.json}")
    return 0 if all(c["ok"] for c in result["checks"].values()) else 1


def soak(
    args: argparse.Namespace, proc: subprocess.Popen[str], sub: Counter, url: str,
    cams: list[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdin is not None
    if proc.stdout.readline().strip() != "STARTED":
        raise SystemExit("the service did not start")
    ps = psutil.Process(proc.pid)
    names = [c["name"] for c in cams]
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    cpu0 = sum(ps.cpu_times()[:2])
    end = t0 + args.minutes * 60
    print(f"soak: {args.minutes:g} min, model {args.model.name}, cameras "
          + ", ".join(f"{c['name']}@{c['fps']:g}fps" for c in cams) + f", service pid {proc.pid}")  # fmt: skip
    head = f"{'t s':>5} {'RSS MB':>7} {'thr':>4} {'fds':>4} {'outbox':>6} {'load1':>5} " + " ".join(
        f"{n + ' cap/drop/verd':>24}" for n in names
    )
    print(head)
    next_t = t0
    while True:
        next_t += args.interval
        time.sleep(max(0.0, next_t - time.monotonic()))
        if proc.poll() is not None:
            raise SystemExit(f"the service exited ({proc.returncode})")
        m = scrape(url)
        got = sub.counts()
        s = {
            "t_s": round(time.monotonic() - t0, 1),
            "rss_mb": ps.memory_info().rss / 1e6,
            "threads": ps.num_threads(),
            "fds": ps.num_fds(),
            "outbox": m["outbox"],
            "load1": os.getloadavg()[0],
            "captured": m["captured"],
            "dropped": m["dropped"],
            "verdicts_received": got,
        }
        samples.append(s)
        print(f"{s['t_s']:>5.0f} {s['rss_mb']:>7.1f} {s['threads']:>4} {s['fds']:>4} "
              f"{s['outbox']:>6.0f} {s['load1']:>5.2f} " + " ".join(
                  f"{m['captured'].get(n, 0):>8}/{m['dropped'].get(n, 0):>6}/{got.get(n, 0):>8}"
                  for n in names), flush=True)  # fmt: skip
        if time.monotonic() >= end:
            break
    run_s = time.monotonic() - t0
    cpu_s = sum(ps.cpu_times()[:2]) - cpu0
    # Stop capture, then wait for the line and the outbox to drain before the final scrape.
    proc.stdin.write("stop capture\n")
    proc.stdin.flush()
    if proc.stdout.readline().strip() != "CAPTURE_STOPPED":
        raise SystemExit("the service did not stop its cameras")
    deadline = time.monotonic() + 60
    while True:
        final = scrape(url)
        done = all(
            sub.counts().get(n, 0) + final["dropped"].get(n, 0) >= final["captured"].get(n, 0)
            for n in names
        )
        if (done and final["outbox"] == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(1.0)  # a redelivered duplicate, if any, arrives too
    final = scrape(url)
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    proc.wait(60)

    per_camera: dict[str, dict[str, Any]] = {}
    for n in names:
        seq = sub.sequence_report(n)
        with sub.lock:
            ids = set(sub.frame_ids.get(n, set()))
        captured, dropped = final["captured"].get(n, 0), final["dropped"].get(n, 0)
        per_camera[n] = {
            "captured": captured,
            "dropped_counted": dropped,
            "verdicts": seq["unique"],
            "frames_without_verdict": captured - len(ids & set(range(1, captured + 1))),
            "error_verdicts": sub.errors.get(n, 0),
            "fps_judged": seq["unique"] / run_s,
            **{f"seq_{k}": v for k, v in seq.items()},
        }
    flows = {
        n: [
            b["verdicts_received"].get(n, 0) - a["verdicts_received"].get(n, 0)
            for a, b in zip([{"verdicts_received": {}}, *samples], samples, strict=False)
        ]
        for n in names
    }
    rss_slope = slope_mb_per_min(samples)
    checks = {
        "no_deadlock": {
            "ok": all(min(f) > 0 for f in flows.values()),
            "detail": {n: min(f) for n, f in flows.items()},
        },
        "frames_accounted": {
            "ok": all(
                c["captured"] == c["verdicts"] + c["dropped_counted"]
                and c["frames_without_verdict"] == c["dropped_counted"]
                for c in per_camera.values()
            ),
            "detail": {
                n: f"{c['captured']} = {c['verdicts']} + {c['dropped_counted']}"
                for n, c in per_camera.items()
            },
        },
        "sequences_gap_free": {
            "ok": all(
                c["seq_gaps"] == 0 and c["seq_out_of_order"] == 0 for c in per_camera.values()
            ),
            "detail": {n: c["seq_gaps"] for n, c in per_camera.items()},
        },
        "rss_growth_bounded": {
            "ok": rss_slope <= args.max_rss_slope,
            "detail": f"{rss_slope:.3f} MB/min over the last half (limit {args.max_rss_slope})",
        },
    }
    print(f"\nafter {run_s:.0f} s; service CPU {cpu_s:.0f} s ({cpu_s / run_s:.2f} cores); "
          f"RSS first {samples[0]['rss_mb']:.1f} MB, last {samples[-1]['rss_mb']:.1f} MB, "
          f"max {max(s['rss_mb'] for s in samples):.1f} MB; threads "
          f"{min(s['threads'] for s in samples)}-{max(s['threads'] for s in samples)}, fds "
          f"{min(s['fds'] for s in samples)}-{max(s['fds'] for s in samples)}")  # fmt: skip
    print(f"{'camera':<9} {'captured':>8} {'verdicts':>8} {'dropped':>7} {'no verdict':>10} "
          f"{'judged/s':>8} {'seq gaps':>8} {'dups':>5} {'errors':>6}")  # fmt: skip
    for n, c in per_camera.items():
        print(f"{n:<9} {c['captured']:>8} {c['verdicts']:>8} {c['dropped_counted']:>7} "
              f"{c['frames_without_verdict']:>10} {c['fps_judged']:>8.1f} {c['seq_gaps']:>8} "
              f"{c['seq_duplicates']:>5} {c['error_verdicts']:>6}")  # fmt: skip
    for name, c in checks.items():
        print(f"{name:<20} {'PASS' if c['ok'] else 'FAIL'}  {c['detail']}")
    return {
        "minutes": args.minutes, "model": str(args.model), "speed": args.speed,
        "cameras": cams, "run_s": run_s, "service_cpu_s": cpu_s, "rss_slope_mb_per_min": rss_slope,
        "per_camera": per_camera, "checks": checks, "samples": samples,
    }  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())

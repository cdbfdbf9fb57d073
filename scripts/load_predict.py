"""Load test of `POST /v1/predict` with a real HTTP load generator (wrk), level by level.

    python scripts/load_predict.py                                  # shipped detector, a NEU JPEG
    python scripts/load_predict.py --size 640 --clip-frame 100 \
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
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LINEINSPECT_DATA", ROOT.parent / "shared" / "data"))

# wrk runs this in each of its threads. The body is read once per thread; `done` prints one
# JSON line (microseconds) that we parse, so no figure is re-derived from wrk's text output.
WRK_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
local f = assert(io.open(os.getenv("LOAD_BODY"), "rb"))
wrk.body = f:read("*all")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "non2xx": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status_mb(pid: int, key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise KeyError(key)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of the process so far."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def load1() -> float:
    return os.getloadavg()[0]


def start_server(
    model: Path, env_extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m service serve` on a free port, ready (GET /readyz 200) or SystemExit."""
    port = free_port()
    env = (
        os.environ
        | {
            "LINEINSPECT__MODELS__0__PATH": str(model),
            "LINEINSPECT__API__PORT": str(port),
            "LINEINSPECT__LOGGING__LEVEL": "WARNING",
        }
        | (env_extra or {})
    )
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited during start-up")
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wrk_exe() -> str:
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    return exe


def run_wrk(url: str, body: Path, clients: int, seconds: float, lua: Path) -> dict[str, Any]:
    """One wrk run: `clients` connections on one wrk thread (plenty at these rates)."""
    cmd = [
        wrk_exe(), "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
        "-s", str(lua), f"{url}/v1/predict",
    ]  # fmt: skip
    out = subprocess.run(
        cmd, env=os.environ | {"LOAD_BODY": str(body)}, capture_output=True, text=True, check=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    r: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
    r["req_per_s"] = r["requests"] / (r["duration_us"] / 1e6)
    for q in ("p50", "p90", "p99", "max"):
        r[f"{q}_ms"] = r.pop(f"{q}_us") / 1000
    r["mean_ms"] = r.pop("mean_us") / 1000
    r["socket_errors"] = sum(
        r[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return r


def measure_level(
    url: str, pid: int, body: Path, clients: int, seconds: float, lua: Path, warmup_s: float = 2
) -> dict[str, Any]:
    """Warm up at this concurrency (not measured), then measure; server CPU per request."""
    if warmup_s > 0:
        run_wrk(url, body, clients, warmup_s, lua)
    la = load1()
    c0 = cpu_seconds(pid)
    r = run_wrk(url, body, clients, seconds, lua)
    r["server_cpu_s_per_req"] = (cpu_seconds(pid) - c0) / max(1, r["requests"])
    r["clients"] = clients
    r["load1_before"] = la
    r["server_rss_mb"] = proc_status_mb(pid, "VmRSS")
    r["server_peak_rss_mb"] = proc_status_mb(pid, "VmHWM")
    return r


def at_size(model: Path, size: int, folder: Path) -> Path:
    """A copy of a dynamic-size detector whose metadata says `imgsz` = size (and no card), so
    every path (lineinspect's resolver, Ultralytics) runs it at that size."""
    import onnx

    proto = onnx.load(str(model))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if any(d.HasField("dim_value") for d in dims[2:]):
        raise SystemExit(f"{model}: --size(s) needs an ONNX with a dynamic height and width")
    meta = {p.key: p for p in proto.metadata_props}
    if "imgsz" not in meta:
        meta["imgsz"] = proto.metadata_props.add(key="imgsz")
    meta["imgsz"].value = f"[{size}, {size}]"
    out = folder / f"{model.stem}-{size}.onnx"
    onnx.save(proto, str(out))
    return out


def clip_frame_jpeg(video: Path, index: int, out: Path) -> Path:
    """Frame `index` of a video, encoded as JPEG quality 90 (the body bench_peers.py sends)."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    for _ in range(index + 1):
        ok, image = cap.read()
        if not ok:
            raise SystemExit(f"{video} has fewer than {index + 1} frames")
    cap.release()
    out.write_bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def write_lua(folder: Path) -> Path:
    lua = folder / "post_jpeg.lua"
    lua.write_text(WRK_LUA)
    return lua


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, default=ROOT / "models" / "neu-det-demo.onnx")
    p.add_argument("--image", type=Path, default=DATA / "neu-det" / "IMAGES" / "scratches_1.jpg")
    p.add_argument("--clients", default="1,4,16,64", help="concurrency levels")
    p.add_argument("--seconds", type=float, default=20, help="measured seconds per level")
    p.add_argument(
        "--clip-frame",
        type=int,
        help="--image is a video: send its frame N as a JPEG (quality 90), as bench_peers.py",
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

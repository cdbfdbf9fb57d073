"""wrk (Debian's `wrk`, C) driving `POST /v1/predict` with a real JPEG body: one concurrency
level at a time, with the server's CPU per request and its memory (scripts.bench.load_predict,
scripts.bench.peers)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from scripts.harness import cpu_seconds, load1, proc_status_mb

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


def write_lua(folder: Path) -> Path:
    lua = folder / "post_jpeg.lua"
    lua.write_text(WRK_LUA)
    return lua

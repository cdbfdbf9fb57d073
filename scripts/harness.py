"""What the benchmarks, the soak test and the tests share to run a real line around lineinspect.

- `data_root()`: the real images (`$LINEINSPECT_DATA`, else `../shared/data`), the product's rule;
- `Broker`: a mosquitto of our own on a free loopback port, stopped and started at will;
- `Subscriber`: an MQTT client standing in for the PLC, keeping what arrives (the product's class,
  also used by `lineinspect demo-client`);
- `start_server` / `stop_server` / `wait_ready`: `lineinspect serve` as a child process, ready
  when GET /readyz answers 200;
- `pct` and the process figures (`proc_status_mb`, `cpu_seconds`, `load1`), and the inputs
  (`clip_frame_jpeg`, `at_size`).

Run from the repository root (`python -m scripts.bench.line`); pytest puts the root on the path,
so the tests import it as `scripts.harness`. The product (service/, training/) never imports it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from service.commands.mqtt_subscriber import Message, Subscriber
from service.paths import DATA_ENV, data_root

__all__ = [
    "DATA_ENV",
    "REPO",
    "Broker",
    "Message",
    "Subscriber",
    "at_size",
    "clip_frame_jpeg",
    "cpu_seconds",
    "data_root",
    "dies_with_parent",
    "free_port",
    "load1",
    "mosquitto_exe",
    "pct",
    "proc_status_mb",
    "start_server",
    "stop_server",
    "wait_ready",
]

REPO = Path(__file__).resolve().parents[1]
MOSQUITTO_HINT = (
    "mosquitto is not installed: sudo apt-get install -y mosquitto "
    "(scripts/dev/bootstrap.sh installs it)"
)


def dies_with_parent(cmd: Sequence[str]) -> list[str]:
    """`cmd` started so that the kernel kills it (SIGKILL) when the thread that started it dies,
    so a run that is itself killed leaves no broker or server behind: util-linux's setpriv sets
    PR_SET_PDEATHSIG and execs `cmd` (same process, same pid). Not a `preexec_fn`: Python run
    between fork and exec can deadlock on a lock another thread held at the fork (gRPC's
    threads in the Triton tests: mosquitto hung before its exec, twice)."""
    return ["setpriv", "--pdeathsig", "KILL", *cmd]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a real mosquitto of our own: free loopback port, stop / start at will


def mosquitto_exe() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise RuntimeError(MOSQUITTO_HINT)
    return exe


class Broker:
    """mosquitto on a free 127.0.0.1 port, anonymous clients allowed. `conf` may be edited
    between `stop` and `start`. `persistent`: subscriber sessions and queued messages survive a
    restart (the tests); the benchmarks run without it, with a deeper queue."""

    def __init__(
        self, workdir: Path, *, persistent: bool = True, max_queued_messages: int = 100_000
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        if persistent:  # subscriber sessions and their queued messages survive a restart
            lines += ["persistence true", f"persistence_location {workdir}/", "autosave_interval 1"]
        lines += [
            f"max_queued_messages {max_queued_messages}",
            f"log_dest file {workdir}/mosquitto.log",
        ]
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to its own user, which cannot read private tmp
            # folders (password file, persistence, log).
            lines.append("user root")
        self.conf.write_text("".join(line + "\n" for line in lines))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> None:
        self.proc = subprocess.Popen(
            dies_with_parent([mosquitto_exe(), "-c", str(self.conf)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- a real Triton Inference Server (pytriton's binary, scripts/dev/triton_server.py)

TRITON_HINT = (
    "the Triton tests need pytriton's server in its own virtualenv: "
    "`LINEINSPECT_TEST_PACKAGES=1 bash -c 'source scripts/dev/bootstrap.sh'` creates "
    ".venv-triton (or set LINEINSPECT_TRITON_VENV)"
)


def triton_python() -> Path:
    venv = Path(os.environ.get("LINEINSPECT_TRITON_VENV", REPO / ".venv-triton"))
    exe = venv / "bin" / "python"
    if not exe.exists():
        raise RuntimeError(TRITON_HINT)
    return exe


class TritonServer:
    """A Triton server on free loopback ports serving a model repository written by
    `lineinspect models export-triton`; `stop` and `start` again keep the ports (an outage)."""

    def __init__(self, repository: Path, log: Path) -> None:
        self.repository, self.log = repository, log
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, protocol: str) -> str:
        return f"127.0.0.1:{self.grpc_port if protocol == 'grpc' else self.http_port}"

    def start(self, timeout: float = 120) -> None:
        cmd = [
            str(triton_python()), "-m", "scripts.dev.triton_server",
            "--repository", str(self.repository), "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
        ]  # fmt: skip
        seen = self.log.stat().st_size if self.log.exists() else 0  # READY of this start only
        with self.log.open("ab") as out:
            # Its own process group: stop() takes tritonserver and its backend stubs with it.
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Triton server exited: {self.log.read_text()[-3000:]}")
            with self.log.open("rb") as fh:
                fh.seek(seen)
                if b"\nREADY\n" in b"\n" + fh.read():
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Triton server was not ready in {timeout:.0f} s")

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections stay open, nothing is answered."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None


# -- `lineinspect serve` as a child process


def wait_ready(
    url: str,
    proc: subprocess.Popen[Any],
    why: Callable[[], str] | None = None,
    timeout: float = 60,
    interval: float = 0.1,
) -> None:
    """Polls GET /readyz of a server subprocess until 200; RuntimeError with `why()` (its log,
    say) if it exits first, or when `timeout` s pass."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {why() if why else proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() >= deadline:
            raise RuntimeError(f"server did not become ready in {timeout:.0f} s")
        time.sleep(interval)


def start_server(
    model: Path, env_extra: dict[str, str] | None = None, timeout: float = 120
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m service serve` (= `lineinspect serve`) serving `model` on a free port, ready
    (GET /readyz 200), or SystemExit."""
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
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, lambda: "see its output above", timeout, interval=0.2)
    except RuntimeError as exc:
        if proc.poll() is None:
            proc.kill()
        raise SystemExit(f"the server did not start: {exc}") from None
    return proc, url


def stop_server(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# -- figures


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (numpy's linear interpolation); NaN for no values."""
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def proc_status_mb(pid: int, key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise KeyError(key)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of the process so far (psutil: the bench extra)."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def load1() -> float:
    return os.getloadavg()[0]


# -- inputs


def clip_frame_jpeg(video: Path, index: int, out: Path) -> Path:
    """Frame `index` of a video, encoded as JPEG quality 90 (the HTTP body the benchmarks send)."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    for _ in range(index + 1):
        ok, image = cap.read()
        if not ok:
            raise SystemExit(f"{video} has fewer than {index + 1} frames")
    cap.release()
    out.write_bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


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

"""A real `lineinspect serve` subprocess for the hostile-input suite: its RSS is its own, and a
crash is a dead process, not a swallowed exception in the test's thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, dies_with_parent, free_port, wait_ready

TOKEN = "fuzz-token-0123456789"


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[str]
    log: Path

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS for the server process")

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = os.environ | {
        "LINEINSPECT__MODELS__0__PATH": str(REPO / "models" / "neu-cls-demo.onnx"),
        "LINEINSPECT__API__PORT": str(port),
        "LINEINSPECT__API__TOKEN": TOKEN,
        "LINEINSPECT__API__REQUIRE_TOKEN_FOR_PREDICT": "true",
        "LINEINSPECT__API__MAX_BODY_BYTES": str(2 * 1024 * 1024),
        "LINEINSPECT__RUNTIME__WARMUP_RUNS": "1",
        "LINEINSPECT__RUNTIME__INTRA_OP_THREADS": "1",
        # a slow camera so the line's routes (cameras, frames, drift, review) have state to show
        "LINEINSPECT__CAMERAS__0__NAME": "cam1",
        "LINEINSPECT__CAMERAS__0__SOURCE": f"folder:{data_dir / 'neu-det' / 'Validation_Images'}",
        "LINEINSPECT__CAMERAS__0__FPS": "2",
        "LINEINSPECT__MQTT__ENABLED": "false",
        "LINEINSPECT__OUTBOX__PATH": str(tmp / "outbox.sqlite"),
        "LINEINSPECT__REVIEW__PATH": str(tmp / "review"),
        "LINEINSPECT__REVIEW__SAMPLE_RATE": "1.0",
        "LINEINSPECT__HISTORY__PATH": str(tmp / "history"),
    }
    log = tmp / "server.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            dies_with_parent([sys.executable, "-m", "service", "serve"]),
            cwd=REPO,
            env=env,
            stderr=err,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, lambda: log.read_text()[-2000:])
    yield Server(url, proc, log)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise

"""Faults the other suites do not cover: the disk under the outbox and the review queue fills up.

The service runs as a real subprocess in its own mount namespace (`unshare -rm`, which needs no
root) with a small tmpfs as its `var/` folder; the test fills that tmpfs through
/proc/<pid>/root, watches health and metrics, frees the space and counts sequence numbers at a
real MQTT subscriber. The other faults of issue 6 live beside their features in test_line.py
(broker killed for 30 s, wrong credentials, stream dropping and returning, SIGKILL and restart,
corrupt model on hot reload), all marked `faults`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import REPO, Broker, Plc, dies_with_parent, free_port, sample
from tests.integration.test_line import assert_complete, folder_camera, image_folder, line_config

pytestmark = pytest.mark.faults

RECOVERY_BOUND_S = 5.0  # the outbox retries a failed write every second


def fill(folder: Path) -> Path:
    """Write zeros until the file system says ENOSPC; returns the filler file. Unbuffered: a
    buffered file keeps the chunk that did not fit and raises ENOSPC again when it is closed
    (seen once in CI, depending on where the disk ran out)."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (64 * 1024))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def test_disk_full_under_outbox_and_review_loses_no_verdict(
    broker: Broker, plc: Plc, tmp_path: Path, neu_images: list[Path]
) -> None:
    assert shutil.which("unshare"), "util-linux `unshare` is needed for the private tmpfs"
    n = 60
    frames = image_folder(tmp_path, neu_images, n)
    var = tmp_path / "var"
    (var / "outbox").mkdir(parents=True)
    (var / "review").mkdir()
    port = free_port()
    cfg = line_config(
        tmp_path, broker, [folder_camera("cam1", frames, fps=10)],
        api={"port": port},
        outbox={"path": str(var / "outbox" / "outbox.sqlite")},
        review={"path": str(var / "review"), "sample_rate": 1.0, "budget_per_hour": 100000},
    )  # fmt: skip
    # two small file systems, so each can be filled on its own
    mount = (
        'mount -t tmpfs -o size=6m tmpfs "$0/outbox" && '
        'mount -t tmpfs -o size=2m tmpfs "$0/review" && exec "$@"'
    )
    cmd = ["unshare", "-rm", "sh", "-c", mount, str(var),
           sys.executable, "-m", "service", "serve", "--config", str(cfg)]  # fmt: skip
    env = os.environ | {"LINEINSPECT__RUNTIME__WARMUP_RUNS": "1"}
    log = (tmp_path / "service.log").open("w")
    proc = subprocess.Popen(dies_with_parent(cmd), cwd=REPO, env=env, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        plc.wait_for(10, 60, "cam1")
        # the service's own view of var/: its private file systems
        inside = Path(f"/proc/{proc.pid}/root") / str(var).lstrip("/")
        assert (inside / "outbox" / "outbox.sqlite").exists(), "the service's tmpfs is unreachable"
        # 1. the review queue's disk is full: frames are not kept, verdicts keep flowing
        review_filler = fill(inside / "review")
        before = len(plc.verdicts("cam1"))
        time.sleep(2)
        text = httpx.get(f"{url}/metrics").text
        assert sample(text, "lineinspect_review_dropped_total", camera="cam1", reason="disk") > 0
        assert len(plc.verdicts("cam1")) > before, "verdicts stopped with only the review full"
        # 2. the outbox's disk is full too: verdicts wait in memory, nothing is dropped
        outbox_filler = fill(inside / "outbox")
        time.sleep(1.5)
        delivered_when_full = len(plc.verdicts("cam1"))
        time.sleep(3)
        assert proc.poll() is None, "the service exited on a full disk"
        assert httpx.get(f"{url}/healthz").status_code == 200
        text = httpx.get(f"{url}/metrics").text
        assert sample(text, "lineinspect_pipeline_errors_total", stage="outbox") > 0, text[-2000:]
        assert len(plc.verdicts("cam1")) == delivered_when_full, "verdicts sent without a spool"
        assert len(plc.verdicts("cam1")) < n
        outbox_filler.unlink()
        review_filler.unlink()
        freed = time.monotonic()
        plc.wait_for(len(plc.verdicts("cam1")) + 1, 30, "cam1")
        recovery = time.monotonic() - freed
        got = plc.wait_for(n, 60, "cam1")
        assert_complete(got, n)  # every frame's verdict, in order, none lost
        assert recovery <= RECOVERY_BOUND_S, f"first verdict {recovery:.1f} s after space freed"
        print(f"\nrecovered {recovery:.2f} s after the disk was freed")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()  # never leave it behind; the assertion below reports the failure
            proc.wait(10)
        finally:
            log.close()
    err = (tmp_path / "service.log").read_text()
    assert proc.returncode == 0, err[-3000:]
    assert re.search(r"camera cam1 frame \d+: outbox failed", err), err[-3000:]
    assert "outbox writable again" in err
    assert len(err.splitlines()) < 400, "a full disk must not flood the log"
    assert "review item not stored" in err

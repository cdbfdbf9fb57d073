"""The README's main-job command, run as a user runs it (it stops by itself here)."""

from __future__ import annotations

import os
import subprocess

from tests.integration.conftest import REPO, free_port


def test_demo_command_serves_real_images() -> None:
    env = os.environ | {"DEMO_SECONDS": "0.5", "LINEINSPECT__API__PORT": str(free_port())}
    r = subprocess.run(
        ["bash", "scripts/demo.sh"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    verdict_lines = [line for line in r.stdout.splitlines() if line.endswith(("±0.100", "±0.100)"))]
    assert len(verdict_lines) == 12, r.stdout
    # the shipped classifier names every real defect right, confidently
    assert sum(" FAIL " in line for line in verdict_lines) == 12, r.stdout
    for line in verdict_lines:
        image, _, top = line.split()[:3]
        assert image.rsplit("_", 1)[0] == top, line
    assert "lineinspect is serving models/neu-cls-int8.onnx, models/neu-det-demo.onnx" in r.stdout
    # the magnetic-tile gate passes good tiles and fails defective ones
    tiles = r.stdout.split("held-out magnetic tiles", 1)[1].split("\n\n", 2)[1].splitlines()[1:]
    verdicts = {(line.split()[1] == "good", line.split()[2]) for line in tiles if line.strip()}
    assert (True, "PASS") in verdicts and (False, "FAIL") in verdicts, r.stdout
    for model in ("neu-cls-int8", "neu-det-demo", "mt-defect"):
        assert f"batcher for {model} stopped" in r.stderr

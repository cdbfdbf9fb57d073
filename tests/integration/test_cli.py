"""The command line as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from tests import onnx_factory
from tests.integration.conftest import REPO, dies_with_parent, free_port, wait_ready

CLI = [sys.executable, "-m", "service"]


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=os.environ | (env or {}),
        check=False,
    )


def test_models_inspect_demo_and_refusal(tmp_path: Path, demo_model: Path) -> None:
    r = run("models", "inspect", demo_model)
    assert r.returncode == 0, r.stderr
    assert "task          classify" in r.stdout
    assert "providers     CPUExecutionProvider" in r.stdout
    r = run("models", "inspect", demo_model, "--json")
    assert json.loads(r.stdout)["classes"][0] == "crazing"

    seg = onnx_factory.constant_model(
        tmp_path / "seg.onnx",
        np.zeros((38, 100), np.float32),
        metadata=onnx_factory.ultralytics_metadata(["a", "b"], (640, 640), "segment"),
    )
    r = run("models", "inspect", seg)
    assert r.returncode == 2
    assert "cannot be served: task 'segment' (instance segmentation) is not served" in r.stderr
    assert "Traceback" not in r.stderr


def test_predict_json_lines(tmp_path: Path, demo_model: Path, neu_images: list[Path]) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(neu_images[0].read_bytes()[:500])
    r = run("predict", "--model", demo_model, neu_images[0], corrupt, neu_images[400])
    assert r.returncode == 1, "a failed image makes the exit status non-zero"
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 3
    assert lines[0]["verdict"] in ("fail", "uncertain") and lines[0]["file"] == str(neu_images[0])
    assert lines[1] == {"file": str(corrupt), "error": "truncated JPEG: no end-of-image marker"}
    assert lines[2]["classes"][0]["class_name"] == neu_images[400].name.rsplit("_", 1)[0]


def test_config_validate_and_schema(tmp_path: Path) -> None:
    r = run("config", "validate", REPO / "deploy" / "config.example.yaml")
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("api:\n  port: 8080\n  prot: 1\n")
    r = run("config", "validate", bad)
    assert r.returncode == 2
    assert f"{bad}:3: api.prot: unknown key" in r.stderr
    r = run("config", "validate", bad, env={"LINEINSPECT__API__PROT": "1"})
    assert "environment variable LINEINSPECT__API__PROT" in r.stderr
    missing = tmp_path / "missing.yaml"
    missing.write_text("models:\n  - path: models/nope.onnx\n")
    r = run("config", "validate", missing)
    assert r.returncode == 2 and "files not found" in r.stderr and "models/nope.onnx" in r.stderr
    schema = json.loads(run("config", "schema").stdout)
    assert "api" in schema["properties"]


def test_serve_fails_fast_with_one_line(tmp_path: Path) -> None:
    r = run("serve", env={"LINEINSPECT__MODELS__0__PATH": str(tmp_path / "nope.onnx")})
    assert r.returncode == 2
    assert "cannot start: model file not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_answers_and_stops_cleanly(neu_images: list[Path]) -> None:
    port = free_port()
    env = os.environ | {
        "LINEINSPECT__API__PORT": str(port),
        "LINEINSPECT__RUNTIME__WARMUP_RUNS": "1",
    }
    proc = subprocess.Popen(
        dies_with_parent([*CLI, "serve"]),
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, lambda: proc.stderr.read() if proc.stderr else "")
        r = httpx.post(
            f"{url}/v1/predict",
            content=neu_images[0].read_bytes(),
            headers={"content-type": "image/jpeg"},
        )
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "serving on" in err and "batcher for neu-cls-demo stopped" in err

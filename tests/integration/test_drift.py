"""Drift on a running line: a darkened, shadowed or blurred camera alerts; a healthy one does not.

Real line, real model (the shipped NEU classifier, whose card holds the validation reference),
real held-out images (the test split of its manifest, never used for the reference), read back
through real HTTP: /metrics (what Prometheus scrapes) and /v1/drift.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import cv2

from service.commands.drift import blur, darken, shadow
from tests.integration.conftest import REPO, Broker, sample
from tests.integration.test_line import Serve, folder_camera, line_config


def held_out(data_dir: Path) -> list[Path]:
    manifest = json.loads((REPO / "models" / "neu-cls-split.json").read_text())
    paths = [data_dir / "neu-det" / item["path"] for item in manifest["splits"]["test"]]
    assert len(paths) > 150 and all(p.exists() for p in paths[:5]), "NEU test split not found"
    random.Random(0).shuffle(paths)  # a line sees the classes mixed, not sorted by name
    return paths


TRANSFORMS = {"healthy": lambda image: image, "dark": darken, "shadow": shadow, "blur": blur}


def write_frames(folder: Path, paths: list[Path], transform: str) -> Path:
    """The camera's frames: the held-out images under one of `lineinspect drift check`'s
    conditions (the same transforms the documented drift figures were measured with)."""
    folder.mkdir()
    for i, path in enumerate(paths):
        image = TRANSFORMS[transform](cv2.imread(str(path)))
        cv2.imwrite(str(folder / f"{i:05d}.png"), image)  # lossless: only the transform differs
    return folder


def test_drifted_cameras_alert_and_the_healthy_one_does_not(
    serve: Serve, broker: Broker, tmp_path: Path, data_dir: Path
) -> None:
    paths = held_out(data_dir)
    cams = ["healthy", "dark", "shadow", "blur"]
    cameras = [
        folder_camera(c, write_frames(tmp_path / c, paths, c), pattern="*.png") for c in cams
    ]
    cfg = line_config(
        tmp_path, broker, cameras,
        models=[{"path": str(REPO / "models" / "neu-cls-int8.onnx")}],
        drift={"window": 150, "min_frames": 100},
    )  # fmt: skip
    running = serve(config=cfg)
    deadline = time.monotonic() + 90
    while True:
        drift = running.client.get("/v1/drift").json()["cameras"]
        if all(drift.get(c, {}).get("window", 0) >= 150 for c in cams):
            break
        assert time.monotonic() < deadline, f"windows never filled: {drift}"
        time.sleep(0.25)
    metrics = running.client.get("/metrics").text
    psi = {
        c: {s: sample(metrics, "lineinspect_drift_psi", camera=c, signal=s)
            for s in ("brightness", "contrast", "sharpness", "confidence")}
        for c in cams
    }  # fmt: skip
    assert max(psi["healthy"].values()) < 0.25, psi["healthy"]
    assert drift["healthy"]["state"] in ("ok", "watch")
    assert psi["dark"]["brightness"] > 1.0, psi["dark"]
    assert psi["shadow"]["brightness"] > 0.5, psi["shadow"]
    assert psi["blur"]["sharpness"] > 1.0, psi["blur"]
    for c in ("dark", "shadow", "blur"):
        assert drift[c]["state"] == "alert", (c, drift[c])
        assert sample(metrics, "lineinspect_drift_ks", camera=c, signal="brightness") >= 0
    assert sample(metrics, "lineinspect_drift_window_frames", camera="healthy") == 150
    assert 0 <= sample(metrics, "lineinspect_uncertain_ratio", camera="healthy") <= 1

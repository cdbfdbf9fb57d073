"""Trying a new model safely on a real line: real NEU images through capture, the shipped
classifier live and its INT8 sibling as the candidate (real ONNX Runtime), a real mosquitto and
a subscriber standing in for the PLC.

- the candidate's verdicts never reach the verdict topic, and its agreement figures equal an
  offline comparison of the same frames (both models in-process over the frames the line judged);
- promote and rollback under load lose no frame and keep each camera's order;
- bad model changes are precise 4xx answers (HTTP and the CLI) and the line keeps serving.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import httpx
import pytest
import yaml

from service.comparison import FLIPS, compare, flip_name
from service.inference.model import load_model
from service.inference.registry import file_sha256
from service.inference.runtime import RuntimeOptions
from tests.integration.conftest import REPO, Broker, Plc, Running, sample
from tests.integration.test_line import assert_complete, folder_camera, image_folder, line_config

Serve = Callable[..., Running]
LIVE = "neu-cls-demo"
AUTH = {"authorization": "Bearer t"}


def candidate_copy(folder: Path, stem: str = "neu-cls-int8", **card_fields: Any) -> Path:
    """A shipped model with its card, renamed as the live model (or with other card fields)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "models" / f"{stem}.onnx", folder / f"{stem}.onnx")
    card = yaml.safe_load((REPO / "models" / f"{stem}.card.yaml").read_text())
    (folder / f"{stem}.card.yaml").write_text(yaml.safe_dump(card | {"name": LIVE} | card_fields))
    return folder / f"{stem}.onnx"


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, state: Callable[[], Any] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s: {state()}")
        time.sleep(0.05)


def cli(running: Running, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "models", *args, "--url", running.url],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
        env=os.environ | {"LINEINSPECT__API__TOKEN": "t"},
    )  # fmt: skip


def test_the_candidate_judges_beside_the_live_model_and_matches_an_offline_comparison(
    serve: Serve, broker: Broker, plc: Plc, tmp_path: Path, neu_images: list[Path]
) -> None:
    n = 60
    folder = image_folder(tmp_path, neu_images, n)
    candidate = candidate_copy(tmp_path / "candidate")
    cfg = line_config(
        tmp_path, broker, [folder_camera("cam1", folder, fps=10)],
        models=[{"path": str(REPO / "models" / f"{LIVE}.onnx"), "candidate": str(candidate)}],
        # nice rather than SCHED_IDLE, which may starve on a busy shared test machine; the queue
        # holds every frame, so the comparison covers all of them
        shadow={"queue_size": 64, "idle": False}, history={"path": str(tmp_path / "history")},
    )  # fmt: skip
    running = serve(config=cfg)
    got = plc.wait_for(n, 60, "cam1")
    assert_complete(got, n)

    def report() -> dict[str, Any]:
        r = running.client.get(f"/v1/models/{LIVE}/candidate")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    wait_until("the candidate did not judge every frame",
               lambda: report()["totals"]["compared"] >= n, 60, report)  # fmt: skip
    body = report()
    assert body["candidate"]["loaded_by"] == "config" and body["candidate"]["version"] == "1.0.0"
    # no verdict of the candidate on the verdict topic: one verdict per frame, all the live model's
    live_sha = file_sha256(REPO / "models" / f"{LIVE}.onnx")
    verdicts = plc.verdicts()
    assert {v["model"]["sha256"] for v in verdicts} == {live_sha}
    assert sorted({v["sequence"] for v in verdicts}) == list(range(1, n + 1))
    assert all(t.endswith(("/verdict", "/review", "/status")) for t, _ in plc.messages)

    # offline: both models in-process over the frames the line judged, in the camera's order
    options = RuntimeOptions(warmup_runs=0)
    live_model = load_model(REPO / "models" / f"{LIVE}.onnx", options)
    cand_model = load_model(candidate, options)
    images = [cv2.imread(str(p)) for p in sorted(folder.iterdir())]
    live_results, cand_results = live_model.predict(images), cand_model.predict(images)
    by_sequence = {v["sequence"]: v for v in got}
    assert [by_sequence[i + 1]["verdict"] for i in range(n)] == [
        r.decision.verdict.value for r in live_results
    ], "the line and the in-process live model judged the frames alike"
    comparisons = [
        compare(a, b, live_model.spec.classes)
        for a, b in zip(live_results, cand_results, strict=True)
    ]
    disagree = {i + 1 for i, c in enumerate(comparisons) if not c.agree}
    assert disagree, "the two models should disagree on some of these frames"
    cam = body["cameras"]["cam1"]
    assert (cam["compared"], cam["dropped"], cam["errors"]) == (n, 0, 0)
    assert cam["agreements"] == n - len(disagree)
    assert cam["agreement"] == pytest.approx((n - len(disagree)) / n, abs=1e-6)
    for a, b in FLIPS:
        expected = sum(1 for c in comparisons if (c.live, c.candidate) == (a, b))
        assert cam["flips"][flip_name(a, b)] == expected, (a, b)
    for name in live_model.spec.classes:
        shift = sum(c.shifts[name] for c in comparisons) / n
        assert cam["score_shift"][name]["mean"] == pytest.approx(shift, abs=2e-6), name
    assert cam["latency_ms"]["candidate"]["p50"] > 0

    # the disagreeing frames are kept for review, each with the candidate's judgement
    def kept() -> set[int]:
        records = [json.loads(p.read_text()) for p in (tmp_path / "review").glob("cam1/*/*.json")]
        return {r["frame_id"] for r in records if "candidate" in r}

    wait_until("the disagreeing frames were not all kept", lambda: kept() == disagree, 20)
    assert report()["cameras"]["cam1"]["kept_for_review"] == len(disagree)
    records = [json.loads(p.read_text()) for p in (tmp_path / "review").glob("cam1/*/*.json")]
    assert {r["reason"] for r in records if "candidate" in r} <= {
        "candidate_disagrees",
        "uncertain",
    }
    assert all(r["candidate"]["model"]["version"] == "1.0.0" for r in records if "candidate" in r)

    # the metrics and the operator page say the same
    metrics = running.client.get("/metrics").text
    labels = {"model": LIVE, "camera": "cam1"}
    assert sample(metrics, "lineinspect_candidate_frames_total", **labels) == n
    assert sample(metrics, "lineinspect_candidate_agreement_ratio", **labels) == pytest.approx(
        cam["agreement"], abs=1e-6
    )
    flips = sum(
        sample(metrics, "lineinspect_candidate_flips_total", **labels, live=a, candidate=b)
        for a, b in FLIPS
    )
    assert flips == len(disagree)
    assert sample(metrics, "lineinspect_candidate_frames_dropped_total", **labels) == 0
    state = running.client.get("/v1/operator/state").json()
    assert state["cameras"]["cam1"]["candidate"]["compared"] == n
    assert state["candidates"][LIVE]["candidate"]["sha256"] == cand_model.spec.sha256
    items = running.client.get("/v1/review", params={"limit": 200}).json()["items"]
    assert {i["frame_id"] for i in items if i["candidate"]} == disagree
    operator_page_shows_the_candidate(running, n)
    # discard: the report stays final, the live model never changed
    final = running.client.delete(f"/v1/models/{LIVE}/candidate")
    assert final.status_code == 200 and final.json()["totals"]["compared"] == n
    assert running.client.get(f"/v1/models/{LIVE}/candidate").status_code == 404
    assert running.client.get("/v1/models").json()["models"][0]["sha256"] == live_sha


def operator_page_shows_the_candidate(running: Running, n: int) -> None:
    """The camera's tile in a real headless Chromium names the candidate and its agreement."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.integration.test_operator import _chrome

    driver = _chrome()
    try:
        driver.get(running.url + "/ui")
        line = (By.CSS_SELECTOR, '.tile[data-camera="cam1"] p.candidate')
        WebDriverWait(driver, 20).until(lambda d: d.find_element(*line).is_displayed())
        text = driver.find_element(*line).text
        assert text.startswith("candidate 1.0.0: agrees ") and f" of {n} " in text, text
        assert "pass→fail" in text and "to uncertain" in text and "dropped 0" in text, text
    finally:
        driver.quit()


def test_promote_and_rollback_under_load_lose_no_frame_and_keep_order(
    serve: Serve, broker: Broker, plc: Plc, tmp_path: Path, neu_images: list[Path]
) -> None:
    n = 200
    folder = image_folder(tmp_path, neu_images, n)
    candidate = candidate_copy(tmp_path / "candidate")
    cameras = [folder_camera("cam1", folder, fps=25), folder_camera("cam2", folder, fps=25)]
    cfg = line_config(
        tmp_path, broker, cameras, api={"token": "t", "model_dirs": [str(tmp_path)]},
        line={"max_batch": 2},
        runtime={"parallel_runs": 2}, history={"path": str(tmp_path / "history")},
    )  # fmt: skip
    running = serve(config=cfg)
    c = running.client
    plc.wait_for(20, 30, "cam1")
    loaded = c.post(f"/v1/models/{LIVE}/candidate", json={"path": str(candidate)}, headers=AUTH)
    assert loaded.status_code == 200, loaded.text
    plc.wait_for(70, 60, "cam1")
    promoted = c.post(f"/v1/models/{LIVE}/candidate/promote", headers=AUTH)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["version"] == "1.0.0"
    plc.wait_for(120, 60, "cam1")
    rolled = cli(running, "rollback", LIVE)  # the CLI form, with the token from the environment
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout)["version"] == "0.1.0"
    live_sha = file_sha256(REPO / "models" / f"{LIVE}.onnx")
    cand_sha = file_sha256(candidate)
    for camera in ("cam1", "cam2"):
        got = plc.wait_for(n, 90, camera)
        assert_complete(got, n)
        ordered = sorted({v["sequence"]: v for v in got}.values(), key=lambda v: v["sequence"])
        assert [v["frame_id"] for v in ordered] == list(range(1, n + 1)), camera
        assert not any(v["error"] for v in ordered), camera
        shas = [v["model"]["sha256"] for v in ordered]
        runs = [shas[0]] + [b for a, b in itertools.pairwise(shas) if a != b]
        assert runs == [live_sha, cand_sha, live_sha], f"{camera}: models in verdict order {runs}"
        versions = [v["model"]["thresholds_version"] for v in ordered]
        assert versions == sorted(versions) and versions[-1] == versions[0] + 2, camera
    history = c.get(f"/v1/models/{LIVE}/history").json()
    assert [(e["event"], e["by"], e["current"]) for e in history["entries"]] == [
        ("promote", "admin:default", False),
        ("start", "config", True),
    ]
    assert history["entries"][0]["rolled_back_by"] == "admin:default"
    metrics = c.get("/metrics").text
    for change in ("candidate", "promote", "rollback"):
        assert sample(metrics, "lineinspect_model_changes_total",
                      model=LIVE, change=change, result="ok") == 1  # fmt: skip


def test_bad_model_changes_are_clear_4xx_and_the_line_keeps_serving(
    serve: Serve, broker: Broker, plc: Plc, tmp_path: Path, neu_images: list[Path]
) -> None:
    folder = image_folder(tmp_path, neu_images, 20)
    cfg = line_config(
        tmp_path, broker, [folder_camera("cam1", folder, fps=8, loop=True)],
        api={"token": "t", "model_dirs": [str(tmp_path)]},  # candidates are dropped there
        history={"path": str(tmp_path / "history")},
    )  # fmt: skip
    running = serve(config=cfg)
    c = running.client
    plc.wait_for(5, 30, "cam1")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx file")
    anomaly = candidate_copy(tmp_path / "anomaly", "mt-anomaly")
    base = f"/v1/models/{LIVE}"
    for body, status, reason in [
        ({"path": str(corrupt)}, 422, "cannot load"),
        ({"path": str(tmp_path / "missing.onnx")}, 422, "no model file"),
        ({"path": str(anomaly)}, 422, "change its task from classify to anomaly"),
        ({"path": str(tmp_path)}, 422, "no model file"),
    ]:
        r = c.post(f"{base}/candidate", json=body, headers=AUTH)
        assert r.status_code == status and reason in r.json()["detail"], r.text
        assert "keeps serving" in r.json()["detail"]
    unknown = c.post("/v1/models/nope/candidate", json={"path": str(corrupt)}, headers=AUTH)
    assert unknown.status_code == 404 and LIVE in unknown.json()["detail"]
    assert c.post("/v1/models/nope/rollback", headers=AUTH).status_code == 404
    assert c.get("/v1/models/nope/history").status_code == 404
    no_history = c.post(f"{base}/rollback", headers=AUTH)
    assert no_history.status_code == 409, no_history.text
    assert "no earlier model of neu-cls-demo" in no_history.json()["detail"]
    nothing = c.post(f"{base}/candidate/promote", headers=AUTH)
    assert nothing.status_code == 409 and "no candidate to promote" in nothing.json()["detail"]
    assert c.delete(f"{base}/candidate", headers=AUTH).status_code == 404
    assert c.post(f"{base}/rollback").status_code == 401  # and never without the token
    refused = cli(running, "rollback", LIVE)
    assert refused.returncode == 2 and "HTTP 409" in refused.stderr, refused.stderr
    history = cli(running, "history", LIVE)
    assert history.returncode == 0, history.stderr
    (entry,) = json.loads(history.stdout)["entries"]
    assert (entry["by"], entry["event"], entry["current"]) == ("config", "start", True)
    # the live model kept serving throughout: verdicts keep coming, all from it
    before = len(plc.verdicts("cam1"))
    plc.wait_for(before + 5, 30, "cam1")
    assert len(plc.verdicts("cam1")) >= before + 5
    assert not any(v["error"] for v in plc.verdicts("cam1"))
    assert {v["model"]["version"] for v in plc.verdicts("cam1")} == {"0.1.0"}
    httpx.get(running.url + "/readyz").raise_for_status()
    metrics = c.get("/metrics").text
    assert sample(metrics, "lineinspect_model_changes_total",
                  model=LIVE, change="candidate", result="failed") == 4  # fmt: skip

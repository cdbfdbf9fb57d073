"""The operator page end to end: a real line (folder camera over real NEU images, the shipped
YOLOv8n detector, a real mosquitto) behind real uvicorn, checked over HTTP and in a real headless
Chromium driven by Selenium."""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from service.inference.model import load_model
from service.review_store import export
from tests.integration.conftest import REPO, Broker, Running
from tests.integration.test_line import folder_camera, line_config

Serve = Callable[..., Running]
TOKEN = "operator-test-token"
# Judged by models/neu-det-demo.onnx (0.2.0): pass, uncertain, fail, uncertain, fail, fail; the
# last frame (inclusion_212) has a failing box well inside the image, which the pixel checks
# look for. `strip_a_counts` re-judges them in-process, so a retrained model says so plainly.
STRIP_A = ["crazing_51.jpg", "crazing_154.jpg", "pitted_surface_164.jpg",
           "scratches_226.jpg", "patches_53.jpg", "inclusion_212.jpg"]  # fmt: skip
STRIP_A_COUNTS = {"pass": 1, "fail": 3, "uncertain": 2}
STRIP_B = ["patches_160.jpg", "scratches_64.jpg"]


def _folder(tmp_path: Path, neu_images: list[Path], names: list[str], name: str) -> Path:
    by_name = {p.name: p for p in neu_images}
    folder = tmp_path / name
    folder.mkdir()
    for i, image in enumerate(names):
        shutil.copy(by_name[image], folder / f"{i:03d}_{image}")
    return folder


def start_line(
    serve: Serve,
    broker: Broker,
    tmp_path: Path,
    neu_images: list[Path],
    cameras: dict[str, list[str]],
    extra: list[dict[str, Any]] | None = None,
) -> Running:
    """Serve a detector line (every frame kept for review, a token set) and wait until each
    folder camera has judged all its frames."""
    cams = [folder_camera(name, _folder(tmp_path, neu_images, images, name))
            for name, images in cameras.items()]  # fmt: skip
    cfg = line_config(
        tmp_path, broker, cams + (extra or []),
        models=[{"path": str(REPO / "models" / "neu-det-demo.onnx")}],
        review={"sample_rate": 1.0}, api={"token": TOKEN},
    )  # fmt: skip
    running = serve(config=cfg)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        live = running.service.live
        if all((live.last_verdict(c) or {}).get("frame_id") == len(i) for c, i in cameras.items()):
            return running
        time.sleep(0.05)
    last = {c: running.service.live.last_verdict(c) for c in cameras}
    raise AssertionError(f"the line did not judge every frame: {last}")


def strip_a_counts(data_dir: Path) -> dict[str, int]:
    """STRIP_A's verdicts from the shipped detector loaded in-process (the line must agree)."""
    model = load_model(REPO / "models" / "neu-det-demo.onnx")
    images = [cv2.imread(str(data_dir / "neu-det" / "IMAGES" / n)) for n in STRIP_A]
    counts = {"pass": 0, "fail": 0, "uncertain": 0}
    for result in model.predict(images):
        counts[result.decision.verdict.value] += 1
    assert counts == STRIP_A_COUNTS, (
        f"the shipped detector now judges STRIP_A {counts}; pick images that give "
        f"{STRIP_A_COUNTS} (one of each verdict at least) after retraining it"
    )
    return counts


def driving_box(running: Running, camera: str) -> list[float]:
    verdict = running.service.live.last_verdict(camera)
    assert verdict is not None
    assert verdict["verdict"] == "fail", verdict
    return next(f["box"] for f in verdict["findings"] if f["outcome"] == "fail")


def red_share(image: np.ndarray, x: int, y1: int, y2: int, halfwidth: int = 3) -> float:
    """Share of rows y1..y2 that have a strongly red pixel within `halfwidth` of column x."""
    strip = image[y1:y2, max(0, x - halfwidth) : x + halfwidth + 1].astype(int)
    b, g, r = strip[..., 0], strip[..., 1], strip[..., 2]
    red = (r > 150) & (g < 100) & (b < 100)
    return float(red.any(axis=1).mean())


def item_json(review: Path, camera: str, item_id: str) -> dict[str, Any]:
    [path] = (review / camera).glob(f"*/{item_id}.json")
    return dict(json.loads(path.read_text()))


def test_live_view_draws_boxes_and_the_page_state(
    serve: Serve, broker: Broker, tmp_path: Path, neu_images: list[Path], data_dir: Path
) -> None:
    # a trigger-mode camera that is never triggered: no frame to show
    gate = {"name": "gate", "source": f"folder:{tmp_path / 'strip-a'}", "loop": True, "fps": 5,
            "mode": "trigger"}  # fmt: skip
    running = start_line(serve, broker, tmp_path, neu_images, {"strip-a": STRIP_A}, [gate])
    c = running.client

    r = c.get("/v1/cameras/strip-a/frame.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-frame-id"] == str(len(STRIP_A))
    drawn = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    raw = cv2.imread(str(tmp_path / "strip-a" / f"005_{STRIP_A[-1]}"), cv2.IMREAD_COLOR)
    scale = drawn.shape[1] / raw.shape[1]
    assert drawn.shape[1] >= 640 and drawn.shape[0] > raw.shape[0] * scale  # enlarged + banner
    plain = cv2.resize(raw, (drawn.shape[1], round(raw.shape[0] * scale)))
    x1, y1, x2, y2 = (round(v * scale) for v in driving_box(running, "strip-a"))
    mid = (y1 + (y2 - y1) // 4, y2 - (y2 - y1) // 4)
    assert red_share(drawn, x1, *mid) > 0.9, "the failing box is not drawn in red"
    assert red_share(drawn, x2, *mid) > 0.9
    assert red_share(plain, x1, *mid) == 0.0, "the raw NEU image has no red: the box is ours"
    banner = drawn[plain.shape[0] + 5 : plain.shape[0] + 40, :100].reshape(-1, 3).astype(int)
    assert np.median(banner[:, 2]) > 150 > np.median(banner[:, 1]), "no red FAIL banner"

    assert c.get("/v1/cameras/nope/frame.jpg").status_code == 404
    missing = c.get("/v1/cameras/gate/frame.jpg")
    assert missing.status_code == 404 and "no judged frame yet" in missing.json()["detail"]

    deadline = time.monotonic() + 10  # the drift worker bins frames off the publisher thread
    while True:
        state = c.get("/v1/operator/state").json()
        drift = state["cameras"]["strip-a"]["drift"]
        if (drift and drift["window"] == len(STRIP_A)) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert state["line"] == "Line-1" and state["token_required"] is True
    assert state["cameras"]["strip-a"]["counts"] == strip_a_counts(data_dir)
    assert state["cameras"]["gate"]["counts"] == {"pass": 0, "fail": 0, "uncertain": 0}
    assert state["feed"][0]["camera"] == "strip-a" and state["feed"][0]["frame_id"] == 6
    assert state["models"]["neu-det-demo"]["classes"][0] == "crazing"
    assert state["drift_available"] is True  # on by default; 6 frames: still warming up
    assert drift["state"] == "warming_up" and drift["window"] == len(STRIP_A)
    assert drift["uncertain_ratio"] == pytest.approx(2 / 6)

    page = c.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
    assert TOKEN not in page.text and "<script src=" in page.text and "<style" not in page.text
    assert c.get("/ui/operator.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/ui/operator.css").headers["content-type"].startswith("text/css")
    assert c.get("/ui/app.py").status_code == 404
    assert c.get("/ui/..%2Foperator.py").status_code == 404


def test_review_labels_are_written_checked_and_exported(
    serve: Serve, broker: Broker, tmp_path: Path, neu_images: list[Path]
) -> None:
    running = start_line(serve, broker, tmp_path, neu_images, {"strip-a": STRIP_A})
    c, review = running.client, tmp_path / "review"
    items = c.get("/v1/review", params={"camera": "strip-a"}).json()["items"]
    assert [i["frame_id"] for i in items] == [6, 5, 4, 3, 2, 1], "newest first, all pending"
    assert len(c.get("/v1/review", params={"limit": 2}).json()["items"]) == 2
    assert c.get("/v1/review", params={"limit": 100000}).status_code == 422
    newest, older = items[0], items[1]
    assert newest["classes"] == list(running.service.served.models["neu-det-demo"].spec.classes)
    assert newest["findings"][0]["class_name"] == "inclusion" and newest["task"] == "detect"

    jpg = c.get(newest["image_url"])
    assert jpg.status_code == 200 and jpg.headers["content-type"] == "image/jpeg"
    [on_disk] = (review / "strip-a").glob(f"*/{newest['id']}.jpg")
    assert jpg.content == on_disk.read_bytes()

    url = f"/v1/review/strip-a/{newest['id']}/label"
    body = {"label": "inclusion", "inspector": "Anna K"}
    before = item_json(review, "strip-a", newest["id"])
    assert c.post(url, json=body).status_code == 401
    assert c.post(url, json=body, headers={"authorization": "Bearer wrong"}).status_code == 401
    auth = {"authorization": f"Bearer {TOKEN}"}
    bad = c.post(url, json=body | {"label": "rust"}, headers=auth)
    assert bad.status_code == 422 and "rust" in bad.text and "crazing" in bad.text
    outside = {"label": [{"class_name": "patches", "box": [0, 0, 500, 10]}], "inspector": "x"}
    assert c.post(url, json=outside, headers=auth).status_code == 422
    assert c.post(url, json=body | {"inspector": "<b>"}, headers=auth).status_code == 422
    assert item_json(review, "strip-a", newest["id"]) == before, "a refused label wrote nothing"

    ok = c.post(url, json=body, headers=auth)
    assert ok.status_code == 200, ok.text
    after = item_json(review, "strip-a", newest["id"])
    assert after["label"] == "inclusion" and after["labelled_by"] == "Anna K"
    assert abs(after["labelled_at"] - time.time()) < 30
    assert {k: v for k, v in after.items() if not k.startswith("label")} == {
        k: v for k, v in before.items() if not k.startswith("label")
    }
    boxes = [{"class_name": "patches", "box": [10.0, 20.0, 60.0, 90.0]}]
    r = c.post(f"/v1/review/strip-a/{older['id']}/label", json={"label": boxes,
               "inspector": "Ben"}, headers=auth)  # fmt: skip
    assert r.status_code == 200 and item_json(review, "strip-a", older["id"])["label"] == boxes
    assert not list(review.glob("*/*/*.tmp")), "no temporary file left behind"
    labelled = c.get("/v1/review", params={"status": "labelled"}).json()["items"]
    assert [i["id"] for i in labelled] == [newest["id"], older["id"]]
    assert len(c.get("/v1/review", params={"status": "pending"}).json()["items"]) == 4

    # nothing outside the queue can be read or written, whatever the path says
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(before))
    shutil.copy(on_disk, tmp_path / "secret.jpg")
    (on_disk.parent / "1-1.json").symlink_to(secret)
    (on_disk.parent / "1-1.jpg").symlink_to(tmp_path / "secret.jpg")
    shutil.copy(on_disk.with_suffix(".json"), on_disk.parent / "2-2.json")  # a real record ...
    (on_disk.parent / "2-2.jpg").symlink_to(tmp_path / "secret.jpg")  # ... whose image leads out
    for path in ("/v1/review/strip-a/..%2F..%2Fsecret.jpg", "/v1/review/%2e%2e/1-1.jpg",
                 "/v1/review/strip-a/1-1.jpg", "/v1/review/..%2F..%2Fline.yaml/1-1.jpg",
                 "/v1/review/strip-a/%2e%2e%2f%2e%2e%2fsecret.jpg", "/v1/review/strip-a/9-9.jpg",
                 "/v1/review/strip-a/..%5C..%5Csecret.jpg", "/v1/review/strip-a/2-2.jpg"):  # fmt: skip
        got = c.get(path)
        assert got.status_code in (404, 422), (path, got.status_code)
    for path in ("/v1/review/strip-a/1-1/label", "/v1/review/%2e%2e/1-1/label",
                 "/v1/review/strip-a/..%2F..%2Fsecret/label", "/v1/review/nope/1-1/label"):  # fmt: skip
        got = c.post(path, json=body, headers=auth)
        assert got.status_code in (404, 422), (path, got.status_code)
    assert json.loads(secret.read_text()) == before

    # `lineinspect review export` carries the inspectors' labels to the training companion
    (on_disk.parent / "1-1.json").unlink()
    (on_disk.parent / "1-1.jpg").unlink()
    (on_disk.parent / "2-2.json").unlink()
    (on_disk.parent / "2-2.jpg").unlink()
    assert export(review, tmp_path / "folders", "folders") == 6
    assert (tmp_path / "folders" / "inclusion" / f"strip-a-{newest['id']}.jpg").is_file()
    assert export(review, tmp_path / "yolo", "yolo", labelled_only=True) == 2
    names = json.loads((tmp_path / "yolo" / "data.yaml").read_text())["names"]
    rows = (tmp_path / "yolo" / "labels" / f"strip-a-{older['id']}.txt").read_text().split()
    assert names[rows[0]] == "patches" and [float(v) for v in rows[1:]] == pytest.approx(
        [35 / 200, 55 / 200, 50 / 200, 70 / 200]
    )
    row = (tmp_path / "yolo" / "labels" / f"strip-a-{newest['id']}.txt").read_text().split()
    assert names[row[0]] == "inclusion"


def _chrome() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail(
            "chromium and chromedriver are needed for the operator page test: run "
            "LINEINSPECT_TEST_PACKAGES=1 bash scripts/dev/bootstrap.sh (it installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium  # with both paths given Selenium Manager never runs
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,900", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def test_operator_page_in_a_real_browser(
    serve: Serve, broker: Broker, tmp_path: Path, neu_images: list[Path]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    running = start_line(
        serve, broker, tmp_path, neu_images, {"strip-a": STRIP_A, "strip-b": STRIP_B}
    )
    review = tmp_path / "review"
    # A hostile record in the queue: its text must show as text, never become markup.
    sample = sorted((review / "strip-b").glob("*/*.json"))[0]
    evil = json.loads(sample.read_text()) | {"id": "1000-1", "decision": '<b id="xss">x</b>'}
    (sample.parent / "1000-1.json").write_text(json.dumps(evil))
    shutil.copy(sample.with_suffix(".jpg"), sample.parent / "1000-1.jpg")
    target = next(i for i in running.client.get("/v1/review").json()["items"]
                  if i["camera"] == "strip-b" and i["frame_id"] == 2)  # fmt: skip

    driver = _chrome()
    try:
        driver.get(running.url + "/ui")
        ready = """
            const img = document.querySelector('img.frame[data-camera="strip-a"]');
            return !!img && img.complete && img.naturalWidth > 0
                && document.querySelectorAll('#feed .feed-item').length > 0
                && document.querySelectorAll('#review .card').length >= 9;"""
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(ready))
        time.sleep(0.3)  # let the last layout settle before the screenshot
        png = tmp_path / "operator.png"
        assert driver.save_screenshot(str(png))
        out = REPO / "build" / "screenshots"
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, out / "operator.png")

        # The screenshot really shows the failing box where the camera image is.
        shot = cv2.imread(str(png), cv2.IMREAD_COLOR)
        rect = driver.execute_script("""
            const img = document.querySelector('img.frame[data-camera="strip-a"]');
            const r = img.getBoundingClientRect();
            return {x: r.left, y: r.top, w: r.width, natural: img.naturalWidth};""")
        assert rect["y"] >= 0 and rect["x"] + rect["w"] <= shot.shape[1]
        assert rect["natural"] >= 640, "small frames are enlarged for the tile"
        s = rect["w"] / 200  # screen pixels per image pixel: NEU images are 200 px wide
        x1, y1, x2, y2 = driving_box(running, "strip-a")
        top, bottom = round(rect["y"] + (y1 + (y2 - y1) / 4) * s), round(rect["y"] + (y2 - (y2 - y1) / 4) * s)  # fmt: skip
        assert red_share(shot, round(rect["x"] + x1 * s), top, bottom) > 0.9
        assert red_share(shot, round(rect["x"] + x2 * s), top, bottom) > 0.9
        middle = round(rect["x"] + (x1 + x2) / 2 * s)
        assert red_share(shot, middle, top, bottom, 1) < 0.1, "red inside the box: not a box"

        counts = driver.find_element(By.CSS_SELECTOR, '.tile[data-camera="strip-a"] .counts').text
        assert "3\nFAIL" in counts.upper() and "2\nUNCERTAIN" in counts.upper(), counts
        assert driver.find_elements(By.ID, "xss") == []
        evil_card = driver.find_element(By.CSS_SELECTOR, '.card[data-item="1000-1"]')
        assert '<b id="xss">x</b>' in evil_card.text

        card = driver.find_element(By.CSS_SELECTOR, f'.card[data-item="{target["id"]}"]')
        driver.find_element(By.ID, "inspector").send_keys("Anna Example")
        card.find_element(By.CSS_SELECTOR, '.label-btn[data-label="scratches"]').click()
        WebDriverWait(driver, 10).until(lambda d: "token" in d.find_element(By.ID, "toast").text)
        assert item_json(review, "strip-b", target["id"])["label"] is None, "saved without token"

        driver.find_element(By.ID, "token").send_keys(TOKEN)
        card.find_element(By.CSS_SELECTOR, '.label-btn[data-label="scratches"]').click()
        WebDriverWait(driver, 10).until(
            lambda d: (
                "labelled scratches" in card.find_element(By.CSS_SELECTOR, ".label-status").text
            )
        )
        saved = item_json(review, "strip-b", target["id"])
        assert saved["label"] == "scratches" and saved["labelled_by"] == "Anna Example"
        assert TOKEN not in driver.page_source, "the token must never be written into the page"
        # The whole page after labelling, review queue included, for people to look at.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        full = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}})  # fmt: skip
        (out / "operator-full.png").write_bytes(base64.b64decode(full["data"]))
        problems = [e["message"] for e in driver.get_log("browser")
                    if e["level"] == "SEVERE" or "Content Security Policy" in e["message"]]  # fmt: skip
        assert not [p for p in problems if "401" not in p], problems
    finally:
        driver.quit()
    assert httpx.get(running.url + "/healthz").status_code == 200

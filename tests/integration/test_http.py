"""The HTTP API over real HTTP (uvicorn on loopback) with real NEU images and hostile inputs."""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.inference.registry import file_sha256
from tests.integration.conftest import REPO, Running, post_image

NEU_CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
Serve = Callable[..., Running]


def metric(running: Running, name: str, **labels: str) -> float:
    text = running.client.get("/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def test_predict_real_neu_images(serve: Serve, data_dir: Path, demo_model: Path) -> None:
    running = serve()
    images = sorted((data_dir / "neu-det" / "Validation_Images").glob("*.jpg"))
    assert images, "NEU validation images missing"
    correct = 0
    for path in images:
        r = post_image(running.client, path.read_bytes())
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["schema_version"] == 1
        assert body["model"] == {
            "name": "neu-cls-demo",
            "version": "0.1.0",
            "sha256": file_sha256(demo_model),
            "task": "classify",
            "thresholds_version": 1,  # additive (issue 14): the thresholds it was judged with
        }
        assert body["image"] == {"width": 200, "height": 200}
        assert body["verdict"] in ("fail", "uncertain")  # every NEU class is a defect
        probs = [c["probability"] for c in body["classes"]]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
        assert {c["class_name"] for c in body["classes"]} == set(NEU_CLASSES)
        t = body["timing_ms"]
        assert t["infer"] > 0 and t["decode"] > 0 and t["total"] >= t["infer"]
        correct += body["classes"][0]["class_name"] == path.name.rsplit("_", 1)[0]
    # the demo model is a real trained classifier: it must recognise most real defects
    assert correct / len(images) >= 0.8, f"{correct}/{len(images)} correct"


def test_no_mqtt_gauge_without_a_broker_link(serve: Serve) -> None:
    """An HTTP-only service (no cameras) or one with MQTT disabled has no broker to be
    connected to: the gauge is not exported, since a 0 would read as "broker down". A line with
    a broker exports it (tests/integration/test_line.py)."""
    assert "lineinspect_mqtt_connected" not in serve().client.get("/metrics").text
    off = serve({"LINEINSPECT__MQTT__ENABLED": "false"})
    assert "lineinspect_mqtt_connected" not in off.client.get("/metrics").text


def test_multipart_png_bmp_give_the_same_answer(serve: Serve, neu_images: list[Path]) -> None:
    running = serve()
    data = neu_images[300].read_bytes()
    raw = post_image(running.client, data).json()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    multipart = running.client.post("/v1/predict", files={"image": ("a.jpg", data, "image/jpeg")})
    assert multipart.status_code == 200, multipart.text
    as_file = running.client.post(
        "/v1/predict", files={"file": ("a", data, "application/octet-stream")}
    )
    assert as_file.status_code == 200, as_file.text
    png = post_image(running.client, cv2.imencode(".png", image)[1].tobytes(), "image/png").json()
    bmp = post_image(running.client, cv2.imencode(".bmp", image)[1].tobytes(), "image/bmp").json()
    octet = post_image(running.client, data, "application/octet-stream").json()
    for other in (multipart.json(), as_file.json(), png, bmp, octet):
        assert [c["class_name"] for c in other["classes"]] == [
            c["class_name"] for c in raw["classes"]
        ]
        np.testing.assert_allclose(
            [c["probability"] for c in other["classes"]],
            [c["probability"] for c in raw["classes"]],
            atol=1e-5,
        )


def test_hostile_inputs_get_4xx_and_the_service_stays_healthy(
    serve: Serve, neu_images: list[Path]
) -> None:
    running = serve({"LINEINSPECT__API__MAX_BODY_BYTES": str(1 << 20)})
    c = running.client
    good = neu_images[5].read_bytes()
    cases: list[tuple[str, httpx.Response, int, str]] = [
        ("zero bytes", post_image(c, b""), 400, "empty body"),
        ("truncated jpeg", post_image(c, good[: len(good) // 3]), 400, "truncated JPEG"),
        (
            "giant png header",
            post_image(c, png_header(20000, 20000) + b"\0" * 64, "image/png"),
            413,
            "20000x20000",
        ),
        (
            "text body",
            post_image(c, b"hello", "text/plain"),
            415,
            "unsupported media type 'text/plain'",
        ),
        ("json body", post_image(c, b"{}", "application/json"), 415, "unsupported media type"),
        ("gif bytes", post_image(c, b"GIF89a" + b"\0" * 64, "image/png"), 415, "GIF"),
        ("random bytes", post_image(c, np.random.default_rng(0).bytes(5000)), 400, "not an image"),
        ("huge body", post_image(c, good + b"\0" * (2 << 20)), 413, "exceeds 1048576 bytes"),
        (
            "huge multipart",
            c.post("/v1/predict", files={"image": ("x.jpg", b"\xff" * (2 << 20), "image/jpeg")}),
            413,
            "exceeds",
        ),
        (
            "multipart without file",
            c.post("/v1/predict", data={"note": "x"}, files={"other": ("x", b"1", "text/plain")}),
            422,
            "no file field",
        ),
        (
            "multipart without boundary",
            post_image(c, b"--xyz\r\nnonsense", "multipart/form-data"),
            400,
            "malformed multipart",
        ),
        (
            "multipart with no parts",
            post_image(c, b"--xyz\r\nnonsense", "multipart/form-data; boundary=xyz"),
            422,
            "no file field",
        ),
        ("unknown model", post_image(c, good, model="nope"), 404, "no model named 'nope'"),
        (
            "bad threshold",
            c.put("/v1/thresholds", json={"default": 2}),
            422,
            "less than or equal to 1",
        ),
        ("unknown class", c.put("/v1/thresholds", json={"per_class": {"rust": 0.5}}), 422, "rust"),
        ("extra field", c.put("/v1/thresholds", json={"defualt": 0.5}), 422, "defualt"),
    ]
    for name, response, status, text in cases:
        assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
        assert text in response.text, f"{name}: {response.text}"
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get("/readyz").status_code == 200
    assert post_image(c, good).status_code == 200
    assert metric(running, "lineinspect_rejected_inputs_total", reason="too_large") >= 3
    assert metric(running, "lineinspect_http_requests_total", status="500") == 0


def test_thresholds_change_at_runtime_without_reload(serve: Serve, neu_images: list[Path]) -> None:
    running = serve()
    c = running.client
    model = running.service.served.models["neu-cls-demo"]
    session = model.session
    data = neu_images[0].read_bytes()
    before = post_image(c, data).json()
    top = before["classes"][0]
    assert before["verdict"] == "fail" and top["probability"] > 0.6
    current = c.get("/v1/thresholds").json()
    assert current["thresholds"]["default"] == 0.5 and current["model"] == "neu-cls-demo"
    # lift the top class's threshold above its score: the verdict becomes UNCERTAIN
    put = c.put(
        "/v1/thresholds",
        json={
            "default": 0.5,
            "band": 0.0,
            "per_class": {top["class_name"]: min(1.0, top["probability"] + 0.01)},
        },
    )
    assert put.status_code == 200, put.text
    after = post_image(c, data).json()
    assert after["verdict"] == "uncertain", after["reason"]
    assert after["classes"][0]["threshold"] == pytest.approx(min(1.0, top["probability"] + 0.01))
    assert model.session is session, "the model was not reloaded"
    assert metric(running, "lineinspect_threshold_updates_total", model="neu-cls-demo") == 1


def test_bearer_token(serve: Serve, neu_images: list[Path]) -> None:
    running = serve({"LINEINSPECT__API__TOKEN": "t0ken"})
    c = running.client
    body = {"default": 0.5}
    assert c.put("/v1/thresholds", json=body).status_code == 401
    wrong = c.put("/v1/thresholds", json=body, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    ok = c.put("/v1/thresholds", json=body, headers={"authorization": "Bearer t0ken"})
    assert ok.status_code == 200
    assert post_image(c, neu_images[0].read_bytes()).status_code == 200  # optional for predict
    assert "t0ken" not in c.get("/metrics").text

    strict = serve(
        {"LINEINSPECT__API__TOKEN": "t0ken", "LINEINSPECT__API__REQUIRE_TOKEN_FOR_PREDICT": "true"}
    )
    assert post_image(strict.client, neu_images[0].read_bytes()).status_code == 401
    authed = strict.client.post(
        "/v1/predict",
        content=neu_images[0].read_bytes(),
        headers={"content-type": "image/jpeg", "authorization": "Bearer t0ken"},
    )
    assert authed.status_code == 200


def test_models_metrics_and_docs(serve: Serve, neu_images: list[Path], demo_model: Path) -> None:
    running = serve()
    c = running.client
    models = c.get("/v1/models").json()
    assert models["default"] == "neu-cls-demo"
    (m,) = models["models"]
    assert m["providers"] == ["CPUExecutionProvider"] and m["ready"] is True
    assert m["sha256"] == file_sha256(demo_model) and m["classes"] == NEU_CLASSES
    assert m["input_size"] == [128, 128] and m["sources"]["input.size"] == "card"
    for i in range(3):
        r = c.post(
            "/v1/predict",
            content=neu_images[0].read_bytes(),
            headers={"content-type": "image/jpeg", "x-request-id": f"cam1-frame{i}"},
        )
        assert r.json()["request_id"] == f"cam1-frame{i}"
    r = c.get("/metrics", follow_redirects=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert metric(running, "lineinspect_predictions_total", model="neu-cls-demo") == 3
    assert (
        metric(running, "lineinspect_inference_duration_seconds_count", model="neu-cls-demo") >= 1
    )
    assert metric(running, "lineinspect_class_confidence_count", model="neu-cls-demo") == 3
    assert metric(running, "lineinspect_build_info") == 1
    assert (
        metric(
            running, "lineinspect_model_info", model="neu-cls-demo", provider="CPUExecutionProvider"
        )
        == 1
    )
    assert (
        metric(running, "lineinspect_http_requests_total", route="/v1/predict", status="200") == 3
    )
    spec = c.get("/openapi.json").json()
    content = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"image/jpeg", "image/png", "image/bmp", "multipart/form-data"} <= set(content)
    assert c.get("/docs").status_code == 200


def test_concurrent_requests_are_micro_batched_correctly(
    serve: Serve, neu_images: list[Path]
) -> None:
    running = serve({"LINEINSPECT__API__BATCH__MAX_WAIT_MS": "20"})
    sample = neu_images[::90][:16]
    expected = {p: post_image(running.client, p.read_bytes()).json()["classes"] for p in sample}
    results: dict[Path, dict] = {}
    errors: list[BaseException] = []

    def one(path: Path) -> None:
        try:
            with httpx.Client(base_url=running.url, timeout=30) as client:
                results[path] = post_image(client, path.read_bytes()).json()
        except BaseException as exc:
            errors.append(exc)

    max_batch = 0
    for _ in range(3):
        threads = [threading.Thread(target=one, args=(p,)) for p in sample]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for path, body in results.items():  # each image got its own answer back
            got = {c["class_name"]: c["probability"] for c in body["classes"]}
            want = {c["class_name"]: c["probability"] for c in expected[path]}
            assert got.keys() == want.keys()
            np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-5)
            max_batch = max(max_batch, body["timing_ms"]["batch_size"])
    assert max_batch > 1, "16 concurrent requests should share at least one batch"


def test_not_ready_until_started(serve: Serve, neu_images: list[Path]) -> None:
    running = serve(start=False)
    r = running.client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "not ready"
    assert running.client.get("/healthz").status_code == 200
    r = post_image(running.client, neu_images[0].read_bytes())
    assert r.status_code == 503 and "not ready" in r.text


def test_detector_batches_frames_of_different_shapes(serve: Serve, data_dir: Path) -> None:
    """A dynamic-size detector letterboxes each frame to its own stride rectangle, so requests
    of different aspect ratios arriving together form several tensor shapes: each shape runs as
    its own batch and every request gets the boxes it gets alone, in its own pixels."""
    running = serve(
        {
            "LINEINSPECT__MODELS__0__PATH": str(REPO / "models" / "neu-det-demo.onnx"),
            "LINEINSPECT__API__BATCH__MAX_WAIT_MS": "30",
        }
    )
    image = cv2.imread(str(data_dir / "neu-det" / "IMAGES" / "patches_10.jpg"), cv2.IMREAD_COLOR)
    frames = {
        "square": image,
        "wide": cv2.resize(image, (1280, 720)),
        "tall": image[:, :150],
        "square2": cv2.flip(image, 1),
    }
    bodies = {k: cv2.imencode(".png", f)[1].tobytes() for k, f in frames.items()}
    alone = {k: post_image(running.client, b, "image/png").json() for k, b in bodies.items()}
    results: dict[str, dict] = {}

    def one(key: str) -> None:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            results[key] = post_image(client, bodies[key], "image/png").json()

    max_batch = 0
    for _ in range(3):
        threads = [threading.Thread(target=one, args=(k,)) for k in bodies for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for key, body in results.items():
            want = alone[key]["detections"]
            got = body["detections"]
            assert [d["class_id"] for d in got] == [d["class_id"] for d in want], key
            for g, w in zip(got, want, strict=True):
                assert abs(g["confidence"] - w["confidence"]) < 1e-5, key
                for c in ("x1", "y1", "x2", "y2"):
                    assert abs(g["box"][c] - w["box"][c]) < 1e-2, key
            h, w_ = frames[key].shape[:2]
            assert all(d["box"]["x2"] <= w_ and d["box"]["y2"] <= h for d in got), key
            max_batch = max(max_batch, body["timing_ms"]["batch_size"])
    assert sum(len(a["detections"]) for a in alone.values()) >= 4, "too few boxes to compare"
    assert max_batch > 1, "concurrent requests should share at least one batch"

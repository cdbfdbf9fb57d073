"""The line end to end: real images through capture, a real ONNX model, a real mosquitto and a
real subscriber standing in for the PLC."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.inference.registry import file_sha256
from tests.integration.conftest import REPO, Broker, Plc, Running, dies_with_parent, free_port

Serve = Callable[..., Running]


def image_folder(tmp_path: Path, images: list[Path], n: int, name: str = "frames") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    step = max(1, len(images) // n)
    for i, path in enumerate(images[::step][:n]):
        shutil.copy(path, folder / f"{i:05d}_{path.name}")
    return folder


def line_config(
    tmp_path: Path, broker: Broker, cameras: list[dict[str, Any]], **sections: Any
) -> Path:
    config = {
        "models": [{"path": str(REPO / "models" / "neu-cls-demo.onnx")}],
        "runtime": {"warmup_runs": 1},
        "line": {"name": "Line-1"},
        "cameras": cameras,
        "mqtt": {"port": broker.port, "client_id": f"li-{tmp_path.name}"[:60]},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "review": {"path": str(tmp_path / "review")},
    }
    for key, value in sections.items():
        config[key] = config.get(key, {}) | value if isinstance(value, dict) else value
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def folder_camera(name: str, folder: Path, **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": f"folder:{folder}", "loop": False, "fps": 0,
            "buffer": {"size": 4, "policy": "block"}} | extra  # fmt: skip


def assert_complete(verdicts: list[dict[str, Any]], n: int) -> None:
    """Exactly sequences 1..n (duplicates allowed: at least once), in order of first arrival."""
    first_seen: list[int] = []
    for v in verdicts:
        if v["sequence"] not in first_seen:
            first_seen.append(v["sequence"])
    assert first_seen == list(range(1, n + 1)), f"missing or out of order: {first_seen}"


@pytest.mark.parametrize("runs", [1, 3], ids=["one-worker", "three-workers"])
def test_n_frames_in_n_verdicts_out(
    serve: Serve, broker: Broker, plc: Plc, tmp_path: Path, neu_images: list[Path], runs: int
) -> None:
    """Every frame gets one verdict, each camera's in frame order, also when several inference
    workers run batches at once and finish them out of order."""
    n = 40
    folder = image_folder(tmp_path, neu_images, n)
    cfg = line_config(
        tmp_path, broker, [folder_camera("cam1", folder), folder_camera("Cam-2", folder)],
        runtime={"parallel_runs": runs}, line={"max_batch": 2},
    )  # fmt: skip
    running = serve(config=cfg)
    for camera in ("cam1", "Cam-2"):
        got = plc.wait_for(n, 60, camera)
        assert [v["sequence"] for v in got] == list(range(1, n + 1)), camera
        assert [v["frame_id"] for v in got] == list(range(1, n + 1)), camera
    v = plc.verdicts("cam1")[0]
    assert v["schema_version"] == 1 and v["line"] == "line-1" and v["part_id"] is None
    assert v["model"]["sha256"] == file_sha256(REPO / "models" / "neu-cls-demo.onnx")
    assert v["verdict"] in ("fail", "uncertain") and v["findings"] and v["latency_ms"] > 0
    topics = {t for t, _ in plc.messages}
    assert (
        "lineinspect/line-1/cam1/verdict" in topics and "lineinspect/line-1/cam-2/verdict" in topics
    )
    status = [p for t, p in plc.messages if t == "lineinspect/line-1/status"]
    assert status and status[-1]["state"] == "online"
    metrics = running.client.get("/metrics").text
    assert 'lineinspect_frames_captured_total{camera="cam1"} 40.0' in metrics
    assert "lineinspect_mqtt_connected 1.0" in metrics
    assert "lineinspect_frame_to_verdict_seconds_count" in metrics


@pytest.mark.faults
def test_broker_down_30s_nothing_lost_and_inspection_goes_on(
    serve: Serve, broker: Broker, plc: Plc, tmp_path: Path, neu_images: list[Path]
) -> None:
    folder = image_folder(tmp_path, neu_images, 200)
    cam = folder_camera("cam1", folder, fps=4)  # a steady stream: 200 frames over ~50 s
    running = serve(config=line_config(tmp_path, broker, [cam]))
    assert len(plc.wait_for(10, 30)) >= 10
    broker.stop()
    captured_at_stop = running.service.cameras["cam1"].stats.captured
    time.sleep(30)
    # inspection never paused: frames kept being captured and verdicts kept being spooled
    assert running.service.cameras["cam1"].stats.captured >= captured_at_stop + 100
    assert running.service.outbox is not None and running.service.outbox.depth()[0] >= 100
    assert "lineinspect_mqtt_connected 0.0" in running.client.get("/metrics").text
    broker.start()
    restarted = time.monotonic()
    plc.wait_for(len(plc.verdicts()) + 1, 30)
    reconnect_s = time.monotonic() - restarted  # paho's reconnect backoff is capped at 10 s
    got = plc.wait_for(200, 90)
    assert_complete(got, 200)
    assert reconnect_s < 12, f"first verdict {reconnect_s:.1f} s after the broker came back"
    print(f"\nbroker back: first verdict after {reconnect_s:.2f} s")
    deadline = time.monotonic() + 10
    while running.service.outbox.depth()[0] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running.service.outbox.depth()[0] == 0


@pytest.mark.faults
def test_sigkill_mid_stream_then_restart_replays_the_outbox(
    broker: Broker, plc: Plc, tmp_path: Path, neu_images: list[Path]
) -> None:
    n = 120
    folder = image_folder(tmp_path, neu_images, n)
    cfg = line_config(
        tmp_path, broker, [folder_camera("cam1", folder, fps=20)], api={"port": free_port()}
    )

    def start() -> subprocess.Popen[str]:
        env = os.environ | {"LINEINSPECT__RUNTIME__WARMUP_RUNS": "1"}
        cmd = [sys.executable, "-m", "service", "serve", "--config", str(cfg)]
        return subprocess.Popen(dies_with_parent(cmd), cwd=REPO, env=env, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip

    proc = start()
    try:
        plc.wait_for(20, 60)
        broker.stop()  # verdicts now pile up in the outbox only
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    broker.start()
    # The restarted service replays what the killed one had spooled. Its folder camera starts
    # again from frame 1 with new sequence numbers after the old ones, so count the old ones.
    proc = start()
    try:
        got = plc.wait_for(n, 90)
        seqs = sorted({v["sequence"] for v in got})
        assert seqs[: len(seqs)] == list(range(1, len(seqs) + 1)), "a gap in the sequence numbers"
        assert len(seqs) >= n, f"only {len(seqs)} distinct verdicts"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "outbox" in err and "earlier run" in err, err[-2000:]


def test_trigger_mode_one_verdict_per_part(
    serve: Serve, broker: Broker, plc: Plc, tmp_path: Path, neu_images: list[Path]
) -> None:
    folder = image_folder(tmp_path, neu_images, 10)
    cam = {"name": "gate", "source": f"folder:{folder}", "loop": True, "fps": 20, "mode": "trigger",
           "trigger_timeout_s": 1.0}  # fmt: skip
    running = serve(config=line_config(tmp_path, broker, [cam]))
    from paho.mqtt import publish

    time.sleep(1.0)  # let it connect and subscribe
    for part in ("P-001", "P-002", "P-003"):
        publish.single(
            "lineinspect/line-1/gate/trigger",
            f'{{"part_id": "{part}"}}',
            qos=1,
            hostname="127.0.0.1",
            port=broker.port,
        )
    running.client.post("/v1/cameras/gate/trigger", json={"part_id": "P-004"}).raise_for_status()
    got = plc.wait_for(4, 30, "gate")
    assert sorted(v["part_id"] for v in got) == ["P-001", "P-002", "P-003", "P-004"]
    assert all(not v["error"] for v in got)
    time.sleep(1.0)
    assert len(plc.verdicts("gate")) == 4, (
        "free-running frames must not produce verdicts in trigger mode"
    )
    bad = running.client.post("/v1/cameras/nope/trigger", json={"part_id": "x"})
    assert bad.status_code == 404


def test_review_queue_keeps_uncertain_frames_within_budget(
    serve: Serve, broker: Broker, plc: Plc, tmp_path: Path, neu_images: list[Path]
) -> None:
    folder = image_folder(tmp_path, neu_images, 30)
    # thresholds so high that every frame is uncertain; a budget of 5 per hour
    running = serve(config=line_config(
        tmp_path, broker, [folder_camera("cam1", folder)],
        review={"budget_per_hour": 5},
        models=[{"path": str(REPO / "models" / "neu-cls-demo.onnx"), "thresholds": {"default": 1.0, "band": 0.5}}],
    ))  # fmt: skip
    got = plc.wait_for(30, 60)
    assert {v["verdict"] for v in got} == {"uncertain"}
    reviews = [p for t, p in plc.messages if t.endswith("/review")]
    deadline = time.monotonic() + 5
    while len(reviews) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
        reviews = [p for t, p in plc.messages if t.endswith("/review")]
    assert len(reviews) == 5
    stored = sorted((tmp_path / "review" / "cam1").glob("*/*.json"))
    assert len(stored) == 5 and all(p.with_suffix(".jpg").stat().st_size > 0 for p in stored)
    metrics = running.client.get("/metrics").text
    assert 'lineinspect_review_dropped_total{camera="cam1",reason="budget"} 25.0' in metrics

    from service.review_store import export
    from training.dataset import load_dataset

    assert export(tmp_path / "review", tmp_path / "out-folders", "folders") == 5
    ds = load_dataset(tmp_path / "out-folders")  # the training companion reads it back
    assert len(ds.samples) == 5 and ds.fmt == "folders"
    assert export(tmp_path / "review", tmp_path / "out-ls", "labelstudio") == 5
    r = subprocess.run([sys.executable, "-m", "service", "review", "export", "--path", str(tmp_path / "review"),
                        "--format", "yolo", "--out", str(tmp_path / "out-yolo")], capture_output=True, text=True, cwd=REPO, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "out-yolo" / "images").glob("*.jpg"))) == 5


@pytest.mark.faults
def test_hot_reload_keeps_every_verdict(
    serve: Serve, broker: Broker, plc: Plc, tmp_path: Path, neu_images: list[Path]
) -> None:
    folder = image_folder(tmp_path, neu_images, 150)
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    for suffix in (".onnx", ".card.yaml"):
        shutil.copy(REPO / "models" / f"neu-cls-demo{suffix}", model_dir / f"neu-cls-demo{suffix}")
    cfg = line_config(tmp_path, broker, [folder_camera("cam1", folder, fps=30)],
                      models=[{"path": str(model_dir / "neu-cls-demo.onnx")}], api={"token": "t"})  # fmt: skip
    running = serve(config=cfg)
    plc.wait_for(20, 30)
    card = yaml.safe_load((model_dir / "neu-cls-demo.card.yaml").read_text())
    card["version"] = "0.2.0"
    (model_dir / "neu-cls-demo.card.yaml").write_text(yaml.safe_dump(card))
    assert running.client.post("/v1/models/neu-cls-demo/reload").status_code == 401
    r = running.client.post("/v1/models/neu-cls-demo/reload", headers={"authorization": "Bearer t"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == "0.2.0"
    got = plc.wait_for(150, 60)
    assert_complete(got, 150)
    versions = [v["model"]["version"] for v in sorted(got, key=lambda v: v["sequence"])]
    assert versions[0] == "0.1.0" and versions[-1] == "0.2.0"
    assert versions == sorted(versions), "no verdict after the swap comes from the old model"
    assert all(not v["error"] for v in got)
    # a corrupt replacement is refused and the running model keeps serving
    (model_dir / "neu-cls-demo.onnx").write_bytes(b"not an onnx file")
    bad = running.client.post(
        "/v1/models/neu-cls-demo/reload", headers={"authorization": "Bearer t"}
    )
    assert bad.status_code == 422 and "cannot load" in bad.text
    assert running.client.get("/v1/models").json()["models"][0]["version"] == "0.2.0"


@pytest.mark.faults
def test_stream_source_that_disappears_is_recovered(
    serve: Serve, broker: Broker, plc: Plc, tmp_path: Path, data_dir: Path
) -> None:
    """A truncated video file: the camera reports it, keeps retrying, recovers when it is whole."""
    video = data_dir / "video" / "checkweigher_conveyor_h264_1280x720.mp4"
    if not video.exists():
        pytest.fail(f"conveyor video missing: {video}")
    clip = tmp_path / "clip.mp4"
    data = video.read_bytes()
    clip.write_bytes(data[: len(data) // 3])  # truncated
    cam = {"name": "conveyor", "source": f"file:{clip}", "loop": True, "fps": 40, "reconnect_initial_s": 0.2,
           "reconnect_max_s": 0.5, "buffer": {"size": 2, "policy": "drop_oldest"}}  # fmt: skip
    running = serve(config=line_config(tmp_path, broker, [cam]))
    deadline = time.monotonic() + 30
    camera = running.service.cameras["conveyor"]
    while camera.stats.reconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert camera.stats.reconnects > 0 and camera.alive, (
        "the truncated file must be noticed, not end the camera"
    )
    clip.write_bytes(data)  # the file is whole again
    before = camera.stats.captured
    deadline = time.monotonic() + 30
    while camera.stats.captured < before + 100 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert camera.stats.captured >= before + 100
    body = running.client.get("/v1/cameras").json()
    assert body["cameras"][0]["name"] == "conveyor" and body["cameras"][0]["reconnects"] > 0
    assert (
        'lineinspect_camera_reconnects_total{camera="conveyor"}'
        in running.client.get("/metrics").text
    )
    httpx.get(running.url + "/healthz").raise_for_status()


@pytest.mark.faults
def test_stream_server_stopped_and_restarted(
    serve: Serve, broker: Broker, plc: Plc, tmp_path: Path, neu_images: list[Path]
) -> None:
    """An IP camera (MJPEG over HTTP) goes away and comes back: the camera reconnects by itself,
    health and metrics say what happened, the service never exits."""
    folder = image_folder(tmp_path, neu_images, 10)
    port = free_port()
    server_cmd = [
        sys.executable,
        str(Path(__file__).with_name("mjpeg_server.py")),
        str(port),
        str(folder),
        "20",
    ]
    server = subprocess.Popen(dies_with_parent(server_cmd))
    cam = {"name": "ipcam", "source": f"http://127.0.0.1:{port}/stream.mjpg", "read_timeout_s": 1.0,
           "reconnect_initial_s": 0.2, "reconnect_max_s": 1.0, "stall_timeout_s": 2.0}  # fmt: skip
    try:
        time.sleep(0.5)
        running = serve(config=line_config(tmp_path, broker, [cam]))
        camera = running.service.cameras["ipcam"]
        assert len(plc.wait_for(10, 30, "ipcam")) >= 10
        server.kill()
        server.wait(5)
        deadline = time.monotonic() + 20
        while camera.state.value == "streaming" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert camera.state.value in ("reconnecting", "stalled"), camera.state
        assert 'lineinspect_camera_up{camera="ipcam"} 0.0' in running.client.get("/metrics").text
        assert running.client.get("/v1/cameras").json()["cameras"][0]["state"] != "streaming"
        time.sleep(2)  # down for a while: several failed reconnects
        server = subprocess.Popen(dies_with_parent(server_cmd))
        back = time.monotonic()
        before = len(plc.verdicts("ipcam"))
        plc.wait_for(before + 1, 30, "ipcam")
        recovery_s = time.monotonic() - back  # reconnect backoff is capped at 1 s here
        assert recovery_s < 6, f"first verdict {recovery_s:.1f} s after the camera came back"
        print(f"\ncamera back: first verdict after {recovery_s:.2f} s")
        deadline = time.monotonic() + 30
        while len(plc.verdicts("ipcam")) < before + 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(plc.verdicts("ipcam")) >= before + 10, "verdicts resume after the camera returns"
        assert camera.state.value == "streaming" and camera.stats.reconnects >= 1
        assert 'lineinspect_camera_up{camera="ipcam"} 1.0' in running.client.get("/metrics").text
        seqs = [v["sequence"] for v in plc.verdicts("ipcam")]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    finally:
        server.kill()


@pytest.mark.faults
def test_mqtt_username_password(
    serve: Serve, tmp_path: Path, neu_images: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that requires a password: the right one delivers, a wrong one is reported and
    the verdicts wait in the outbox."""
    (tmp_path / "auth").mkdir()
    b = Broker(tmp_path / "auth")
    pwfile = tmp_path / "auth" / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pwfile), "line", "s3cret"],
        check=True,
        capture_output=True,
    )
    b.conf.write_text(
        b.conf.read_text().replace(
            "allow_anonymous true", f"allow_anonymous false\npassword_file {pwfile}"
        )
    )
    b.start()
    try:
        folder = image_folder(tmp_path, neu_images, 5)
        ok = line_config(tmp_path, b, [folder_camera("cam1", folder)])
        data = yaml.safe_load(ok.read_text())
        data["mqtt"] |= {"username": "line", "password": "wrong"}
        ok.write_text(yaml.safe_dump(data))
        running = serve(config=ok)
        deadline = time.monotonic() + 15
        while (
            "refused" not in running.client.get("/v1/cameras").json()["mqtt_error"]
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        state = running.client.get("/v1/cameras").json()
        assert "refused" in state["mqtt_error"] and not state["mqtt_connected"]
        assert state["outbox"]["messages"] == 5
        assert "s3cret" not in running.client.get("/metrics").text
        assert "wrong" not in state["mqtt_error"]

        # the right password: a second line (own outbox and client id) delivers everything
        plc = Plc(b.port, client_id="plc-auth", username="line", password="s3cret")
        try:
            good_dir = tmp_path / "good"
            good_dir.mkdir()
            good = line_config(good_dir, b, [folder_camera("cam9", folder)])
            data = yaml.safe_load(good.read_text())
            data["mqtt"] |= {"username": "line", "password": "s3cret"}
            good.write_text(yaml.safe_dump(data))
            serve(config=good)
            assert [v["sequence"] for v in plc.wait_for(5, 30, "cam9")] == [1, 2, 3, 4, 5]
        finally:
            plc.close()
    finally:
        b.stop()
    # no secret in the log, whatever happened
    assert "s3cret" not in caplog.text and "wrong" not in caplog.text.replace("wrong password", "")


def _make_certs(folder: Path) -> None:
    """A throw-away CA and a broker certificate for 127.0.0.1 (openssl, as an operator would)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "broker.key",
        "-out",
        "broker.csr",
    )
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "broker.crt")  # fmt: skip


def test_mqtt_over_tls(serve: Serve, tmp_path: Path, neu_images: list[Path]) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    _make_certs(certs)
    (tmp_path / "tls").mkdir()
    b = Broker(tmp_path / "tls")
    b.conf.write_text(
        b.conf.read_text()
        + f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'broker.crt'}\nkeyfile {certs / 'broker.key'}\n"
    )
    b.start()
    try:
        folder = image_folder(tmp_path, neu_images, 5)
        cfg = line_config(tmp_path, b, [folder_camera("cam1", folder)])
        data = yaml.safe_load(cfg.read_text())
        data["mqtt"]["tls"] = {"enabled": True, "ca_file": str(certs / "ca.crt")}
        cfg.write_text(yaml.safe_dump(data))
        running = serve(config=cfg)
        deadline = time.monotonic() + 20
        while running.service.outbox.depth()[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # the verdicts exist ...
        while running.service.outbox.depth()[0] > 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # ... and the TLS broker acknowledged every one of them
        assert running.service.outbox.depth()[0] == 0
        assert running.client.get("/v1/cameras").json()["mqtt_connected"] is True
        text = running.client.get("/metrics").text
        acked = re.search(r"^lineinspect_mqtt_messages_acknowledged_total (\S+)$", text, re.M)
        assert acked and float(acked.group(1)) >= 5, "the TLS broker acknowledged every verdict"
    finally:
        b.stop()


def test_a_publish_lost_under_a_dropping_connection_is_sent_again(
    broker: Broker, plc: Plc, tmp_path: Path
) -> None:
    """When the connection drops inside `publish()`, paho returns a message info whose
    `is_published()` raises for ever after. The drain must not stall on it: the message is
    still in the outbox, so it is published again and everything behind it follows."""
    import paho.mqtt.client as mqtt

    from service.outbox import Outbox
    from service.sinks.mqtt import MqttLink, MqttOptions

    outbox = Outbox(tmp_path / "outbox.sqlite")
    topic = "lineinspect/line-1/cam1/verdict"
    ids = [
        outbox.append(topic, json.dumps({"camera": "cam1", "sequence": s}).encode())
        for s in (1, 2, 3)
    ]
    link = MqttLink(MqttOptions(port=broker.port, client_id="li-lost-publish"), outbox)
    lost = mqtt.MQTTMessageInfo(1)
    lost.rc = mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN  # what publish() returns in that race
    with pytest.raises(RuntimeError):
        lost.is_published()
    link._inflight.append((lost, ids[0]))  # sequence 1 "was published" as the link went down
    link._cursor = ids[0]
    link.start()
    try:
        got = plc.wait_for(3, 20, "cam1")
        assert sorted({v["sequence"] for v in got}) == [1, 2, 3], got
        deadline = time.monotonic() + 10
        while outbox.depth()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outbox.depth()[0] == 0, "every message acknowledged and removed"
    finally:
        link.stop(1.0)
        outbox.close()

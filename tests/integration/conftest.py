"""A real uvicorn server on a free loopback port, in a thread, around a started LineInspect."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from service.api.server import create_app, uvicorn_config
from service.app import LineInspect
from service.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def die_with_parent() -> None:
    """`preexec_fn` for the processes a test starts: the kernel kills them (SIGKILL) when the
    test process dies, so a test run that is itself killed leaves no service or broker behind."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def sample(text: str, name: str, **labels: str) -> float:
    """One series' value in a /metrics body (prometheus_client's own parser); fails when the
    series is not exported."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"{name}{labels} is not exported")


def wait_ready(
    url: str, proc: subprocess.Popen[str], why: Callable[[], str], timeout: float = 60
) -> None:
    """Polls GET /readyz of a server subprocess until 200; fails with `why()` if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"server exited: {why()}"
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"server did not become ready in {timeout:.0f} s"
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    url: str
    service: LineInspect
    client: httpx.Client


def _serve(settings: Settings, start: bool = True) -> tuple[Running, Callable[[], None]]:
    service = LineInspect(settings)
    if start:
        service.start()
    port = free_port()
    server = uvicorn.Server(uvicorn_config(create_app(service), "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=30)

    def stop() -> None:
        client.close()
        server.should_exit = True
        thread.join(15)
        service.stop()

    return Running(url, service, client), stop


@pytest.fixture
def serve() -> Iterator[Callable[..., Running]]:
    """serve(env overrides...) -> a running server; stopped after the test."""
    stops: list[Callable[[], None]] = []

    def factory(
        env: dict[str, str] | None = None, *, start: bool = True, config: Path | None = None
    ) -> Running:
        base = {"LINEINSPECT__RUNTIME__WARMUP_RUNS": "1"}
        if config is None:
            base["LINEINSPECT__MODELS__0__PATH"] = str(REPO / "models" / "neu-cls-demo.onnx")
        running, stop = _serve(load_settings(config, base | (env or {})), start)
        stops.append(stop)
        return running

    yield factory
    for stop in reversed(stops):
        stop()


def post_image(
    client: httpx.Client, data: bytes, media: str = "image/jpeg", **params: Any
) -> httpx.Response:
    return client.post("/v1/predict", content=data, headers={"content-type": media}, params=params)


# -- a real mosquitto the tests own: free loopback port, stop / start at will


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"  # subscriber sessions survive a broker restart
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            f"log_dest file {workdir}/mosquitto.log\n"
            # Started as root, mosquitto drops to its own user, which cannot read pytest's
            # private tmp folders (password file, persistence, log).
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        assert Path(exe).exists(), "mosquitto is not installed (scripts/bootstrap.sh installs it)"
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + 10
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


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


class Plc:
    """A persistent QoS 1 subscriber standing in for the PLC."""

    def __init__(
        self,
        port: int,
        topic: str = "lineinspect/#",
        client_id: str = "plc-under-test",
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
        )
        self.client.reconnect_delay_set(1, 1)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.subscribed = threading.Event()

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            client.subscribe(topic, qos=1)

        def on_subscribe(*args: Any) -> None:
            self.subscribed.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            with self._lock:
                self.messages.append((msg.topic, json.loads(msg.payload)))

        self.client.on_connect, self.client.on_subscribe, self.client.on_message = (
            on_connect,
            on_subscribe,
            on_message,
        )
        self.client.connect_async("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the test subscriber could not subscribe"

    def verdicts(self, camera: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                p
                for t, p in self.messages
                if t.endswith("/verdict") and (camera is None or p["camera"] == camera)
            ]

    def wait_for(
        self, count: int, timeout: float, camera: str | None = None
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.verdicts(camera)
            if len({v["sequence"] for v in got}) >= count:
                return got
            time.sleep(0.05)
        return self.verdicts(camera)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def plc(broker: Broker) -> Iterator[Plc]:
    p = Plc(broker.port)
    yield p
    p.close()

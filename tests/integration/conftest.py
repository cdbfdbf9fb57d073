"""A real uvicorn server on a free loopback port, in a thread, around a started LineInspect."""

from __future__ import annotations

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

from scripts.harness import (
    Broker,
    Subscriber,
    dies_with_parent,  # noqa: F401 (the tests import it from here)
    free_port,
    wait_ready,  # noqa: F401 (the tests import it from here)
)
from service.api.server import create_app, uvicorn_config
from service.app import LineInspect
from service.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def sample(text: str, name: str, **labels: str) -> float:
    """One series' value in a /metrics body (prometheus_client's own parser); fails when the
    series is not exported."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"{name}{labels} is not exported")


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
    server = uvicorn.Server(uvicorn_config(create_app(service.api()), "127.0.0.1", port))
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
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Running]]:
    """serve(env overrides...) -> a running server; stopped after the test."""
    stops: list[Callable[[], None]] = []

    def factory(
        env: dict[str, str] | None = None, *, start: bool = True, config: Path | None = None
    ) -> Running:
        base = {"LINEINSPECT__RUNTIME__WARMUP_RUNS": "1"}
        if config is None:
            base["LINEINSPECT__MODELS__0__PATH"] = str(REPO / "models" / "neu-cls-demo.onnx")
            # a fresh audit trail: thresholds versions continue from the one on record
            trail = tmp_path_factory.mktemp("audit") / "audit.sqlite"
            base["LINEINSPECT__AUDIT__PATH"] = str(trail)
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


# -- a real mosquitto the tests own (scripts/harness.py): free loopback port, stop / start at will


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


class Plc(Subscriber):
    """A persistent QoS 1 subscriber standing in for the PLC (scripts/harness.py's Subscriber)."""

    def __init__(
        self,
        port: int,
        topic: str = "lineinspect/#",
        client_id: str = "plc-under-test",
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__(
            port, topic, client_id=client_id, clean_session=False, keepalive=5,
            username=username, password=password, reconnect_delay=1,
        )  # fmt: skip
        assert self.connect(10, retry=True), "the test subscriber could not subscribe"

    @property
    def messages(self) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [(m.topic, m.payload) for m in self.arrivals]


@pytest.fixture
def plc(broker: Broker) -> Iterator[Plc]:
    p = Plc(broker.port)
    yield p
    p.close()

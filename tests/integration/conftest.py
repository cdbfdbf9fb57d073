"""A real uvicorn server on a free loopback port, in a thread, around a started LineInspect."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from service.api.server import create_app, uvicorn_config
from service.app import LineInspect
from service.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


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
        base = {
            "LINEINSPECT__RUNTIME__WARMUP_RUNS": "1",
            "LINEINSPECT__MODELS__0__PATH": str(REPO / "models" / "neu-cls-demo.onnx"),
        }
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

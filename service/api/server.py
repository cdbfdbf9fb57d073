"""The FastAPI application over an `Api` (api/deps.py), and the uvicorn server settings."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.api import audit, health, lifecycle, line, models, operator, predict, recipes
from service.api.deps import Api
from service.metrics import Metrics
from service.security import Tokens

log = logging.getLogger(__name__)


class HttpMetrics:
    """Pure ASGI middleware: request count and duration by route template (bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.http_requests.labels(path, method, str(status)).inc()
            self.metrics.http_duration.labels(path, method).observe(time.perf_counter() - start)


def create_app(api: Api) -> FastAPI:
    docs = api.settings.api.docs
    app = FastAPI(
        title="lineinspect",
        version=__version__,
        description="Production-line inspection: ONNX models in, PASS / FAIL / UNCERTAIN out.",
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.api = api
    app.state.tokens = Tokens(api.settings.api)  # digests once, compared on every request
    app.include_router(predict.router)
    app.include_router(models.router)
    app.include_router(line.router)
    app.include_router(lifecycle.router)
    app.include_router(recipes.router)
    app.include_router(audit.router)
    app.include_router(health.router)
    operator.install(app)  # /ui and the routes behind it
    app.add_middleware(HttpMetrics, metrics=api.metrics)
    return app


def uvicorn_config(
    app: Any, host: str, port: int, cert_file: Path | None = None, key_file: Path | None = None
) -> uvicorn.Config:
    """HTTPS when a certificate and its key are given (api.tls_cert_file, api.tls_key_file)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # keep our logging setup
        access_log=False,
        timeout_graceful_shutdown=10,
        ssl_certfile=str(cert_file) if cert_file else None,
        ssl_keyfile=str(key_file) if key_file else None,
    )

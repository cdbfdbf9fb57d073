"""What the routers may reach, as narrow protocols, and the dependencies that hand them over
(FastAPI-template style `Annotated` aliases).

The composition root (`service.app.LineInspect.api`) fills one `Api` with the running service's
parts; a test can fill it with anything that has the same shape (tests/unit/test_api.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.batcher import MicroBatcher
from service.config import Settings
from service.core.types import Frame, Result
from service.inference.card import ThresholdSpec
from service.inference.model import Model
from service.metrics import Metrics
from service.stages.capture import Camera


class ServedModelsView(Protocol):
    """The loaded models (service.served.ServedModels)."""

    @property
    def models(self) -> Mapping[str, Model]: ...
    @property
    def batchers(self) -> Mapping[str, MicroBatcher]: ...
    @property
    def default(self) -> str | None: ...


class ControlPort(Protocol):
    """Changes while running (service.control.Control). Model changes raise KeyError (no such
    model) and service.core.errors' Refused (422), Conflict (409) and Missing (404)."""

    def trigger(self, camera: str, part_id: str) -> None: ...
    def reload_model(self, name: str, path: Path | None = None, by: str = "api") -> Model: ...
    def set_thresholds(self, model: Model, thresholds: ThresholdSpec) -> None: ...
    def load_candidate(
        self, name: str, path: Path, card: Path | None = None, by: str = "api"
    ) -> dict[str, Any]: ...
    def candidate_report(self, name: str) -> dict[str, Any]: ...
    def promote_candidate(self, name: str, by: str = "api") -> Model: ...
    def discard_candidate(self, name: str, by: str = "api") -> dict[str, Any]: ...
    def rollback(self, name: str, by: str = "api") -> Model: ...
    def history_of(self, name: str) -> dict[str, Any]: ...


class LiveViewPort(Protocol):
    """The latest verdicts and frames (service.sinks.live.LiveView)."""

    def last_verdict(self, camera: str) -> dict[str, Any] | None: ...
    def last_frame(self, camera: str) -> tuple[Frame, Result | None] | None: ...
    def recent(self, limit: int) -> list[dict[str, Any]]: ...


class RecipesPort(Protocol):
    """Recipe changeovers (service.changeover.Changeover)."""

    def state(self) -> dict[str, Any]: ...
    def select(self, name: str, by: str = "api") -> dict[str, Any]: ...


class DriftView(Protocol):
    def snapshot(self) -> dict[str, dict[str, Any]]: ...


@dataclass(frozen=True)
class Api:
    settings: Settings
    metrics: Metrics
    ready: Callable[[], bool]  # every model warmed and served, not stopping
    models: ServedModelsView
    control: ControlPort
    live: LiveViewPort
    drift: DriftView
    cameras: Mapping[str, Camera]
    link_status: Callable[[], tuple[bool, str]]  # MQTT: (connected, last error)
    outbox_depth: Callable[[], tuple[int, float | None]]  # (messages, oldest age in s)
    recipes: RecipesPort


def get_api(request: Request) -> Api:
    api: Api = request.app.state.api
    return api


ApiDep = Annotated[Api, Depends(get_api)]
_bearer = HTTPBearer(auto_error=False, description="Bearer token from `api.token`.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _check_token(api: Api, credentials: HTTPAuthorizationCredentials | None) -> None:
    token = api.settings.api.token
    if token is None:
        return
    if credentials is None:
        raise HTTPException(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(
        credentials.credentials.encode(), token.get_secret_value().encode()
    ):
        raise HTTPException(401, "invalid bearer token", {"WWW-Authenticate": "Bearer"})


def require_token(api: ApiDep, credentials: Credentials) -> None:
    """Mutating routes: the token is required whenever one is configured."""
    _check_token(api, credentials)


# Who made a change, for the model history, while one shared token exists: its placeholder id.
TOKEN_ID = "token:default"


def caller(api: ApiDep, credentials: Credentials) -> str:
    """Mutating routes that record who acted: the token is checked as `require_token` does;
    "api" when no token is configured, else the token's id."""
    _check_token(api, credentials)
    return "api" if api.settings.api.token is None else TOKEN_ID


Caller = Annotated[str, Depends(caller)]


def predict_token(api: ApiDep, credentials: Credentials) -> None:
    """Predict: the token is required only when `api.require_token_for_predict` is set."""
    if api.settings.api.require_token_for_predict:
        _check_token(api, credentials)


def find_model(api: Api, name: str | None) -> Model:
    if not api.ready():
        raise HTTPException(503, "not ready: models are loading or the service is stopping")
    models = api.models.models
    if name is None:
        name = api.models.default
    if name is None or name not in models:
        raise HTTPException(404, f"no model named {name!r}; loaded: {sorted(models)}")
    return models[name]

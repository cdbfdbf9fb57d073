"""What the routers may reach, as narrow protocols, and the dependencies that hand them over
(FastAPI-template style `Annotated` aliases).

The composition root (`service.app.LineInspect.api`) fills one `Api` with the running service's
parts; a test can fill it with anything that has the same shape (tests/unit/test_api.py).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.batcher import MicroBatcher
from service.audit import NullAudit, Recorder
from service.config import Settings
from service.core.types import Frame, Result
from service.inference.card import ThresholdSpec
from service.inference.model import Model, thresholds_of
from service.metrics import Metrics
from service.security import ANONYMOUS, ConfinementError, Role, Tokens, confine, model_dirs
from service.stages.capture import Camera

log = logging.getLogger(__name__)


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
    def set_thresholds(self, model: Model, thresholds: ThresholdSpec, by: str = "api") -> None: ...
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


class AuditPort(Recorder, Protocol):
    """The audit trail (service.audit.AuditLog, or NullAudit when it is off)."""

    def unwritable(self) -> str | None: ...
    def query(
        self,
        since: float | None = None,
        until: float | None = None,
        action: str | None = None,
        target: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]: ...
    def thresholds(self, model: str, version: int) -> dict[str, Any] | None: ...


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
    audit: AuditPort = field(default_factory=NullAudit)


def get_api(request: Request) -> Api:
    api: Api = request.app.state.api
    return api


ApiDep = Annotated[Api, Depends(get_api)]
_bearer = HTTPBearer(
    auto_error=False, description="Bearer token from `api.tokens` (or `api.token`)."
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _authenticate(
    request: Request, credentials: HTTPAuthorizationCredentials | None, role: Role | None
) -> str:
    """Who is asking (`admin:alice`; "api" when no token is configured at all): 401 without a
    known token, 403 when the token's role may not do `role`'s work. Never logs a secret."""
    tokens: Tokens = request.app.state.tokens
    if not tokens.configured:
        return ANONYMOUS
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise HTTPException(401, "a bearer token is required", challenge)
    principal = tokens.identify(credentials.credentials)
    where = f"{request.method} {request.url.path}"
    if principal is None:
        log.warning("%s refused: unknown bearer token from %s", where, _client(request))
        raise HTTPException(401, "unknown bearer token", challenge)
    if role is not None and not principal.may(role):
        log.warning("%s refused: %s may not do %s work", where, principal.name, role)
        raise HTTPException(
            403, f"token {principal.id!r} is an {principal.role} token: this needs an {role} token"
        )
    return principal.name


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def operator(request: Request, credentials: Credentials) -> str:
    """Operator routes (labels, triggers): an operator or admin token when any is configured;
    who acted."""
    return _authenticate(request, credentials, "operator")


def admin(request: Request, credentials: Credentials) -> str:
    """Admin routes (thresholds, model changes, recipes, the audit trail): an admin token when
    any is configured; who acted, as `admin:<id>` (recorded in the history and audit trail).
    A change is refused (503) while the audit trail cannot be written."""
    who = _authenticate(request, credentials, "admin")
    if request.method != "GET":
        require_trail(request.app.state.api)
    return who


def require_trail(api: Api) -> None:
    """503 while the audit trail cannot take a record: a change nobody could trace is not made.
    (Camera triggers are production traffic and never wait on it.)"""
    why = api.audit.unwritable()
    if why is not None:
        log.error("change refused: %s", why)
        raise HTTPException(503, f"change refused: {why}", {"Retry-After": "5"})


Operator = Annotated[str, Depends(operator)]
Caller = Annotated[str, Depends(admin)]  # an admin route that records who acted


def predict_token(request: Request, api: ApiDep, credentials: Credentials) -> None:
    """Predict: a token of any role, only when `api.require_token_for_predict` is set."""
    if api.settings.api.require_token_for_predict:
        _authenticate(request, credentials, None)


def confined(api: Api, path: str, what: str) -> Path:
    """A file named in a request body, resolved inside the model folders; 403 otherwise."""
    try:
        return confine(Path(path), model_dirs(api.settings), what)
    except ConfinementError as exc:
        log.warning("refused %s %s: outside the model folders", what, path)
        raise HTTPException(403, str(exc)) from exc


def identity(model: Model) -> dict[str, Any]:
    """A model as the audit trail records it."""
    policy, i = model.judging()  # one snapshot: the thresholds and the version naming them
    return {
        "model_version": i.version,
        "sha256": i.sha256,
        "thresholds_version": i.thresholds_version,
        "thresholds": thresholds_of(policy).model_dump(),
    }


def audit(
    api: Api,
    by: str,
    action: str,
    target: str | None,
    route: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Record a change that was made; a failing trail is logged (the change stands)."""
    try:
        api.audit.record(by, action, target, route, before, after)
    except (sqlite3.Error, OSError) as exc:
        log.error("audit trail: %s %s %s NOT recorded: %s", by, action, target, exc)


def find_model(api: Api, name: str | None) -> Model:
    if not api.ready():
        raise HTTPException(503, "not ready: models are loading or the service is stopping")
    models = api.models.models
    if name is None:
        name = api.models.default
    if name is None or name not in models:
        raise HTTPException(404, f"no model named {name!r}; loaded: {sorted(models)}")
    return models[name]

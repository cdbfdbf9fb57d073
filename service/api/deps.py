"""Dependencies shared by the routers (FastAPI-template style `Annotated` aliases)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.app import LineInspect
from service.inference.model import Model

_bearer = HTTPBearer(auto_error=False, description="Bearer token from `api.token`.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_service(request: Request) -> LineInspect:
    service: LineInspect = request.app.state.service
    return service


Service = Annotated[LineInspect, Depends(get_service)]


def _check_token(service: LineInspect, credentials: HTTPAuthorizationCredentials | None) -> None:
    token = service.settings.api.token
    if token is None:
        return
    if credentials is None:
        raise HTTPException(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(
        credentials.credentials.encode(), token.get_secret_value().encode()
    ):
        raise HTTPException(401, "invalid bearer token", {"WWW-Authenticate": "Bearer"})


def require_token(service: Service, credentials: Credentials) -> None:
    """Mutating routes: the token is required whenever one is configured."""
    _check_token(service, credentials)


def predict_token(service: Service, credentials: Credentials) -> None:
    """Predict: the token is required only when `api.require_token_for_predict` is set."""
    if service.settings.api.require_token_for_predict:
        _check_token(service, credentials)


def find_model(service: LineInspect, name: str | None) -> Model:
    if not service.ready:
        raise HTTPException(503, "not ready: models are loading or the service is stopping")
    if name is None:
        name = service.default_model
    if name not in service.models:
        raise HTTPException(404, f"no model named {name!r}; loaded: {sorted(service.models)}")
    return service.models[name]

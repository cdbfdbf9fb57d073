"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import ApiDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers.")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: every model is loaded and warmed and its batcher runs.",
    responses={503: {"description": "Not ready yet, or shutting down."}},
)
def readyz(api: ApiDep, response: Response) -> dict[str, object]:
    models = {name: m.warmed for name, m in api.models.models.items()}
    ready = api.ready()
    if not ready:
        response.status_code = 503
    return {"status": "ready" if ready else "not ready", "models": models}


@router.get("/metrics", summary="Prometheus metrics.", response_class=Response)
def metrics(api: ApiDep) -> Response:
    return Response(generate_latest(api.metrics.registry), media_type=CONTENT_TYPE_LATEST)

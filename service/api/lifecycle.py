"""Trying a new model safely over HTTP: a candidate beside the live model (load, report,
promote, discard), the model history and a rollback to the model that served before.

Every refusal is precise and changes nothing: an unknown model is a 404, a candidate or kept
copy that does not load (or has another task or name) a 422, a promote without a candidate or
a rollback without an earlier model a 409. The live model keeps serving throughout.
"""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import APIRouter, HTTPException

from service.api.deps import Api, ApiDep, Caller, audit, confined, identity
from service.api.models import describe
from service.api.schemas import (
    CandidateReport,
    CandidateRequest,
    HistoryResponse,
    ModelDescription,
    errors,
)
from service.core.errors import ConflictError, NotFoundError, RefusedError

router = APIRouter(prefix="/v1/models", tags=["models"])


def _refusal(api: Api, name: str, exc: Exception) -> NoReturn:
    """The status code of a model change's refusal."""
    if isinstance(exc, KeyError):
        raise HTTPException(
            404, f"no model named {name!r}; loaded: {sorted(api.models.models)}"
        ) from None
    if isinstance(exc, NotFoundError):
        raise HTTPException(404, str(exc)) from exc
    if isinstance(exc, ConflictError):
        raise HTTPException(409, str(exc)) from exc
    if isinstance(exc, RefusedError):
        raise HTTPException(422, str(exc)) from exc
    raise exc


_REFUSALS = (KeyError, NotFoundError, ConflictError, RefusedError)


@router.post(
    "/{name}/candidate",
    summary="Load a candidate beside the live model: it judges the same frames in its own "
    "worker, off the PLC path (never published); replaces an earlier candidate.",
    responses=errors(400, 401, 403, 404, 422, 503),
)
def load_candidate(api: ApiDep, name: str, body: CandidateRequest, by: Caller) -> CandidateReport:
    path = confined(api, body.path, "candidate file")
    card = confined(api, body.card, "candidate card") if body.card else None
    try:
        report = api.control.load_candidate(name, path, card, by=by)
    except _REFUSALS as exc:
        _refusal(api, name, exc)
    audit(api, by, "candidate.load", name, "POST /v1/models/{name}/candidate",
          after=_candidate(report))  # fmt: skip
    return CandidateReport.model_validate(report)


def _candidate(report: dict[str, Any]) -> dict[str, Any]:
    """A candidate as the audit trail records it."""
    c = report["candidate"]
    return {k: c.get(k) for k in ("version", "sha256", "source", "card")}


def _live(api: Api, name: str) -> dict[str, Any] | None:
    model = api.models.models.get(name)
    return identity(model) if model is not None else None


@router.get(
    "/{name}/candidate",
    summary="How the candidate judged the live model's frames: agreement, flips by direction, "
    "score shift per class, latency, per camera.",
    responses=errors(404, 422),
)
def candidate_report(api: ApiDep, name: str) -> CandidateReport:
    try:
        report = api.control.candidate_report(name)
    except _REFUSALS as exc:
        _refusal(api, name, exc)
    return CandidateReport.model_validate(report)


@router.delete(
    "/{name}/candidate",
    summary="Discard the candidate; answers its last report.",
    responses=errors(401, 403, 404, 422, 503),
)
def discard_candidate(api: ApiDep, name: str, by: Caller) -> CandidateReport:
    try:
        report = api.control.discard_candidate(name, by=by)
    except _REFUSALS as exc:
        _refusal(api, name, exc)
    audit(api, by, "candidate.discard", name, "DELETE /v1/models/{name}/candidate",
          before=_candidate(report))  # fmt: skip
    return CandidateReport.model_validate(report)


@router.post(
    "/{name}/candidate/promote",
    summary="Serve the candidate as the live model (an atomic swap, as a hot reload: frames in "
    "flight finish on the old model, none lost, order kept).",
    responses=errors(401, 403, 404, 409, 422, 503),
)
def promote_candidate(api: ApiDep, name: str, by: Caller) -> ModelDescription:
    before = _live(api, name)
    try:
        model = api.control.promote_candidate(name, by=by)
    except _REFUSALS as exc:
        _refusal(api, name, exc)
    audit(api, by, "candidate.promote", name, "POST /v1/models/{name}/candidate/promote",
          before, identity(model))  # fmt: skip
    return describe(model)


@router.post(
    "/{name}/rollback",
    summary="Serve the model that served before the current one again, from the model history.",
    responses=errors(401, 403, 404, 409, 422, 503),
)
def rollback(api: ApiDep, name: str, by: Caller) -> ModelDescription:
    before = _live(api, name)
    try:
        model = api.control.rollback(name, by=by)
    except _REFUSALS as exc:
        _refusal(api, name, exc)
    audit(api, by, "model.rollback", name, "POST /v1/models/{name}/rollback",
          before, identity(model))  # fmt: skip
    return describe(model)


@router.get(
    "/{name}/history",
    summary="The models kept for rollback, newest first: sha256, version, when, who.",
    responses=errors(404, 422),
)
def history(api: ApiDep, name: str) -> HistoryResponse:
    try:
        body: dict[str, Any] = api.control.history_of(name)
    except _REFUSALS as exc:
        _refusal(api, name, exc)
    return HistoryResponse.model_validate(body)

"""The audit trail over HTTP (admin only): the changes on record, and the thresholds a verdict's
`model.thresholds_version` names."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam

from service.api.deps import ApiDep, Caller
from service.api.schemas import errors
from service.audit import MAX_LIMIT

router = APIRouter(prefix="/v1/audit", tags=["audit"])

# Unix seconds up to the year 2100: anything else is a malformed query, not an empty answer.
Time = Annotated[float | None, Query(ge=0, le=4_102_444_800, description="Unix time (s).")]
_PARAMS = {"since", "until", "action", "target", "limit"}


@router.get(
    "",
    summary="Changes on record, oldest first: who (role and token id), when, the action and "
    "route, the target, before and after; `thresholds.version` records name every thresholds "
    "version with its full thresholds.",
    responses=errors(401, 403, 422),
)
def audit_records(
    request: Request,
    api: ApiDep,
    by: Caller,
    since: Time = None,
    until: Time = None,
    action: Annotated[str | None, Query(pattern=r"^[a-z][a-z._]{0,63}$")] = None,
    target: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> dict[str, Any]:
    unknown = sorted(set(request.query_params) - _PARAMS)
    if unknown:
        raise HTTPException(422, f"unknown query parameters {unknown}; known: {sorted(_PARAMS)}")
    if since is not None and until is not None and since > until:
        raise HTTPException(422, f"since ({since}) is after until ({until})")
    records = api.audit.query(since, until, action, target, limit)
    return {"records": records, "count": len(records), "more": len(records) == limit}


@router.get(
    "/thresholds/{model}/{version}",
    summary="The thresholds a verdict was judged with: its model name and "
    "`model.thresholds_version` -> the `thresholds.version` record.",
    responses=errors(401, 403, 404, 422),
)
def thresholds_version(
    api: ApiDep,
    by: Caller,
    model: Annotated[str, PathParam(min_length=1, max_length=128)],
    version: Annotated[int, PathParam(ge=1, le=2**53)],
) -> dict[str, Any]:
    record = api.audit.thresholds(model, version)
    if record is None:
        raise HTTPException(404, f"no thresholds version {version} of model {model!r} on record")
    return record

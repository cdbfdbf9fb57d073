"""The line over HTTP: camera states, triggers, hot model reload."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from service.api.deps import ApiDep, Caller, Operator, audit, confined, identity
from service.api.models import describe
from service.api.schemas import ModelDescription, errors
from service.core.errors import RefusedError
from service.inference.card import CardError
from service.inference.errors import ModelError
from service.inference.runtime import RuntimeSetupError

router = APIRouter(prefix="/v1", tags=["line"])


class TriggerRequest(BaseModel):
    model_config = {"extra": "forbid"}

    part_id: Annotated[str, Field(min_length=1, max_length=128)]


class ReloadRequest(BaseModel):
    model_config = {"extra": "forbid"}

    path: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="Another ONNX file, under `api.model_dirs`; default: the configured path.",
    )


@router.get("/cameras", summary="Each camera's state, counters and last verdict.")
def cameras(api: ApiDep) -> dict[str, Any]:
    out = []
    for name, cam in api.cameras.items():
        out.append({
            "name": name,
            "state": cam.state.value,
            "mode": "trigger" if cam.trigger_mode else "free",
            "captured": cam.stats.captured,
            "reconnects": cam.stats.reconnects,
            "stalls": cam.stats.stalls,
            "last_error": cam.stats.last_error,
            "buffered": len(cam.buffer),
            "last_verdict": api.live.last_verdict(name),
        })  # fmt: skip
    depth, age = api.outbox_depth()
    connected, last_error = api.link_status()
    return {
        "cameras": out,
        "mqtt_connected": connected,
        "mqtt_error": last_error,
        "outbox": {"messages": depth, "oldest_age_s": age},
    }


@router.get(
    "/drift",
    summary="Per camera: drift of recent frames against the model card's reference "
    "(PSI and KS per signal, the window size, the uncertain ratio and a state: "
    "off, warming_up, ok, watch or alert).",
)
def drift(api: ApiDep) -> dict[str, Any]:
    s = api.settings.drift
    return {
        "levels": {"psi_watch": s.psi_watch, "psi_alert": s.psi_alert},
        "min_frames": s.min_frames,
        "window": s.window,
        "cameras": api.drift.snapshot(),
    }


@router.post(
    "/cameras/{camera}/trigger",
    summary="Judge the next frame of a trigger-mode camera as this part (one verdict per part).",
    status_code=202,
    responses=errors(400, 401, 403, 404, 409, 422),
)
def trigger(api: ApiDep, camera: str, body: TriggerRequest, by: Operator) -> dict[str, str]:
    try:
        api.control.trigger(camera, body.part_id)
    except KeyError:
        raise HTTPException(
            404, f"no camera named {camera!r}; cameras: {sorted(api.cameras)}"
        ) from None
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc
    route = "POST /v1/cameras/{camera}/trigger"
    audit(api, by, "camera.trigger", camera, route, after={"part_id": body.part_id})
    return {"camera": camera, "part_id": body.part_id, "status": "accepted"}


@router.post(
    "/models/{name}/reload",
    summary="Load the model's file (and card) again and swap it in without stopping anything.",
    responses=errors(400, 401, 403, 404, 422, 503),
)
def reload_model(
    api: ApiDep, name: str, by: Caller, body: ReloadRequest | None = None
) -> ModelDescription:
    path = confined(api, body.path, "model file") if body and body.path else None
    before = api.models.models.get(name)
    try:
        model = api.control.reload_model(name, path, by=by)
    except KeyError:
        raise HTTPException(
            404, f"no model named {name!r}; loaded: {sorted(api.models.models)}"
        ) from None
    except RefusedError as exc:  # says itself that the model keeps serving
        raise HTTPException(422, str(exc)) from exc
    except (FileNotFoundError, CardError, ModelError, RuntimeSetupError, ValueError) as exc:
        raise HTTPException(422, f"reload refused, {name} keeps serving: {exc}") from exc
    after = identity(model) | {"path": str(model.spec.path)}
    prior = identity(before) if before is not None else None
    audit(api, by, "model.reload", name, "POST /v1/models/{name}/reload", prior, after)
    return describe(model)

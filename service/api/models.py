"""Model listing and runtime threshold changes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from service.api.deps import ApiDep, Caller, audit, find_model, identity
from service.api.schemas import (
    ModelDescription,
    ModelsResponse,
    ThresholdsResponse,
    ThresholdsUpdate,
    errors,
)
from service.inference.card import ThresholdSpec
from service.inference.model import Model, thresholds_of

router = APIRouter(prefix="/v1", tags=["models"])
ModelName = Annotated[
    str | None,
    Query(
        min_length=1, max_length=128, description="Model name; default: the first configured model."
    ),
]


def describe(model: Model) -> ModelDescription:
    s = model.spec
    return ModelDescription(
        name=s.name,
        version=s.version,
        sha256=s.sha256,
        task=s.task,
        layout=s.layout,
        classes=list(s.classes),
        good_classes=sorted(model.policy.good_classes),
        input_name=s.input_name,
        input_size=s.preprocess.size,
        resize=s.preprocess.resize,
        rect_stride=s.preprocess.stride,
        color=s.preprocess.color,
        batch=s.fixed_batch,
        providers=model.providers,
        output_shapes=s.output_shapes,
        sources=s.sources,
        warnings=list(s.warnings),
        ready=model.warmed,
        thresholds_version=model.thresholds_version,
    )


def _thresholds(model: Model) -> ThresholdsResponse:
    spec = thresholds_of(model.policy)
    return ThresholdsResponse(
        model=model.spec.name,
        good_classes=sorted(model.policy.good_classes),
        thresholds=ThresholdsUpdate(**spec.model_dump()),
    )


@router.get("/models", summary="Loaded models and how each is served.")
def list_models(api: ApiDep) -> ModelsResponse:
    return ModelsResponse(
        default=api.models.default, models=[describe(m) for m in api.models.models.values()]
    )


@router.get("/thresholds", summary="A model's current thresholds.", responses=errors(404, 422, 503))
def get_thresholds(api: ApiDep, model: ModelName = None) -> ThresholdsResponse:
    return _thresholds(find_model(api, model))


@router.put(
    "/thresholds",
    summary="Replace a model's thresholds without reloading it.",
    responses=errors(400, 401, 403, 404, 422, 503),
)
def put_thresholds(
    api: ApiDep, body: ThresholdsUpdate, by: Caller, model: ModelName = None
) -> ThresholdsResponse:
    target = find_model(api, model)
    before = identity(target)
    try:
        api.control.set_thresholds(target, ThresholdSpec(**body.model_dump()), by=by)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    name = target.spec.name
    audit(api, by, "thresholds.set", name, "PUT /v1/thresholds", before, identity(target))
    return _thresholds(target)

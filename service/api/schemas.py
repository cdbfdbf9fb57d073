"""HTTP bodies other than the verdict (that one is `service.core.wire.PredictResponse`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ModelDescription(BaseModel):
    name: str
    version: str
    sha256: str
    task: str
    layout: str | None
    classes: list[str]
    good_classes: list[str]
    input_name: str
    # a list, not a tuple: FastAPI renders tuples as OpenAPI 3.0 `items: [...]`, invalid in 3.1
    input_size: list[int] = Field(min_length=2, max_length=2, description="[height, width]")
    resize: str
    rect_stride: int | None = Field(
        None,
        description="Letterbox to the smallest multiple of this stride that holds the image "
        "(a dynamic-size detector), or null: always the full input size.",
    )
    color: str
    batch: int | None = Field(description="Fixed batch size, or null when dynamic.")
    providers: list[str] = Field(description="Execution providers actually in use.")
    output_shapes: dict[str, list[int]]
    sources: dict[str, str] = Field(description="Where each resolved setting came from.")
    warnings: list[str]
    ready: bool
    thresholds_version: int = Field(
        1, description="Version of the thresholds it judges with now (verdicts carry it)."
    )


class ModelsResponse(BaseModel):
    default: str | None
    models: list[ModelDescription]


class ThresholdsUpdate(BaseModel):
    """A model's complete threshold set (PUT replaces it; fields left out take defaults)."""

    model_config = {"extra": "forbid"}

    default: float = Field(0.5, ge=0.0, le=1.0)
    per_class: dict[str, float] = Field(default_factory=dict)
    band: float = Field(0.1, ge=0.0, le=0.5)
    per_class_band: dict[str, float] = Field(default_factory=dict)
    min_box_size: float = Field(0.0, ge=0.0)


class ThresholdsResponse(BaseModel):
    model: str
    good_classes: list[str]
    thresholds: ThresholdsUpdate


class CandidateRequest(BaseModel):
    model_config = {"extra": "forbid"}

    path: str = Field(
        min_length=1,
        max_length=4096,
        description="The candidate's ONNX file on the service's host.",
    )
    card: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="Its model card; default: `<stem>.card.yaml` next to the file.",
    )


class CandidateInfo(BaseModel):
    name: str
    version: str
    sha256: str
    task: str
    classes: list[str]
    source: str = Field(description="The file it was loaded from.")
    card: str | None
    loaded_by: str = Field(
        description='"config", "api" (no token configured) or the token that loaded it, as '
        "`<role>:<id>` (e.g. `admin:alice`)."
    )
    loaded_at: float = Field(description="Unix time.")
    queue: dict[str, int] = Field(description="Its worker's queue: size and frames waiting.")


class CandidateReport(BaseModel):
    """How a candidate judged the live model's frames since it was loaded."""

    model: str = Field(description="The live model it runs beside.")
    candidate: CandidateInfo
    compared_classes: list[str] = Field(description="Classes both know: their score shifts.")
    totals: dict[str, Any] = Field(
        description="All cameras: compared, agreements, agreement (0..1), flips by direction "
        "(live->candidate), dropped, errors, kept_for_review."
    )
    cameras: dict[str, dict[str, Any]] = Field(
        description="Per camera: the totals' fields, score_shift per class (mean and mean_abs "
        "of candidate - live) and latency_ms (p50, p95, mean) of live and candidate."
    )


class HistoryEntry(BaseModel):
    id: str
    model: str
    file: str
    card: str | None
    sha256: str
    card_sha256: str | None
    version: str
    served_at: float = Field(description="Unix time it began serving.")
    by: str = Field(
        description='Who put it there: "config", "api" (no token configured) or `<role>:<id>`.'
    )
    event: str = Field(description="start, reload or promote.")
    source: str = Field(description="The path it was loaded from.")
    rolled_back_at: float | None
    rolled_back_by: str | None
    current: bool = Field(description="The entry serving now.")


class HistoryResponse(BaseModel):
    model: str
    enabled: bool
    keep: int = Field(description="Most entries kept (history.keep).")
    serving: dict[str, str] | None = None
    entries: list[HistoryEntry] = Field(description="Newest first.")


class ErrorResponse(BaseModel):
    """Every refusal: a precise, human-readable reason (FastAPI's list form for bad fields)."""

    detail: str | list[Any]


_ERRORS = {
    400: "Malformed input: empty, corrupt or truncated image, broken multipart.",
    401: "A bearer token is required (tokens are configured) and it is missing or unknown.",
    403: "The token is valid but its role may not do this (an operator token on an admin "
    "route), or a file named in the body lies outside api.model_dirs.",
    404: "No such model, camera or item.",
    409: "The request conflicts with the current state (e.g. the camera is not in trigger mode, "
    "no candidate to promote, no earlier model to roll back to).",
    413: "Body or declared image size over the limit; the connection is closed.",
    415: "Unsupported media type or image format.",
    422: "Invalid parameters or body.",
    503: "Not ready (loading or stopping), overloaded, the inference server is unavailable, "
    "or (a change) the audit trail cannot record it: retry later.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error codes a route can answer (all with `ErrorResponse`)."""
    return {code: {"model": ErrorResponse, "description": _ERRORS[code]} for code in codes}

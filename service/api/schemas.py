"""HTTP response and request bodies (versioned JSON)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.inference.model import Result
from service.types import Finding, Outcome, Verdict

SCHEMA_VERSION = 1


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str
    task: str


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class DetectionOut(BaseModel):
    class_id: int
    class_name: str
    confidence: float
    box: Box = Field(description="Pixel coordinates in the original image.")
    outcome: Outcome
    threshold: float
    band: float


class ClassScoreOut(BaseModel):
    class_id: int
    class_name: str
    probability: float
    outcome: Outcome
    threshold: float
    band: float


class AnomalyOut(BaseModel):
    score: float = Field(description="Normalised score; the calibrated threshold sits at 0.5.")
    raw_score: float
    threshold: float
    band: float
    outcome: Outcome


class ImageInfo(BaseModel):
    width: int
    height: int


class Timing(BaseModel):
    decode: float
    preprocess: float
    infer: float = Field(description="The whole batch's session.run, shared by its images.")
    postprocess: float
    decide: float
    total: float
    batch_size: int


class PredictResponse(BaseModel):
    schema_version: int = SCHEMA_VERSION
    request_id: str
    model: ModelRef
    verdict: Verdict
    reason: str
    image: ImageInfo
    detections: list[DetectionOut] | None = None
    classes: list[ClassScoreOut] | None = None
    anomaly: AnomalyOut | None = None
    timing_ms: Timing


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _detection(f: Finding) -> DetectionOut:
    assert f.xyxy is not None
    x1, y1, x2, y2 = (round(v, 2) for v in f.xyxy)
    return DetectionOut(
        class_id=f.class_id,
        class_name=f.class_name,
        confidence=round(f.confidence, 6),
        box=Box(x1=x1, y1=y1, x2=x2, y2=y2),
        outcome=f.outcome,
        threshold=f.threshold,
        band=f.band,
    )


def predict_response(result: Result, request_id: str) -> PredictResponse:
    p, d, t = result.prediction, result.decision, result.times
    h, w = p.image_size
    body = PredictResponse(
        request_id=request_id,
        model=ModelRef(**vars(result.model)),
        verdict=d.verdict,
        reason=d.reason,
        image=ImageInfo(width=w, height=h),
        timing_ms=Timing(
            decode=_ms(t.decode),
            preprocess=_ms(t.preprocess),
            infer=_ms(t.infer),
            postprocess=_ms(t.postprocess),
            decide=_ms(t.decide),
            total=_ms(t.total),
            batch_size=result.batch_size,
        ),
    )
    if p.task == "detect":
        body.detections = [_detection(f) for f in d.findings]
    elif p.task == "classify":
        body.classes = [
            ClassScoreOut(
                class_id=f.class_id,
                class_name=f.class_name,
                probability=round(f.confidence, 6),
                outcome=f.outcome,
                threshold=f.threshold,
                band=f.band,
            )
            for f in d.findings
        ]
    else:
        assert p.anomaly is not None
        f = d.findings[0]
        body.anomaly = AnomalyOut(
            score=round(p.anomaly.score, 6),
            raw_score=p.anomaly.raw,
            threshold=f.threshold,
            band=f.band,
            outcome=f.outcome,
        )
    return body


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


class ErrorResponse(BaseModel):
    """Every refusal: a precise, human-readable reason (FastAPI's list form for bad fields)."""

    detail: str | list[Any]


_ERRORS = {
    400: "Malformed input: empty, corrupt or truncated image, broken multipart.",
    401: "A bearer token is required (api.token is set) and it is missing or wrong.",
    404: "No such model, camera or item.",
    409: "The request conflicts with the current state (e.g. the camera is not in trigger mode).",
    413: "Body or declared image size over the limit; the connection is closed.",
    415: "Unsupported media type or image format.",
    422: "Invalid parameters or body.",
    503: "Not ready (loading or stopping) or overloaded: retry later.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error codes a route can answer (all with `ErrorResponse`)."""
    return {code: {"model": ErrorResponse, "description": _ERRORS[code]} for code in codes}

"""The wire format: every verdict that leaves the service is serialised here, once.

One `SCHEMA_VERSION` covers the retained MQTT status and the three contracts built from a
`Result`:
- MQTT verdicts (`<prefix>/<line>/<camera>/verdict`): `verdict_payload`;
- HTTP `/v1/predict` responses: `PredictResponse` / `predict_response`;
- review items (`<prefix>/<line>/<camera>/review` and the `<id>.json` beside each image):
  `review_record`.
Findings keep the shape each contract has had since version 1 (a `box` list in MQTT and review
records, a `box` object in HTTP), so existing PLC programs and HTTP clients keep working.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from pydantic import BaseModel, Field

from service.core.types import Finding, Frame, Outcome, Result, Verdict

SCHEMA_VERSION = 1
_SEGMENT = re.compile(r"[^a-z0-9_-]+")


def topic_segment(name: str) -> str:
    """Lowercase MQTT topic segment: no wildcards, separators or spaces."""
    return _SEGMENT.sub("-", name.lower()).strip("-") or "unnamed"


class Topics:
    """`<prefix>/<line>/<camera>/<kind>` and the line-wide topics."""

    def __init__(self, prefix: str, line: str) -> None:
        self.prefix, self.line = prefix.strip("/"), topic_segment(line)

    def camera(self, camera: str, kind: str) -> str:
        return f"{self.prefix}/{self.line}/{topic_segment(camera)}/{kind}"

    def every_camera(self, kind: str) -> str:
        """The subscription filter for one kind of message to any camera."""
        return f"{self.prefix}/{self.line}/+/{kind}"

    def line_topic(self, kind: str) -> str:
        return f"{self.prefix}/{self.line}/{kind}"


def encode(payload: dict[str, Any]) -> bytes:
    """Compact JSON, as every MQTT payload is sent."""
    return json.dumps(payload, separators=(",", ":")).encode()


def model_ref(result: Result) -> dict[str, Any]:
    """The model a verdict was judged with, and the version of its thresholds then."""
    m = result.model
    return {"name": m.name, "version": m.version, "sha256": m.sha256,
            "thresholds_version": m.thresholds_version}  # fmt: skip


def finding_json(f: Finding) -> dict[str, Any]:
    out: dict[str, Any] = {
        "class_id": f.class_id,
        "class_name": f.class_name,
        "confidence": round(f.confidence, 5),
        "threshold": f.threshold,
        "band": f.band,
        "outcome": f.outcome.value,
    }
    if f.xyxy is not None:
        out["box"] = [round(v, 1) for v in f.xyxy]
    return out


# -- MQTT status and verdicts


def status_payload(state: str, **extra: Any) -> bytes:
    """The retained `<prefix>/<line>/status` message (online, offline and why)."""
    return json.dumps(
        {"schema_version": SCHEMA_VERSION, "state": state, "time": time.time(), **extra}
    ).encode()


def verdict_payload(
    line: str,
    frame: Frame,
    result: Result | None,
    error: str | None,
    sequence: int,
    done_mono: float,
    recipe: str | None = None,
) -> dict[str, Any]:
    """The verdict a PLC receives for one frame (or for a part whose frame never came); with
    the recipe it was judged under when the line has recipes."""
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "line": line,
        "camera": frame.camera,
        "sequence": sequence,
        "frame_id": frame.frame_id,
        "part_id": frame.part_id,
        "captured_at": round(frame.captured_wall, 6),
        "decided_at": round(time.time(), 6),
        "latency_ms": round((done_mono - frame.captured_mono) * 1000, 3),
    }
    if recipe is not None:
        body["recipe"] = recipe
    if result is None:
        return body | {"verdict": Verdict.UNCERTAIN.value, "reason": error, "error": True,
                       "findings": [], "model": None}  # fmt: skip
    d = result.decision
    findings = [finding_json(f) for f in d.drivers] or [finding_json(f) for f in d.findings[:3]]
    return body | {
        "verdict": d.verdict.value,
        "reason": d.reason,
        "error": False,
        "findings": findings,
        "findings_total": len(d.findings),
        "model": model_ref(result),
    }


def recipe_event(
    requested: str,
    accepted: bool,
    active: str | None,
    reason: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The acknowledgement of a recipe selection, on `<prefix>/<line>/status` (not retained:
    the retained message there stays the online/offline state)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "state": "online",  # what every status message says: readers of the state keep working
        "event": "recipe",
        "requested": requested,
        "accepted": accepted,
        "active": active,
        "reason": reason,
        "request_id": request_id,
        "time": round(time.time(), 6),
    }


def verdict_summary(payload: dict[str, Any]) -> dict[str, Any]:
    """A verdict payload cut down to what the operator page's feed shows."""
    findings = payload.get("findings") or []
    top = findings[0] if findings else None
    return {
        "camera": payload.get("camera"),
        "sequence": payload.get("sequence"),
        "frame_id": payload.get("frame_id"),
        "part_id": payload.get("part_id"),
        "verdict": payload.get("verdict"),
        "reason": payload.get("reason"),
        "error": bool(payload.get("error")),
        "decided_at": payload.get("decided_at"),
        "top": {"class_name": top.get("class_name"), "confidence": top.get("confidence")}
        if top
        else None,
    }


# -- review items


def judgement(result: Result) -> dict[str, Any]:
    """Another model's judgement of a review item's frame (a candidate's, kept beside the live
    one's when they disagree)."""
    d = result.decision
    return {
        "model": model_ref(result),
        "verdict": d.verdict.value,
        "decision": d.reason,
        "findings": [finding_json(f) for f in d.findings],
    }


def review_record(
    frame: Frame,
    result: Result,
    sequence: int,
    item_id: str,
    reason: str,
    image: str,
    candidate: Result | None = None,
) -> dict[str, Any]:
    """The `<id>.json` stored beside a review image (the MQTT announcement omits `findings`);
    with a candidate's judgement of the same frame under `candidate` when one disagreed."""
    d = result.decision
    extra = {"candidate": judgement(candidate)} if candidate is not None else {}
    return {
        "schema_version": SCHEMA_VERSION,
        "id": item_id,
        "camera": frame.camera,
        "frame_id": frame.frame_id,
        "part_id": frame.part_id,
        "sequence": sequence,
        "captured_at": frame.captured_wall,
        "reason": reason,
        "verdict": d.verdict.value,
        "decision": d.reason,
        "model": model_ref(result),
        "task": result.prediction.task,
        "image": image,
        "width": int(frame.image.shape[1]),
        "height": int(frame.image.shape[0]),
        "findings": [finding_json(f) for f in d.findings],
        "label": None,  # filled in by an inspector: a class name, or a list of boxes
    } | extra


# -- HTTP /v1/predict


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str
    task: str
    thresholds_version: int = Field(
        1,
        description="Version of the thresholds the verdict was judged with: up by one on every "
        "threshold change and every model swap (reload, promote, rollback) since start.",
    )


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


def _class_score(f: Finding) -> ClassScoreOut:
    return ClassScoreOut(
        class_id=f.class_id,
        class_name=f.class_name,
        probability=round(f.confidence, 6),
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
    # What the prediction holds says which section it fills, not a task name.
    if p.detections is not None:
        body.detections = [_detection(f) for f in d.findings]
    elif p.probabilities is not None:
        body.classes = [_class_score(f) for f in d.findings]
    elif p.anomaly is not None:
        f = d.findings[0]
        body.anomaly = AnomalyOut(
            score=round(p.anomaly.score, 6),
            raw_score=p.anomaly.raw,
            threshold=f.threshold,
            band=f.band,
            outcome=f.outcome,
        )
    return body

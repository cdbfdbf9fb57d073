"""The operator page: live view of each camera, verdict feed, drift state and the review queue.

Plain HTML, one vanilla JS file and one CSS file shipped in the package (no build step, no CDN:
plant networks are often offline). Frames are drawn server-side with OpenCV, so the page only
shows JPEGs. The page never receives the API token: the inspector types it, the browser keeps it
in sessionStorage and sends it as a bearer header on label writes.
"""

from __future__ import annotations

import json
import logging
import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import cv2
import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field, field_validator

from service.api.deps import Api, ApiDep, Operator, audit, require_trail
from service.api.schemas import errors
from service.core.errors import NotFoundError
from service.core.types import Frame, Result
from service.review_store import CAMERA_NAME, ITEM_ID, item_path, list_items, write_label
from service.sinks.live import FEED_SIZE

log = logging.getLogger(__name__)
router = APIRouter(tags=["operator"])

# Self only: no inline script or style, no framing, no plugins. JS sets positions through the
# CSSOM, which style-src does not restrict.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_STATIC = {
    "operator.html": "text/html; charset=utf-8",
    "operator.js": "text/javascript; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
    "operator.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CameraName = Annotated[str, PathParam(pattern=CAMERA_NAME.pattern)]
ItemId = Annotated[str, PathParam(pattern=ITEM_ID.pattern)]


def install(app: Any) -> None:
    """Add the routes and the page's state to the FastAPI app."""
    app.state.frame_cache = {}
    app.include_router(router)


# -- drawing the live view

BGR = tuple[int, int, int]
COLOURS: dict[str, BGR] = {"fail": (40, 40, 220), "uncertain": (0, 170, 250), "pass": (70, 170, 60)}
_GREY: BGR = (120, 120, 120)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode()  # Hershey fonts draw ASCII only


def render_frame(frame: Frame, result: Result | None, verdict: dict[str, Any] | None) -> bytes:
    """The frame with its findings' boxes (by outcome) and a verdict banner below it.

    Small images are enlarged (and huge ones reduced) so labels stay legible in a tile."""
    image = frame.image
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = image.shape[:2]
    longest = max(h, w)
    scale = 640 / longest if longest < 640 else min(1.0, 1280 / longest)
    size = (round(w * scale), round(h * scale))
    canvas = cv2.resize(
        image, size, interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA
    )
    findings = result.decision.findings if result is not None else ()
    # Draw passes first so a failing box is never painted over.
    rank = {"fail": 2, "uncertain": 1}
    for f in sorted(findings, key=lambda f: rank.get(f.outcome.value, 0)):
        if f.xyxy is None:
            continue
        outcome = f.outcome.value if f.outcome.value in ("fail", "uncertain") else "pass"
        colour = COLOURS[outcome]
        x1, y1, x2, y2 = (round(v * scale) for v in f.xyxy)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 3 if outcome != "pass" else 2)
        text = _ascii(f"{f.class_name} {f.confidence:.2f}")
        (tw, th), base = cv2.getTextSize(text, _FONT, 0.55, 1)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else y1 + th + 4  # above the box, else inside
        cv2.rectangle(canvas, (x1, ty - th - 3), (x1 + tw + 6, ty + base - 1), colour, -1)
        cv2.putText(canvas, text, (x1 + 3, ty - 1), _FONT, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return _with_banner(canvas, frame, result, verdict)


def _with_banner(
    canvas: np.ndarray, frame: Frame, result: Result | None, verdict: dict[str, Any] | None
) -> bytes:
    name = (verdict or {}).get("verdict") or (
        result.decision.verdict.value if result is not None else "uncertain"
    )
    banner = np.full((44, canvas.shape[1], 3), COLOURS.get(name, _GREY), np.uint8)
    detail = ""
    if result is not None and result.decision.drivers:
        top = max(result.decision.drivers, key=lambda f: f.confidence)
        detail = f"{top.class_name} {top.confidence:.2f}"
    elif result is not None and result.decision.findings and result.prediction.detections is None:
        top = result.decision.findings[0]
        detail = f"{top.class_name} {top.confidence:.2f}"
    elif result is None:
        detail = "error"
    cv2.putText(banner, name.upper(), (10, 30), _FONT, 0.9, (255, 255, 255), 2, cv2.LINE_AA)
    cv2.putText(banner, _ascii(detail), (130, 29), _FONT, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    right = _ascii(f"#{frame.frame_id}" + (f" part {frame.part_id}" if frame.part_id else ""))
    (tw, _), _ = cv2.getTextSize(right, _FONT, 0.5, 1)
    x = max(canvas.shape[1] - tw - 10, 10)
    cv2.putText(banner, right, (x, 28), _FONT, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    ok, jpg = cv2.imencode(".jpg", np.vstack([canvas, banner]), [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise RuntimeError("the frame could not be encoded as JPEG")
    return bytes(jpg)


@router.get(
    "/v1/cameras/{camera}/frame.jpg",
    summary="The camera's last judged frame with its boxes and verdict drawn.",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **errors(404, 422)},
)
def frame_jpg(request: Request, api: ApiDep, camera: CameraName) -> Response:
    if camera not in api.cameras:
        raise HTTPException(404, f"no camera named {camera!r}; cameras: {sorted(api.cameras)}")
    last = api.live.last_frame(camera)
    if last is None:
        raise HTTPException(404, f"camera {camera} has no judged frame yet")
    frame, result = last
    cache: dict[str, tuple[int, float, bytes]] = request.app.state.frame_cache
    hit = cache.get(camera)
    if hit is not None and hit[:2] == (frame.frame_id, frame.captured_mono):
        data = hit[2]  # several screens on one camera: draw each frame once
    else:
        data = render_frame(frame, result, api.live.last_verdict(camera))
        cache[camera] = (frame.frame_id, frame.captured_mono, data)
    return Response(
        data,
        media_type="image/jpeg",
        headers={"Cache-Control": "no-store", "X-Frame-Id": str(frame.frame_id)},
    )


# -- page state


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity; a drift statistic may be either."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def drift_snapshot(api: Api) -> dict[str, Any] | None:
    """The drift monitor's per-camera state; None when drift is off (the page says n/a)."""
    try:
        snap = api.drift.snapshot()
    except Exception as exc:  # the page must keep working whatever the monitor does
        log.warning("drift snapshot failed: %s", exc)
        return None
    return _finite(snap) or None


def verdict_counts(api: Api) -> dict[str, dict[str, int]]:
    """Per camera and verdict since start, read from the one counter (not the whole registry,
    whose collection would also run the outbox and review-depth callbacks)."""
    counts: dict[str, dict[str, int]] = {}
    for metric in api.metrics.verdicts.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                per = counts.setdefault(sample.labels["camera"], {})
                per[sample.labels["verdict"]] = int(sample.value)
    return counts


def candidate_reports(api: Api) -> dict[str, dict[str, Any]]:
    """Per live model with a candidate: its report (service.sinks.candidate)."""
    reports = {}
    for name in api.models.models:
        try:
            reports[name] = api.control.candidate_report(name)
        except (KeyError, NotFoundError):
            continue
    return reports


def camera_candidate(report: dict[str, Any] | None, camera: str) -> dict[str, Any] | None:
    """A camera's line of its model's candidate report: version, agreement, flips, drops."""
    if report is None:
        return None
    per = report["cameras"].get(camera, {})
    return {
        "version": report["candidate"]["version"],
        "sha256": report["candidate"]["sha256"],
        **{k: v for k, v in per.items() if k not in ("score_shift", "latency_ms")},
    }


@router.get("/v1/operator/state", summary="What the operator page shows, in one poll.")
def operator_state(
    request: Request, api: ApiDep, feed: Annotated[int, Query(ge=1, le=FEED_SIZE)] = 30
) -> dict[str, Any]:
    counts, drift, candidates = verdict_counts(api), drift_snapshot(api), candidate_reports(api)
    recipes = api.recipes.state()  # after a changeover a camera's model is not the configured one
    cameras = {}
    for cam in api.settings.cameras:
        per = counts.get(cam.name, {})
        model = recipes["routing"].get(cam.name) or cam.model or api.models.default
        report = candidates.get(model or "")
        cameras[cam.name] = {
            "model": model,
            "counts": {v: per.get(v, 0) for v in ("pass", "fail", "uncertain")},
            "drift": drift.get(cam.name) if drift is not None else None,
            "candidate": camera_candidate(report, cam.name),
        }
    return {
        "line": api.settings.line.name,
        "recipe": recipes["active"],
        "cameras": cameras,
        "feed": api.live.recent(feed),
        "drift_available": drift is not None,
        "models": {
            name: {"task": m.spec.task, "classes": list(m.spec.classes)}
            for name, m in api.models.models.items()
        },
        "candidates": {
            name: {"candidate": r["candidate"], "totals": r["totals"]}
            for name, r in candidates.items()
        },
        "review_enabled": api.settings.review.enabled,
        "token_required": api.settings.api.token is not None or bool(api.settings.api.tokens),
    }


# -- review queue


def _classes_for(api: Api, item: dict[str, Any]) -> list[str]:
    """The classes of the model that judged the item; all loaded models' when it is gone."""
    model = api.models.models.get((item.get("model") or {}).get("name") or "")
    if model is not None:
        return list(model.spec.classes)
    return sorted({c for m in api.models.models.values() for c in m.spec.classes})


def _public(api: Api, item: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "camera", "frame_id", "part_id", "sequence", "captured_at", "reason",
            "verdict", "decision", "model", "task", "width", "height", "findings", "label",
            "labelled_by", "labelled_at", "labelled_with", "candidate")  # fmt: skip
    out = {k: item.get(k) for k in keys}
    out["image_url"] = f"/v1/review/{item.get('camera')}/{item.get('id')}.jpg"
    out["classes"] = _classes_for(api, item)
    return out


@router.get("/v1/review", summary="Review items, newest first.", tags=["review"])
def review_list(
    api: ApiDep,
    camera: Annotated[str | None, Query(pattern=CAMERA_NAME.pattern)] = None,
    status: Literal["pending", "labelled", "all"] = "pending",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    items = list_items(api.settings.review.path, camera, status, limit)
    return {"items": [_public(api, i) for i in items]}


def _find(api: Api, camera: str, item_id: str) -> Path:
    path = item_path(api.settings.review.path, camera, item_id)
    if path is None:
        raise HTTPException(404, f"no review item {item_id} for camera {camera}")
    return path


@router.get(
    "/v1/review/{camera}/{item_id}.jpg",
    summary="The image of a review item, as kept.",
    tags=["review"],
    response_class=FileResponse,
    responses={200: {"content": {"image/jpeg": {}}}, **errors(404, 422)},
)
def review_image(api: ApiDep, camera: CameraName, item_id: ItemId) -> FileResponse:
    image = _find(api, camera, item_id).with_suffix(".jpg")
    if not image.is_file() or not image.resolve().is_relative_to(
        api.settings.review.path.resolve()
    ):
        raise HTTPException(404, f"the image of review item {item_id} is missing")
    return FileResponse(image, media_type="image/jpeg", headers={"Cache-Control": "private"})


class BoxLabel(BaseModel):
    model_config = {"extra": "forbid"}

    class_name: Annotated[str, Field(min_length=1, max_length=128)]
    box: Annotated[list[float], Field(min_length=4, max_length=4)]

    @field_validator("box")
    @classmethod
    def _ordered(cls, box: list[float]) -> list[float]:
        x1, y1, x2, y2 = box
        if not (all(math.isfinite(v) for v in box) and 0 <= x1 < x2 and 0 <= y1 < y2):
            raise ValueError("box must be [x1, y1, x2, y2] with 0 <= x1 < x2 and 0 <= y1 < y2")
        return box


class LabelRequest(BaseModel):
    model_config = {"extra": "forbid"}

    label: (
        Annotated[str, Field(min_length=1, max_length=128)]
        | Annotated[list[BoxLabel], Field(max_length=500)]
    ) = Field(description="An image-level class, or the boxes (an empty list: no defect).")
    inspector: Annotated[str, Field(pattern=r"^[\w .@'-]{1,64}$")] = Field(
        description="Who labelled it (a name or badge id)."
    )


@router.post(
    "/v1/review/{camera}/{item_id}/label",
    summary="Store an inspector's label on a review item (exported by `review export`).",
    tags=["review"],
    responses=errors(400, 401, 403, 404, 422, 503),
)
def review_label(
    api: ApiDep, camera: CameraName, item_id: ItemId, body: LabelRequest, by: Operator
) -> dict[str, Any]:
    require_trail(api)
    path = _find(api, camera, item_id)
    item = json.loads(path.read_text())
    classes = _classes_for(api, item)
    named = [body.label] if isinstance(body.label, str) else [b.class_name for b in body.label]
    unknown = sorted({c for c in named if c not in classes})
    if unknown:
        raise HTTPException(422, f"unknown class {unknown}; the model's classes: {classes}")
    if isinstance(body.label, list):
        w, h = item.get("width") or math.inf, item.get("height") or math.inf
        if any(b.box[2] > w or b.box[3] > h for b in body.label):
            raise HTTPException(422, f"a box lies outside the {w}x{h} image")
    label = body.label if isinstance(body.label, str) else [b.model_dump() for b in body.label]
    before = {"label": item.get("label"), "inspector": item.get("labelled_by")}
    item = write_label(path, label, body.inspector, by)
    log.info("review item %s/%s labelled by %s", camera, item_id, body.inspector)
    audit(api, by, "review.label", f"{camera}/{item_id}", "POST /v1/review/{camera}/{id}/label",
          before, {"label": label, "inspector": body.inspector})  # fmt: skip
    return _public(api, item)


# -- the page and its files


def _static(name: str) -> bytes:
    return (resources.files("service.api") / "static" / name).read_bytes()


@router.get("/ui", include_in_schema=False)
def page() -> Response:
    return Response(_static("operator.html"), media_type=_STATIC["operator.html"],
                    headers=SECURITY_HEADERS)  # fmt: skip


@router.get("/ui/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    if name not in _STATIC or name == "operator.html":  # a fixed list: no path ever built
        raise HTTPException(404, "not found")
    return Response(_static(name), media_type=_STATIC[name], headers=SECURITY_HEADERS)

"""POST /v1/predict: one image in (raw body or multipart), one verdict out."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.api.batcher import MicroBatcher, OverloadedError
from service.api.deps import ApiDep, find_model, predict_token
from service.api.schemas import errors
from service.core.types import Result, StageTimes
from service.core.wire import PredictResponse, predict_response
from service.imageio import (
    GENERIC_MEDIA_TYPES,
    MEDIA_TYPES,
    ImageError,
    decode_image,
    decode_reduced,
)
from service.inference.model import Model
from service.inference.preprocess import Geometry
from service.inference.triton import ServerUnavailableError
from service.metrics import Metrics

router = APIRouter(prefix="/v1", tags=["predict"])
FILE_FIELDS = ("image", "file")
RAW_TYPES = sorted({*MEDIA_TYPES, *GENERIC_MEDIA_TYPES})

_binary = {"schema": {"type": "string", "format": "binary"}}
_request_body = {
    "required": True,
    "content": {
        **{t: _binary for t in RAW_TYPES},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "required": ["image"],
            }
        },
    },
}


def _reject(metrics: Metrics, status: int, reason: str, detail: str) -> HTTPException:
    metrics.rejected_inputs.labels(reason).inc()
    # A body refused before it was read leaves bytes on the connection: close it, or they would
    # be parsed as the client's next request.
    headers = {"connection": "close"} if status == 413 else None
    return HTTPException(status, detail, headers)


async def read_limited(request: Request, limit: int, metrics: Metrics) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _reject(metrics, 413, "too_large", f"body of {declared} bytes exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _reject(metrics, 413, "too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _file_from_multipart(
    request: Request, body: bytes, limit: int, metrics: Metrics
) -> bytes:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(
        request.headers, stream(), max_files=4, max_fields=16, max_part_size=limit
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise _reject(
            metrics, 400, "bad_multipart", f"malformed multipart body: {exc.message}"
        ) from exc
    try:
        for field in FILE_FIELDS:
            value = form.get(field)
            if isinstance(value, UploadFile):
                return await value.read()
        raise _reject(
            metrics, 422, "no_file", "multipart body has no file field named 'image' or 'file'"
        )
    finally:
        await form.close()


def _prepare(
    model: Model, data: bytes, max_pixels: int, reduced: bool = False
) -> tuple[np.ndarray, Geometry, StageTimes]:
    t0 = time.perf_counter()
    if reduced:  # a large JPEG decoded at 1/2-1/8 scale; geometry still maps to the original
        spec = model.spec.preprocess
        decoded = decode_reduced(data, max_pixels, spec.size, spec.resize)
        t1 = time.perf_counter()
        tensor, geometry = model.preprocess(decoded.image)
        geometry = geometry.unreduced(decoded.factor, decoded.original_size)
    else:
        image = decode_image(data, max_pixels)
        t1 = time.perf_counter()
        tensor, geometry = model.preprocess(image)
    t2 = time.perf_counter()
    return tensor, geometry, StageTimes(decode=t1 - t0, preprocess=t2 - t1)


@router.post(
    "/predict",
    summary="Judge one image: PASS, FAIL or UNCERTAIN with the findings that drove it.",
    response_model=PredictResponse,
    dependencies=[Depends(predict_token)],
    openapi_extra={"requestBody": _request_body},
    responses=errors(400, 401, 404, 413, 415, 422, 503),
)
async def predict(
    request: Request,
    api: ApiDep,
    model: Annotated[
        str | None,
        Query(min_length=1, max_length=128, description="Model name; default: the first."),
    ] = None,
) -> Response:
    metrics, limits = api.metrics, api.settings.api
    target = find_model(api, model)
    batcher = api.models.batchers[target.spec.name]
    media = request.headers.get("content-type", "application/octet-stream").split(";")[0]
    media = media.strip().lower()
    if (
        media != "multipart/form-data"
        and media not in MEDIA_TYPES
        and media not in GENERIC_MEDIA_TYPES
    ):
        raise _reject(
            metrics,
            415,
            "media_type",
            f"unsupported media type {media!r}: send {', '.join(RAW_TYPES)} or multipart/form-data",
        )
    body = await read_limited(request, limits.max_body_bytes, metrics)
    if media == "multipart/form-data":
        body = await _file_from_multipart(request, body, limits.max_body_bytes, metrics)

    try:
        async with batcher.admitted():  # bounds the decoded images and tensors held at once
            result = await _judge(
                batcher, target, body, limits.max_image_pixels, metrics, limits.reduced_decode
            )
    except OverloadedError as exc:
        metrics.rejected_inputs.labels("overloaded").inc()
        raise HTTPException(503, f"overloaded: {exc}", {"Retry-After": "1"}) from exc
    except ServerUnavailableError as exc:  # runtime.backend triton: the server is away or too slow
        metrics.inference_server_errors.labels(target.spec.name).inc()
        raise HTTPException(503, str(exc), {"Retry-After": "1"}) from exc
    metrics.observe(result)
    # Built from the typed model and serialised once: returning the Response skips FastAPI's
    # second validation pass over the same data (measurable on small models).
    payload = predict_response(result, request_id(request)).model_dump_json()
    return Response(payload, media_type="application/json")


async def _judge(
    batcher: MicroBatcher,
    target: Model,
    body: bytes,
    max_pixels: int,
    metrics: Metrics,
    reduced: bool = False,
) -> Result:
    batcher.announce()
    try:
        tensor, geometry, times = await run_in_threadpool(
            _prepare, target, body, max_pixels, reduced
        )
    except ImageError as exc:
        batcher.withdraw()
        reason = {413: "too_large", 415: "image_format"}.get(exc.status, "bad_image")
        raise _reject(metrics, exc.status, reason, str(exc)) from exc
    except BaseException:
        batcher.withdraw()
        raise
    future = batcher.submit(tensor, geometry, times, target)
    return await asyncio.wrap_future(future)


def request_id(request: Request) -> str:
    """The caller's X-Request-ID when it is sane (lets a client correlate), else a new one."""
    given = request.headers.get("x-request-id", "")
    if 0 < len(given) <= 128 and given.isprintable():
        return given
    return uuid.uuid4().hex

"""The line: camera buffers -> inference (batched across cameras) -> decision -> publishing.

Stages overlap in their own threads with bounded queues between them, so the model never waits
on I/O. A model's inference workers (one per core on a CPU: `runtime.parallel_runs`) each pull
frames from every camera that uses it (round robin, up to `max_batch`), preprocess them in a
small pool and run one `session.run`; they hand their results over in the order the batches
were taken, so each camera's verdicts keep their frame order. The publisher thread stamps
per-camera sequence numbers, writes each verdict to the durable outbox and feeds the review
queue. The handoff queue blocks rather than drops: once a frame is inferred its verdict is
never thrown away.

A frame that fails anywhere still gets a verdict (UNCERTAIN, `error` set), logged with its
camera and frame id and counted in `lineinspect_pipeline_errors_total{stage}`: a PLC waiting
for a part must get an answer.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.drift import NullDrift
from service.frames import Frame, FrameBuffer
from service.inference.model import Model, Result
from service.metrics import Metrics
from service.outbox import Outbox, OutboxFullError
from service.types import Finding, StageTimes, Verdict

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
STOP_GRACE_S = 10.0  # how long a stopping line keeps retrying a full disk before logging verdicts
_SEGMENT = re.compile(r"[^a-z0-9_-]+")


def topic_segment(name: str) -> str:
    """Lowercase MQTT topic segment: no wildcards, separators or spaces."""
    return _SEGMENT.sub("-", name.lower()).strip("-") or "unnamed"


class ModelSlot:
    """The model a set of cameras uses; `swap` replaces it atomically (hot reload)."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def swap(self, model: Model) -> Model:
        old, self.model = self.model, model
        return old


@dataclass(frozen=True)
class Route:
    """The cameras served by one model, and the event their buffers set when a frame arrives."""

    slot: ModelSlot
    buffers: list[FrameBuffer]
    ready: threading.Event


class Turns:
    """Batch tickets: workers take one as they collect a batch, and results go to the publisher
    in ticket order, whichever batch finishes first. A worker that finishes early leaves its
    results here and goes back to work; the one that completes the next ticket forwards them.
    A camera's verdicts keep their frame order."""

    def __init__(self) -> None:
        self.collecting = threading.Lock()  # held while taking frames and a ticket
        self._lock = threading.Lock()
        self._issued = 0
        self._next = 0
        self._done: dict[int, list[Any]] = {}

    def take(self) -> int:
        """The next ticket; call with `collecting` held."""
        ticket, self._issued = self._issued, self._issued + 1
        return ticket

    def hand_over(self, ticket: int, items: list[Any], put: Callable[[Any], None]) -> None:
        """Passes `items` and every finished batch after them, in ticket order, to `put`; a
        ticket handed over with no items (a failed batch) still lets the next ones go."""
        with self._lock:  # held while putting, so two finishers cannot interleave
            self._done[ticket] = items
            while self._next in self._done:
                for item in self._done.pop(self._next):
                    put(item)  # blocks when the publisher lags: backpressure, never a drop
                self._next += 1


@dataclass(frozen=True)
class Outcome:
    """What the publisher needs for one frame: its result, or why there is none."""

    frame: Frame
    result: Result | None
    error: str | None = None
    done_mono: float = 0.0


class ReviewSink(Protocol):
    def offer(self, frame: Frame, result: Result, sequence: int) -> None: ...


class DriftSink(Protocol):
    def offer(self, frame: Frame, result: Result) -> None: ...


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


def verdict_payload(line: str, outcome: Outcome, sequence: int) -> dict[str, Any]:
    frame, result = outcome.frame, outcome.result
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "line": line,
        "camera": frame.camera,
        "sequence": sequence,
        "frame_id": frame.frame_id,
        "part_id": frame.part_id,
        "captured_at": round(frame.captured_wall, 6),
        "decided_at": round(time.time(), 6),
        "latency_ms": round((outcome.done_mono - frame.captured_mono) * 1000, 3),
    }
    if result is None:
        return body | {"verdict": Verdict.UNCERTAIN.value, "reason": outcome.error, "error": True,
                       "findings": [], "model": None}  # fmt: skip
    d = result.decision
    findings = [finding_json(f) for f in d.drivers] or [finding_json(f) for f in d.findings[:3]]
    return body | {
        "verdict": d.verdict.value,
        "reason": d.reason,
        "error": False,
        "findings": findings,
        "findings_total": len(d.findings),
        "model": {
            "name": result.model.name,
            "version": result.model.version,
            "sha256": result.model.sha256,
        },
    }


class Line:
    def __init__(
        self,
        line: str,
        prefix: str,
        routes: dict[str, Route],  # model name -> its slot, camera buffers and wake-up event
        outbox: Outbox | None,
        review: ReviewSink,
        metrics: Metrics,
        max_batch: int = 8,
        max_wait_s: float = 0.0,
        preprocess_threads: int = 2,
        publish_queue: int = 32,  # each item holds its frame (for review): keep memory bounded
        on_verdict: Callable[[dict[str, Any]], None] | None = None,
        drift: DriftSink | None = None,
        inference_workers: int = 1,  # per model: concurrent session.run calls
    ) -> None:
        self.line, self.prefix = topic_segment(line), prefix.strip("/")
        self.routes, self.outbox, self.review, self.metrics = routes, outbox, review, metrics
        self.drift: DriftSink = drift or NullDrift()
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._pool = ThreadPoolExecutor(preprocess_threads, thread_name_prefix="preprocess")
        self._handoff: queue.Queue[Outcome | None] = queue.Queue(maxsize=publish_queue)
        self._stop = threading.Event()
        self._stopped_at: float | None = None
        self._on_verdict = on_verdict or (lambda payload: None)
        self._sequences: dict[str, int] = {}
        self._turns = {name: Turns() for name in routes}
        self._workers = [
            threading.Thread(
                target=self._infer_loop, args=(name,), name=f"infer-{name}-{i}", daemon=True
            )
            for name in routes
            for i in range(max(1, inference_workers))
        ]
        self._publisher = threading.Thread(target=self._publish_loop, name="publisher", daemon=True)
        self.last_verdict: dict[str, dict[str, Any]] = {}  # per camera, for health and the UI
        # Per camera: the last judged frame and its result, for the operator page's live view.
        self.last_frame: dict[str, tuple[Frame, Result | None]] = {}

    def topic(self, camera: str, kind: str) -> str:
        return f"{self.prefix}/{self.line}/{topic_segment(camera)}/{kind}"

    def start(self) -> None:
        self._publisher.start()
        for w in self._workers:
            w.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Drain: infer what is buffered, publish every result, then stop (cameras stop first)."""
        self._stopped_at = time.monotonic()
        self._stop.set()
        for route in self.routes.values():
            route.ready.set()
        for w in self._workers:
            w.join(timeout)
        self._handoff.put(None)
        self._publisher.join(timeout)
        self._pool.shutdown(wait=True)

    # -- inference stage
    def _collect(self, buffers: Sequence[FrameBuffer], model_limit: int | None) -> list[Frame]:
        """Up to max_batch frames (fewer when one run of the model takes fewer), one per camera
        per pass. Waits at most max_wait for more once it has one (0 by default: greedy
        batching, frames that queued during the last run)."""
        limit = min(self.max_batch, model_limit or self.max_batch)
        frames: list[Frame] = []
        deadline: float | None = None
        while len(frames) < limit:
            got = False
            for b in buffers:
                frame = b.get_nowait()
                if frame is not None:
                    frames.append(frame)
                    got = True
                    if len(frames) >= limit:
                        break
            if got:
                continue
            if not frames:
                break
            deadline = deadline or time.monotonic() + self.max_wait_s
            if time.monotonic() >= deadline:
                break
            time.sleep(0.0005)
        return frames

    def _infer_loop(self, name: str) -> None:
        route, turns = self.routes[name], self._turns[name]
        slot, buffers, ready = route.slot, route.buffers, route.ready
        while True:
            with turns.collecting:
                frames = self._collect(buffers, slot.model.max_batch)
                ticket = turns.take() if frames else -1
            if not frames:
                if self._stop.is_set():
                    return
                ready.wait(0.1)
                ready.clear()
                continue
            model = slot.model  # one model for the whole batch, even during a hot swap
            outcomes: list[Outcome] = []
            try:
                outcomes = self._infer(model, frames)
            finally:  # the ticket is handed in even if this batch failed, or the others wait
                turns.hand_over(ticket, outcomes, self._handoff.put)

    def _infer(self, model: Model, frames: list[Frame]) -> list[Outcome]:
        t0 = time.perf_counter()
        prepared: list[Any] = []
        if len(frames) == 1:  # a lone frame: a pool hop would only add latency
            items: Any = [_safe(model.preprocess, frames[0].image)]
        else:
            items = self._pool.map(lambda f: _safe(model.preprocess, f.image), frames)
        for frame, item in zip(frames, items, strict=True):
            if isinstance(item, Exception):
                self._error("preprocess", frame, item)
            prepared.append(item)
        good = [i for i, p in enumerate(prepared) if not isinstance(p, Exception)]
        outcomes: dict[int, Outcome] = {
            i: Outcome(frames[i], None, f"preprocessing failed: {prepared[i]}", time.monotonic())
            for i in range(len(frames)) if i not in good
        }  # fmt: skip
        if good:
            t1 = time.perf_counter()
            pre_each = (t1 - t0) / len(frames)
            try:
                outputs = model.run_each([prepared[i][0] for i in good])
            except Exception as exc:
                for i in good:
                    self._error("infer", frames[i], exc)
                    outcomes[i] = Outcome(
                        frames[i], None, f"inference failed: {exc}", time.monotonic()
                    )
            else:
                infer = time.perf_counter() - t1
                self.metrics.inference_duration.labels(model.spec.name).observe(infer)
                self.metrics.batch_size.labels(model.spec.name).observe(len(good))
                for k, i in enumerate(good):
                    try:
                        result = model.finish(
                            outputs[k], prepared[i][1], StageTimes(0.0, pre_each, infer), len(good)
                        )
                        outcomes[i] = Outcome(frames[i], result, None, time.monotonic())
                    except Exception as exc:
                        self._error("postprocess", frames[i], exc)
                        outcomes[i] = Outcome(
                            frames[i], None, f"postprocessing failed: {exc}", time.monotonic()
                        )
        return [outcomes[i] for i in range(len(frames))]

    def _error(self, stage: str, frame: Frame, exc: BaseException) -> None:
        log.error("camera %s frame %d: %s failed: %s", frame.camera, frame.frame_id, stage, exc)
        self.metrics.pipeline_errors.labels(stage).inc()

    # -- publishing stage
    def _next_sequence(self, camera: str) -> int:
        if camera not in self._sequences:
            self._sequences[camera] = self.outbox.next_sequence(camera) - 1 if self.outbox else 0
        self._sequences[camera] += 1
        return self._sequences[camera]

    def publish_outcome(self, outcome: Outcome) -> dict[str, Any]:
        camera = outcome.frame.camera
        seq = self._next_sequence(camera)
        payload = verdict_payload(self.line, outcome, seq)
        if self.outbox is not None:
            data = json.dumps(payload, separators=(",", ":")).encode()
            self._spool(outcome.frame, camera, seq, data)
        m = self.metrics
        m.verdicts.labels(camera, payload["verdict"]).inc()
        m.frame_to_verdict.labels(camera).observe(
            max(0.0, outcome.done_mono - outcome.frame.captured_mono)
        )
        if outcome.result is not None:
            m.observe(outcome.result)
            try:  # the review queue decides what it keeps (uncertain, sampled, budget)
                self.review.offer(outcome.frame, outcome.result, seq)
            except Exception as exc:
                self._error("review", outcome.frame, exc)
            self.drift.offer(outcome.frame, outcome.result)  # non-blocking: a worker bins it
        self.last_verdict[camera] = payload
        if outcome.frame.frame_id or outcome.result is not None:  # not a frameless error
            self.last_frame[camera] = (outcome.frame, outcome.result)
        self._on_verdict(payload)
        return payload

    def _spool(self, frame: Frame, camera: str, seq: int, data: bytes) -> None:
        """Write the verdict to the outbox; on a full disk keep it and retry every second.

        Every failed attempt is counted; the log says so once, then every 30 s. Only when the
        line is stopping and the disk is still full after `STOP_GRACE_S` is a verdict given up,
        and then its whole payload goes to the log so it can still be recovered."""
        assert self.outbox is not None
        attempts = 0
        while True:
            try:
                self.outbox.append(
                    self.topic(camera, "verdict"), data, qos=1, sequence=(camera, seq)
                )
                if attempts:
                    log.warning("camera %s frame %d: outbox writable again after %d attempts",
                                camera, frame.frame_id, attempts)  # fmt: skip
                return
            except OutboxFullError as exc:
                self.metrics.pipeline_errors.labels("outbox").inc()
                if attempts % 30 == 0:
                    log.error("camera %s frame %d: outbox failed (retrying every second): %s",
                              camera, frame.frame_id, exc)  # fmt: skip
                attempts += 1
                stopping = self._stopped_at is not None
                if stopping and time.monotonic() - (self._stopped_at or 0) > STOP_GRACE_S:
                    log.error("stopping with the outbox unwritable: verdict %s/%d not stored, "
                              "payload: %s", camera, seq, data.decode())  # fmt: skip
                    return
                time.sleep(1.0)

    def _publish_loop(self) -> None:
        while True:
            item = self._handoff.get()
            if item is None:
                return
            try:
                self.publish_outcome(item)
            except Exception as exc:  # never let one verdict kill the publisher
                self._error("publish", item.frame, exc)

    def publish_error(self, camera: str, part_id: str | None, reason: str) -> None:
        """A verdict without a frame (trigger timed out, camera down): the PLC still gets one."""
        now_m, now_w = time.monotonic(), time.time()
        frame = Frame(camera, 0, np.zeros((1, 1, 3), np.uint8), now_m, now_w, part_id)
        self._handoff.put(Outcome(frame, None, reason, now_m))


FEED_SIZE = 200


class VerdictFeed:
    """The last verdicts across cameras, newest first, bounded (the operator page's feed).

    `add` is the line's `on_verdict` callback: it runs on the publisher thread for every
    verdict, so it only appends a small summary to a bounded deque."""

    def __init__(self, size: int = FEED_SIZE) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, payload: dict[str, Any]) -> None:
        summary = _summary(payload)
        with self._lock:
            self._items.appendleft(summary)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items)[:limit]


def _summary(payload: dict[str, Any]) -> dict[str, Any]:
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


def _safe(fn: Callable[[Any], Any], arg: Any) -> Any:
    try:
        return fn(arg)
    except Exception as exc:
        return exc

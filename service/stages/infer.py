"""The infer stage: camera buffers -> batches across cameras -> the batch runner -> the publish
stage.

A model's inference workers (one per core on a CPU: `runtime.parallel_runs`) each pull frames
from every camera that uses it (round robin, up to `max_batch`), preprocess them in a small pool
and judge them with one `run_batch` (inference, the family's postprocessing, the decision). They
hand their results over in the order the batches were taken, so each camera's verdicts keep
their frame order. The handoff blocks rather than drops: once a frame is inferred its verdict is
never thrown away.

A frame that fails anywhere still gets a verdict (UNCERTAIN, `error` set), logged with its
camera and frame id and counted in `lineinspect_pipeline_errors_total{stage}`: a PLC waiting
for a part must get an answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from service.core.types import Frame, Judged, Result, StageTimes
from service.inference.model import Model
from service.inference.runner import run_batch
from service.inference.triton import ServerUnavailableError
from service.metrics import Metrics
from service.stages.buffer import FrameBuffer

log = logging.getLogger(__name__)
_WHAT = {"preprocess": "preprocessing", "infer": "inference", "postprocess": "postprocessing"}


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
        self._handed = threading.Condition(self._lock)
        self._issued = 0
        self._next = 0
        self._done: dict[int, list[Any]] = {}

    @property
    def issued(self) -> int:
        return self._issued

    def wait_handed_over(self, upto: int, timeout: float | None = None) -> bool:
        """Block until every ticket below `upto` has been handed over; False on timeout."""
        with self._handed:
            return self._handed.wait_for(lambda: self._next >= upto, timeout)

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
            self._handed.notify_all()


class InferStage:
    def __init__(
        self,
        routes: dict[str, Route],  # model name -> its slot, camera buffers and wake-up event
        handoff: Callable[[Judged], None],  # the publish stage's `put`
        metrics: Metrics,
        max_batch: int = 8,
        max_wait_s: float = 0.0,
        preprocess_threads: int = 2,
        workers: int = 1,  # per model: concurrent session.run calls
    ) -> None:
        self.routes, self.handoff, self.metrics = routes, handoff, metrics
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._pool = ThreadPoolExecutor(preprocess_threads, thread_name_prefix="preprocess")
        self._stop = threading.Event()
        self.recipe: str | None = None  # stamped on every judged frame (service.changeover)
        self._turns = {name: Turns() for name in routes}
        self._workers = [
            threading.Thread(target=self._loop, args=(name,), name=f"infer-{name}-{i}", daemon=True)
            for name in routes
            for i in range(max(1, workers))
        ]

    def start(self) -> None:
        for w in self._workers:
            w.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Infer what is buffered and hand it over, then stop (cameras stop first)."""
        self._stop.set()
        for route in self.routes.values():
            route.ready.set()
        for w in self._workers:
            w.join(timeout)
        self._pool.shutdown(wait=True)

    def move(self, buffer: FrameBuffer, to: str, timeout: float = 30.0) -> None:
        """Serve a camera's buffer by another model's route (a recipe change) without losing a
        frame or its order: the buffer leaves its route under that route's collecting lock, its
        frames already taken are handed over first, then the new route takes it."""
        target = self.routes[to]
        for name, route in self.routes.items():
            if buffer in route.buffers and name != to:
                turns = self._turns[name]
                with turns.collecting:
                    route.buffers.remove(buffer)
                    upto = turns.issued
                if not turns.wait_handed_over(upto, timeout):
                    with turns.collecting:  # keep it served where it was: order over speed
                        route.buffers.append(buffer)
                    raise TimeoutError(f"model {name} did not finish its batches in {timeout} s")
        with self._turns[to].collecting:
            if buffer not in target.buffers:
                target.buffers.append(buffer)
                buffer.rewire(target.ready)

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

    def _loop(self, name: str) -> None:
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
            judged: list[Judged] = []
            try:
                judged = self.judge(model, frames)
            finally:  # the ticket is handed in even if this batch failed, or the others wait
                turns.hand_over(ticket, judged, self.handoff)

    def judge(self, model: Model, frames: list[Frame]) -> list[Judged]:
        """Preprocess (in the pool), then one `run_batch`; every frame gets a result or an
        error."""
        t0 = time.perf_counter()
        if len(frames) == 1:  # a lone frame: a pool hop would only add latency
            items: Any = [_safe(model.preprocess, frames[0].image)]
        else:
            items = self._pool.map(lambda f: _safe(model.preprocess, f.image), frames)
        prepared: list[Any] = list(items)
        out: dict[int, Judged] = {}
        good: list[int] = []
        for i, (frame, item) in enumerate(zip(frames, prepared, strict=True)):
            if isinstance(item, Exception):
                out[i] = self._failed("preprocess", frame, item)
            else:
                good.append(i)
        if good:
            each = StageTimes(preprocess=(time.perf_counter() - t0) / len(frames))
            try:
                results: list[Result | Exception] = run_batch(
                    model, [prepared[i][0] for i in good], [prepared[i][1] for i in good],
                    [each] * len(good), self.metrics,
                )  # fmt: skip
            except Exception as exc:
                results = [exc] * len(good)
                stage = "infer"
                if isinstance(exc, ServerUnavailableError):
                    self.metrics.inference_server_errors.labels(model.spec.name).inc(len(good))
            else:
                stage = "postprocess"
            for i, result in zip(good, results, strict=True):
                if isinstance(result, Exception):
                    out[i] = self._failed(stage, frames[i], result)
                else:
                    out[i] = Judged(frames[i], result, None, time.monotonic(), recipe=self.recipe)
        return [out[i] for i in range(len(frames))]

    def _failed(self, stage: str, frame: Frame, exc: BaseException) -> Judged:
        log.error("camera %s frame %d: %s failed: %s", frame.camera, frame.frame_id, stage, exc)
        self.metrics.pipeline_errors.labels(stage).inc()
        # A verdict whose reason starts "inference server unavailable" says why on its own.
        remote = isinstance(exc, ServerUnavailableError)
        why = str(exc) if remote else f"{_WHAT[stage]} failed: {exc}"
        return Judged(frame, None, why, time.monotonic(), recipe=self.recipe)


def _safe(fn: Callable[[Any], Any], arg: Any) -> Any:
    try:
        return fn(arg)
    except Exception as exc:
        return exc

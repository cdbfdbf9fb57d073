"""HTTP micro-batching: concurrent requests for one model share a `session.run` (through the
same batch runner as the line, `service.inference.runner`).

A worker thread takes the first waiting job and waits up to `max_wait` for more, but only while
more requests are known to be on their way (announced, still decoding). A lone request therefore
never waits, and a burst of 16 clients is served in a few batches. A model has `workers` such
threads (`runtime.parallel_runs`), so on a CPU several batches run at once, one per core.

The queue is bounded; when it is full the newest request is refused (policy `reject_newest`)
and the caller answers 503, counted in `lineinspect_rejected_inputs_total{reason="overloaded"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from service.core.types import Result, StageTimes
from service.inference.model import Model
from service.inference.preprocess import Geometry
from service.inference.runner import run_batch
from service.metrics import Metrics

log = logging.getLogger(__name__)


class OverloadedError(RuntimeError):
    """The batch queue is full."""


@dataclass
class _Job:
    tensor: np.ndarray
    geometry: Geometry
    times: StageTimes
    future: Future[Result]
    model: Model  # the model whose preprocessing made `tensor` (hot reload may swap self.model)


class MicroBatcher:
    def __init__(
        self,
        model: Model,
        metrics: Metrics,
        max_size: int = 8,
        max_wait_s: float = 0.002,
        queue_size: int = 256,
        workers: int = 1,
    ) -> None:
        self.model = model
        self.metrics = metrics
        limit = model.max_batch
        self.max_size = max_size if limit is None else min(max_size, limit)
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        # HTTP admission: requests between decoding and their result each hold a decoded image
        # and a tensor (~8 MB for a 720p JPEG and a 640-px model); two batches' worth keep the
        # model busy, the rest wait holding only their body. Without it a 640-px model peaked
        # at 1.1 GB RSS at 64 clients (docs/BENCHMARKS.md, issue 6).
        self.admission_limit = max(4, 2 * self.max_size)
        self._admission: asyncio.Semaphore | None = None
        self._admission_loop: asyncio.AbstractEventLoop | None = None
        self._admission_waiting = 0
        self._arriving = 0
        self._lock = threading.Lock()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"batcher-{model.spec.name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, finish the ones already queued, then stop the workers."""
        with self._lock:
            self._stopping = True
        for _ in self._threads:  # wake-ups; a worker leaves once the queue is empty
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        return not self._stopping and any(t.is_alive() for t in self._threads)

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Hold one of `admission_limit` places from decoding until the result is back; raises
        OverloadedError when as many requests as the queue holds are already waiting."""
        loop = asyncio.get_running_loop()
        if self._admission is None or self._admission_loop is not loop:  # bound to its loop
            self._admission = asyncio.Semaphore(self.admission_limit)
            self._admission_loop = loop
        admission = self._admission
        if self._admission_waiting >= self._queue.maxsize:
            raise OverloadedError(f"{self._queue.maxsize} requests already waiting")
        self._admission_waiting += 1
        try:
            await admission.acquire()
        finally:
            self._admission_waiting -= 1
        try:
            yield
        finally:
            admission.release()

    def announce(self) -> None:
        """A request has started decoding and will submit soon: worth waiting for."""
        with self._lock:
            self._arriving += 1

    def withdraw(self) -> None:
        """An announced request will not submit (bad input)."""
        with self._lock:
            self._arriving -= 1

    def submit(
        self, tensor: np.ndarray, geometry: Geometry, times: StageTimes, model: Model | None = None
    ) -> Future[Result]:
        future: Future[Result] = Future()
        job = _Job(tensor, geometry, times, future, model or self.model)
        with self._lock:  # one lock with stop(): every job queued before it is answered
            self._arriving -= 1
            if self._stopping or not any(t.is_alive() for t in self._threads):
                raise OverloadedError("the batcher is stopped")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise OverloadedError(f"{self._queue.maxsize} requests already waiting") from None
        return future

    def _collect(self, first: _Job) -> list[_Job]:
        jobs = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(jobs) < self.max_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._arriving <= 0:
                    break
                try:
                    job = self._queue.get(timeout=min(remaining, 0.0005))
                except queue.Empty:
                    continue
            if job is None:  # a stop wake-up: run what we have
                break
            jobs.append(job)
        return jobs

    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stopping:  # stopping and nothing left: every queued job was answered
                    return
                continue
            if first is not None:
                self._run(self._collect(first))

    def _run(self, jobs: list[_Job]) -> None:
        # Jobs preprocessed for different models (a hot reload in between) run separately.
        groups: dict[int, list[_Job]] = {}
        for j in jobs:
            groups.setdefault(id(j.model), []).append(j)
        for group in groups.values():
            self._run_group(group[0].model, group)

    def _run_group(self, model: Model, jobs: list[_Job]) -> None:
        try:
            results = run_batch(
                model, [j.tensor for j in jobs], [j.geometry for j in jobs],
                [j.times for j in jobs], self.metrics,
            )  # fmt: skip
        except Exception as exc:
            log.exception(
                "model %s: inference failed for a batch of %d", model.spec.name, len(jobs)
            )
            for j in jobs:
                j.future.set_exception(exc)
            return
        for j, result in zip(jobs, results, strict=True):
            if isinstance(result, Exception):
                log.error("model %s: postprocessing failed: %s", model.spec.name, result)
                j.future.set_exception(result)
            else:
                j.future.set_result(result)

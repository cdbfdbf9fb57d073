"""The candidate sink: a second model judges the frames the live model judged, off the PLC path.

The publish stage hands every judged frame to this sink after the outbox has made its verdict
durable. For a live model with a candidate, the frame and the live result go into the
candidate's bounded queue; when it is full the candidate skips the frame and counts it
(`lineinspect_candidate_frames_dropped_total`): the publisher never waits for a candidate. The
candidate's own worker thread, at the lowest CPU priority (`shadow.idle`: SCHED_IDLE; or
`shadow.nice`), judges each frame,
compares the two verdicts (`service.comparison`), updates the metrics and the report, and offers
the frames they disagree on to the review queue (reason `candidate_disagrees`, within its
budget). Nothing the candidate says is ever published as a verdict.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from service.comparison import FLIPS, Tally, compare, summary
from service.core.types import Frame, Judged, Result
from service.inference.model import Model
from service.metrics import Metrics
from service.sinks import work_off

log = logging.getLogger(__name__)


class ReviewPort(Protocol):
    """Where disagreeing frames go (service.sinks.review.ReviewSink.offer)."""

    def offer(self, frame: Frame, result: Result, sequence: int, candidate: Result) -> bool: ...


@dataclass(frozen=True)
class Origin:
    """Where a candidate came from, for its report and the model history."""

    source: str  # the ONNX file it was loaded from
    card: str | None  # the card file it was loaded with, if any
    by: str  # "config", "api" or a token id
    loaded_at: float


def lower_priority(idle: bool, nice: int) -> None:
    """Lower the calling thread's CPU priority (Linux applies both to this thread only):
    SCHED_IDLE (it runs on CPU time nothing else wants), else `nice` steps lower. Elsewhere, or
    where the kernel refuses, it stays as it is (logged)."""
    tid = threading.get_native_id()
    try:
        if idle:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(
                os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice)
            )
    except (OSError, AttributeError) as exc:
        log.warning("candidate worker keeps its CPU priority: %s", exc)


@dataclass(frozen=True)
class _Item:
    frame: Frame
    live: Result
    sequence: int


class Candidate:
    """One candidate beside one live model: its model, its bounded queue and its worker."""

    def __init__(
        self,
        live: str,  # the live model's name: the `model` label of every candidate series
        model: Model,
        origin: Origin,
        metrics: Metrics,
        cameras: Sequence[str],  # the cameras of the live model: their series start at 0
        classes: Sequence[str],  # the classes both models know: their score shifts are compared
        review: Callable[[], ReviewPort | None] = lambda: None,  # the review sink, once it runs
        queue_size: int = 16,
        nice: int = 10,
        idle: bool = True,
    ) -> None:
        self.live, self.model, self.origin, self.metrics = live, model, origin, metrics
        self.classes, self.review, self.nice, self.idle = tuple(classes), review, nice, idle
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_size)
        self._tallies: dict[str, Tally] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"candidate-{live}", daemon=True)
        for camera in cameras:
            self._tally(camera)

    # -- lifecycle
    def start(self) -> None:
        s = self.model.spec
        self.metrics.candidate_info.labels(self.live, s.version, s.sha256).set(1)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop judging: frames still queued are let go, the frame in hand is finished."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        s, m = self.model.spec, self.metrics
        with contextlib.suppress(KeyError):
            m.candidate_info.remove(self.live, s.version, s.sha256)
        for camera in list(self._tallies):  # the gauges describe this candidate only
            with contextlib.suppress(KeyError):
                m.candidate_agreement.remove(self.live, camera)
            for name in self.classes:
                with contextlib.suppress(KeyError):
                    m.candidate_score_shift_mean.remove(self.live, camera, name)

    # -- the publisher's side: never blocks
    def offer(self, judged: Judged) -> None:
        assert judged.result is not None
        try:
            self._queue.put_nowait(_Item(judged.frame, judged.result, judged.sequence))
        except queue.Full:
            self.metrics.candidate_dropped.labels(self.live, judged.camera).inc()
            with self._lock:
                self._tally(judged.camera).dropped += 1

    # -- the worker's side
    def _run(self) -> None:
        lower_priority(self.idle, self.nice)
        work_off(
            self._queue, lambda item: self.judge(item.frame, item.live, item.sequence),
            lambda item: item.frame, f"candidate for {self.live}",
        )  # fmt: skip

    def judge(self, frame: Frame, live: Result, sequence: int) -> None:
        """Judge one frame with the candidate and count how it compares with the live result."""
        camera, m = frame.camera, self.metrics
        t0 = time.perf_counter()
        try:
            result = self.model.predict([frame.image])[0]
        except Exception as exc:
            log.warning("candidate for %s: camera %s frame %d: %s",
                        self.live, camera, frame.frame_id, exc)  # fmt: skip
            m.candidate_errors.labels(self.live, camera).inc()
            with self._lock:
                self._tally(camera).errors += 1
            return
        spent = time.perf_counter() - t0
        c = compare(live, result, self.classes)
        with self._lock:
            tally = self._tally(camera)
            tally.add(c, live.times.total, spent)
            agreement = tally.agreement
            means = {name: tally.shift_sum[name] / tally.compared for name in c.shifts}
        m.candidate_frames.labels(self.live, camera).inc()
        m.candidate_duration.labels(self.live, camera).observe(spent)
        if agreement is not None:
            m.candidate_agreement.labels(self.live, camera).set(agreement)
        for name, shift in c.shifts.items():
            m.candidate_score_shift.labels(self.live, camera, name).observe(shift)
            m.candidate_score_shift_mean.labels(self.live, camera, name).set(means[name])
        if c.agree:
            return
        m.candidate_flips.labels(self.live, camera, c.live, c.candidate).inc()
        review = self.review()
        if review is not None and review.offer(frame, live, sequence, result):
            with self._lock:
                tally.kept += 1

    def _tally(self, camera: str) -> Tally:
        """The camera's tally, its series created at 0 on first sight (call with the lock held,
        or from __init__)."""
        tally = self._tallies.get(camera)
        if tally is None:
            tally = self._tallies[camera] = Tally()
            m = self.metrics
            m.candidate_frames.labels(self.live, camera)
            m.candidate_dropped.labels(self.live, camera)
            m.candidate_errors.labels(self.live, camera)
            for live, cand in FLIPS:
                m.candidate_flips.labels(self.live, camera, live, cand)
        return tally

    def report(self) -> dict[str, Any]:
        s, o = self.model.spec, self.origin
        with self._lock:
            cameras = {name: t.report() for name, t in sorted(self._tallies.items())}
            totals = summary(self._tallies)
        return {
            "model": self.live,
            "candidate": {
                "name": s.name,
                "version": s.version,
                "sha256": s.sha256,
                "task": s.task,
                "classes": list(s.classes),
                "source": o.source,
                "card": o.card,
                "loaded_by": o.by,
                "loaded_at": o.loaded_at,
                "queue": {"size": self._queue.maxsize, "waiting": self._queue.qsize()},
            },
            "compared_classes": list(self.classes),
            "totals": totals,
            "cameras": cameras,
        }


class CandidateSink:
    """The publish stage's sink: each judged frame goes to its live model's candidate, if any."""

    name = "candidate"

    def __init__(self) -> None:
        self._by_model: dict[str, Candidate] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> Candidate | None:
        return self._by_model.get(model)

    def attach(self, candidate: Candidate) -> Candidate | None:
        """Start `candidate` beside its live model; returns (stopped) the one it replaces."""
        old = self.detach(candidate.live)
        candidate.start()
        with self._lock:
            self._by_model[candidate.live] = candidate
        return old

    def detach(self, model: str) -> Candidate | None:
        """Stop and remove the model's candidate; None when it has none."""
        with self._lock:
            candidate = self._by_model.pop(model, None)
        if candidate is not None:
            candidate.stop()
        return candidate

    def handle(self, judged: Judged) -> None:
        result = judged.result
        if result is None:  # a frame that failed on the live model: nothing to compare
            return
        candidate = self._by_model.get(result.model.name)
        if candidate is not None:
            candidate.offer(judged)

    def close(self) -> None:
        with self._lock:
            candidates = list(self._by_model.values())
            self._by_model.clear()
        for candidate in candidates:
            candidate.stop()

"""The review sink (active learning): frames the model was unsure about, plus an optional random
sample, are kept on disk with their predictions and announced on
`<prefix>/<line>/<camera>/review`, within a per-camera hourly budget so a bad shift cannot fill
the disk.

Choosing a frame is cheap and happens on the publisher thread; encoding and writing the JPEG
happens on the sink's own writer thread behind a bounded queue, so a slow disk never delays a
verdict. A frame the queue has no room for is dropped and counted
(`lineinspect_review_dropped_total{reason="queue_full"}`), as are frames over the budget and
frames the disk refused. The items' layout and the labelling/export code are in
`service.review_store`.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2

from service.core.types import Frame, Judged, Result, Verdict
from service.core.wire import review_record
from service.metrics import Metrics
from service.sinks import work_off

log = logging.getLogger(__name__)


class Announcer(Protocol):
    def announce(self, camera: str, kind: str, payload: dict[str, Any]) -> None: ...


class HourlyBudget:
    """At most `limit` items per camera in any sliding hour."""

    def __init__(
        self, limit: int, window_s: float = 3600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._stamps: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, camera: str) -> bool:
        now = self.clock()
        with self._lock:
            stamps = self._stamps.setdefault(camera, deque())
            while stamps and now - stamps[0] >= self.window_s:
                stamps.popleft()
            if len(stamps) >= self.limit:
                return False
            stamps.append(now)
            return True


@dataclass(frozen=True)
class _Item:
    frame: Frame
    result: Result
    sequence: int
    reason: str  # uncertain | sample | candidate_disagrees
    candidate: Result | None = None  # a candidate's judgement that disagreed with `result`


class ReviewSink:
    name = "review"

    def __init__(
        self,
        root: Path,
        announcer: Announcer,
        metrics: Metrics,
        sample_rate: float = 0.0,
        budget_per_hour: int = 120,
        queue_size: int = 16,  # each item holds a frame: keep memory bounded
        seed: int | None = None,
    ) -> None:
        self.root, self.announcer, self.metrics = root, announcer, metrics
        self.sample_rate = sample_rate
        self.budget = HourlyBudget(budget_per_hour)
        self._rng = random.Random(seed)
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_size)
        root.mkdir(parents=True, exist_ok=True)
        self._writer = threading.Thread(target=self._run, name="review-writer", daemon=True)
        self._writer.start()

    def handle(self, judged: Judged) -> None:
        result, frame = judged.result, judged.frame
        if result is None:
            return
        uncertain = result.decision.verdict is Verdict.UNCERTAIN
        if not uncertain and not (self.sample_rate and self._rng.random() < self.sample_rate):
            return
        self._enqueue(_Item(frame, result, judged.sequence, "uncertain" if uncertain else "sample"))

    def offer(self, frame: Frame, result: Result, sequence: int, candidate: Result) -> bool:
        """Keep a frame on which a candidate model disagreed with the live one (reason
        `candidate_disagrees`), within the same budget; False when it was not taken. Called from
        the candidate's worker, never the publisher."""
        return self._enqueue(_Item(frame, result, sequence, "candidate_disagrees", candidate))

    def _enqueue(self, item: _Item) -> bool:
        camera = item.frame.camera
        if not self.budget.allow(camera):
            self.metrics.review_dropped.labels(camera, "budget").inc()
            return False
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            log.warning("camera %s frame %d: review writer behind, frame not kept",
                        camera, item.frame.frame_id)  # fmt: skip
            self.metrics.review_dropped.labels(camera, "queue_full").inc()
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer."""
        self._queue.put(None)
        self._writer.join(timeout)

    def depth(self) -> int:
        return sum(1 for _ in self.root.glob("*/*/*.json"))

    def _run(self) -> None:
        work_off(self._queue, self._write, lambda item: item.frame, "review item", self._lost)

    def _lost(self, item: _Item) -> None:
        self.metrics.review_dropped.labels(item.frame.camera, "disk").inc()

    def _write(self, item: _Item) -> None:
        frame = item.frame
        day = time.strftime("%Y-%m-%d", time.gmtime(frame.captured_wall))
        item_id = f"{int(frame.captured_wall * 1000)}-{item.sequence}"
        folder = self.root / frame.camera / day
        try:
            folder.mkdir(parents=True, exist_ok=True)
            record = review_record(
                frame, item.result, item.sequence, item_id, item.reason,
                f"{frame.camera}/{day}/{item_id}.jpg", item.candidate,
            )  # fmt: skip
            kept = folder / f"{item_id}.json"
            if item.candidate is not None and kept.is_file():
                # the frame is already kept (it was uncertain): add the candidate's judgement
                record = json.loads(kept.read_text()) | {"candidate": record["candidate"]}
            elif not cv2.imwrite(
                str(folder / f"{item_id}.jpg"), frame.image, [cv2.IMWRITE_JPEG_QUALITY, 95]
            ):
                raise OSError("the JPEG could not be written")
            tmp = folder / f"{item_id}.json.tmp"
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(folder / f"{item_id}.json")  # atomic: readers never see half a record
        except OSError as exc:
            log.error(
                "camera %s frame %d: review item not stored: %s", frame.camera, frame.frame_id, exc
            )
            self._lost(item)
            return
        self.metrics.review_enqueued.labels(frame.camera, item.reason).inc()
        announced = {k: v for k, v in record.items() if k != "findings"}
        if "candidate" in announced:
            announced["candidate"] = {
                k: v for k, v in announced["candidate"].items() if k != "findings"
            }
        self.announcer.announce(frame.camera, "review", announced)

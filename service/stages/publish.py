"""The publish stage: one publisher thread takes judged frames in order, stamps each camera's
sequence number, serialises the verdict once (`service.core.wire`) and hands the result to every
sink in turn (`service.sinks`: the outbox first, then review, drift, metrics, the live view).

The handoff queue is bounded (each item holds its frame) and blocks rather than drops. A sink
that raises is logged and counted in `lineinspect_pipeline_errors_total{stage=<sink>}`; it never
stops the publisher or the sinks after it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from service.core.types import Frame, Judged
from service.core.wire import topic_segment, verdict_payload
from service.metrics import Metrics
from service.sinks import Sink

log = logging.getLogger(__name__)


class PublishStage:
    def __init__(
        self,
        line: str,
        sinks: Sequence[Sink],
        metrics: Metrics,
        first_sequence: Callable[[str], int] = lambda camera: 1,  # the outbox's, when durable
        queue_size: int = 32,
    ) -> None:
        self.line, self.sinks, self.metrics = topic_segment(line), list(sinks), metrics
        self._first_sequence = first_sequence
        self._sequences: dict[str, int] = {}
        self._handoff: queue.Queue[Judged | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._loop, name="publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Publish everything handed over so far, then stop (the infer stage stops first)."""
        self._handoff.put(None)
        self._thread.join(timeout)

    def put(self, judged: Judged) -> None:
        """Hand over one judged frame; blocks while the queue is full (backpressure)."""
        self._handoff.put(judged)

    def error(self, camera: str, part_id: str | None, reason: str) -> None:
        """A verdict without a frame (trigger timed out, camera down): the PLC still gets one."""
        now_m, now_w = time.monotonic(), time.time()
        frame = Frame(camera, 0, np.zeros((1, 1, 3), np.uint8), now_m, now_w, part_id)
        self.put(Judged(frame, None, reason, now_m))

    def trigger_timeout(self, camera: str, part_id: str) -> None:
        self.error(camera, part_id, f"no frame from camera {camera} within the trigger timeout")

    def publish(self, judged: Judged) -> Judged:
        """Sequence, serialise and hand to every sink (the publisher thread's work per frame)."""
        camera = judged.camera
        if camera not in self._sequences:
            self._sequences[camera] = self._first_sequence(camera) - 1
        self._sequences[camera] += 1
        seq = self._sequences[camera]
        payload = verdict_payload(
            self.line, judged.frame, judged.result, judged.error, seq, judged.done_mono,
            judged.recipe,
        )  # fmt: skip
        judged = replace(judged, sequence=seq, payload=payload)
        for sink in self.sinks:  # the outbox first: nothing else may run before it is durable
            try:
                sink.handle(judged)
            except Exception as exc:  # one sink's failure never costs the others the verdict
                log.error("camera %s frame %d: %s sink failed: %s",
                          camera, judged.frame.frame_id, sink.name, exc)  # fmt: skip
                self.metrics.pipeline_errors.labels(sink.name).inc()
        return judged

    def _loop(self) -> None:
        while True:
            item = self._handoff.get()
            if item is None:
                return
            try:
                self.publish(item)
            except Exception as exc:  # never let one verdict kill the publisher
                log.error("camera %s frame %d: publish failed: %s",
                          item.camera, item.frame.frame_id, exc)  # fmt: skip
                self.metrics.pipeline_errors.labels("publish").inc()

"""Sinks: where a judged frame goes after the publish stage (`service.stages.publish`).

Each sink is one module: `verdicts` (the durable outbox that `mqtt` drains to the broker),
`review` (the active-learning queue), `drift`, `metrics` and `live` (the operator page's view).
They share one protocol, `Sink`, and a null variant for a sink that is switched off.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from typing import Protocol, TypeVar

from service.core.types import Frame, Judged

log = logging.getLogger(__name__)
T = TypeVar("T")


class Sink(Protocol):
    name: str  # in logs and in lineinspect_pipeline_errors_total{stage}

    def handle(self, judged: Judged) -> None:
        """Called on the publisher thread for every judged frame, in per-camera order; only the
        verdict sink may block (it must not lose a verdict), every other sink hands heavy work
        to a bounded worker of its own and counts what it drops."""
        ...

    def close(self) -> None:
        """Finish or drop what is queued (counted) and stop; called after the last `handle`."""
        ...


class NullSink:
    """A sink that is switched off."""

    name = "null"

    def handle(self, judged: Judged) -> None:
        pass

    def close(self) -> None:
        pass


def work_off(
    items: queue.Queue[T | None],
    handle: Callable[[T], None],
    frame_of: Callable[[T], Frame],
    what: str,
    on_error: Callable[[T], None] | None = None,
) -> None:
    """A sink worker's loop: handle each queued item until the stop sentinel (None). An item
    that fails is logged with its camera and frame id (and `on_error` counts it); the worker
    outlives it, so one bad frame never stops a sink."""
    while (item := items.get()) is not None:
        try:
            handle(item)
        except Exception:
            frame = frame_of(item)
            log.exception("camera %s frame %d: %s failed", frame.camera, frame.frame_id, what)
            if on_error is not None:
                on_error(item)

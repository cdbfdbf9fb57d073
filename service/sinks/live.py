"""The live view: per camera the last verdict and the last judged frame, and a bounded feed of
the latest verdicts across cameras (the operator page and `GET /v1/cameras` read it)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from service.core.types import Frame, Judged, Result
from service.core.wire import verdict_summary

FEED_SIZE = 200


class LiveView:
    name = "live"

    def __init__(self, feed_size: int = FEED_SIZE) -> None:
        self._feed: deque[dict[str, Any]] = deque(maxlen=feed_size)
        self._verdicts: dict[str, dict[str, Any]] = {}
        self._frames: dict[str, tuple[Frame, Result | None]] = {}
        self._lock = threading.Lock()

    def handle(self, judged: Judged) -> None:
        summary = verdict_summary(judged.payload)
        with self._lock:
            self._verdicts[judged.camera] = judged.payload
            if judged.frame.frame_id or judged.result is not None:  # not a frameless error
                self._frames[judged.camera] = (judged.frame, judged.result)
            self._feed.appendleft(summary)

    def close(self) -> None:
        pass

    def last_verdict(self, camera: str) -> dict[str, Any] | None:
        with self._lock:
            return self._verdicts.get(camera)

    def last_frame(self, camera: str) -> tuple[Frame, Result | None] | None:
        with self._lock:
            return self._frames.get(camera)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The latest verdicts across cameras, newest first."""
        with self._lock:
            return list(self._feed)[:limit]

"""The bounded buffer between a camera (capture) and the infer stage.

Capture never blocks on inference unless asked to: each camera owns a `FrameBuffer` with a named
policy for when it is full, and every frame it refuses is counted with its reason.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum

from service.core.types import Frame


class BufferPolicy(StrEnum):
    DROP_OLDEST = "drop_oldest"  # live view: always judge the newest frame
    DROP_NEWEST = "drop_newest"  # keep what is queued, refuse the new frame
    BLOCK = "block"  # never drop: capture waits (files, folders, triggered parts)


DropCounter = Callable[[str, str], None]  # (camera, reason)


class FrameBuffer:
    """A bounded, thread-safe queue of frames for one camera."""

    def __init__(
        self,
        camera: str,
        size: int,
        policy: BufferPolicy,
        on_drop: DropCounter | None = None,
        ready: threading.Event | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("buffer size must be at least 1")
        self.camera = camera
        self.size = size
        self.policy = policy
        self._frames: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._on_drop = on_drop or (lambda camera, reason: None)
        self._closed = False
        self._ready = ready  # shared by all cameras: wakes the inference stage

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)

    def put(self, frame: Frame, timeout: float | None = None) -> bool:
        """Queue a frame; False when it was dropped (counted) or the buffer closed."""
        with self._cond:
            if self._closed:
                return False
            if len(self._frames) >= self.size:
                if self.policy is BufferPolicy.DROP_OLDEST:
                    self._frames.popleft()
                    self._on_drop(self.camera, "buffer_full_oldest")
                elif self.policy is BufferPolicy.DROP_NEWEST:
                    self._on_drop(self.camera, "buffer_full_newest")
                    return False
                else:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while len(self._frames) >= self.size and not self._closed:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            self._on_drop(self.camera, "buffer_full_timeout")
                            return False
                        self._cond.wait(left)
                    if self._closed:
                        return False
            self._frames.append(frame)
            self._cond.notify_all()
        if self._ready is not None:
            self._ready.set()
        return True

    def rewire(self, ready: threading.Event) -> None:
        """Wake another infer route from now on (the camera changed model)."""
        self._ready = ready
        if len(self) and ready is not None:
            ready.set()

    def get_nowait(self) -> Frame | None:
        with self._cond:
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

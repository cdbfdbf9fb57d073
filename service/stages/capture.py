"""Capture: one thread per camera turns a source (RTSP/HTTP stream, USB device, video file,
image folder) into stamped frames in a bounded buffer.

A source that fails is reopened with capped exponential backoff, forever: a camera that went
away for an hour must come back on its own. A watchdog (`Camera.check_stall`) notices a source
that stopped delivering without failing. Reads have a timeout, so a dead stream cannot hang
the thread. In trigger mode the camera keeps only its newest frame and hands one frame per
part id to inference.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from service.core.types import Frame
from service.stages.buffer import FrameBuffer

log = logging.getLogger(__name__)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class SourceError(RuntimeError):
    """The source cannot be opened or read now; the camera will retry."""


class Source(Protocol):
    kind: str
    live: bool  # paced by the device itself (streams, USB), not by us

    def open(self) -> None: ...
    def read(self) -> np.ndarray | None: ...  # None: end of file / folder
    def close(self) -> None: ...
    def nominal_fps(self) -> float | None: ...


class OpenCvSource:
    """Streams, devices and video files through cv2.VideoCapture (FFmpeg where it applies)."""

    def __init__(self, target: str | int, kind: str, loop: bool, timeout_s: float) -> None:
        self.target, self.kind, self.loop = target, kind, loop
        self.live = kind in ("stream", "device")
        self.timeout_ms = int(timeout_s * 1000)
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        if self.kind == "file" and not Path(str(self.target)).is_file():
            raise SourceError(f"video file not found: {self.target}")
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            self.timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            self.timeout_ms,
        ]
        if isinstance(self.target, int):
            cap = cv2.VideoCapture(self.target, cv2.CAP_ANY, params)
        else:
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.kind} {self.target}")
        self._cap = cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise SourceError("source is not open")
        ok, image = self._cap.read()
        if ok and image is not None:
            return image
        if self.kind == "file":
            frames = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
            position = self._cap.get(cv2.CAP_PROP_POS_FRAMES)
            # The container's frame count is an estimate (off by a few frames on real clips);
            # stopping well short of it means the file is truncated or corrupt.
            if frames > 0 and position < frames - max(5, 0.02 * frames):
                raise SourceError(f"read failed at frame {int(position)} of {int(frames)}")
            if self.loop:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, image = self._cap.read()
                if ok and image is not None:
                    return image
                raise SourceError("cannot rewind the video file")
            return None
        raise SourceError("read failed (stream ended or timed out)")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def nominal_fps(self) -> float | None:
        if self._cap is None:
            return None
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        return fps if 0 < fps < 1000 else None


class FolderSource:
    """Images of a folder in name order (or shuffled, seeded), rescanned on every pass (new
    images join the loop)."""

    kind = "folder"
    live = False

    def __init__(self, folder: Path, loop: bool, pattern: str = "*", shuffle: bool = False) -> None:
        self.folder, self.loop, self.pattern = folder, loop, pattern
        self._pending: deque[Path] = deque()
        self._rng = random.Random(0) if shuffle else None

    def _scan(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"image folder not found: {self.folder}")
        found = (p for p in self.folder.glob(self.pattern) if p.suffix.lower() in IMAGE_EXTS)
        paths = sorted(p for p in found if p.is_file())
        if self._rng is not None:
            self._rng.shuffle(paths)
        self._pending = deque(paths)
        if not self._pending:
            raise SourceError(f"no images matching {self.pattern} in {self.folder}")

    def open(self) -> None:
        self._scan()

    def read(self) -> np.ndarray | None:
        while True:
            if not self._pending:
                if not self.loop:
                    return None
                self._scan()
            path = self._pending.popleft()
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return image
            log.warning("folder %s: skipping unreadable image %s", self.folder, path.name)

    def close(self) -> None:
        self._pending.clear()

    def nominal_fps(self) -> float | None:
        return None


def make_source(
    uri: str, loop: bool, timeout_s: float, pattern: str = "*", shuffle: bool = False
) -> Source:
    """`rtsp://…`, `http(s)://…`, `device:0`, `file:PATH` (or a video path), `folder:PATH`."""
    if uri.startswith(
        ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
    ):
        return OpenCvSource(uri, "stream", loop, timeout_s)
    if uri.startswith("device:"):
        return OpenCvSource(int(uri.split(":", 1)[1]), "device", loop, timeout_s)
    if uri.startswith("folder:"):
        return FolderSource(Path(uri.split(":", 1)[1]), loop, pattern, shuffle)
    path = uri.split(":", 1)[1] if uri.startswith("file:") else uri
    if Path(path).is_dir():
        return FolderSource(Path(path), loop, pattern, shuffle)
    return OpenCvSource(path, "file", loop, timeout_s)


class CameraState(StrEnum):
    STARTING = "starting"
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"
    STALLED = "stalled"
    ENDED = "ended"  # a file or folder played once, to its end
    STOPPED = "stopped"


@dataclass
class CameraStats:
    captured: int = 0
    reconnects: int = 0
    stalls: int = 0
    last_frame_mono: float = 0.0
    last_error: str = ""


Hook = Callable[[str], None]


class Camera:
    def __init__(
        self,
        name: str,
        source: Source,
        buffer: FrameBuffer,
        *,
        fps: float | None = None,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        stall_timeout_s: float = 10.0,
        trigger_mode: bool = False,
        trigger_timeout_s: float = 2.0,
        on_frame: Hook | None = None,
        on_state: Callable[[str, CameraState], None] | None = None,
        on_trigger_timeout: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name, self.source, self.buffer = name, source, buffer
        self.fps = fps
        self.reconnect_initial_s, self.reconnect_max_s = reconnect_initial_s, reconnect_max_s
        self.stall_timeout_s = stall_timeout_s
        self.trigger_mode, self.trigger_timeout_s = trigger_mode, trigger_timeout_s
        self.state = CameraState.STARTING
        self.stats = CameraStats()
        self._on_frame = on_frame or (lambda camera: None)
        self._on_state = on_state or (lambda camera, state: None)
        self._on_trigger_timeout = on_trigger_timeout or (lambda camera, part: None)
        self._stop = threading.Event()
        self._frame_id = 0
        self._triggers: deque[tuple[str, float]] = deque()  # (part id, trigger time)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"camera-{name}", daemon=True)

    # -- control
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._set_state(CameraState.STOPPED)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def trigger(self, part_id: str) -> None:
        """Judge the next frame captured after now as part `part_id` (exactly one verdict)."""
        with self._lock:
            self._triggers.append((part_id, time.monotonic()))

    def check_stall(self, now: float | None = None) -> bool:
        """Watchdog: True when a streaming source has delivered nothing for stall_timeout_s."""
        now = time.monotonic() if now is None else now
        self._expire_triggers()
        if (
            self.state is CameraState.STREAMING
            and now - self.stats.last_frame_mono > self.stall_timeout_s
        ):
            self.stats.stalls += 1
            log.warning(
                "camera %s: no frame for %.1f s: stalled",
                self.name,
                now - self.stats.last_frame_mono,
            )
            self._set_state(CameraState.STALLED)
            return True
        return False

    # -- the capture loop
    def _set_state(self, state: CameraState) -> None:
        if state is not self.state:
            self.state = state
            self._on_state(self.name, state)

    def _run(self) -> None:
        backoff = self.reconnect_initial_s
        while not self._stop.is_set():
            try:
                self.source.open()
            except SourceError as exc:
                self._failed(str(exc), backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
                continue
            except Exception as exc:  # a broken driver must not kill the camera thread
                log.exception("camera %s: unexpected error opening the source", self.name)
                self._failed(repr(exc), backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
                continue
            log.info("camera %s: %s source open", self.name, self.source.kind)
            self.stats.last_frame_mono = time.monotonic()
            self._set_state(CameraState.STREAMING)
            backoff = self.reconnect_initial_s
            try:
                ended = self._stream()
            except SourceError as exc:
                self._failed(f"after frame {self._frame_id}: {exc}", backoff)
                continue
            except Exception as exc:
                log.exception(
                    "camera %s: unexpected error after frame %d", self.name, self._frame_id
                )
                self._failed(repr(exc), backoff)
                continue
            finally:
                self.source.close()
            if ended:
                log.info("camera %s: source ended after frame %d", self.name, self._frame_id)
                self._set_state(CameraState.ENDED)
                self._expire_triggers(force=True)
                return

    def _failed(self, reason: str, wait_s: float) -> None:
        self.stats.last_error = reason
        self.stats.reconnects += 1
        log.warning("camera %s: %s; retrying in %.1f s", self.name, reason, wait_s)
        self._set_state(CameraState.RECONNECTING)
        self._stop.wait(wait_s)
        self._expire_triggers()

    def _stream(self) -> bool:
        """Read until the source fails (SourceError), ends (True) or we stop (False)."""
        fps = (
            self.fps
            if self.fps is not None
            else (None if self.source.live else self.source.nominal_fps())
        )
        period = 1.0 / fps if fps else 0.0
        next_due = time.monotonic()
        while not self._stop.is_set():
            image = self.source.read()
            if image is None:
                return True
            now_mono, now_wall = time.monotonic(), time.time()
            self.stats.last_frame_mono = now_mono
            if self.state is not CameraState.STREAMING:
                self._set_state(CameraState.STREAMING)
            self._frame_id += 1
            self.stats.captured += 1
            self._on_frame(self.name)
            frame = Frame(self.name, self._frame_id, image, now_mono, now_wall)
            if self.trigger_mode:
                self._serve_triggers(frame)
            else:
                self.buffer.put(frame, timeout=None)
            if period:
                next_due += period
                delay = next_due - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_due = time.monotonic()  # running late: do not try to catch up
        return False

    def _serve_triggers(self, frame: Frame) -> None:
        with self._lock:
            due = [t for t in self._triggers if t[1] <= frame.captured_mono]
            for t in due:
                self._triggers.remove(t)
        for part_id, _ in due:
            self.buffer.put(
                Frame(
                    frame.camera,
                    frame.frame_id,
                    frame.image,
                    frame.captured_mono,
                    frame.captured_wall,
                    part_id,
                )
            )
        self._expire_triggers()

    def _expire_triggers(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [t for t in self._triggers if force or now - t[1] > self.trigger_timeout_s]
            for t in expired:
                self._triggers.remove(t)
        for part_id, _ in expired:
            log.warning(
                "camera %s: no frame for part %s within %.1f s",
                self.name,
                part_id,
                self.trigger_timeout_s,
            )
            self._on_trigger_timeout(self.name, part_id)


class Watchdog:
    """Once a second, asks every camera whether its stream has stalled (a source that hangs in
    `read` cannot notice it itself)."""

    def __init__(self, cameras: Mapping[str, Camera], period_s: float = 1.0) -> None:
        self.cameras, self.period_s = cameras, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            now = time.monotonic()
            for camera in self.cameras.values():
                camera.check_stall(now)

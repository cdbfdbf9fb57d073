"""Frozen value types that flow between the stages: frames, predictions, decisions, results.

Nothing here imports another lineinspect module, so every stage, sink and the API can share
them without importing the model or the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Frame:
    camera: str
    frame_id: int  # per camera, increasing from 1 for each run of the service
    image: np.ndarray  # BGR uint8
    captured_mono: float  # time.monotonic() at capture: for latencies
    captured_wall: float  # time.time() at capture: for people and PLCs
    part_id: str | None = None  # set in trigger mode: the part this frame inspects


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class Detections:
    """Boxes of one image as numpy columns (supervision-style), in original pixel coordinates."""

    xyxy: FloatArray  # (n, 4) x1, y1, x2, y2
    confidence: FloatArray  # (n,)
    class_id: IntArray  # (n,)

    def __post_init__(self) -> None:
        n = len(self.confidence)
        if self.xyxy.shape != (n, 4) or self.class_id.shape != (n,):
            raise ValueError(
                f"inconsistent detection columns: xyxy {self.xyxy.shape}, "
                f"confidence {self.confidence.shape}, class_id {self.class_id.shape}"
            )

    def __len__(self) -> int:
        return len(self.confidence)

    def __getitem__(self, mask: npt.NDArray[np.bool_] | IntArray) -> Detections:
        return Detections(self.xyxy[mask], self.confidence[mask], self.class_id[mask])

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
        )


@dataclass(frozen=True)
class AnomalyScore:
    score: float  # normalised: the threshold is at 0.5 when the card has a normalisation
    raw: float
    map: FloatArray | None = None  # (h, w) normalised map at model resolution, if the model has one


@dataclass(frozen=True)
class Prediction:
    """What a model said about one image, decoded but not yet judged."""

    task: str
    image_size: tuple[int, int]  # (height, width) of the original image
    detections: Detections | None = None
    probabilities: FloatArray | None = None  # (num_classes,) for classifiers
    anomaly: AnomalyScore | None = None


class Outcome(StrEnum):
    """What the decision made of one detection or class score."""

    FAIL = "fail"
    UNCERTAIN = "uncertain"
    BELOW = "below_threshold"
    GOOD_CLASS = "good_class"
    TOO_SMALL = "too_small"


@dataclass(frozen=True)
class Finding:
    """One scored item (a box, a class, an anomaly score) and what the decision made of it."""

    class_id: int
    class_name: str
    confidence: float
    threshold: float
    band: float
    outcome: Outcome
    xyxy: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    findings: tuple[Finding, ...]
    reason: str

    @property
    def drivers(self) -> tuple[Finding, ...]:
        """The findings that made the verdict what it is."""
        want = {
            Verdict.FAIL: Outcome.FAIL,
            Verdict.UNCERTAIN: Outcome.UNCERTAIN,
            Verdict.PASS: None,
        }[self.verdict]
        return tuple(f for f in self.findings if f.outcome == want)


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    sha256: str
    task: str
    # The decision policy the result was judged with: goes up by one on every threshold change
    # and every model swap (reload, promote, rollback) while the service runs.
    thresholds_version: int = 1


@dataclass(frozen=True)
class StageTimes:
    """Seconds spent in each stage of one prediction."""

    decode: float = 0.0
    preprocess: float = 0.0
    infer: float = 0.0
    postprocess: float = 0.0
    decide: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.decode + self.preprocess + self.infer + self.postprocess + self.decide


@dataclass(frozen=True)
class Result:
    """One image's full outcome: what the model saw, what was decided, and how long it took."""

    model: ModelIdentity
    prediction: Prediction
    decision: Decision
    times: StageTimes
    batch_size: int = 1


@dataclass(frozen=True)
class Judged:
    """One frame through the line, as the publish stage hands it to every sink: its result, or
    why there is none, its per-camera sequence number and its wire payload."""

    frame: Frame
    result: Result | None
    error: str | None
    done_mono: float  # time.monotonic() when the result (or the error) was known
    sequence: int = 0
    payload: dict[str, Any] = field(default_factory=dict)  # the MQTT verdict (core.wire)
    recipe: str | None = None  # the recipe selected when its batch was judged (service.recipes)

    @property
    def camera(self) -> str:
        return self.frame.camera

    @property
    def latency_s(self) -> float:
        return max(0.0, self.done_mono - self.frame.captured_mono)

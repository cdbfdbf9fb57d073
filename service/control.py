"""Control: what operators, engineers and PLCs change while the line runs: part triggers (HTTP
and MQTT), hot model reloads and threshold changes. The API and the MQTT link call this module;
it acts on the cameras and the served models directly, never back through the composition root.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from service.core.wire import topic_segment
from service.inference.card import ThresholdSpec
from service.inference.model import Model, make_policy
from service.metrics import Metrics
from service.served import ServedModels
from service.stages.capture import Camera

log = logging.getLogger(__name__)


class ReferenceSink(Protocol):
    """What must learn of a reloaded model (the drift sink: its windows restart)."""

    def register(self, model: Model) -> object: ...


class Control:
    def __init__(
        self,
        served: ServedModels,
        cameras: Mapping[str, Camera],
        metrics: Metrics,
        drift: ReferenceSink,
    ) -> None:
        self.served, self.cameras, self.metrics, self.drift = served, cameras, metrics, drift
        self._reload_lock = threading.Lock()

    # -- triggers
    def trigger(self, camera: str, part_id: str) -> None:
        """Judge the camera's next frame as this part; KeyError: no such camera, ValueError: it
        is free-running."""
        cam = self.cameras.get(camera)
        if cam is None:
            raise KeyError(camera)
        if not cam.trigger_mode:
            raise ValueError(f"camera {camera} is free-running, not in trigger mode")
        cam.trigger(part_id)

    def on_trigger_message(self, topic: str, payload: bytes) -> None:
        """`<prefix>/<line>/<camera>/trigger` with {"part_id": "..."} (or the bare id)."""
        camera_segment = topic.split("/")[-2]
        try:
            body = json.loads(payload)
            part_id = str(body["part_id"]) if isinstance(body, dict) else str(body)
        except (ValueError, KeyError):
            part_id = payload.decode(errors="replace").strip()
        if not part_id:
            log.warning("trigger on %s without a part id: ignored", topic)
            return
        for name in self.cameras:
            if topic_segment(name) == camera_segment:
                self.trigger(name, part_id)  # the MQTT link logs a refusal
                return
        log.warning("trigger on %s: no camera %r", topic, camera_segment)

    # -- models
    def reload_model(self, name: str, path: Path | None = None) -> Model:
        """Load the model's file again (or `path`), warm it, then swap it in: capture and HTTP
        never stop, frames in flight finish on the old model, the next batch uses the new one.
        KeyError: no such model; ValueError (and the loader's errors): refused, the old model
        keeps serving."""
        served = self.served
        if name not in served.models:
            raise KeyError(name)
        with self._reload_lock:
            try:
                new = served.load(served.configs[name], path)
            except Exception:
                self.metrics.model_reloads.labels(name, "failed").inc()
                raise
            current = served.models[name].spec
            problem = None
            if new.spec.task != current.task:
                problem = f"change its task from {current.task} to {new.spec.task}"
            elif new.spec.name != name:
                problem = f"rename it to {new.spec.name!r} (cameras and metrics refer to {name!r})"
            if problem:
                self.metrics.model_reloads.labels(name, "failed").inc()
                raise ValueError(f"reload of {name} would {problem}")
            old = served.swap(name, new)
            self.drift.register(new)  # the cameras' windows restart on the new reference
            self.metrics.model_reloads.labels(name, "ok").inc()
            log.info("model %s reloaded: %s -> %s (sha256 %s)",
                     name, old.spec.version, new.spec.version, new.spec.sha256[:12])  # fmt: skip
            return new

    def set_thresholds(self, model: Model, thresholds: ThresholdSpec) -> None:
        """Replace a model's thresholds (ValueError names an unknown class or a bad value)."""
        model.set_policy(make_policy(model.spec, thresholds, model.policy.good_classes))
        self.metrics.threshold_updates.labels(model.spec.name).inc()

"""Control: what operators, engineers and PLCs change while the line runs: part triggers (HTTP
and MQTT), threshold changes and model changes: hot reloads, a candidate judging beside a live
model (loaded, promoted or discarded), and rollbacks to the model that served before (from the
model history). The API and the MQTT link call this module; it acts on the cameras, the served
models, the candidates and the history directly, never back through the composition root.

Every model change takes one lock and either completes or changes nothing: a model that fails
to load, or would change the task or the name, is refused and the live model keeps serving. A
swap is `ServedModels.swap`: frames in flight finish on the old model, the next batch uses the
new one, no frame is lost and each camera's order is kept.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from service.audit import THRESHOLDS_VERSION, Recorder
from service.config import ShadowConfig
from service.core.errors import ConflictError, NotFoundError, RefusedError
from service.core.wire import topic_segment
from service.history import HistoryError, ModelHistory
from service.inference.card import ThresholdSpec, card_path_for
from service.inference.model import Model, make_policy, thresholds_of
from service.inference.registry import ModelSpec
from service.metrics import Metrics
from service.served import ServedModels
from service.sinks.candidate import Candidate, CandidateSink, Origin, ReviewPort
from service.stages.capture import Camera

log = logging.getLogger(__name__)


class ReferenceSink(Protocol):
    """What must learn of a reloaded model (the drift sink: its windows restart)."""

    def register(self, model: Model) -> object: ...


class VersionRecord(Recorder, Protocol):
    """Where thresholds versions are kept (service.audit.AuditLog)."""

    def last_thresholds_version(self, model: str) -> int | None: ...


def replacement_problem(name: str, current: ModelSpec, new: ModelSpec) -> str | None:
    """Why `new` may not take `current`'s place as `name` (None: it may)."""
    if new.task != current.task:
        return f"change its task from {current.task} to {new.task}"
    if new.name != name:
        return (
            f"rename it to {new.name!r} (cameras and metrics refer to {name!r}; "
            f"set `name: {name}` in its card)"
        )
    return None


class Control:
    def __init__(
        self,
        served: ServedModels,
        cameras: Mapping[str, Camera],
        metrics: Metrics,
        drift: ReferenceSink,
        candidates: CandidateSink | None = None,
        history: ModelHistory | None = None,
        shadow: ShadowConfig | None = None,
        audit: VersionRecord | None = None,
    ) -> None:
        self.served, self.cameras, self.metrics, self.drift = served, cameras, metrics, drift
        self.audit = audit
        self.candidates = candidates or CandidateSink()
        self.history, self.shadow = history, shadow or ShadowConfig()
        self.review: ReviewPort | None = None  # where candidates keep disagreeing frames
        self._reload_lock = threading.Lock()

    def start(self) -> None:
        """Once the models serve (and the line runs): keep each in the history ("config") and
        load the configured candidates. A candidate that fails is logged and left out: the live
        models serve regardless. Thresholds versions continue from the last one on record."""
        for name, model in self.served.models.items():
            last = self.audit.last_thresholds_version(name) if self.audit else None
            if last is not None and last >= model.thresholds_version:
                model.set_policy(model.policy, last + 1)
                self.served.thresholds_changed(model)
            self._version(model, "config")
        for name, cfg in self.served.configs.items():
            self._remember(name, self.served.models[name], cfg.card, "config", "start")
            if cfg.candidate is not None:
                try:
                    self.load_candidate(name, cfg.candidate, cfg.candidate_card, by="config")
                except Exception as exc:
                    log.error("model %s: candidate %s not loaded, %s serves alone: %s",
                              name, cfg.candidate, name, exc)  # fmt: skip

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
    def _known(self, name: str) -> None:
        if name not in self.served.models:
            raise KeyError(name)

    def _load(self, name: str, change: str, path: Path | None, card: Path | str | None) -> Model:
        """Load and warm a replacement for `name` and check it may replace it; RefusedError
        (the reason) otherwise, counted as a failed `change`."""
        served = self.served
        try:
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"no model file {path}")
            new = served.load(served.configs[name], path, card)
        except Exception as exc:
            self._count(name, change, "failed")
            raise RefusedError(f"{change} refused, {name} keeps serving: {exc}") from exc
        problem = replacement_problem(name, served.models[name].spec, new.spec)
        if problem:
            self._count(name, change, "failed")
            raise RefusedError(f"{change} refused, {name} keeps serving: it would {problem}")
        return new

    def _count(self, name: str, change: str, result: str) -> None:
        if change == "reload":
            self.metrics.model_reloads.labels(name, result).inc()
        else:
            self.metrics.model_changes.labels(name, change, result).inc()

    def _swap(self, name: str, new: Model, change: str, by: str) -> Model:
        old = self.served.swap(name, new)
        self._version(new, by)
        self.drift.register(new)  # the cameras' windows restart on the new reference
        self._count(name, change, "ok")
        log.info("model %s: %s %s -> %s (sha256 %s)", name, change, old.spec.version,
                 new.spec.version, new.spec.sha256[:12])  # fmt: skip
        return old

    def reload_model(self, name: str, path: Path | None = None, by: str = "api") -> Model:
        """Load the model's file again (or `path`), warm it, then swap it in: capture and HTTP
        never stop, frames in flight finish on the old model, the next batch uses the new one.
        KeyError: no such model; RefusedError (a ValueError): the old model keeps serving."""
        self._known(name)
        with self._reload_lock:
            new = self._load(name, "reload", path, "configured")
            self._swap(name, new, "reload", by)
            self._remember(name, new, self.served.configs[name].card, by, "reload")
            return new

    # -- candidates
    def load_candidate(
        self, name: str, path: Path, card: Path | None = None, by: str = "api"
    ) -> dict[str, Any]:
        """Load `path` (with `card`, default the one next to it) as `name`'s candidate: it
        judges every frame the live model judges, in its own worker, off the PLC path. Replaces
        the model's earlier candidate. KeyError: no such model; RefusedError: not loadable,
        another task or name (an earlier candidate stays)."""
        self._known(name)
        with self._reload_lock:
            model = self._load(name, "candidate", path, card)
            used = card or card_path_for(path)
            origin = Origin(
                str(path), str(used) if model.card is not None else None, by, time.time()
            )
            live = self.served.models[name].spec
            default = self.served.default
            cameras = [c.name for c in self.served.settings.cameras if (c.model or default) == name]
            candidate = Candidate(
                name, model, origin,
                self.metrics, cameras, [c for c in model.spec.classes if c in live.classes],
                lambda: self.review if self.shadow.review else None,
                self.shadow.queue_size, self.shadow.nice, self.shadow.idle,
            )  # fmt: skip
            self.candidates.attach(candidate)
            self._count(name, "candidate", "ok")
            log.info("model %s: candidate %s %s (sha256 %s) judges beside it, loaded by %s",
                     name, path, model.spec.version, model.spec.sha256[:12], by)  # fmt: skip
            return candidate.report()

    def candidate_report(self, name: str) -> dict[str, Any]:
        self._known(name)
        candidate = self.candidates.get(name)
        if candidate is None:
            raise NotFoundError(f"model {name} has no candidate")
        return candidate.report()

    def promote_candidate(self, name: str, by: str = "api") -> Model:
        """Serve the candidate as `name` (the swap of a hot reload); ConflictError: none loaded."""
        self._known(name)
        with self._reload_lock:
            candidate = self.candidates.detach(name)  # its worker stops: it shadows no more
            if candidate is None:
                self._count(name, "promote", "failed")
                raise ConflictError(
                    f"model {name} has no candidate to promote: load one with "
                    f"POST /v1/models/{name}/candidate"
                )
            new = candidate.model
            self._swap(name, new, "promote", by)
            card = Path(candidate.origin.card) if candidate.origin.card else None
            self._remember(name, new, card, by, "promote")
            return new

    def discard_candidate(self, name: str, by: str = "api") -> dict[str, Any]:
        """Stop and drop the candidate; its last report. NotFoundError: none loaded."""
        self._known(name)
        with self._reload_lock:
            candidate = self.candidates.detach(name)
        if candidate is None:
            raise NotFoundError(f"model {name} has no candidate")
        self._count(name, "discard", "ok")
        log.info("model %s: candidate %s discarded by %s", name, candidate.model.spec.version, by)
        return candidate.report()

    # -- history and rollback
    def _remember(self, name: str, model: Model, card: Path | None, by: str, event: str) -> None:
        """Keep a copy of a model that begins serving (a failure is logged: the line goes on)."""
        if self.history is None:
            return
        card_file = card or card_path_for(model.spec.path)
        kept_card = card_file if model.card is not None and card_file.is_file() else None
        s = model.spec
        try:
            self.history.record(name, s.path, kept_card, s.sha256, s.version, by, event)
        except (HistoryError, OSError) as exc:
            log.error("model %s %s: no copy kept in the history: %s", name, s.version, exc)
        self.metrics.history_entries.labels(name).set(len(self.history.entries(name)))

    def history_of(self, name: str) -> dict[str, Any]:
        """The models kept for `name`, newest first, the one serving marked."""
        self._known(name)
        serving = self.served.models[name].spec.sha256
        if self.history is None:
            return {"model": name, "enabled": False, "keep": 0, "entries": []}
        entries = self.history.entries(name)
        current = self.history.current(name)
        return {
            "model": name,
            "enabled": True,
            "keep": self.history.keep,
            "serving": {"sha256": serving},
            "entries": [
                e.public() | {"current": current is not None and e.id == current.id}
                for e in reversed(entries)
            ],
        }

    def rollback(self, name: str, by: str = "api") -> Model:
        """Serve the model that served before the current one, from its kept copy (the swap of
        a hot reload). ConflictError: the history holds nothing earlier; RefusedError: the copy
        does not load (the current model keeps serving)."""
        self._known(name)
        if self.history is None:
            raise ConflictError(
                "the model history is off (history.enabled: false): nothing to roll back to"
            )
        with self._reload_lock:
            target = self.history.rollback_target(name, self.served.models[name].spec.sha256)
            if target is None:
                self._count(name, "rollback", "failed")
                kept = len(self.history.entries(name))
                raise ConflictError(
                    f"no earlier model of {name} in the history ({kept} kept, the one serving "
                    "included): nothing to roll back to"
                )
            entry, replaced = target
            model_file, card_file = self.history.paths(entry)
            new = self._load(name, "rollback", model_file, card_file)
            self._swap(name, new, "rollback", by)
            if replaced is not None:
                self.history.mark_rolled_back(replaced, by)
            return new

    def set_thresholds(self, model: Model, thresholds: ThresholdSpec, by: str = "api") -> None:
        """Replace a model's thresholds (ValueError names an unknown class or a bad value); the
        model's thresholds version goes up by one."""
        model.set_policy(make_policy(model.spec, thresholds, model.policy.good_classes))
        self.metrics.threshold_updates.labels(model.spec.name).inc()
        self.served.thresholds_changed(model)
        self._version(model, by)

    def _version(self, model: Model, by: str) -> None:
        """Put the thresholds version `model` judges with now on record, so that the verdicts
        naming it resolve to these thresholds (a failing record is logged: the line goes on)."""
        if self.audit is None:
            return
        policy, identity = model.judging()
        after = {
            "thresholds_version": identity.thresholds_version,
            "thresholds": thresholds_of(policy).model_dump(),
            "good_classes": sorted(policy.good_classes),
            "sha256": identity.sha256,
            "model_version": identity.version,
        }
        try:
            self.audit.record(by, THRESHOLDS_VERSION, identity.name, None, None, after)
        except (sqlite3.Error, OSError) as exc:
            log.error("model %s: thresholds version %d NOT on record: %s",
                      identity.name, identity.thresholds_version, exc)  # fmt: skip

"""Changeover: applies a recipe (`service.recipes`) to the running line.

One selection at a time, under one lock: the plan is made and every threshold set is checked
before anything changes, so a recipe that cannot be applied changes nothing and the line keeps
the current one. Then each camera that changes model moves route (`InferStage.move`: frames in
flight finish on the old model, nothing is lost, each camera's order kept), each model gets the
recipe's thresholds (its thresholds version goes up), and from the next batch on verdicts carry
the new recipe's name. A PLC's selection over MQTT is acknowledged on the status topic.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from service.audit import Recorder
from service.core.wire import recipe_event
from service.inference.card import ThresholdSpec
from service.inference.model import Model, make_policy
from service.metrics import Metrics
from service.recipes import NoLineError, RecipeConfig, RecipeError, plan, selection
from service.served import ServedModels
from service.stages.buffer import FrameBuffer
from service.stages.decide import DecisionPolicy
from service.stages.infer import InferStage

log = logging.getLogger(__name__)


class ThresholdSetter(Protocol):
    def set_thresholds(self, model: Model, thresholds: ThresholdSpec, by: str = "api") -> None: ...


class LineAnnouncer(Protocol):
    def announce_line(self, kind: str, payload: dict[str, Any]) -> None: ...


class Changeover:
    def __init__(
        self,
        recipes: Sequence[RecipeConfig],
        served: ServedModels,
        thresholds: ThresholdSetter,
        metrics: Metrics,
    ) -> None:
        self.recipes = {r.name: r for r in recipes}
        self.served, self.thresholds, self.metrics = served, thresholds, metrics
        self.active: str | None = None
        self.routing: dict[str, str] = {}  # camera -> the model it uses now
        self._infer: InferStage | None = None
        self._buffers: Mapping[str, FrameBuffer] = {}
        self._announcer: LineAnnouncer | None = None
        self._lock = threading.Lock()
        self.audit: Recorder | None = None  # records the PLC's selections (HTTP: the API does)
        for r in recipes:
            metrics.recipe_active.labels(r.name).set(0)

    def attach(
        self,
        infer: InferStage,
        buffers: Mapping[str, FrameBuffer],
        routing: Mapping[str, str],
        announcer: LineAnnouncer,
    ) -> None:
        """The running line (the composition root calls this once the stages exist)."""
        self._infer, self._buffers, self._announcer = infer, buffers, announcer
        self.routing = dict(routing)

    def select(self, name: str, by: str = "api") -> dict[str, Any]:
        """Apply recipe `name`; RecipeError (nothing changed) when it is unknown or cannot be
        applied, NoLineError without cameras."""
        with self._lock:
            infer = self._infer
            if infer is None:
                raise NoLineError("the service runs no cameras: there is no line to switch")
            try:
                change = plan(name, self.recipes, self.routing, self.served.models)
                policies = {  # every threshold set checked before anything changes
                    model: self._policy(self.served.models[model], spec)
                    for model, spec in change.thresholds.items()
                }
            except (RecipeError, ValueError) as exc:
                self.metrics.recipe_changes.labels("refused").inc()
                log.warning("recipe %s refused (%s), %s stays: %s", name, by, self.active, exc)
                if isinstance(exc, RecipeError):
                    raise
                raise RecipeError(str(exc)) from exc
            for camera, model in change.moves.items():
                infer.move(self._buffers[camera], model)
                self.routing[camera] = model
            for model, spec in change.thresholds.items():
                if self.served.models[model].policy != policies[model]:
                    self.thresholds.set_thresholds(self.served.models[model], spec, by=by)
            previous, self.active = self.active, name
            infer.recipe = name
            if previous is not None:
                self.metrics.recipe_active.labels(previous).set(0)
            self.metrics.recipe_active.labels(name).set(1)
            self.metrics.recipe_changes.labels("ok").inc()
            log.info("recipe %s -> %s (%s): cameras moved %s, thresholds set for %s",
                     previous, name, by, change.moves or "none",
                     sorted(change.thresholds) or "none")  # fmt: skip
            return self.state()

    @staticmethod
    def _policy(model: Model, spec: ThresholdSpec) -> DecisionPolicy:
        return make_policy(model.spec, spec, model.policy.good_classes)

    def state(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "routing": dict(self.routing),
            "recipes": [r.model_dump(mode="json") for r in self.recipes.values()],
        }

    def on_message(self, topic: str, payload: bytes) -> None:
        """`<prefix>/<line>/recipe` from a PLC: select, then acknowledge on the status topic."""
        request: str | None = None
        try:
            name, request = selection(payload)
        except RecipeError as exc:
            log.warning("recipe selection on %s refused: %s", topic, exc)
            self._ack(payload.decode(errors="replace")[:128], False, str(exc), request)
            return
        before = self.active
        try:
            self.select(name, by="mqtt")
        except (RecipeError, NoLineError) as exc:
            self._ack(name, False, str(exc), request)
            return
        if self.audit is not None:
            try:
                self.audit.record("mqtt", "recipe.select", name, f"MQTT {topic}",
                                  {"recipe": before}, {"recipe": name})  # fmt: skip
            except (sqlite3.Error, OSError) as exc:
                log.error("audit trail: recipe %s from MQTT NOT recorded: %s", name, exc)
        self._ack(name, True, None, request)

    def _ack(self, requested: str, accepted: bool, reason: str | None, request: str | None) -> None:
        if self._announcer is not None:
            event = recipe_event(requested, accepted, self.active, reason, request)
            self._announcer.announce_line("status", event)

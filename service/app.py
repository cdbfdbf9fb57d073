"""Composition root: builds the components from settings, starts them in order, stops them in
reverse (as Frigate's app does). Nothing here runs at import; the CLI (or a test) creates one
`LineInspect`.

Start order: models (warmed) -> HTTP batchers -> outbox -> MQTT link -> review queue -> line
(publisher, inference) -> cameras -> watchdog. Stop is the reverse, so capture stops first, the
frames already buffered are inferred and published, and the outbox gets a chance to drain.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.batcher import MicroBatcher
from service.capture import Camera, CameraState, make_source
from service.config import CameraConfig, ModelConfig, Settings
from service.drift import DriftMonitor, NullDrift
from service.frames import BufferPolicy, FrameBuffer
from service.inference.model import Model, load_model, make_policy
from service.inference.runtime import RuntimeOptions, cpu_only, parallelism, usable_cores
from service.metrics import Metrics
from service.outbox import Outbox
from service.pipeline import Line, ModelSlot, Route, VerdictFeed, topic_segment
from service.sinks.mqtt import MqttLink, MqttOptions, NullLink
from service.sinks.review import NullReview, ReviewQueue

log = logging.getLogger(__name__)


def runtime_options(settings: Settings) -> RuntimeOptions:
    rt = settings.runtime
    runs, intra = parallelism(
        rt.parallel_runs, rt.intra_op_threads, cpu_only(rt.providers), usable_cores()
    )
    return RuntimeOptions(
        providers=tuple(rt.providers),
        parallel_runs=runs,
        intra_op_threads=intra,
        inter_op_threads=rt.inter_op_threads,
        device_id=rt.device_id,
        tensorrt_cache_dir=rt.tensorrt_cache_dir,
        tensorrt_fp16=rt.tensorrt_fp16,
        warmup_runs=rt.warmup_runs,
    )


@dataclass
class LineInspect:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    models: dict[str, Model] = field(default_factory=dict)
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)
    slots: dict[str, ModelSlot] = field(default_factory=dict)
    cameras: dict[str, Camera] = field(default_factory=dict)
    outbox: Outbox | None = None
    link: MqttLink | NullLink = field(default_factory=NullLink)
    review: ReviewQueue | NullReview = field(default_factory=NullReview)
    drift: DriftMonitor | NullDrift = field(default_factory=NullDrift)
    feed: VerdictFeed = field(default_factory=VerdictFeed)  # the last verdicts, for the UI
    line: Line | None = None
    started: bool = False
    parallel_runs: int = 1  # concurrent inferences per model, resolved from the runtime settings
    _model_configs: dict[str, ModelConfig] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _watchdog: threading.Thread | None = None
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def default_model(self) -> str | None:
        return next(iter(self.models), None)

    @property
    def ready(self) -> bool:
        return (
            self.started
            and all(m.warmed for m in self.models.values())
            and all(b.running for b in self.batchers.values())
        )

    # -- start / stop
    def start(self) -> None:
        """Start every component in order; on any failure stop what started and re-raise."""
        try:
            self.start_models()
            if self.settings.cameras:
                self.start_line()
        except BaseException:
            self.stop()
            raise
        if isinstance(self.link, NullLink):
            # No broker link by design (HTTP only, or MQTT disabled): a gauge stuck at 0 would
            # read as "broker down" on dashboards.
            self.metrics.registry.unregister(self.metrics.mqtt_connected)
        self.started = True

    def stop(self) -> None:
        self.started = False
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(5)
        for name, camera in reversed(list(self.cameras.items())):
            camera.stop()
            log.info("camera %s stopped", name)
        if self.line is not None:
            self.line.stop()
            log.info("line drained and stopped")
        self.drift.stop()
        self.link.stop(self.settings.mqtt.drain_timeout_s)
        if self.outbox is not None:
            depth, _ = self.outbox.depth()
            if depth:
                log.warning(
                    "%d messages stay in the outbox %s and will be sent on the next start",
                    depth,
                    self.outbox.path,
                )
            self.outbox.close()
        for name in reversed(list(self.batchers)):
            self.batchers[name].stop()
            log.info("batcher for %s stopped", name)
        self.batchers.clear()
        for name in self.models:
            self.metrics.model_ready.labels(name).set(0)

    def start_models(self) -> None:
        """Phase 1 of `start`: load and warm every model, start its HTTP batcher."""
        options = runtime_options(self.settings)
        self.parallel_runs = options.parallel_runs
        log.info(
            "inference: %d run(s) at once per model, %s intra-op thread(s) each",
            options.parallel_runs,
            options.intra_op_threads or "ONNX Runtime's default",
        )
        for cfg in self.settings.models:
            model = self._load(cfg, options)
            name = model.spec.name
            if name in self.models:
                raise ValueError(f"two models are named {name!r}; give one a card `name`")
            self.models[name] = model
            self.slots[name] = ModelSlot(model)
            self._model_configs[name] = cfg
            self._register_metrics(model)
        batch = self.settings.api.batch
        for name, model in self.models.items():
            batcher = MicroBatcher(
                model, self.metrics, batch.max_size, batch.max_wait_ms / 1000,
                workers=self.parallel_runs,
            )  # fmt: skip
            batcher.start()
            self.batchers[name] = batcher

    @staticmethod
    def _load(cfg: ModelConfig, options: RuntimeOptions, path: Path | None = None) -> Model:
        model = load_model(path or cfg.path, options, cfg.card)
        if cfg.thresholds is not None:
            model.set_policy(make_policy(model.spec, cfg.thresholds, model.policy.good_classes))
        return model

    def start_line(self) -> None:
        """Phase 2 of `start` (after `start_models`): outbox, MQTT, review, drift, the line and
        its cameras."""
        s, m = self.settings, self.metrics
        prefix, line_name = s.mqtt.topic_prefix.strip("/"), topic_segment(s.line.name)
        if s.mqtt.enabled:
            self.outbox = Outbox(
                s.outbox.path, s.outbox.max_messages, s.outbox.max_age_s, s.outbox.synchronous,
                on_evict=lambda reason, n: m.outbox_evicted.labels(reason).inc(n),
            )  # fmt: skip
            outbox = self.outbox
            m.outbox_depth.set_function(lambda: outbox.depth()[0])
            m.outbox_age.set_function(lambda: outbox.depth()[1] or 0.0)
            depth, _ = outbox.depth()
            if depth:
                log.info(
                    "outbox %s holds %d messages from an earlier run: sending them first",
                    outbox.path,
                    depth,
                )
            self.link = MqttLink(
                self._mqtt_options(prefix, line_name),
                outbox,
                on_connection=lambda up: m.mqtt_connected.set(1 if up else 0),
                on_sent=m.mqtt_sent.inc,
                subscriptions=[f"{prefix}/{line_name}/+/trigger"],
                on_message=self._on_mqtt_message,
            )
            self.link.start()
        if s.review.enabled:
            self.review = ReviewQueue(
                s.review.path,
                self._publish_review,
                m,
                s.review.sample_rate,
                s.review.budget_per_hour,
            )
            review = self.review
            m.review_depth.set_function(review.depth)
        if s.drift.enabled:
            self.drift = DriftMonitor(m, s.drift)
        self.drift.start()
        routes: dict[str, Route] = {}
        pending: list[tuple[CameraConfig, FrameBuffer]] = []
        route_model: dict[str, Model] = {}
        for cam in s.cameras:
            model_name = cam.model or self.default_model
            if model_name not in self.slots:
                raise ValueError(
                    f"camera {cam.name}: no model named {model_name!r}; "
                    f"loaded: {sorted(self.slots)}"
                )
            assert model_name is not None
            route = routes.setdefault(
                model_name, Route(self.slots[model_name], [], threading.Event())
            )
            policy = BufferPolicy("block" if cam.mode == "trigger" else cam.buffer.policy)
            buffer = FrameBuffer(
                cam.name, cam.buffer.size, policy,
                on_drop=lambda camera, reason: m.frames_dropped.labels(camera, reason).inc(),
                ready=route.ready,
            )  # fmt: skip
            route.buffers.append(buffer)
            pending.append((cam, buffer))
            route_model[cam.name] = route.slot.model
        self.line = Line(
            s.line.name, prefix, routes, self.outbox, self.review, m, drift=self.drift,
            on_verdict=self.feed.add,
            max_batch=s.line.max_batch, max_wait_s=s.line.max_wait_ms / 1000,
            preprocess_threads=s.line.preprocess_threads, inference_workers=self.parallel_runs,
        )  # fmt: skip
        self.line.start()
        for cam, buffer in pending:
            camera = Camera(
                cam.name,
                make_source(
                    cam.source, cam.loop, cam.read_timeout_s, cam.pattern, cam.order == "shuffle"
                ),
                buffer,
                fps=cam.fps,
                reconnect_initial_s=cam.reconnect_initial_s,
                reconnect_max_s=cam.reconnect_max_s,
                stall_timeout_s=cam.stall_timeout_s,
                trigger_mode=cam.mode == "trigger",
                trigger_timeout_s=cam.trigger_timeout_s,
                on_frame=lambda name: m.frames_captured.labels(name).inc(),
                on_state=self._camera_state,
                on_trigger_timeout=self._trigger_timeout,
            )
            m.camera_up.labels(cam.name).set(0)
            self.drift.init_camera(cam.name, route_model[cam.name])
            m.frames_captured.labels(cam.name)
            self.cameras[cam.name] = camera
            camera.start()
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._watchdog.start()

    def _mqtt_options(self, prefix: str, line_name: str) -> MqttOptions:
        q = self.settings.mqtt
        return MqttOptions(
            host=q.host,
            port=q.port,
            client_id=q.client_id or f"lineinspect-{line_name}",
            username=q.username,
            password=q.password.get_secret_value() if q.password else None,
            tls=q.tls.enabled,
            ca_file=q.tls.ca_file,
            cert_file=q.tls.cert_file,
            key_file=q.tls.key_file,
            tls_insecure=q.tls.insecure,
            keepalive_s=q.keepalive_s,
            inflight=q.inflight,
            status_topic=f"{prefix}/{line_name}/status",
        )

    # -- callbacks
    def _camera_state(self, camera: str, state: CameraState) -> None:
        self.metrics.camera_up.labels(camera).set(1 if state is CameraState.STREAMING else 0)
        if state is CameraState.RECONNECTING:
            self.metrics.camera_reconnects.labels(camera).inc()
        elif state is CameraState.STALLED:
            self.metrics.camera_stalls.labels(camera).inc()

    def _trigger_timeout(self, camera: str, part_id: str) -> None:
        if self.line is not None:
            self.line.publish_error(
                camera, part_id, f"no frame from camera {camera} within the trigger timeout"
            )

    def _publish_review(self, camera: str, record: dict[str, Any]) -> None:
        if self.outbox is not None and self.line is not None:
            data = json.dumps(record, separators=(",", ":")).encode()
            self.outbox.append(self.line.topic(camera, "review"), data, qos=1)

    def _on_mqtt_message(self, topic: str, payload: bytes) -> None:
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
                self.trigger(name, part_id)
                return
        log.warning("trigger on %s: no camera %r", topic, camera_segment)

    def trigger(self, camera: str, part_id: str) -> None:
        cam = self.cameras.get(camera)
        if cam is None:
            raise KeyError(camera)
        if not cam.trigger_mode:
            raise ValueError(f"camera {camera} is free-running, not in trigger mode")
        cam.trigger(part_id)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            now = time.monotonic()
            for camera in self.cameras.values():
                camera.check_stall(now)

    # -- hot reload
    def reload_model(self, name: str, path: Path | None = None) -> Model:
        """Load the model's file again (or `path`), warm it, then swap it in: capture and HTTP
        never stop, frames in flight finish on the old model, the next batch uses the new one."""
        if name not in self.models:
            raise KeyError(name)
        with self._reload_lock:
            try:
                new = self._load(self._model_configs[name], runtime_options(self.settings), path)
            except Exception:
                self.metrics.model_reloads.labels(name, "failed").inc()
                raise
            current = self.models[name].spec
            problem = None
            if new.spec.task != current.task:
                problem = f"change its task from {current.task} to {new.spec.task}"
            elif new.spec.name != name:
                problem = f"rename it to {new.spec.name!r} (cameras and metrics refer to {name!r})"
            if problem:
                self.metrics.model_reloads.labels(name, "failed").inc()
                raise ValueError(f"reload of {name} would {problem}")
            old = self.slots[name].swap(new)
            self.batchers[name].model = new
            self.models[name] = new
            self._register_metrics(new, replaces=old)
            self.drift.register(new)  # the cameras' windows restart on the new reference
            self.metrics.model_reloads.labels(name, "ok").inc()
            log.info(
                "model %s reloaded: %s -> %s (sha256 %s)",
                name,
                old.spec.version,
                new.spec.version,
                new.spec.sha256[:12],
            )
            return new

    def _register_metrics(self, model: Model, replaces: Model | None = None) -> None:
        s = model.spec
        info = self.metrics.model_info
        if replaces is not None:
            o = replaces.spec
            with contextlib.suppress(KeyError):
                info.remove(
                    o.name, o.version, o.sha256, o.task, o.layout or "", replaces.providers[0]
                )
        info.labels(s.name, s.version, s.sha256, s.task, s.layout or "", model.providers[0]).set(1)
        self.metrics.model_ready.labels(s.name).set(1 if model.warmed else 0)
        self.metrics.init_model(s.name, s.classes)

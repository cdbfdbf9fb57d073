"""Composition root: builds the components from settings and wires them, starts them in order and
stops them in reverse (as Frigate's app does). It holds no behaviour of its own: what runs is in
the stages (`service.stages`), the sinks (`service.sinks`), the served models (`service.served`)
and control (`service.control`). Nothing here runs at import; the CLI (or a test) creates one
`LineInspect`.

Data flow: capture (a `Camera` per source, each into its bounded `FrameBuffer`) -> infer
(`InferStage`, batches across cameras, the batch runner decides) -> publish (`PublishStage`,
sequence + wire payload) -> sinks, in this order: outbox (MQTT), metrics, review, drift, live view,
candidates (a second model judging the same frames in its own worker, never published).

Start order: models (warmed) and their HTTP batchers -> control (the model history, the
configured candidates) -> outbox -> MQTT link -> sinks -> publish -> infer -> cameras ->
watchdog. Stop is the reverse, so capture stops first, the frames already buffered are inferred
and published, the sinks finish (the candidates' workers stop), and the outbox gets a chance to
drain.
"""

from __future__ import annotations

import logging
import threading

from service.api.deps import Api
from service.audit import AuditLog, NullAudit
from service.changeover import Changeover
from service.config import Settings
from service.control import Control
from service.core.wire import Topics
from service.history import ModelHistory
from service.metrics import Metrics
from service.outbox import Outbox
from service.retention import ReviewRetention
from service.served import ServedModels
from service.sinks import NullSink, Sink
from service.sinks.candidate import CandidateSink
from service.sinks.drift import DriftMonitor, NullDrift
from service.sinks.live import LiveView
from service.sinks.metrics import MetricsSink
from service.sinks.mqtt import MqttLink, MqttOptions, NullLink
from service.sinks.review import ReviewSink
from service.sinks.verdicts import NullPublisher, OutboxPublisher, VerdictSink
from service.stages.buffer import BufferPolicy, FrameBuffer
from service.stages.capture import Camera, Watchdog, make_source
from service.stages.infer import InferStage, Route
from service.stages.publish import PublishStage

log = logging.getLogger(__name__)


class LineInspect:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.served = ServedModels(settings, self.metrics)
        self.cameras: dict[str, Camera] = {}
        self.live = LiveView()
        self.drift: DriftMonitor | NullDrift = (
            DriftMonitor(self.metrics, settings.drift) if settings.drift.enabled else NullDrift()
        )
        self.candidates = CandidateSink()
        h = settings.history
        self.history = ModelHistory(h.path, h.keep) if h.enabled else None
        a = settings.audit
        self.audit: AuditLog | NullAudit = (
            AuditLog(a.path or settings.outbox.path.parent / "audit.sqlite")
            if a.enabled
            else NullAudit()
        )
        self.control = Control(
            self.served, self.cameras, self.metrics, self.drift,
            self.candidates, self.history, settings.shadow, self.audit,
        )  # fmt: skip
        self.changeover = Changeover(settings.recipes, self.served, self.control, self.metrics)
        self.changeover.audit = self.audit
        self.outbox: Outbox | None = None
        self.link: MqttLink | NullLink = NullLink()
        self.review: ReviewSink | NullSink = NullSink()
        self.retention: ReviewRetention | None = None
        self.sinks: list[Sink] = []
        self.publish: PublishStage | None = None
        self.infer: InferStage | None = None
        self.watchdog: Watchdog | None = None
        self.shutdown = threading.Event()
        self.started = False

    @property
    def ready(self) -> bool:
        return self.started and self.served.ready

    def api(self) -> Api:
        """The narrow views the HTTP API gets (service.api.deps)."""
        return Api(
            settings=self.settings,
            metrics=self.metrics,
            ready=lambda: self.ready,
            models=self.served,
            control=self.control,
            live=self.live,
            drift=self.drift,
            cameras=self.cameras,
            link_status=lambda: (self.link.connected.is_set(), self.link.last_error),
            outbox_depth=lambda: self.outbox.depth() if self.outbox else (0, None),
            recipes=self.changeover,
            audit=self.audit,
        )

    def start(self) -> None:
        """Start every component in order; on any failure stop what started and re-raise."""
        try:
            self.served.start()
            self.control.start()  # before the cameras: a configured candidate sees every frame
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
        self.shutdown.set()
        if self.watchdog is not None:
            self.watchdog.stop()
        for name, camera in reversed(list(self.cameras.items())):
            camera.stop()
            log.info("camera %s stopped", name)
        if self.infer is not None:
            self.infer.stop()
        if self.publish is not None:
            self.publish.stop()
            log.info("line drained and stopped")
        for sink in reversed(self.sinks):
            sink.close()
        if self.retention is not None:
            self.retention.stop()
        self.candidates.close()  # also without a line (HTTP only), where no sink list holds it
        self.link.stop(self.settings.mqtt.drain_timeout_s)
        if self.outbox is not None:
            depth, _ = self.outbox.depth()
            if depth:
                log.warning("%d messages stay in the outbox %s and will be sent on the next start",
                            depth, self.outbox.path)  # fmt: skip
            self.outbox.close()
        self.audit.publish = None  # the outbox is closed
        self.served.stop()
        self.audit.close()  # last: stopping the models records nothing more

    def start_line(self) -> None:
        """After the models: outbox, MQTT, the sinks, the stages and the cameras."""
        s, m = self.settings, self.metrics
        topics = Topics(s.mqtt.topic_prefix, s.line.name)
        announcer: OutboxPublisher | NullPublisher = NullPublisher()
        if s.mqtt.enabled:
            self.outbox = outbox = self._outbox()
            handlers = {topics.every_camera("trigger"): self.control.on_trigger_message}
            if s.recipes:
                handlers[topics.line_topic("recipe")] = self.changeover.on_message
            self.link = MqttLink(
                self._mqtt_options(topics),
                outbox,
                on_connection=lambda up: m.mqtt_connected.set(1 if up else 0),
                on_sent=m.mqtt_sent.inc,
                subscriptions=handlers,
            )
            self.link.start()
            announcer = OutboxPublisher(outbox, topics)
            self.audit.publish = lambda record: announcer.announce_line("audit", record)
            self.sinks.append(VerdictSink(outbox, topics, m, self.shutdown))
        self.sinks.append(MetricsSink(m))
        if s.review.enabled:
            r = s.review
            review = ReviewSink(r.path, announcer, m, r.sample_rate, r.budget_per_hour)
            m.review_depth.set_function(review.depth)
            self.review = review
            self.sinks.append(review)
            self.control.review = review  # candidates keep the frames they disagree on
            self.retention = ReviewRetention(r.path, m, r.max_age_days, r.max_bytes)
            self.retention.start()
        self.drift.start()
        self.sinks += [self.drift, self.live, self.candidates]
        self.publish = PublishStage(
            s.line.name, self.sinks, m,
            first_sequence=self.outbox.next_sequence if self.outbox else lambda camera: 1,
        )  # fmt: skip
        routes, buffers = self._routes()
        self.infer = InferStage(
            routes, self.publish.put, m, max_batch=s.line.max_batch,
            max_wait_s=s.line.max_wait_ms / 1000, preprocess_threads=s.line.preprocess_threads,
            workers=self.served.parallel_runs,
        )  # fmt: skip
        routing = {c.name: c.model or self.served.default or "" for c in s.cameras}
        self.changeover.attach(self.infer, buffers, routing, announcer)
        self.publish.start()
        self.infer.start()
        if s.line.recipe is not None:  # before the cameras: every frame under the recipe
            self.changeover.select(s.line.recipe, by="config")
        self._start_cameras(buffers)
        self.watchdog = Watchdog(self.cameras)
        self.watchdog.start()

    def _outbox(self) -> Outbox:
        o, m = self.settings.outbox, self.metrics
        outbox = Outbox(
            o.path, o.max_messages, o.max_age_s, o.synchronous,
            on_evict=lambda reason, n: m.outbox_evicted.labels(reason).inc(n),
        )  # fmt: skip
        m.outbox_depth.set_function(lambda: outbox.depth()[0])
        m.outbox_age.set_function(lambda: outbox.depth()[1] or 0.0)
        depth, _ = outbox.depth()
        if depth:
            log.info("outbox %s holds %d messages from an earlier run: sending them first",
                     outbox.path, depth)  # fmt: skip
        return outbox

    def _routes(self) -> tuple[dict[str, Route], dict[str, FrameBuffer]]:
        """One route per model in use: its slot, its cameras' buffers and their wake-up event."""
        m, served = self.metrics, self.served
        routes: dict[str, Route] = {}
        buffers: dict[str, FrameBuffer] = {}
        for cam in self.settings.cameras:
            model_name = cam.model or served.default
            if model_name is None or model_name not in served.slots:
                raise ValueError(
                    f"camera {cam.name}: no model named {model_name!r}; "
                    f"loaded: {sorted(served.slots)}"
                )
            route = routes.setdefault(
                model_name, Route(served.slots[model_name], [], threading.Event())
            )
            policy = BufferPolicy("block" if cam.mode == "trigger" else cam.buffer.policy)
            buffers[cam.name] = FrameBuffer(
                cam.name, cam.buffer.size, policy,
                on_drop=lambda camera, reason: m.frames_dropped.labels(camera, reason).inc(),
                ready=route.ready,
            )  # fmt: skip
            route.buffers.append(buffers[cam.name])
            self.drift.init_camera(cam.name, route.slot.model)
        for recipe in self.settings.recipes:  # a recipe's model serves when it is selected
            for cam_name, rc in recipe.cameras.items():
                if rc.model not in served.slots:
                    raise ValueError(
                        f"recipe {recipe.name}, camera {cam_name}: no model named {rc.model!r}; "
                        f"loaded: {sorted(served.slots)}"
                    )
                if rc.model not in routes:
                    routes[rc.model] = Route(served.slots[rc.model], [], threading.Event())
                    self.drift.register(served.slots[rc.model].model)
        return routes, buffers

    def _start_cameras(self, buffers: dict[str, FrameBuffer]) -> None:
        m, publish = self.metrics, self.publish
        assert publish is not None
        for cam in self.settings.cameras:
            camera = Camera(
                cam.name,
                make_source(
                    cam.source, cam.loop, cam.read_timeout_s, cam.pattern, cam.order == "shuffle"
                ),
                buffers[cam.name],
                fps=cam.fps,
                reconnect_initial_s=cam.reconnect_initial_s,
                reconnect_max_s=cam.reconnect_max_s,
                stall_timeout_s=cam.stall_timeout_s,
                trigger_mode=cam.mode == "trigger",
                trigger_timeout_s=cam.trigger_timeout_s,
                on_frame=lambda name: m.frames_captured.labels(name).inc(),
                on_state=m.camera_state,
                on_trigger_timeout=publish.trigger_timeout,
            )
            m.camera_up.labels(cam.name).set(0)
            m.frames_captured.labels(cam.name)
            self.cameras[cam.name] = camera
            camera.start()

    def _mqtt_options(self, topics: Topics) -> MqttOptions:
        q = self.settings.mqtt
        return MqttOptions(
            host=q.host,
            port=q.port,
            client_id=q.client_id or f"lineinspect-{topics.line}",
            username=q.username,
            password=q.password.get_secret_value() if q.password else None,
            tls=q.tls.enabled,
            ca_file=q.tls.ca_file,
            cert_file=q.tls.cert_file,
            key_file=q.tls.key_file,
            tls_insecure=q.tls.insecure,
            keepalive_s=q.keepalive_s,
            inflight=q.inflight,
            status_topic=topics.line_topic("status"),
        )

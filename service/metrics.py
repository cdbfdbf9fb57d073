"""Every Prometheus metric the service exports, defined in one place on one registry.

Conventions: `lineinspect_` prefix, base units (seconds), counters end in `_total`, labels are
bounded (model names, class names, verdicts, stages, routes) — never a frame or request id.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.core.types import Verdict

if TYPE_CHECKING:
    from service.core.types import Result

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
CONFIDENCE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
# Candidate score minus live score, per class: symmetric around "no change".
SHIFT_BUCKETS = (-0.5, -0.25, -0.1, -0.05, -0.02, -0.005, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    """One instance per running service; tests make their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Gauge(
            "lineinspect_build_info",
            "Build information; the value is always 1.",
            ["version", "python", "onnxruntime"],
            registry=r,
        )
        self.model_info = Gauge(
            "lineinspect_model_info",
            "Loaded models; the value is always 1.",
            ["model", "version", "sha256", "task", "layout", "provider"],
            registry=r,
        )
        self.model_ready = Gauge(
            "lineinspect_model_ready",
            "1 when the model is loaded and warmed up.",
            ["model"],
            registry=r,
        )
        self.inference_duration = Histogram(
            "lineinspect_inference_duration_seconds",
            "Time of one ONNX Runtime session.run call (one batch).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "lineinspect_inference_batch_size",
            "Images per session.run call.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "lineinspect_stage_duration_seconds",
            "Per-image time spent in each stage (decode, preprocess, infer, postprocess, decide).",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "lineinspect_predictions_total",
            "Images judged, by verdict.",
            ["model", "verdict"],
            registry=r,
        )
        self.class_confidence = Histogram(
            "lineinspect_class_confidence",
            "Confidence of each detection / class score / anomaly score, by class.",
            ["model", "class"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "lineinspect_http_requests_total",
            "HTTP requests answered, by route template and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "lineinspect_http_request_duration_seconds",
            "HTTP request handling time, by route template.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected_inputs = Counter(
            "lineinspect_rejected_inputs_total",
            "Client inputs refused, by reason (too_large, bad_image, media_type, ...).",
            ["reason"],
            registry=r,
        )
        self.threshold_updates = Counter(
            "lineinspect_threshold_updates_total",
            "Runtime threshold changes.",
            ["model"],
            registry=r,
        )
        self.recipe_changes = Counter(
            "lineinspect_recipe_changes_total",
            "Recipe selections (PLC over MQTT or HTTP), by result: ok or refused.",
            ["result"],
            registry=r,
        )
        self.recipe_active = Gauge(
            "lineinspect_recipe_active",
            "1 for the recipe the line runs, 0 for the other configured recipes.",
            ["recipe"],
            registry=r,
        )
        # -- the line (capture -> inference -> MQTT)
        self.frames_captured = Counter(
            "lineinspect_frames_captured_total",
            "Frames read from each camera.",
            ["camera"],
            registry=r,
        )
        self.frames_dropped = Counter(
            "lineinspect_frames_dropped_total",
            "Frames dropped before inference, by camera and reason.",
            ["camera", "reason"],
            registry=r,
        )
        self.camera_up = Gauge(
            "lineinspect_camera_up", "1 while the camera delivers frames.", ["camera"], registry=r
        )
        self.camera_reconnects = Counter(
            "lineinspect_camera_reconnects_total",
            "Source (re)open attempts after a failure.",
            ["camera"],
            registry=r,
        )
        self.camera_stalls = Counter(
            "lineinspect_camera_stalls_total",
            "Watchdog detections of a silent source.",
            ["camera"],
            registry=r,
        )
        self.retention_deleted = Counter(
            "lineinspect_retention_deleted_total",
            "Items deleted by the retention policy (kind review: unlabelled items over the age "
            "or size bound).",
            ["kind", "reason"], registry=r,
        )  # fmt: skip
        self.disk_free = Gauge(
            "lineinspect_disk_free_bytes",
            "Free bytes on the file system of a folder the service writes.",
            ["path"], registry=r,
        )  # fmt: skip
        self.inference_server_up = Gauge(
            "lineinspect_inference_server_up",
            "1 while the model's inference backend answers: the Triton server with "
            "runtime.backend triton, always 1 for ONNX Runtime in this process.",
            ["model"], registry=r,
        )  # fmt: skip
        self.inference_server_errors = Counter(
            "lineinspect_inference_server_errors_total",
            "Frames judged UNCERTAIN because the inference server was away or too slow.",
            ["model"], registry=r,
        )  # fmt: skip
        self.pipeline_errors = Counter(
            "lineinspect_pipeline_errors_total",
            "Frames that failed in a stage (each still got a verdict).",
            ["stage"], registry=r,
        )  # fmt: skip
        self.verdicts = Counter(
            "lineinspect_verdicts_total",
            "Verdicts published by the line.",
            ["camera", "verdict"],
            registry=r,
        )
        self.frame_to_verdict = Histogram(
            "lineinspect_frame_to_verdict_seconds",
            "From capture to the verdict being ready to publish.",
            ["camera"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outbox_depth = Gauge(
            "lineinspect_outbox_messages", "Messages waiting in the outbox.", registry=r
        )
        self.outbox_age = Gauge(
            "lineinspect_outbox_oldest_age_seconds",
            "Age of the oldest waiting message (0 if none).",
            registry=r,
        )
        self.outbox_evicted = Counter(
            "lineinspect_outbox_evicted_total",
            "Messages evicted to respect the outbox bounds.",
            ["reason"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "lineinspect_mqtt_connected", "1 while connected to the broker.", registry=r
        )
        self.mqtt_sent = Counter(
            "lineinspect_mqtt_messages_acknowledged_total",
            "Messages the broker acknowledged.",
            registry=r,
        )
        self.review_enqueued = Counter(
            "lineinspect_review_enqueued_total",
            "Frames kept for human review.",
            ["camera", "reason"],
            registry=r,
        )
        self.review_dropped = Counter(
            "lineinspect_review_dropped_total",
            "Review frames not kept (budget, disk, queue_full: the writer fell behind).",
            ["camera", "reason"],
            registry=r,
        )
        self.review_depth = Gauge(
            "lineinspect_review_queue_items", "Items in the review queue.", registry=r
        )
        # -- drift against the model card's reference (service/drift.py, service/sinks/drift.py)
        self.drift_psi = Gauge(
            "lineinspect_drift_psi",
            "Population stability index of the camera's recent frames against the model card's "
            "reference, by signal (brightness, contrast, sharpness, confidence, verdict). "
            "Above 0.1: watch; above 0.25: drifted.",
            ["camera", "signal"],
            registry=r,
        )
        self.drift_ks = Gauge(
            "lineinspect_drift_ks",
            "Kolmogorov-Smirnov statistic (largest CDF gap, 0..1) of the camera's recent frames "
            "against the reference, by signal.",
            ["camera", "signal"],
            registry=r,
        )
        self.drift_window = Gauge(
            "lineinspect_drift_window_frames",
            "Frames in the camera's drift window (drift is meaningful from drift.min_frames).",
            ["camera"],
            registry=r,
        )
        self.drift_min_frames = Gauge(
            "lineinspect_drift_min_frames",
            "Frames a drift window needs before its PSI / KS are judged (drift.min_frames).",
            registry=r,
        )
        self.uncertain_ratio = Gauge(
            "lineinspect_uncertain_ratio",
            "Share of UNCERTAIN verdicts among the camera's recent frames (the drift window).",
            ["camera"],
            registry=r,
        )
        self.drift_skipped = Counter(
            "lineinspect_drift_samples_skipped_total",
            "Frames not added to the drift window because its worker was busy.",
            ["camera"],
            registry=r,
        )
        self.model_reloads = Counter(
            "lineinspect_model_reloads_total",
            "Hot model reloads, by result.",
            ["model", "result"],
            registry=r,
        )
        self.model_changes = Counter(
            "lineinspect_model_changes_total",
            "Model changes other than reloads, by change (candidate, promote, discard, rollback) "
            "and result (ok, failed).",
            ["model", "change", "result"], registry=r,
        )  # fmt: skip
        self.history_entries = Gauge(
            "lineinspect_model_history_entries",
            "Models kept in the model history (history.keep at most).", ["model"], registry=r,
        )  # fmt: skip
        self.thresholds_version = Gauge(
            "lineinspect_thresholds_version",
            "Version of the thresholds the model judges with now (verdicts carry it).",
            ["model"], registry=r,
        )  # fmt: skip
        # -- a candidate judging the live model's frames off the PLC path (sinks/candidate.py)
        self.candidate_info = Gauge(
            "lineinspect_candidate_info",
            "The candidate running beside a live model; the value is always 1.",
            ["model", "version", "sha256"], registry=r,
        )  # fmt: skip
        self.candidate_frames = Counter(
            "lineinspect_candidate_frames_total",
            "Frames judged by both the live model and its candidate.",
            ["model", "camera"], registry=r,
        )  # fmt: skip
        self.candidate_agreement = Gauge(
            "lineinspect_candidate_agreement_ratio",
            "Share of those frames on which the candidate gave the live verdict, since it was "
            "loaded.",
            ["model", "camera"], registry=r,
        )  # fmt: skip
        self.candidate_flips = Counter(
            "lineinspect_candidate_flips_total",
            "Frames on which the candidate's verdict differs, by direction (live verdict -> "
            "candidate verdict).",
            ["model", "camera", "live", "candidate"], registry=r,
        )  # fmt: skip
        self.candidate_score_shift = Histogram(
            "lineinspect_candidate_score_shift",
            "Per class: the candidate's score minus the live model's on the same frame (no _sum: "
            "shifts can be negative; the mean is lineinspect_candidate_score_shift_mean).",
            ["model", "camera", "class"], buckets=SHIFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.candidate_score_shift_mean = Gauge(
            "lineinspect_candidate_score_shift_mean",
            "Per class: the mean of candidate score minus live score since the candidate was "
            "loaded (above 0: the candidate is more confident in that class).",
            ["model", "camera", "class"], registry=r,
        )  # fmt: skip
        self.candidate_duration = Histogram(
            "lineinspect_candidate_duration_seconds",
            "Time the candidate took to judge one frame (preprocess, inference, postprocess, "
            "decision), in its own worker.",
            ["model", "camera"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.candidate_dropped = Counter(
            "lineinspect_candidate_frames_dropped_total",
            "Frames the candidate did not judge: its queue was full (the live path never waits).",
            ["model", "camera"], registry=r,
        )  # fmt: skip
        self.candidate_errors = Counter(
            "lineinspect_candidate_errors_total",
            "Frames the candidate failed to judge.", ["model", "camera"], registry=r,
        )  # fmt: skip
        try:
            import onnxruntime

            ort_version = onnxruntime.__version__
        except Exception:  # a broken install is reported by the loader, not here
            ort_version = "unavailable"
        self.build_info.labels(
            _package_version("lineinspect"), platform.python_version(), ort_version
        ).set(1)

    def init_model(self, name: str, classes: tuple[str, ...]) -> None:
        """Create a model's series at zero so dashboards show them before the first image."""
        for verdict in Verdict:
            self.predictions.labels(name, verdict.value)
        for cls in classes:
            self.class_confidence.labels(name, cls)

    def camera_state(self, camera: str, state: str) -> None:
        """A camera's state change (`service.stages.capture.CameraState` values)."""
        self.camera_up.labels(camera).set(1 if state == "streaming" else 0)
        if state == "reconnecting":
            self.camera_reconnects.labels(camera).inc()
        elif state == "stalled":
            self.camera_stalls.labels(camera).inc()

    def observe(self, result: Result) -> None:
        """Count one judged image: verdict, stage times, confidences."""
        name = result.model.name
        self.predictions.labels(name, result.decision.verdict.value).inc()
        t = result.times
        for stage, seconds in (
            ("decode", t.decode),
            ("preprocess", t.preprocess),
            ("infer", t.infer),
            ("postprocess", t.postprocess),
            ("decide", t.decide),
        ):
            self.stage_duration.labels(name, stage).observe(seconds)
        if result.prediction.probabilities is not None:  # a classifier
            # The winning class's probability: its histogram is the confidence-drift signal.
            top = max(result.decision.findings, key=lambda f: f.confidence)
            self.class_confidence.labels(name, top.class_name).observe(top.confidence)
        else:
            for f in result.decision.findings:
                self.class_confidence.labels(name, f.class_name).observe(f.confidence)

"""The metrics sink: verdict counts, frame-to-verdict latency, stage times and confidences."""

from __future__ import annotations

from service.core.types import Judged
from service.metrics import Metrics


class MetricsSink:
    name = "metrics"

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def handle(self, judged: Judged) -> None:
        m, camera = self.metrics, judged.camera
        m.verdicts.labels(camera, judged.payload["verdict"]).inc()
        m.frame_to_verdict.labels(camera).observe(judged.latency_s)
        if judged.result is not None:
            m.observe(judged.result)

    def close(self) -> None:
        pass

"""Composition root: builds the components from settings, starts them in order, stops them in
reverse. Nothing here runs at import; the CLI (or a test) creates one `LineInspect`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from service.batcher import MicroBatcher
from service.config import Settings
from service.inference.model import Model, load_model, make_policy
from service.inference.runtime import RuntimeOptions
from service.metrics import Metrics

log = logging.getLogger(__name__)


def runtime_options(settings: Settings) -> RuntimeOptions:
    rt = settings.runtime
    return RuntimeOptions(
        providers=tuple(rt.providers),
        intra_op_threads=rt.intra_op_threads,
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
    started: bool = False

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

    def start(self) -> None:
        """Load and warm every model, then start its batcher. Raises on the first failure."""
        options = runtime_options(self.settings)
        try:
            for cfg in self.settings.models:
                model = load_model(cfg.path, options, cfg.card)
                if cfg.thresholds is not None:
                    model.set_policy(
                        make_policy(model.spec, cfg.thresholds, model.policy.good_classes)
                    )
                name = model.spec.name
                if name in self.models:
                    raise ValueError(f"two models are named {name!r}; give one a card `name`")
                self.models[name] = model
                self._register_metrics(model)
            batch = self.settings.api.batch
            for name, model in self.models.items():
                batcher = MicroBatcher(
                    model, self.metrics, batch.max_size, batch.max_wait_ms / 1000
                )
                batcher.start()
                self.batchers[name] = batcher
        except BaseException:
            self.stop()
            raise
        self.started = True

    def stop(self) -> None:
        for name in reversed(list(self.batchers)):
            self.batchers[name].stop()
            log.info("batcher for %s stopped", name)
        self.batchers.clear()
        for name in self.models:
            self.metrics.model_ready.labels(name).set(0)
        self.started = False

    def _register_metrics(self, model: Model) -> None:
        s = model.spec
        self.metrics.model_info.labels(
            s.name, s.version, s.sha256, s.task, s.layout or "", model.providers[0]
        ).set(1)
        self.metrics.model_ready.labels(s.name).set(1 if model.warmed else 0)
        self.metrics.init_model(s.name, s.classes)

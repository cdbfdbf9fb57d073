"""The served models: each loaded, warmed model by name, with the slot the line reads it from
and the HTTP micro-batcher in front of it. Loading, swapping (hot reload) and the model metrics
live here; deciding *when* to swap is `service.control`'s."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from service.api.batcher import MicroBatcher
from service.config import ModelConfig, Settings
from service.inference.model import Model, load_model, make_policy
from service.inference.runtime import RuntimeOptions, cpu_only, parallelism, usable_cores
from service.inference.triton import TritonOptions, TritonSession
from service.metrics import Metrics
from service.stages.infer import ModelSlot

log = logging.getLogger(__name__)
CONFIGURED = "configured"  # `ServedModels.load`: the card the configuration names


def runtime_options(settings: Settings) -> RuntimeOptions:
    rt = settings.runtime
    remote = rt.backend == "triton"
    # A remote model's runs wait on the network, not on these cores: one per core still.
    runs, intra = parallelism(
        rt.parallel_runs, rt.intra_op_threads, remote or cpu_only(rt.providers), usable_cores()
    )
    t = rt.triton
    triton = TritonOptions(
        url=t.url, protocol=t.protocol, model_version=t.model_version, timeout_s=t.timeout_s,
        max_batch=t.max_batch, retry_initial_s=t.retry_initial_s, retry_max_s=t.retry_max_s,
    )  # fmt: skip
    return RuntimeOptions(
        providers=tuple(rt.providers),
        parallel_runs=runs,
        intra_op_threads=intra,
        inter_op_threads=rt.inter_op_threads,
        device_id=rt.device_id,
        tensorrt_cache_dir=rt.tensorrt_cache_dir,
        tensorrt_fp16=rt.tensorrt_fp16,
        warmup_runs=rt.warmup_runs,
        triton=triton if remote else None,
    )


class ServedModels:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.models: dict[str, Model] = {}
        self.slots: dict[str, ModelSlot] = {}
        self.batchers: dict[str, MicroBatcher] = {}
        self.configs: dict[str, ModelConfig] = {}
        self.options = runtime_options(settings)

    @property
    def parallel_runs(self) -> int:
        """Concurrent inferences per model, resolved from the runtime settings."""
        return self.options.parallel_runs

    @property
    def default(self) -> str | None:
        return next(iter(self.models), None)

    @property
    def ready(self) -> bool:
        return all(m.warmed for m in self.models.values()) and all(
            b.running for b in self.batchers.values()
        )

    def start(self) -> None:
        """Load and warm every configured model, then start its HTTP batcher."""
        log.info(
            "inference: %d run(s) at once per model, %s intra-op thread(s) each",
            self.options.parallel_runs,
            self.options.intra_op_threads or "ONNX Runtime's default",
        )
        for cfg in self.settings.models:
            model = self.load(cfg)
            name = model.spec.name
            if name in self.models:
                raise ValueError(f"two models are named {name!r}; give one a card `name`")
            self.models[name] = model
            self.slots[name] = ModelSlot(model)
            self.configs[name] = cfg
            self._register_metrics(model)
        batch = self.settings.api.batch
        for name, model in self.models.items():
            batcher = MicroBatcher(
                model, self.metrics, batch.max_size, batch.max_wait_ms / 1000,
                workers=self.parallel_runs,
            )  # fmt: skip
            batcher.start()
            self.batchers[name] = batcher

    def stop(self) -> None:
        for name in reversed(list(self.batchers)):
            self.batchers[name].stop()
            log.info("batcher for %s stopped", name)
        self.batchers.clear()
        for name in self.models:
            self.metrics.model_ready.labels(name).set(0)

    def load(
        self, cfg: ModelConfig, path: Path | None = None, card: Path | str | None = CONFIGURED
    ) -> Model:
        """Load and warm a model as `cfg` configures it: from `path` instead, if given, with
        `card` (None: the card next to the file; default: the configured one)."""
        card_path = cfg.card if card == CONFIGURED else card
        assert card_path is None or isinstance(card_path, Path)
        model = load_model(path or cfg.path, self.options, card_path)
        if cfg.thresholds is not None:
            policy = make_policy(model.spec, cfg.thresholds, model.policy.good_classes)
            model.set_policy(policy, model.thresholds_version)  # not serving yet: same version
        return model

    def swap(self, name: str, new: Model) -> Model:
        """Serve `new` as `name` from the next batch on, on the line and over HTTP; its
        thresholds version follows the old model's."""
        new.follow(self.models[name])
        old = self.slots[name].swap(new)
        self.batchers[name].model = new
        self.models[name] = new
        self._register_metrics(new, replaces=old)
        return old

    def thresholds_changed(self, model: Model) -> None:
        self.metrics.thresholds_version.labels(model.spec.name).set(model.thresholds_version)

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
        session = model.session
        up = self.metrics.inference_server_up.labels(s.name)
        if isinstance(session, TritonSession):  # read at each scrape: the link's state now
            up.set_function(lambda: session.up)
        else:  # ONNX Runtime in this process: there is no server to lose
            up.set_function(lambda: 1)
        self.metrics.inference_server_errors.labels(s.name)
        self.metrics.init_model(s.name, s.classes)
        self.thresholds_changed(model)

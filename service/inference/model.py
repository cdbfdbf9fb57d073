"""A served model: one ONNX Runtime session, its resolved spec, its family (what the outputs
mean) and its live decision policy.

`preprocess` and `run` are separate so the HTTP path can micro-batch `run` across requests and
the line can overlap the stages; postprocessing and the decision happen in the batch runner
(`service.inference.runner`), which `predict` uses for the in-process path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from service.core.types import ModelIdentity, Result, StageTimes
from service.inference.card import ModelCard, ThresholdSpec, card_path_for, load_card
from service.inference.families import Family, family_for
from service.inference.preprocess import Geometry, UInt8Image, preprocess
from service.inference.registry import ModelSpec, resolve
from service.inference.runner import run_batch
from service.inference.runtime import CPU, RuntimeOptions, create_session
from service.inference.triton import ServerUnavailableError, TritonSession
from service.stages.decide import DecisionPolicy

log = logging.getLogger(__name__)

# Most input pixels one session.run takes on the CPU provider: one 640x640 image, four 320x320,
# eight 224x224. On a CPU a bigger batch buys nothing per image (YOLOv8n at 640 px on 2 cores,
# one thread: 42.5 ms per image at batch 1, 47.7 at batch 8), but every image in a run adds its
# activations (~50 MB at 640 px) to ONNX Runtime's arena, which keeps its peak: with a 640-px
# model the HTTP server reached 861 MB RSS at 16 clients (docs/BENCHMARKS.md, issue 6).
CPU_RUN_PIXELS = 640 * 640


def make_policy(
    spec: ModelSpec, thresholds: ThresholdSpec, good_classes: Iterable[str]
) -> DecisionPolicy:
    """Raises ValueError naming any unknown class or out-of-range value."""
    return DecisionPolicy(
        classes=spec.classes,
        default_threshold=thresholds.default,
        per_class=dict(thresholds.per_class),
        band=thresholds.band,
        per_class_band=dict(thresholds.per_class_band),
        good_classes=frozenset(good_classes),
        min_box_size=thresholds.min_box_size,
    )


def policy_from_card(spec: ModelSpec, card: ModelCard | None) -> DecisionPolicy:
    if card is None:
        return make_policy(spec, ThresholdSpec(), ())
    return make_policy(spec, card.thresholds, card.good_classes)


def thresholds_of(policy: DecisionPolicy) -> ThresholdSpec:
    return ThresholdSpec(
        default=policy.default_threshold,
        per_class=dict(policy.per_class),
        band=policy.band,
        per_class_band=dict(policy.per_class_band),
        min_box_size=policy.min_box_size,
    )


class Model:
    def __init__(
        self, spec: ModelSpec, session: Any, policy: DecisionPolicy, card: ModelCard | None
    ) -> None:
        self.spec = spec
        self.session = session
        self.card = card
        self.providers: list[str] = list(session.get_providers())
        self.family: Family = family_for(spec, [o.name for o in session.get_outputs()])
        # The policy and the identity that names its version, swapped as one pair.
        self._judging = (policy, ModelIdentity(spec.name, spec.version, spec.sha256, spec.task))
        self._policy_lock = threading.Lock()
        self.warmed = False
        self._run_limit = spec.fixed_batch
        if isinstance(session, TritonSession):
            self._run_limit = spec.fixed_batch or session.max_batch
        elif self._run_limit is None and self.providers[:1] == ["CPUExecutionProvider"]:
            h, w = spec.preprocess.size
            self._run_limit = max(1, CPU_RUN_PIXELS // (h * w))
        self._per_image = spec.decoder is not None and spec.decoder.per_image
        if self._per_image:  # outputs not batch-major (NMS inside the graph): one image a run
            self._run_limit = 1

    # -- policy: swapped whole, so a reader always sees one consistent set of thresholds
    @property
    def policy(self) -> DecisionPolicy:
        return self._judging[0]

    @property
    def identity(self) -> ModelIdentity:
        """Name, version, sha256, task and the version of the thresholds in force."""
        return self._judging[1]

    @property
    def thresholds_version(self) -> int:
        return self._judging[1].thresholds_version

    def judging(self) -> tuple[DecisionPolicy, ModelIdentity]:
        """One consistent snapshot: the policy and the identity naming its version."""
        return self._judging

    def set_policy(self, policy: DecisionPolicy, version: int | None = None) -> None:
        """Judge with `policy` from now on, as thresholds version `version` (default: the next
        one)."""
        if policy.classes != self.spec.classes:
            raise ValueError("a policy must keep the model's classes")
        with self._policy_lock:
            identity = self._judging[1]
            number = identity.thresholds_version + 1 if version is None else version
            self._judging = (policy, replace(identity, thresholds_version=number))
        log.info("model %s: thresholds version %d: %s", self.spec.name, number, policy)

    def follow(self, previous: Model) -> None:
        """Number this model's thresholds after `previous`'s (it replaces that model)."""
        self.set_policy(self.policy, previous.thresholds_version + 1)

    @property
    def max_batch(self) -> int | None:
        """Largest batch one `session.run` takes: the model's fixed batch, or on the CPU provider
        the images that fit CPU_RUN_PIXELS; None: no limit (a dynamic batch on a GPU)."""
        return self._run_limit

    # -- stages
    def preprocess(self, image: UInt8Image) -> tuple[np.ndarray, Geometry]:
        return preprocess(image, self.spec.preprocess)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Raw outputs for a (B, C, H, W) batch of any size.

        A batch larger than `max_batch` runs in chunks of that size; a model exported with a
        fixed batch size gets chunks of exactly that size, the last one padded with blank images
        whose outputs are dropped.
        """
        fixed, limit, n = self.spec.fixed_batch, self._run_limit, batch.shape[0]
        if limit is None or n == fixed or (fixed is None and n <= limit):
            outputs: list[np.ndarray] = self.session.run(None, {self.spec.input_name: batch})
            return outputs
        parts = []
        for start in range(0, n, limit):
            chunk = batch[start : start + limit]
            if fixed is not None and len(chunk) < fixed:
                pad = np.zeros((fixed - len(chunk), *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append(self.session.run(None, {self.spec.input_name: chunk}))
        return [np.concatenate(outs, axis=0)[:n] for outs in zip(*parts, strict=True)]

    def run_each(
        self, tensors: Sequence[np.ndarray], geometries: Sequence[Geometry] | None = None
    ) -> list[list[np.ndarray]]:
        """Raw outputs per image (each with a batch axis of one) for (C, H, W) tensors.

        Tensors of one shape run together; a rect letterbox gives frames of other aspect ratios
        other shapes, and those run as their own batches. A layout whose outputs are not
        batch-major runs each image alone (its outputs as they come), with the image's original
        size fed to an `image_shape` input where the model has one (`geometries` needed).
        """
        if self._per_image:
            return [self._run_alone(t, geometries, i) for i, t in enumerate(tensors)]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, tensor in enumerate(tensors):
            groups.setdefault(tensor.shape, []).append(i)
        per_image: list[list[np.ndarray]] = [[] for _ in tensors]
        for indices in groups.values():
            outputs = self.run(np.stack([tensors[i] for i in indices]))
            for k, i in enumerate(indices):
                per_image[i] = [out[k : k + 1] for out in outputs]
        return per_image

    def _run_alone(
        self, tensor: np.ndarray, geometries: Sequence[Geometry] | None, i: int
    ) -> list[np.ndarray]:
        feeds = {self.spec.input_name: tensor[None]}
        shape_input = self.spec.decoder.image_shape_input if self.spec.decoder else None
        if shape_input:
            if geometries is None:
                raise ValueError(f"model {self.spec.name} needs each image's size to run")
            feeds[shape_input] = np.array([geometries[i].image_size], np.float32)
        outputs: list[np.ndarray] = self.session.run(None, feeds)
        return outputs

    def predict(self, images: list[UInt8Image]) -> list[Result]:
        """The in-process path: a list of decoded BGR images -> one Result each, one batch."""
        if not images:
            return []
        t0 = time.perf_counter()
        prepared = [self.preprocess(img) for img in images]
        each = StageTimes(preprocess=(time.perf_counter() - t0) / len(images))
        results = run_batch(
            self, [p[0] for p in prepared], [p[1] for p in prepared], [each] * len(images)
        )
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results  # type: ignore[return-value]

    def warmup(self, runs: int) -> None:
        h, w = self.spec.preprocess.size
        image = np.full((h, w, 3), 114, np.uint8)
        try:
            for _ in range(max(runs, 0)):
                self.predict([image])
        except ServerUnavailableError as exc:  # the line starts anyway, with error verdicts
            log.warning("model %s: warm-up skipped: %s", self.spec.name, exc)
        self.warmed = True


def load_model(
    path: Path, options: RuntimeOptions | None = None, card_path: Path | None = None
) -> Model:
    """Load, resolve and warm a model; raises FileNotFoundError, CardError or ModelError."""
    options = options or RuntimeOptions()
    card_file = card_path or card_path_for(path)
    card = load_card(card_file) if card_file.is_file() else None
    if card_path is not None and card is None:
        raise FileNotFoundError(f"model card not found: {card_path}")
    # A remote model is still resolved here, on a local CPU session that is then dropped: the
    # line knows what it serves even while the server is away.
    local = replace(options, providers=(CPU,)) if options.triton else options
    session = create_session(path, local)
    spec = resolve(path, session, card)
    for warning in spec.warnings:
        log.warning("model %s: %s", path.name, warning)
    if options.triton is not None:
        session = TritonSession(session, spec.sha256, spec.name, options.triton)
        session.connect()
    model = Model(spec, session, policy_from_card(spec, card), card)
    model.warmup(options.warmup_runs)
    log.info(
        "model %s %s ready: task=%s layout=%s classes=%d input=%s providers=%s",
        spec.name,
        spec.version,
        spec.task,
        spec.layout,
        len(spec.classes),
        spec.preprocess.size,
        model.providers,
    )
    return model

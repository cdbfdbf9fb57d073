"""The batch runner: one `session.run` over prepared images, then per image the model family's
postprocessing and the decision. The line's infer stage, the HTTP micro-batcher and the in-process
`Model.predict` all judge through `run_batch`, so an image is judged the same way on every path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from service.core.types import Result, StageTimes

if TYPE_CHECKING:
    from service.inference.model import Model
    from service.inference.preprocess import Geometry
    from service.metrics import Metrics


def run_batch(
    model: Model,
    tensors: Sequence[np.ndarray],
    geometries: Sequence[Geometry],
    times: Sequence[StageTimes],
    metrics: Metrics | None = None,
) -> list[Result | Exception]:
    """Judge one batch. Raises when the inference itself fails (every image of the batch failed);
    an image whose postprocessing or decision fails gets its exception in its place."""
    t0 = time.perf_counter()
    outputs = model.run_each(tensors, geometries)
    infer = time.perf_counter() - t0
    n = len(tensors)
    if metrics is not None:
        metrics.inference_duration.labels(model.spec.name).observe(infer)
        metrics.batch_size.labels(model.spec.name).observe(n)
    policy, identity = model.judging()  # one snapshot of the thresholds for the whole batch
    family = model.family
    results: list[Result | Exception] = []
    for out, geometry, before in zip(outputs, geometries, times, strict=True):
        try:
            t1 = time.perf_counter()
            prediction = family.postprocess(out, geometry, policy)
            t2 = time.perf_counter()
            decision = family.decide(prediction, policy)
            t3 = time.perf_counter()
        except Exception as exc:
            results.append(exc)
            continue
        spent = StageTimes(before.decode, before.preprocess, infer, t2 - t1, t3 - t2)
        results.append(Result(identity, prediction, decision, spent, n))
    return results

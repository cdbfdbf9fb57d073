"""Sinks: where a judged frame goes after the publish stage (`service.stages.publish`).

Each sink is one module: `verdicts` (the durable outbox that `mqtt` drains to the broker),
`review` (the active-learning queue), `drift`, `metrics` and `live` (the operator page's view).
They share one protocol, `Sink`, and a null variant for a sink that is switched off.
"""

from __future__ import annotations

from typing import Protocol

from service.core.types import Judged


class Sink(Protocol):
    name: str  # in logs and in lineinspect_pipeline_errors_total{stage}

    def handle(self, judged: Judged) -> None:
        """Called on the publisher thread for every judged frame, in per-camera order; only the
        verdict sink may block (it must not lose a verdict), every other sink hands heavy work
        to a bounded worker of its own and counts what it drops."""
        ...

    def close(self) -> None:
        """Finish or drop what is queued (counted) and stop; called after the last `handle`."""
        ...


class NullSink:
    """A sink that is switched off."""

    name = "null"

    def handle(self, judged: Judged) -> None:
        pass

    def close(self) -> None:
        pass

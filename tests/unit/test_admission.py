"""HTTP admission (MicroBatcher.admitted): at most `admission_limit` requests hold a decoded
image at once, a bounded number wait, and the rest are refused (the route answers 503)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.api.batcher import MicroBatcher, OverloadedError
from service.inference.model import load_model
from service.inference.runtime import RuntimeOptions
from service.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]


def test_admission_bounds_holders_and_waiters_then_refuses() -> None:
    model = load_model(REPO / "models" / "neu-cls-demo.onnx", RuntimeOptions(warmup_runs=0))
    batcher = MicroBatcher(model, Metrics(), max_size=1, queue_size=3)
    limit = batcher.admission_limit
    assert limit == 4  # max(4, 2 x batch)

    async def scenario() -> tuple[int, int, int]:
        release = asyncio.Event()
        holding = 0

        async def request() -> None:
            nonlocal holding
            async with batcher.admitted():
                holding += 1
                await release.wait()

        tasks = [asyncio.create_task(request()) for _ in range(limit + 3)]
        await asyncio.sleep(0.05)
        held, waiting = holding, len([t for t in tasks if not t.done()]) - holding
        with pytest.raises(OverloadedError, match="already waiting"):
            async with batcher.admitted():
                pass
        release.set()
        await asyncio.gather(*tasks)
        return held, waiting, holding

    held, waiting, total = asyncio.run(scenario())
    assert held == limit, "never more than the admission limit hold an image"
    assert waiting == 3, "the queue's worth wait"
    assert total == limit + 3, "every waiting request is served once places free up"

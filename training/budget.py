"""How long a training run will take: the estimate before it starts and the ETA while it runs.

The rules are pure functions (no torch, no clock reads): the trainers time a few real steps
(`best_step_seconds`, the one timer they share) and the epochs themselves and hand the numbers
in, so every rule here is table-tested (tests/training/test_budget.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

BUDGET_SECONDS = 3600.0  # above about an hour of CPU a run gets a warning before it starts


def best_step_seconds(step: Callable[[], object], steps: int = 1) -> tuple[float, float]:
    """(CPU, wall) seconds of the fastest of `steps` runs of `step`, after one warm-up run (the
    first run allocates and warms caches)."""
    best_cpu = best_wall = float("inf")
    for i in range(steps + 1):
        cpu, wall = time.process_time(), time.perf_counter()
        step()
        if i:
            best_cpu = min(best_cpu, time.process_time() - cpu)
            best_wall = min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_duration(seconds: float) -> str:
    """45 s, 3 min 20 s, 2 h 05 min: precise enough to plan with, short enough to read."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass(frozen=True)
class Eta:
    elapsed_s: float
    per_epoch_s: float
    epochs_done: int
    epochs_left: int
    remaining_s: float
    finish: datetime


def eta(elapsed_s: float, epochs_done: int, epochs_total: int, now: datetime) -> Eta:
    """Mean epoch time of the epochs run so far (in this process) times the epochs left."""
    per_epoch = elapsed_s / max(epochs_done, 1)
    left = max(epochs_total - epochs_done, 0)
    remaining = per_epoch * left
    return Eta(
        elapsed_s, per_epoch, epochs_done, left, remaining, now + timedelta(seconds=remaining)
    )


def finish_text(e: Eta, now: datetime) -> str:
    """`done about 14:32`; the finish carries its date when it is not today."""
    if e.epochs_left == 0:
        return "last epoch done"
    when = f"{e.finish:%H:%M}" if e.finish.date() == now.date() else f"{e.finish:%Y-%m-%d %H:%M}"
    return f"done about {when}"


def eta_line(e: Eta, now: datetime) -> str:
    """The full line printed after the first epoch."""
    if e.epochs_left == 0:
        return f"ETA: {format_duration(e.elapsed_s)} elapsed, last epoch done"
    return (
        f"ETA: {format_duration(e.elapsed_s)} elapsed, {format_duration(e.per_epoch_s)} per "
        f"epoch, {plural(e.epochs_left, 'epoch')} left, expected finish in "
        f"{format_duration(e.remaining_s)} ({finish_text(e, now)})"
    )


def steps_per_epoch(images: int, batch: int) -> int:
    return max(1, math.ceil(images / max(batch, 1)))


def run_cost(step_s: float, steps: int, epochs: int, eval_share: float = 0.0) -> float:
    """Seconds for `epochs` epochs of `steps` training steps; `eval_share` adds the per-epoch
    validation as a share of the training time (forward passes only on a smaller split)."""
    return step_s * steps * epochs * (1.0 + eval_share)


def advice(
    cost_s: float,
    budget_s: float,
    *,
    epochs: int,
    image_size: int | None,
    epochs_done: int = 0,
    stride: int = 32,
    min_size: int = 32,
    alternatives: Mapping[str, float] | None = None,
) -> list[str]:
    """Settings that bring the run under `budget_s`, one change each: fewer epochs (cost is
    linear in them), a smaller input (cost grows with its area; None: the size cannot change,
    as on a resume), or a smaller model (`alternatives`: model -> its cost for the same run).

    `epochs` are those still to run; a resumed run has `epochs_done` behind it, and --epochs
    counts from the start of the run."""
    if cost_s <= budget_s:
        return []
    ratio = budget_s / cost_s
    out = []
    fit_epochs = math.floor(epochs * ratio)
    if fit_epochs >= 1:
        out.append(f"--epochs {epochs_done + fit_epochs}")
    if image_size is not None:
        fit_size = math.floor(image_size * math.sqrt(ratio) / stride) * stride
        if fit_size >= min_size:
            out.append(f"--image-size {fit_size}")
    for model, model_cost in sorted((alternatives or {}).items(), key=lambda kv: kv[1]):
        if model_cost <= budget_s:
            out.append(f"--model {model} (about {format_duration(model_cost)})")
    return out


def budget_warning(
    cost_s: float, budget_s: float, detail: str, suggestions: list[str]
) -> str | None:
    """The warning printed before a run over budget (None when it fits); it never blocks."""
    if cost_s <= budget_s:
        return None
    fits = (
        f"to fit about {format_duration(budget_s)}: {', or '.join(suggestions)}"
        if suggestions
        else "no single setting brings it under the budget: change several, or use a GPU"
    )
    return (
        f"warning: this run needs about {format_duration(cost_s)} of CPU ({detail}); "
        f"{fits}. Continuing."
    )

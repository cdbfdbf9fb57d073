"""The run-cost estimate, its advice and the ETA: pure functions, table-tested."""

from __future__ import annotations

from datetime import datetime

import pytest

from training import budget
from training.commands.detect import model_alternatives

NOON = datetime(2025, 3, 14, 12, 0, 0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "0 s"),
        (0.4, "0 s"),
        (45, "45 s"),
        (59.4, "59 s"),
        (60, "1 min 00 s"),
        (200, "3 min 20 s"),
        (3599, "59 min 59 s"),
        (3600, "1 h 00 min"),
        (7500, "2 h 05 min"),
        (100 * 3600, "100 h 00 min"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert budget.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("elapsed", "done", "total", "per_epoch", "left", "remaining"),
    [
        (60, 1, 10, 60, 9, 540),  # after the first epoch
        (300, 5, 10, 60, 5, 300),  # the mean of the epochs so far
        (90, 3, 3, 30, 0, 0),  # the last one
        (10, 0, 4, 10, 4, 40),  # no epoch yet: one "epoch" of elapsed time
        (50, 6, 5, 50 / 6, 0, 0),  # never negative
    ],
)
def test_eta(
    elapsed: float, done: int, total: int, per_epoch: float, left: int, remaining: float
) -> None:
    e = budget.eta(elapsed, done, total, NOON)
    assert e.per_epoch_s == pytest.approx(per_epoch)
    assert e.epochs_left == left
    assert e.remaining_s == pytest.approx(remaining)
    assert (e.finish - NOON).total_seconds() == pytest.approx(remaining)


@pytest.mark.parametrize(
    ("elapsed", "done", "total", "expected"),
    [
        (
            70,
            1,
            20,
            "ETA: 1 min 10 s elapsed, 1 min 10 s per epoch, 19 epochs left, expected finish in "
            "22 min 10 s (done about 12:22)",
        ),
        (
            3600,
            1,
            2,
            "ETA: 1 h 00 min elapsed, 1 h 00 min per epoch, 1 epoch left, expected finish in "
            "1 h 00 min (done about 13:00)",
        ),
        (
            3600,
            1,
            14,  # 13 h later is tomorrow: the date is shown
            "ETA: 1 h 00 min elapsed, 1 h 00 min per epoch, 13 epochs left, expected finish in "
            "13 h 00 min (done about 2025-03-15 01:00)",
        ),
        (30, 3, 3, "ETA: 30 s elapsed, last epoch done"),
    ],
)
def test_eta_line(elapsed: float, done: int, total: int, expected: str) -> None:
    assert budget.eta_line(budget.eta(elapsed, done, total, NOON), NOON) == expected


def test_finish_text() -> None:
    assert budget.finish_text(budget.eta(60, 2, 4, NOON), NOON) == "done about 12:01"
    assert budget.finish_text(budget.eta(60, 4, 4, NOON), NOON) == "last epoch done"


@pytest.mark.parametrize(
    ("images", "batch", "steps"),
    [(1007, 16, 63), (1007, 32, 32), (16, 16, 1), (17, 16, 2), (0, 16, 1), (5, 0, 5)],
)
def test_steps_per_epoch(images: int, batch: int, steps: int) -> None:
    assert budget.steps_per_epoch(images, batch) == steps


@pytest.mark.parametrize(
    ("step", "steps", "epochs", "share", "cost"),
    [(0.5, 63, 170, 0.0, 5355.0), (0.5, 63, 170, 0.1, 5890.5), (2.0, 10, 0, 0.5, 0.0)],
)
def test_run_cost(step: float, steps: int, epochs: int, share: float, cost: float) -> None:
    assert budget.run_cost(step, steps, epochs, share) == pytest.approx(cost)


@pytest.mark.parametrize(
    ("cost", "kwargs", "expected"),
    [
        # within budget: nothing to say
        (3600, {"epochs": 20, "image_size": 224}, []),
        # 2x over: half the epochs, or 1/sqrt(2) of the side rounded down to the stride
        (7200, {"epochs": 20, "image_size": 224}, ["--epochs 10", "--image-size 128"]),
        # 4x over: a quarter of the epochs, half the side
        (14400, {"epochs": 170, "image_size": 640}, ["--epochs 42", "--image-size 320"]),
        # so far over that neither a single epoch nor the smallest size fits
        (3600 * 500, {"epochs": 100, "image_size": 64}, []),
        # a resumed run: --epochs counts from its start, its size cannot change
        (7200, {"epochs": 10, "epochs_done": 30, "image_size": None}, ["--epochs 35"]),
        # smaller models that fit, cheapest first; those still over budget are not offered
        (
            7200,
            {
                "epochs": 2,
                "image_size": 32,
                "alternatives": {"yolov8s.yaml": 5000, "yolov8n.yaml": 1500, "x.yaml": 3601},
            },
            ["--epochs 1", "--model yolov8n.yaml (about 25 min 00 s)"],
        ),
    ],
)
def test_advice(cost: float, kwargs: dict, expected: list[str]) -> None:
    assert budget.advice(cost, 3600, **kwargs) == expected


def test_budget_warning() -> None:
    assert budget.budget_warning(3000, 3600, "detail", ["--epochs 3"]) is None
    warning = budget.budget_warning(7200, 3600, "170 epochs", ["--epochs 85", "--image-size 160"])
    assert warning == (
        "warning: this run needs about 2 h 00 min of CPU (170 epochs); to fit about 1 h 00 min: "
        "--epochs 85, or --image-size 160. Continuing."
    )
    assert "no single setting" in str(budget.budget_warning(9e9, 3600, "x", []))


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("yolov8n.yaml", {}),  # nothing smaller in its family
        ("yolov8s.yaml", {"yolov8n.yaml": 8.7 / 28.6}),
        ("yolo11m.yaml", {"yolo11n.yaml": 6.5 / 68.0, "yolo11s.yaml": 21.5 / 68.0}),
        ("efflite0", {"yolov8n.yaml": 8.7 / 13.0}),
        ("my-model.yaml", {}),  # unknown cost: no advice
    ],
)
def test_model_alternatives(model: str, expected: dict[str, float]) -> None:
    got = model_alternatives(model, 1.0)
    assert got.keys() == expected.keys()
    for name, ratio in expected.items():
        assert got[name] == pytest.approx(ratio)


def test_best_step_seconds_leaves_the_warm_up_out() -> None:
    import time

    calls: list[int] = []

    def step() -> None:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.2)  # the first run allocates: it must not count

    cpu, wall = budget.best_step_seconds(step, steps=2)
    assert len(calls) == 3
    assert 0 <= wall < 0.1 and 0 <= cpu < 0.1

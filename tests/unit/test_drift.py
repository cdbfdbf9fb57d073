"""Drift statistics: pure functions table-tested, the window's running counts, the card parser."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.config import DriftConfig
from service.core.types import Frame
from service.drift import (
    STATS,
    Reference,
    Window,
    image_stats,
    ks,
    level,
    merge_bins,
    psi,
)
from service.inference.card import load_card
from service.inference.model import load_model
from service.inference.runtime import RuntimeOptions
from service.metrics import Metrics
from service.sinks.drift import DriftMonitor
from training.cards import image_stats as training_image_stats

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("counts", "target", "groups"),
    [
        ([10, 10, 10, 10], 4, [(0, 1), (1, 2), (2, 3), (3, 4)]),
        ([10, 10, 10, 10], 2, [(0, 2), (2, 4)]),
        ([1, 1, 1, 37], 4, [(0, 3), (3, 4)]),  # a heavy bin stands alone, its light side too
        ([37, 1, 1, 1], 4, [(0, 1), (1, 4)]),
        ([10, 10, 1, 1], 2, [(0, 2), (2, 4)]),
        ([10, 10, 10, 1], 2, [(0, 2), (2, 4)]),
        ([10, 10, 10, 9, 1], 4, [(0, 1), (1, 2), (2, 3), (3, 5)]),
        ([10, 10, 10, 10, 1], 4, [(0, 2), (2, 5)]),  # a light tail joins its neighbour
        ([0, 0, 0, 40], 4, [(0, 3), (3, 4)]),  # all in one bin: values outside it must count
        ([0, 0, 0], 3, [(0, 3)]),
        ([5, 0, 5, 0, 0], 2, [(0, 1), (1, 2), (2, 5)]),
    ],
)
def test_merge_bins(counts: list[int], target: int, groups: list[tuple[int, int]]) -> None:
    assert merge_bins(counts, target) == groups


def test_psi_and_ks_values() -> None:
    same = [20, 30, 50]
    groups = [(0, 1), (1, 2), (2, 3)]
    assert psi(same, [2, 3, 5], groups) == pytest.approx(0.0, abs=0.02)
    assert ks(same, [2, 3, 5]) == pytest.approx(0.0)
    shifted = psi(same, [50, 30, 20], groups)
    # hand value without smoothing: (0.5-0.2)ln(2.5) + 0 + (0.2-0.5)ln(0.4) = 0.5497
    assert shifted == pytest.approx(0.5497, abs=0.02)
    assert ks(same, [50, 30, 20]) == pytest.approx(0.3)
    assert psi(same, [0, 0, 0], groups) == 0.0  # nothing seen yet: no drift claimed
    assert np.isfinite(psi(same, [0, 0, 100], groups))  # empty live bins stay finite


@pytest.mark.parametrize(
    ("value", "expected"), [(0.05, "ok"), (0.1, "ok"), (0.2, "watch"), (0.26, "alert")]
)
def test_level(value: float, expected: str) -> None:
    assert level(value, 0.1, 0.25) == expected


def test_window_running_counts_equal_a_recount() -> None:
    card = load_card(REPO / "models" / "neu-cls-int8.card.yaml")
    ref = Reference.from_card(card.reference, 10)
    assert ref is not None
    window = Window(ref, "x", size=50)
    rng = random.Random(1)
    rows = []
    for _ in range(400):
        bins = {name: [rng.randrange(len(sig.counts))] for name, sig in ref.signals.items()}
        window.add(bins, rng.randrange(3))
        rows.append(bins)
    for name, sig in ref.signals.items():
        expect = np.zeros(len(sig.counts))
        for row in rows[-50:]:
            for i in row[name]:
                expect[i] += 1
        assert np.array_equal(window.counts[name], expect), name
    assert len(window.rows) == 50 and window.verdicts.sum() == 50


def test_reference_parses_the_shipped_cards() -> None:
    for name, signals in (
        ("neu-cls-int8", {*STATS, "confidence"}),
        ("neu-det-demo", {*STATS, "confidence"}),
        ("mt-anomaly", {*STATS, "confidence"}),
    ):
        card = load_card(REPO / "models" / f"{name}.card.yaml")
        ref = Reference.from_card(card.reference, 10)
        assert ref is not None and set(ref.signals) == signals, name
        for sig in ref.signals.values():
            assert len(sig.inner_edges) == len(sig.counts) - 1
            assert 2 <= len(sig.groups) <= 10
    assert Reference.from_card({"image_stats": {}}, 10) is None  # unusable: drift off, no crash


def test_binning_matches_numpy_histogram_of_the_reference(neu_images: list[Path]) -> None:
    """A value binned live lands where np.histogram put it when the card was written."""
    card = load_card(REPO / "models" / "neu-cls-int8.card.yaml")
    ref = Reference.from_card(card.reference, 10)
    assert ref is not None
    edges = card.reference["image_stats"]["brightness"]["histogram"]["edges"]
    edges = [-np.inf if e is None and i == 0 else np.inf if e is None else e
             for i, e in enumerate(edges)]  # fmt: skip
    for path in neu_images[:60]:
        value = image_stats(cv2.imread(str(path)))[0]
        counts, _ = np.histogram([value], bins=np.asarray(edges))
        assert ref.signals["brightness"].bin_of(value) == int(np.argmax(counts))


def test_service_and_trainer_compute_the_same_image_stats(neu_images: list[Path]) -> None:
    image = cv2.imread(str(neu_images[0]))
    b, c, s = image_stats(image)
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    # the definition written in the card docs, computed independently with numpy
    assert b == pytest.approx(grey.mean()) and c == pytest.approx(grey.std())
    assert s == pytest.approx(cv2.Laplacian(grey, cv2.CV_64F).var())
    assert training_image_stats(image) == {"brightness": b, "contrast": c, "sharpness": s}


def test_monitor_separates_darkened_frames_and_resets_on_a_new_model(
    neu_images: list[Path],
) -> None:
    model = load_model(REPO / "models" / "neu-cls-int8.onnx", RuntimeOptions(warmup_runs=0))
    metrics = Metrics()
    monitor = DriftMonitor(metrics, DriftConfig(window=120, min_frames=100))
    monitor.init_camera("fresh", model)
    monitor.init_camera("dark", model)
    paths = neu_images[:: len(neu_images) // 120][:120]  # every class, as a line mixes them
    random.Random(0).shuffle(paths)
    images = [cv2.imread(str(p)) for p in paths]
    for i, (image, result) in enumerate(zip(images, model.predict(images), strict=True)):
        monitor.update(Frame("fresh", i + 1, image, 0.0, 0.0), result)
    dark = [cv2.convertScaleAbs(image, alpha=0.5) for image in images]
    for i, (image, result) in enumerate(zip(dark, model.predict(dark), strict=True)):
        monitor.update(Frame("dark", i + 1, image, 0.0, 0.0), result)
    snap = monitor.snapshot()
    # PSI's noise floor is about (bins - 1) * (1/window + 1/reference): ~0.11 here
    assert snap["fresh"]["state"] in ("ok", "watch"), snap["fresh"]
    assert max(v["psi"] for v in snap["fresh"]["signals"].values()) < 0.25
    assert snap["dark"]["state"] == "alert" and snap["dark"]["signals"]["brightness"]["psi"] > 1
    value = metrics.registry.get_sample_value(
        "lineinspect_drift_psi", {"camera": "dark", "signal": "brightness"}
    )
    assert value is not None and value > 1
    assert (
        metrics.registry.get_sample_value("lineinspect_drift_window_frames", {"camera": "dark"})
        == 120
    )
    assert metrics.registry.get_sample_value("lineinspect_drift_min_frames") == 100
    # a hot reload to a model with another reference restarts the camera's window
    other = load_model(REPO / "models" / "neu-det-demo.onnx", RuntimeOptions(warmup_runs=0))
    monitor.register(other)
    monitor.update(Frame("dark", 999, dark[0], 0.0, 0.0), other.predict(dark[:1])[0])
    assert monitor.snapshot()["dark"]["window"] == 1
    assert monitor.snapshot()["dark"]["state"] == "warming_up"

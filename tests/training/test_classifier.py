"""A CI-sized classifier run end to end: real NEU images -> EfficientNet-Lite0 transfer learning
-> ONNX + card + report -> served by lineinspect. Plus the CLI's answers to bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.inference.card import card_path_for, load_card
from service.inference.model import load_model
from service.inference.registry import file_sha256
from training.classify import ClassifierConfig, train_classifier
from training.dataset import load_dataset, split_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    manifest = split_dataset(load_dataset(data_dir / "neu-det"), seed=0)
    out = tmp_path_factory.mktemp("cls") / "neu-tiny.onnx"
    cfg = ClassifierConfig(
        name="neu-tiny", image_size=96, epochs=1, batch_size=16, limit_per_class=6, threads=2
    )
    metrics = train_classifier(manifest, out, cfg)
    return out, metrics


def test_exported_model_is_served_with_its_card(
    trained: tuple[Path, dict], neu_images: list[Path]
) -> None:
    onnx_path, metrics = trained
    card = load_card(card_path_for(onnx_path))
    assert card.sha256 == file_sha256(onnx_path)
    assert (
        card.task == "classify" and card.classes == sorted(card.classes) and len(card.classes) == 6
    )
    assert card.input.size == (96, 96) and card.input.mean == 0.5 and card.input.std == 0.5
    assert card.training["onnx_torch_max_abs_diff"] <= 1e-4
    assert card.training["manifest_sha256"] and card.training["command"].startswith("python ")
    assert set(card.reference["image_stats"]) == {"brightness", "contrast", "sharpness"}
    assert set(card.reference["class_confidence"]) == set(card.classes)
    assert set(card.thresholds.per_class) <= set(card.classes)
    assert {"test", "val", "readiness", "overfitting"} <= set(metrics)

    model = load_model(onnx_path)
    assert model.spec.sources["input.size"] == "card" and model.spec.output_kind == "probabilities"
    assert model.spec.fixed_batch is None, "the batch axis must be dynamic"
    images = [cv2.imread(str(p)) for p in neu_images[:3]]
    results = model.predict(images)
    for r in results:
        probs = r.prediction.probabilities
        assert probs is not None and probs.shape == (6,) and abs(float(probs.sum()) - 1) < 1e-4
    alone = model.predict(images[1:2])[0].prediction.probabilities
    np.testing.assert_allclose(alone, results[1].prediction.probabilities, atol=1e-5)


def test_report_files(trained: tuple[Path, dict]) -> None:
    onnx_path, _ = trained
    report = onnx_path.with_name("neu-tiny-report")
    for name in (
        "report.md",
        "report.html",
        "metrics.json",
        "confusion_matrix.png",
        "pr_curves.png",
        "confidence_histogram.png",
    ):
        assert (report / name).stat().st_size > 0, name
    text = (report / "report.md").read_text()
    assert "Production readiness" in text and "miss rate" in text


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/train_classifier.py", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=os.environ, check=False,
    )  # fmt: skip


def test_cli_bad_inputs(tmp_path: Path, neu_images: list[Path]) -> None:
    (tmp_path / "empty").mkdir()
    r = _cli("--data", tmp_path / "empty", "--out", tmp_path / "m.onnx")
    assert r.returncode == 2 and "no images found" in r.stderr and "Traceback" not in r.stderr
    one = tmp_path / "one"
    for cls, n in (("crazing", 4), ("scratches", 1)):
        (one / cls).mkdir(parents=True)
        for p in [p for p in neu_images if p.name.startswith(cls)][:n]:
            shutil.copy(p, one / cls / p.name)
    r = _cli("--data", one, "--out", tmp_path / "m.onnx")
    assert r.returncode == 2 and "'scratches': 1" in r.stderr and "Traceback" not in r.stderr
    r = _cli("--data", one, "--good-classes", "good", "--out", tmp_path / "m.onnx", "--quick")
    assert r.returncode == 2 and "fewer than 3" in r.stderr


def test_int8_quantisation_reports_its_cost(
    trained: tuple[Path, dict], data_dir: Path, neu_images: list[Path]
) -> None:
    from training.quantize import quantize_classifier

    onnx_path, _ = trained
    manifest = split_dataset(load_dataset(data_dir / "neu-det"), seed=0)
    manifest.splits["test"] = manifest.splits["test"][:24]  # CI-sized evaluation
    out = onnx_path.with_name("neu-tiny-int8.onnx")
    summary = quantize_classifier(onnx_path, out, manifest, calibration_images=8)
    assert summary["int8"]["bytes"] < summary["fp32"]["bytes"] / 2
    card = load_card(card_path_for(out))
    assert card.sha256 == file_sha256(out) and card.metrics["quantization"] == summary
    model = load_model(out)
    assert model.spec.classes == tuple(card.classes or ())
    probs = model.predict([cv2.imread(str(neu_images[0]))])[0].prediction.probabilities
    assert probs is not None and abs(float(probs.sum()) - 1) < 1e-3

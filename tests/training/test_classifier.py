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

from service.cli import main
from service.inference.card import card_path_for, load_card
from service.inference.model import load_model
from service.inference.registry import file_sha256
from training.classify import ClassifierConfig, batch_starts, train_classifier
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
    # the family-neutral report: the domain's readiness table and the advice section
    assert "| criterion | measured | target | result | note |" in text
    assert "| overall accuracy |" in text and "| lowest class recall (`" in text
    assert "| train - validation accuracy (points) |" in text
    assert "## What to do next" in text
    # 6 training images per class (limit_per_class): every run is told to label more
    assert "label more `" in text and "pilot needs 200" in text
    assert "<h2>What to do next</h2>" in (report / "report.html").read_text()


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "train", "classify", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=os.environ, check=False,
    )  # fmt: skip


def _one_line_error(r: subprocess.CompletedProcess[str], expected: str) -> None:
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("lineinspect: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert expected in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_bad_inputs(tmp_path: Path, neu_images: list[Path]) -> None:
    (tmp_path / "empty").mkdir()
    _one_line_error(_cli("--data", tmp_path / "nowhere"), "dataset folder not found")
    _one_line_error(
        _cli("--data", tmp_path / "empty", "--out", tmp_path / "m.onnx"), "no images found"
    )
    one = tmp_path / "one"
    for cls, n in (("crazing", 4), ("scratches", 1)):
        (one / cls).mkdir(parents=True)
        for p in [p for p in neu_images if p.name.startswith(cls)][:n]:
            shutil.copy(p, one / cls / p.name)
    _one_line_error(_cli("--data", one, "--out", tmp_path / "m.onnx"), "'scratches': 1")
    r = _cli("--data", one, "--good-classes", "good", "--out", tmp_path / "m.onnx", "--quick")
    _one_line_error(r, "fewer than 3")
    r = _cli("--data", one, "--out", tmp_path / "never.onnx", "--resume")
    _one_line_error(r, "nothing to resume: no checkpoint in")


@pytest.mark.parametrize(("images", "batch", "starts"), [(10, 4, [0, 4, 8]), (9, 4, [0, 4]),
                         (8, 4, [0, 4]), (1, 4, []), (2, 4, [0]), (33, 32, [0])])  # fmt: skip
def test_a_last_batch_of_one_image_is_skipped(images: int, batch: int, starts: list[int]) -> None:
    assert batch_starts(images, batch) == starts


@pytest.fixture(scope="module")
def three_classes(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class folders (links to 12 NEU images each): the layout a user brings."""
    root = tmp_path_factory.mktemp("folders")
    for cls in ("crazing", "inclusion", "scratches"):
        (root / cls).mkdir()
        for i in range(1, 13):
            name = f"{cls}_{i}.jpg"
            (root / cls / name).symlink_to(data_dir / "neu-det" / "IMAGES" / name)
    return root


def test_resume_continues_an_interrupted_run(
    three_classes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interruption after epoch 1 (a run of --epochs 1), then --resume --epochs 3: the run
    goes on at epoch 2 from the checkpoint and its card has the whole history. The small CNN
    (the demo model's recipe) keeps it CI-sized; --budget-minutes 0 forces the warning."""
    out = tmp_path / "parts.onnx"
    base = ["train", "classify", "--data", str(three_classes), "--out", str(out), "--model",
            "small-cnn", "--image-size", "64", "--batch-size", "8", "--threads", "1",
            "--augment", "light", "--patience", "0"]  # fmt: skip
    assert main([*base, "--epochs", "1", "--budget-minutes", "0"]) == 0
    first = capsys.readouterr()
    assert "estimate: about" in first.out
    assert "warning: this run needs about" in first.err and "Continuing." in first.err
    work = tmp_path / "parts-work"
    assert (work / "last.pt").is_file() and (out.with_name("parts-split.json")).is_file()

    assert main([*base, "--epochs", "3", "--resume", "--int8"]) == 0
    second = capsys.readouterr().out
    assert f"resuming from {work / 'last.pt'}: epoch 2 of 3" in second
    assert "epoch 1/" not in second and "epoch 2/3: train loss" in second
    assert "ETA: " in second and "2 epochs left" not in second  # epoch 2 of 3: one left
    assert "1 epoch left" in second
    card = load_card(card_path_for(out))
    assert [h["epoch"] for h in card.training["history"]] == [1, 2, 3]
    assert (
        card.training["config"]["epochs"] == 3 and card.training["config"]["model"] == "small-cnn"
    )
    assert card.training["command"].startswith("lineinspect train classify --data ")
    assert card.training["method"] == "SmallCNN(width=24) trained from scratch"
    assert load_model(out).spec.classes == ("crazing", "inclusion", "scratches")
    # --int8: the int8 file beside it, with its card, and both in the readiness report
    int8 = out.with_name("parts-int8.onnx")
    assert f"int8: {int8}: test accuracy " in second
    q = load_card(card_path_for(int8)).metrics["quantization"]
    assert q["int8"]["bytes"] < q["fp32"]["bytes"] and 0 <= q["int8"]["test_accuracy"] <= 1
    assert load_model(int8).spec.classes == ("crazing", "inclusion", "scratches")
    report = (out.with_name("parts-report") / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# ") and "## INT8 and fp32" in report
    assert "| parts.onnx |" in report and "| parts-int8.onnx |" in report
    assert "| overall accuracy |" in report.split("## INT8 and fp32")[1]

    # Another input size cannot continue this checkpoint: one line, nothing trained.
    assert main([*base, "--epochs", "3", "--resume", "--image-size", "96"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lineinspect: error: the checkpoint in") and "image_size 64" in err


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
    assert summary["calibration_split"] == "val" and summary["calibration_images"] == 8
    card = load_card(card_path_for(out))
    assert card.sha256 == file_sha256(out) and card.metrics["quantization"] == summary
    model = load_model(out)
    assert model.spec.classes == tuple(card.classes or ())
    probs = model.predict([cv2.imread(str(neu_images[0]))])[0].prediction.probabilities
    assert probs is not None and abs(float(probs.sum()) - 1) < 1e-3

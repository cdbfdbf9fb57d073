"""`lineinspect train ...` and `lineinspect dataset ...` are subcommands of the service's entry
point: the parser builds without the training extras (the service never needs them), the help
describes the user's data, and a missing extra is one line naming what to install."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from service import cli
from tests.conftest import REPO

# As if the training extras were not installed: importing them fails.
WITHOUT_EXTRAS = (
    "import sys\n"
    "for name in ('torch', 'ultralytics', 'sklearn', 'albumentations'):\n"
    "    sys.modules[name] = None\n"
    "from service.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "heavy = [m for m in ('torch', 'ultralytics', 'sklearn') if sys.modules.get(m) is not None]\n"
    "assert not heavy, heavy\n"
    "raise SystemExit(code)\n"
)


def without_extras(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_help_needs_no_training_extras() -> None:
    r = without_extras("--help")
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "dataset" in r.stdout
    r = without_extras("train", "--help")
    assert r.returncode == 0, r.stderr
    assert "classify" in r.stdout and "detect" in r.stdout
    r = without_extras("dataset", "--help")
    assert r.returncode == 0, r.stderr
    assert "qa" in r.stdout and "export-yolo" in r.stdout


@pytest.mark.parametrize(
    ("command", "layouts"),
    [
        ("classify", ["one folder per class", "Pascal VOC", "YOLO", "mask", "--good-classes"]),
        ("detect", ["Pascal VOC", "classes.txt", "masks", "Class folders without boxes"]),
    ],
)
def test_help_describes_the_users_data(command: str, layouts: list[str]) -> None:
    r = without_extras("train", command, "--help")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    for layout in layouts:
        assert layout in text, layout
    assert "NEU" not in text and "steel" not in text, "the help is about the user's data"
    for out in ("OUT.onnx", "OUT.card.yaml", "--resume", "--budget-minutes", "ETA"):
        assert out in text, out
    assert "sample data set neu-det" in text  # the default --data says it is the sample data


@pytest.mark.parametrize(
    ("command", "extra"),
    [("classify", "lineinspect[train]"), ("detect", "lineinspect[train-yolo]")],
)
def test_missing_extra_is_one_line(command: str, extra: str) -> None:
    r = without_extras("train", command, "--quick")
    assert r.returncode == 2
    assert r.stderr.startswith("lineinspect: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "is not installed" in r.stderr and extra in r.stderr


def test_dataset_commands_need_no_training_extras(tmp_path: Path) -> None:
    r = without_extras("dataset", "qa", str(tmp_path / "nowhere"), "--out", str(tmp_path / "qa"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("lineinspect: error: dataset folder not found"), r.stderr
    r = without_extras("dataset", "export-yolo", str(tmp_path / "m.json"), "--out", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert "manifest not found" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_command_modules_are_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command not written yet (or a service-only install without `training`) is skipped; a
    module that fails to import something else is a bug and is raised."""
    real = importlib.import_module

    def fake(name: str) -> ModuleType:
        if name == "training.commands.anomaly":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        if name == "training.commands.detect":
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real(name)

    monkeypatch.setattr(importlib, "import_module", fake)
    assert cli._command_module("anomaly") is None
    assert cli._command_module("classify") is not None
    with pytest.raises(ModuleNotFoundError, match="torch"):
        cli._command_module("detect")

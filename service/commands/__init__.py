"""`lineinspect` commands beyond serving: one module per command (or command group).

Protocol (service/cli.py relies on it, as for training/commands): a module exposes
`add_parser(subparsers) -> None`, which registers its sub-parser(s) with `func=run`, and
`run(args) -> int` (the exit code).

Building the parsers must stay cheap: `lineinspect --help` and `lineinspect serve` load these
modules, so anything heavy (OpenCV, ONNX Runtime, the training companion) is imported inside
`run`.
"""

from __future__ import annotations

import sys

EXIT_USAGE = 2


def fail(message: str) -> int:
    """The one-line error a command ends with on bad input (no traceback): exit code 2."""
    print(f"lineinspect: error: {message}", file=sys.stderr)
    return EXIT_USAGE

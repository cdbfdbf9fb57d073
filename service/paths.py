"""Where the real inspection data lives: the one rule, used by the commands, the training
companion, the benchmarks (scripts/harness.py) and the tests.

The images are never copied into the repository: they are read from `$LINEINSPECT_DATA`, else
from `shared/data` beside the checkout (`../shared/data` seen from the repository root).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "LINEINSPECT_DATA"
# The checkout this package runs from (an editable install, or the source tree itself).
REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """`$LINEINSPECT_DATA`, else `../shared/data` beside the checkout (not resolved)."""
    root = os.environ.get(DATA_ENV)
    return Path(root) if root else REPO.parent / "shared" / "data"

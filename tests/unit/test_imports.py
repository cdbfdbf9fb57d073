"""Every service module imports on its own, first: an import cycle that only some import orders
reach (as the API's recipes router once did through service.served) fails here, not in a user's
`python -c "import service.served"`."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

CHECK = """
import importlib, pkgutil, sys
import service
names = sorted(m.name for m in pkgutil.walk_packages(service.__path__, "service.")
               if m.name != "service.__main__")  # that one runs the CLI
bad = []
for name in names:
    for loaded in [k for k in sys.modules if k == "service" or k.startswith("service.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        bad.append(f"{name}: {type(exc).__name__}: {exc}")
print(len(names))
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def test_every_service_module_imports_first() -> None:
    r = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert int(r.stdout.split()[0]) > 60, r.stdout  # the walk found the package

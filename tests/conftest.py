"""Shared fixtures: the real data folder, and real ONNX files built per test session; the test
tiers (markers `data` and `servers`, set here from what a test uses and where it lives)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import onnx_factory

REPO = Path(__file__).resolve().parents[1]

# The tiers. `bash scripts/test.sh --fast` runs `-m "not data and not servers and not slow"`
# with LINEINSPECT_DATA pointing nowhere, so a test that reaches for the data folder without
# these fixtures fails there instead of passing or skipping quietly.
DATA_FIXTURES = frozenset({"data_dir", "neu_images", "tile_images"})
# A real broker, uvicorn server, `lineinspect serve` subprocess or Prometheus.
SERVER_FIXTURES = frozenset({"serve", "broker", "plc", "server", "prometheus"})
# Whole folders whose tests run the service's processes (CLI, demo, promtool, browser).
SERVER_FOLDERS = frozenset({"integration"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = REPO / "tests"
    for item in items:
        used = set(getattr(item, "fixturenames", ()))  # the closure: indirect uses count
        if used & DATA_FIXTURES:
            item.add_marker(pytest.mark.data)
        folder = item.path.relative_to(tests).parts[0] if item.path.is_relative_to(tests) else ""
        if used & SERVER_FIXTURES or folder in SERVER_FOLDERS:
            item.add_marker(pytest.mark.servers)


def data_root() -> Path:
    """`LINEINSPECT_DATA`, else `../shared/data` beside the checkout (service.paths)."""
    from service.paths import data_root as shared_data_root

    return shared_data_root().resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not (root / "neu-det").is_dir() or not (root / "magnetic-tile").is_dir():
        pytest.fail(
            f"real inspection data not found at {root}: set LINEINSPECT_DATA to the folder that "
            "holds neu-det/ and magnetic-tile/ (the project's shared/data)"
        )
    return root


@pytest.fixture(scope="session")
def neu_images(data_dir: Path) -> list[Path]:
    images = sorted((data_dir / "neu-det" / "IMAGES").glob("*.jpg"))
    assert len(images) > 1000, f"expected the NEU images under {data_dir / 'neu-det' / 'IMAGES'}"
    return images


@pytest.fixture(scope="session")
def tile_images(data_dir: Path) -> list[Path]:
    images = sorted((data_dir / "magnetic-tile").glob("MT_*/Imgs/*.jpg"))
    assert len(images) > 500, f"expected magnetic-tile images under {data_dir / 'magnetic-tile'}"
    return images


@pytest.fixture(scope="session")
def demo_model() -> Path:
    path = REPO / "models" / "neu-cls-demo.onnx"
    assert path.is_file(), f"the shipped demo model is missing: {path}"
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="session")
def v8_detector(models_dir: Path) -> Path:
    """YOLOv8-layout detector, 2 classes, 640x640, dynamic batch, fixed known raw output."""
    out = np.zeros((6, 8400), np.float32)
    out[:4, 0], out[4, 0] = [320, 320, 160, 80], 0.9  # class a
    out[:4, 1], out[4, 1] = [322, 322, 160, 80], 0.8  # class a, overlaps box 0: suppressed
    out[:4, 2], out[5, 2] = [322, 322, 160, 80], 0.7  # class b, same place: kept (class-aware)
    out[:4, 3], out[5, 3] = [100, 300, 10, 10], 0.95  # class b, tiny (10x10 px)
    out[:4, 4], out[4, 4] = [500, 200, 40, 40], 0.2  # below every band: dropped
    meta = onnx_factory.ultralytics_metadata(["a", "b"], (640, 640), "detect")
    return onnx_factory.constant_model(models_dir / "v8.onnx", out, metadata=meta)

"""The tier markers tests/conftest.py sets: `data` from the fixtures a test uses (directly or
through another fixture), `servers` from its fixtures or its folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import conftest

TESTS = conftest.REPO / "tests"


@dataclass
class FakeItem:
    path: Path
    fixturenames: list[str]
    markers: set[str] = field(default_factory=set)

    def add_marker(self, marker: pytest.MarkDecorator) -> None:
        self.markers.add(marker.name)


@pytest.mark.parametrize(
    ("where", "fixtures", "expected"),
    [
        ("unit/test_x.py", ["tmp_path"], set()),
        ("training/test_x.py", ["tmp_path", "monkeypatch"], set()),
        ("unit/test_x.py", ["data_dir"], {"data"}),
        ("training/test_x.py", ["trained", "tile_images", "data_dir"], {"data"}),
        ("integration/test_x.py", ["tmp_path"], {"servers"}),
        ("integration/test_x.py", ["serve", "neu_images", "data_dir"], {"data", "servers"}),
        ("fuzz/test_x.py", ["server", "data_dir"], {"data", "servers"}),
        ("fuzz/test_x.py", ["rounds"], set()),  # a pure test of the fuzz suite's arithmetic
        ("unit/test_x.py", ["broker"], {"servers"}),
    ],
)
def test_markers_follow_fixtures_and_folders(
    where: str, fixtures: list[str], expected: set[str]
) -> None:
    item = FakeItem(TESTS / where, fixtures)
    conftest.pytest_collection_modifyitems([item])  # type: ignore[list-item]
    assert item.markers == expected


def test_this_test_is_in_the_fast_tier(request: pytest.FixtureRequest) -> None:
    names = {m.name for m in request.node.iter_markers()}
    assert not names & {"data", "servers", "slow"}, names

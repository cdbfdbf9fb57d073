"""Retention of the review queue (service/retention.py): what goes, what never does, counted."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prometheus_client import generate_latest

from service.metrics import Metrics
from service.retention import ReviewRetention, prune_review

DAY = 86400.0


def item(root: Path, name: str, age_days: float, labelled: bool, size: int = 1000) -> Path:
    """A review item as the review sink writes it: <camera>/<day>/<id>.json + .jpg."""
    folder = root / "cam1" / "2026-11-30"
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / f"{name}.json"
    record.write_text(json.dumps({"id": name, "label": "crazing" if labelled else None}))
    (folder / f"{name}.jpg").write_bytes(b"\xff" * size)
    stamp = time.time() - age_days * DAY
    for path in (record, record.with_suffix(".jpg")):
        os.utime(path, (stamp, stamp))
    return record


def kept(root: Path) -> list[str]:
    return sorted(p.stem for p in root.glob("*/*/*.json"))


def test_old_unlabelled_items_go_labelled_ones_never(tmp_path: Path) -> None:
    item(tmp_path, "1-1", 40, labelled=False)
    item(tmp_path, "1-2", 40, labelled=True)
    item(tmp_path, "1-3", 5, labelled=False)
    assert prune_review(tmp_path, 30 * DAY, None) == {"age": 1, "size": 0}
    assert kept(tmp_path) == ["1-2", "1-3"]
    assert not (tmp_path / "cam1" / "2026-11-30" / "1-1.jpg").exists(), "the image goes too"
    assert prune_review(tmp_path, None, None) == {"age": 0, "size": 0}, "no bound: nothing goes"


def test_the_size_bound_takes_the_oldest_unlabelled_first(tmp_path: Path) -> None:
    for i, (age, labelled) in enumerate([(9, True), (8, False), (7, False), (6, False)]):
        item(tmp_path, f"1-{i}", age, labelled, size=1_000_000)
    # about 4 MB held, 2.5 MB allowed: the two oldest unlabelled go, the labelled one stays
    assert prune_review(tmp_path, None, 2_500_000) == {"age": 0, "size": 2}
    assert kept(tmp_path) == ["1-0", "1-3"]


def test_the_thread_counts_what_it_deletes_and_exports_free_space(tmp_path: Path) -> None:
    item(tmp_path, "1-1", 3, labelled=False)
    metrics = Metrics()
    retention = ReviewRetention(tmp_path, metrics, max_age_days=1, max_bytes=None, interval_s=60)
    retention.start()
    deadline = time.monotonic() + 10
    while kept(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    retention.stop()
    text = generate_latest(metrics.registry).decode()
    assert 'lineinspect_retention_deleted_total{kind="review",reason="age"} 1.0' in text
    assert 'lineinspect_retention_deleted_total{kind="review",reason="size"} 0.0' in text
    assert f'lineinspect_disk_free_bytes{{path="{tmp_path}"}}' in text

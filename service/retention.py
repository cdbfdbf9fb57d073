"""Retention of the review queue: unlabelled review items older than `review.max_age_days`, or
beyond `review.max_bytes` (oldest first), are deleted; labelled items never are (an inspector's
label is training data and on the audit trail). The outbox has its own bounds
(`outbox.max_messages`, `max_age_s`); the audit trail is never pruned. docs/OPERATIONS.md,
"What is kept on disk, and for how long", is the policy as a whole.

A `ReviewRetention` thread prunes at start and then every `interval_s`; every deletion is counted
in `lineinspect_retention_deleted_total{kind="review", reason="age"|"size"}`, and the free space
of the folder is `lineinspect_disk_free_bytes{path}`.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from service.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    record: Path
    mtime: float
    size: int
    labelled: bool


def _entries(root: Path) -> list[_Entry]:
    """Every review item (its JSON record and image), oldest first."""
    out = []
    for record in root.glob("*/*/*.json"):
        try:
            stat = record.stat()
            image = record.with_suffix(".jpg")
            size = stat.st_size + (image.stat().st_size if image.exists() else 0)
            labelled = json.loads(record.read_text()).get("label") is not None
        except (OSError, ValueError):
            continue  # written or removed meanwhile; the next pass sees it
        out.append(_Entry(record, stat.st_mtime, size, labelled))
    return sorted(out, key=lambda e: e.mtime)


def prune_review(
    root: Path, max_age_s: float | None, max_bytes: int | None, now: float | None = None
) -> dict[str, int]:
    """Delete unlabelled items older than `max_age_s`, then the oldest unlabelled ones while the
    queue holds more than `max_bytes`; the number deleted per reason."""
    now = time.time() if now is None else now
    deleted = {"age": 0, "size": 0}
    entries = _entries(root)
    total = sum(e.size for e in entries)
    for entry in entries:
        if entry.labelled:
            continue
        if max_age_s is not None and now - entry.mtime > max_age_s:
            reason = "age"
        elif max_bytes is not None and total > max_bytes:
            reason = "size"
        else:
            continue
        entry.record.with_suffix(".jpg").unlink(missing_ok=True)
        entry.record.unlink(missing_ok=True)
        total -= entry.size
        deleted[reason] += 1
    return deleted


class ReviewRetention:
    """The pruning thread, its counter and the folder's free-space gauge."""

    def __init__(
        self,
        root: Path,
        metrics: Metrics,
        max_age_days: float | None,
        max_bytes: int | None,
        interval_s: float = 600.0,
    ) -> None:
        self.root, self.interval_s = root, interval_s
        self.max_age_s = max_age_days * 86400 if max_age_days is not None else None
        self.max_bytes = max_bytes
        self.deleted = metrics.retention_deleted
        for reason in ("age", "size"):
            self.deleted.labels("review", reason)
        self.free = metrics.disk_free
        root.mkdir(parents=True, exist_ok=True)
        self.free.labels(str(root)).set_function(lambda: shutil.disk_usage(root).free)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="review-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def prune(self) -> dict[str, int]:
        deleted = prune_review(self.root, self.max_age_s, self.max_bytes)
        for reason, n in deleted.items():
            if n:
                self.deleted.labels("review", reason).inc(n)
                log.info("retention: %d unlabelled review items deleted (%s bound)", n, reason)
        return deleted

    def _run(self) -> None:
        while True:
            try:
                self.prune()
            except OSError as exc:  # the next pass tries again
                log.error("retention: review queue %s not pruned: %s", self.root, exc)
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

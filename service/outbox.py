"""The durable outbox: every verdict is written to SQLite (WAL) before anything tries to send it,
and deleted only when the broker has acknowledged it (QoS 1 PUBACK).

Broker down: inspection goes on, rows accumulate. Service killed: the rows are still there and
are sent, oldest first, on the next start. Bounded by row count and age; whatever is evicted
to respect the bounds is counted, never silently lost. Sequence numbers per camera are kept here
too, so they keep increasing across restarts and a PLC can de-duplicate redeliveries.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sequences (
    stream TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Message:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float


class OutboxFullError(RuntimeError):
    """The outbox cannot take a message (disk full or read-only)."""


class Outbox:
    def __init__(
        self,
        path: Path,
        max_rows: int = 1_000_000,
        max_age_s: float = 7 * 24 * 3600,
        synchronous: str = "NORMAL",
        on_evict: Callable[[str, int], None] | None = None,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_rows, self.max_age_s = max_rows, max_age_s
        self._on_evict = on_evict or (lambda reason, n: None)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a killed process; FULL also survives power loss.
        self._db.execute(
            f"PRAGMA synchronous={'FULL' if synchronous.upper() == 'FULL' else 'NORMAL'}"
        )
        self._db.executescript(SCHEMA)
        self._appended = threading.Condition(self._lock)
        self._since_trim = 0
        self._ack_backlog: list[int] = []

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def next_sequence(self, stream: str) -> int:
        """The next sequence number for a stream (camera), durable across restarts."""
        with self._lock:
            row = self._db.execute(
                "SELECT last FROM sequences WHERE stream = ?", (stream,)
            ).fetchone()
            return (row[0] if row else 0) + 1

    def append(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        sequence: tuple[str, int] | None = None,
    ) -> int:
        """Store a message (and advance its stream's sequence) in one transaction."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (topic, payload, qos, int(retain), time.time()),
                )
                if sequence is not None:
                    self._db.execute(
                        "INSERT INTO sequences (stream, last) VALUES (?, ?) "
                        "ON CONFLICT(stream) DO UPDATE SET last = excluded.last",
                        sequence,
                    )
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:  # disk full, read-only, locked
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise OutboxFullError(
                    f"outbox {self.path} cannot store the message: {exc}"
                ) from exc
            self._since_trim += 1
            if self._since_trim >= 100:
                self._trim_locked()
            self._appended.notify_all()
            return int(cur.lastrowid or 0)

    def wait(self, timeout: float) -> None:
        """Block until something is appended (or timeout)."""
        with self._appended:
            self._appended.wait(timeout)

    def pending(self, after_id: int = 0, limit: int = 100) -> list[Message]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, created FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [Message(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def ack(self, ids: list[int]) -> None:
        """Delete delivered messages. On a full disk even a DELETE can fail (it needs journal
        space): the ids are kept and deleted with the next ack. Until then depth() does not
        count them, and this run never sends them again (its cursor is past them)."""
        with self._lock:
            todo = [*self._ack_backlog, *ids]
            if not todo:
                return
            try:
                self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in todo])
            except sqlite3.OperationalError as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if not self._ack_backlog:
                    log.warning("outbox %s: delivered messages not yet deleted: %s", self.path, exc)
                self._ack_backlog = todo
                return
            self._ack_backlog = []

    def depth(self) -> tuple[int, float | None]:
        """(rows waiting, age in seconds of the oldest)."""
        with self._lock:
            count, oldest = self._db.execute("SELECT COUNT(*), MIN(created) FROM outbox").fetchone()
            if self._ack_backlog:  # delivered, only not deleted yet (full disk)
                marks = ",".join("?" * len(self._ack_backlog))
                count, oldest = self._db.execute(
                    f"SELECT COUNT(*), MIN(created) FROM outbox WHERE id NOT IN ({marks})",
                    self._ack_backlog,
                ).fetchone()
        return int(count), (time.time() - oldest) if oldest is not None else None

    def _trim_locked(self) -> None:
        self._since_trim = 0
        cutoff = time.time() - self.max_age_s
        aged = self._db.execute("DELETE FROM outbox WHERE created < ?", (cutoff,)).rowcount
        if aged:
            log.error("outbox: evicted %d messages older than %.0f s", aged, self.max_age_s)
            self._on_evict("age", aged)
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        over = count - self.max_rows
        if over > 0:
            self._db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                (over,),
            )
            log.error("outbox: evicted the %d oldest messages (limit %d rows)", over, self.max_rows)
            self._on_evict("size", over)

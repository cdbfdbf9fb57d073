"""The audit trail: every operator and admin change, and every thresholds version, on record.

One SQLite file beside the outbox (WAL, synchronous FULL: a record the caller was told about
survives power loss). Append-only: triggers refuse UPDATE and DELETE, and each record carries
the sha256 of its predecessor's hash and its own content, so an edit made behind the service's
back breaks the chain (`verify`). A record names who acted (`admin:alice`, its role and token id;
never a secret), when, the action and route, the target, and what it was before and after.

Verdicts carry `model.thresholds_version`; each version is recorded as a `thresholds.version`
record with the full thresholds, the model's sha256 and who caused it, so a verdict resolves to
the thresholds it was judged with (`thresholds`). Versions continue across restarts from the
last one recorded here (`last_thresholds_version`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
THRESHOLDS_VERSION = "thresholds.version"
MAX_LIMIT = 1000
# A change is refused while the trail's file system has less than this free: the record of a
# change takes a few kB (WAL frames included), and a change nobody can trace is not made.
MIN_FREE_BYTES = 1 << 20
_COLUMNS = "id, at, actor, action, target, route, before, after, hash"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    route TEXT,
    before TEXT,
    after TEXT,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_action ON audit (action, target);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _chain(previous: str, values: tuple[Any, ...]) -> str:
    """The hash of a record: its predecessor's hash and its stored column values."""
    return hashlib.sha256((previous + _canonical(list(values))).encode()).hexdigest()


def actor_parts(actor: str) -> tuple[str, str | None]:
    """(role, token id): `admin:alice` -> ("admin", "alice"); "config" -> ("config", None)."""
    role, _, token_id = actor.partition(":")
    return (role, token_id) if role in ("operator", "admin") and token_id else (actor, None)


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    rid, at, actor, action, target, route, before, after, digest = row
    role, token_id = actor_parts(actor)
    return {
        "schema_version": SCHEMA_VERSION,
        "id": rid,
        "at": at,
        "at_iso": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
        "actor": actor,
        "role": role,
        "token_id": token_id,
        "action": action,
        "target": target,
        "route": route,
        "before": json.loads(before) if before is not None else None,
        "after": json.loads(after) if after is not None else None,
        "hash": digest,
    }


class Recorder(Protocol):
    """What the parts that make changes need of the trail (AuditLog, NullAudit)."""

    def record(
        self,
        actor: str,
        action: str,
        target: str | None = None,
        route: str | None = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None: ...


class AuditLog:
    """Append and read the trail; one connection behind a lock (HTTP threads, control)."""

    def __init__(self, path: Path, publish: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = path
        self.publish = publish  # announced on MQTT `<prefix>/<line>/audit` once the link exists
        path.parent.mkdir(parents=True, exist_ok=True)
        # A locked trail fails a change after 2 s rather than holding the request.
        self._db = sqlite3.connect(path, timeout=2.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def record(
        self,
        actor: str,
        action: str,
        target: str | None = None,
        route: str | None = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one record (committed before it returns) and announce it."""
        values = (time.time(), actor, action, target, route,
                  None if before is None else _canonical(before),
                  None if after is None else _canonical(after))  # fmt: skip
        with self._lock:
            last = self._db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            digest = _chain(last[0] if last else "", values)
            cur = self._db.execute(
                "INSERT INTO audit (at, actor, action, target, route, before, after, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*values, digest),
            )
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM audit WHERE id = ?", (cur.lastrowid,)
            ).fetchone()
        record = _record(row)
        log.info("audit %d: %s %s %s", record["id"], actor, action, target or "")
        if self.publish is not None:
            try:
                self.publish(record)
            except Exception as exc:  # the record is kept; only its announcement is lost
                log.error("audit %d not announced on MQTT: %s", record["id"], exc)
        return record

    def unwritable(self) -> str | None:
        """Why a record could not be written now (a full disk, a locked or read-only file), or
        None. Asked before a change is made, so that a change nobody could trace is refused."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError as exc:
            return f"the audit trail's folder {self.path.parent}: {exc}"
        if free < MIN_FREE_BYTES:
            return f"only {free} bytes free under {self.path.parent}"
        with self._lock:
            try:  # takes the write lock and gives it back: what a record needs
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                return f"the audit trail {self.path} cannot be written: {exc}"
        return None

    def query(
        self,
        since: float | None = None,
        until: float | None = None,
        action: str | None = None,
        target: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Records in order (oldest first), filtered; at most `limit` (<= MAX_LIMIT)."""
        return query(self._db, self._lock, since, until, action, target, limit)

    def last_thresholds_version(self, model: str) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MAX(CAST(json_extract(after, '$.thresholds_version') AS INTEGER)) "
                "FROM audit WHERE action = ? AND target = ?",
                (THRESHOLDS_VERSION, model),
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def thresholds(self, model: str, version: int) -> dict[str, Any] | None:
        """The record of `model`'s thresholds version `version`, or None."""
        with self._lock:
            return thresholds_record(self._db, model, version)

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM audit").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def query(
    db: sqlite3.Connection,
    lock: threading.Lock | None,
    since: float | None,
    until: float | None,
    action: str | None,
    target: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIMIT}")
    where, args = [], []
    for clause, value in (("at >= ?", since), ("at < ?", until), ("action = ?", action),
                          ("target = ?", target)):  # fmt: skip
        if value is not None:
            where.append(clause)
            args.append(value)
    sql = f"SELECT {_COLUMNS} FROM audit"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id LIMIT ?"
    if lock is None:
        rows = db.execute(sql, (*args, limit)).fetchall()
    else:
        with lock:
            rows = db.execute(sql, (*args, limit)).fetchall()
    return [_record(r) for r in rows]


def thresholds_record(db: sqlite3.Connection, model: str, version: int) -> dict[str, Any] | None:
    """The `thresholds.version` record of `model`'s version `version` (the latest such, should
    a numbering ever have restarted), or None."""
    row = db.execute(
        f"SELECT {_COLUMNS} FROM audit WHERE action = ? AND target = ? AND "
        "CAST(json_extract(after, '$.thresholds_version') AS INTEGER) = ? "
        "ORDER BY id DESC LIMIT 1",
        (THRESHOLDS_VERSION, model, version),
    ).fetchone()
    return None if row is None else _record(row)


def open_readonly(path: Path) -> sqlite3.Connection:
    """The trail for reading only (`lineinspect audit`): never creates or changes the file."""
    if not path.is_file():
        raise FileNotFoundError(f"no audit trail at {path}")
    return sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)


def verify(db: sqlite3.Connection) -> tuple[int, int | None]:
    """(records checked, id of the first record whose hash does not follow, or None)."""
    previous, checked = "", 0
    for row in db.execute(f"SELECT {_COLUMNS} FROM audit ORDER BY id"):
        rid, *values, digest = row
        if _chain(previous, tuple(values)) != digest:
            return checked, int(rid)
        previous, checked = digest, checked + 1
    return checked, None


class NullAudit:
    """Audit off (audit.enabled: false): nothing recorded, nothing to read."""

    publish: Callable[[dict[str, Any]], None] | None = None

    def record(
        self,
        actor: str,
        action: str,
        target: str | None = None,
        route: str | None = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        return None

    def query(
        self,
        since: float | None = None,
        until: float | None = None,
        action: str | None = None,
        target: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        return []

    def last_thresholds_version(self, model: str) -> int | None:
        return None

    def unwritable(self) -> str | None:
        return None

    def thresholds(self, model: str, version: int) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        pass

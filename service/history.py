"""Model history: a copy of every model that has served (its ONNX file and card), with its sha256,
when it began serving and who put it there, so `rollback` can return to the previous one.

Layout: `<root>/<model>/<entry id>/` holds the ONNX file under its own name, its card as
`<stem>.card.yaml` beside it (when the model had one) and `entry.json`. Entry ids are
`<served ms>-<sha256[:12]>`, so their names sort in serving order. An entry is written to a
temporary folder and renamed into place: a reader never sees half of one.

The entries form a stack: the newest entry that was not rolled back is the one serving; a
rollback marks it rolled back (it stays, marked, until the bound removes it) and serves the one
before. At most `keep` entries are kept per model: the oldest go first, never the one serving.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from service.inference.registry import file_sha256

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ENTRY = re.compile(r"^[0-9]{13,16}-[0-9a-f]{12}$")


def folder_name(model: str) -> str:
    """A model name as one safe folder name."""
    return _UNSAFE.sub("_", model).strip("._") or "model"


@dataclass(frozen=True)
class Entry:
    id: str
    model: str
    file: str  # the ONNX file's name inside the entry's folder
    card: str | None  # the card's name there, or None
    sha256: str
    card_sha256: str | None
    version: str
    served_at: float  # time.time() when it began serving
    by: str  # who put it there: "config" at start, "api" or a token id from the API
    event: str  # start | reload | promote
    source: str  # the path it was loaded from
    rolled_back_at: float | None = None
    rolled_back_by: str | None = None

    @property
    def active(self) -> bool:
        return self.rolled_back_at is None

    def public(self) -> dict[str, Any]:
        return asdict(self)


class HistoryError(RuntimeError):
    """The history could not keep a model (disk, a file changed since it was loaded)."""


class ModelHistory:
    def __init__(self, root: Path, keep: int, clock: Callable[[], float] = time.time) -> None:
        self.root, self.keep, self.clock = root, max(1, keep), clock
        self._lock = threading.Lock()

    def folder(self, model: str) -> Path:
        return self.root / folder_name(model)

    def entries(self, model: str) -> list[Entry]:
        """Oldest first; unreadable entries are skipped (and logged)."""
        folder = self.folder(model)
        if not folder.is_dir():
            return []
        out = []
        for path in sorted(folder.iterdir()):
            if not (_ENTRY.fullmatch(path.name) and (path / "entry.json").is_file()):
                continue
            try:
                out.append(Entry(**json.loads((path / "entry.json").read_text())))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("model history %s: entry %s unreadable: %s", model, path.name, exc)
        return out

    def current(self, model: str) -> Entry | None:
        """The newest entry not rolled back: the one serving."""
        return next((e for e in reversed(self.entries(model)) if e.active), None)

    def rollback_target(self, model: str, serving_sha256: str) -> tuple[Entry, Entry | None] | None:
        """(the entry to serve, the entry it replaces) for a rollback of `model`, now serving
        `serving_sha256`; None: there is nothing earlier. When the history's current entry is not
        what serves (its copy could not be kept), the rollback returns to that entry."""
        active = [e for e in self.entries(model) if e.active]
        if active and active[-1].sha256 != serving_sha256:
            return active[-1], None
        if len(active) < 2:
            return None
        return active[-2], active[-1]

    def paths(self, entry: Entry) -> tuple[Path, Path | None]:
        """The kept ONNX file and card of an entry."""
        folder = self.folder(entry.model) / entry.id
        return folder / entry.file, (folder / entry.card) if entry.card else None

    def record(
        self,
        model: str,
        model_file: Path,
        card_file: Path | None,
        sha256: str,
        version: str,
        by: str,
        event: str,
    ) -> Entry:
        """Keep a copy of a model that begins serving now (nothing new when it is the current
        entry's file and card again). Raises HistoryError when it cannot be kept."""
        card_sha = file_sha256(card_file) if card_file is not None and card_file.is_file() else None
        with self._lock:
            current = self.current(model)
            if current is not None and (current.sha256, current.card_sha256) == (sha256, card_sha):
                return current
            now = self.clock()
            entry = Entry(
                id=f"{int(now * 1000):013d}-{sha256[:12]}",
                model=model,
                file=model_file.name,
                card=f"{model_file.stem}.card.yaml" if card_sha else None,
                sha256=sha256,
                card_sha256=card_sha,
                version=version,
                served_at=now,
                by=by,
                event=event,
                source=str(model_file),
            )
            self._write(entry, model_file, card_file if card_sha else None)
            self._prune(model)
            return entry

    def mark_rolled_back(self, entry: Entry, by: str) -> Entry:
        marked = replace(entry, rolled_back_at=self.clock(), rolled_back_by=by)
        with self._lock:
            self._write_json(self.folder(entry.model) / entry.id, marked)
        return marked

    def _write(self, entry: Entry, model_file: Path, card_file: Path | None) -> None:
        folder = self.folder(entry.model)
        tmp = folder / f".tmp-{entry.id}-{os.getpid()}-{threading.get_ident()}"
        try:
            tmp.mkdir(parents=True)
            shutil.copyfile(model_file, tmp / entry.file)
            if file_sha256(tmp / entry.file) != entry.sha256:
                raise HistoryError(
                    f"{model_file} changed since it was loaded (sha256 differs): not kept"
                )
            if card_file is not None and entry.card is not None:
                shutil.copyfile(card_file, tmp / entry.card)
            self._write_json(tmp, entry)
            tmp.rename(folder / entry.id)
        except OSError as exc:
            raise HistoryError(f"cannot keep a copy of {model_file} in {folder}: {exc}") from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _write_json(folder: Path, entry: Entry) -> None:
        tmp = folder / f"entry.json.{os.getpid()}-{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(entry.public(), indent=1))
        tmp.replace(folder / "entry.json")

    def _prune(self, model: str) -> None:
        entries = self.entries(model)
        serving = next((e for e in reversed(entries) if e.active), None)
        excess = len(entries) - self.keep
        for entry in entries:
            if excess <= 0:
                break
            if entry is serving:
                continue
            with contextlib.suppress(OSError):
                shutil.rmtree(self.folder(model) / entry.id)
                log.info("model history %s: removed %s (over the bound of %d)",
                         model, entry.id, self.keep)  # fmt: skip
            excess -= 1

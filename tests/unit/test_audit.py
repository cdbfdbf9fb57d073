"""The audit trail on its own (service/audit.py) and with the real control and served models:
append-only, tamper-evident, thresholds versions on record and numbered on across restarts,
read back by `lineinspect audit`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.audit import THRESHOLDS_VERSION, AuditLog, open_readonly, verify
from service.cli import main
from service.config import Settings
from service.control import Control
from service.inference.card import ThresholdSpec
from service.metrics import Metrics
from service.served import ServedModels
from service.sinks.drift import NullDrift

REPO = Path(__file__).resolve().parents[2]
MODEL = "neu-cls-demo"


def test_records_are_append_only_and_tampering_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.sqlite"
    log = AuditLog(path)
    first = log.record("admin:alice", "thresholds.set", MODEL, "PUT /v1/thresholds",
                       {"thresholds": {"default": 0.5}}, {"thresholds": {"default": 0.6}})  # fmt: skip
    log.record("operator:bob", "review.label", "cam1/1-1", None, None, {"label": "crazing"})
    log.record("config", THRESHOLDS_VERSION, MODEL, None, None, {"thresholds_version": 4})
    assert (first["role"], first["token_id"], first["schema_version"]) == ("admin", "alice", 1)
    for sql in ("UPDATE audit SET actor = 'admin:mallory'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            log._db.execute(sql)
    assert log.count() == 3
    assert main(["audit", "--path", str(path), "--verify"]) == 0
    assert "intact: 3 records" in capsys.readouterr().out
    # behind the service's back: drop the guard, rewrite who labelled
    other = sqlite3.connect(path)
    other.execute("DROP TRIGGER audit_no_update")
    other.execute("UPDATE audit SET actor = 'admin:mallory' WHERE id = 2")
    other.commit()
    other.close()
    assert verify(open_readonly(path)) == (1, 2)
    assert main(["audit", "--path", str(path), "--verify"]) == 1
    assert "broken at record 2" in capsys.readouterr().err


def test_query_filters_and_the_command_prints_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.sqlite"
    log = AuditLog(path)
    records = [log.record("admin:alice", a, t) for a, t in
               [("thresholds.set", "m1"), ("model.reload", "m1"), ("thresholds.set", "m2")]]  # fmt: skip
    assert [r["id"] for r in log.query(action="thresholds.set")] == [1, 3]
    assert [r["id"] for r in log.query(target="m1", limit=1)] == [1]
    assert log.query(since=records[2]["at"]) == [records[2]]
    assert log.query(until=records[0]["at"]) == []
    with pytest.raises(ValueError, match="limit must be"):
        log.query(limit=1001)
    assert main(["audit", "--path", str(path), "--action", "thresholds.set"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["target"] for line in lines] == ["m1", "m2"]
    assert main(["audit", "--path", str(tmp_path / "none.sqlite")]) == 2
    assert not (tmp_path / "none.sqlite").exists(), "reading must never create a trail"


def test_an_announcement_that_fails_loses_no_record(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    log = AuditLog(tmp_path / "audit.sqlite", publish=sent.append)
    log.record("admin:alice", "model.reload", MODEL)
    assert [r["action"] for r in sent] == ["model.reload"] and sent[0]["schema_version"] == 1

    def broken(record: dict[str, Any]) -> None:
        raise OSError("disk full")

    log.publish = broken
    log.record("admin:alice", "model.rollback", MODEL)
    assert log.count() == 2


@pytest.fixture
def settings() -> Settings:
    return Settings.model_validate(
        {
            "models": [{"path": str(REPO / "models" / f"{MODEL}.onnx")}],
            "runtime": {"warmup_runs": 1, "parallel_runs": 1, "intra_op_threads": 1},
        }
    )


def start(settings: Settings, trail: Path) -> Iterator[tuple[ServedModels, Control, AuditLog]]:
    served = ServedModels(settings, Metrics())
    served.start()
    audit = AuditLog(trail)
    control = Control(served, {}, served.metrics, NullDrift(), audit=audit)
    control.start()
    try:
        yield served, control, audit
    finally:
        served.stop()
        audit.close()


def test_thresholds_versions_are_on_record_and_continue_after_a_restart(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail = tmp_path / "audit.sqlite"
    image = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    with_07 = ThresholdSpec(default=0.7)
    run = start(settings, trail)
    served, control, audit = next(run)
    model = served.models[MODEL]
    started = model.thresholds_version
    control.set_thresholds(model, with_07, by="admin:alice")
    judged_with = model.predict([image])[0].model.thresholds_version
    assert judged_with == started + 1
    control.reload_model(MODEL, by="admin:alice")  # the card's thresholds again
    last = served.models[MODEL].thresholds_version
    next(run, None)  # stop
    versions = [r["after"]["thresholds_version"] for r in audit_records(trail)]
    assert versions == [started, started + 1, last] and last == started + 2
    run = start(settings, trail)  # a restart: the numbering goes on
    served, _, audit = next(run)
    assert served.models[MODEL].thresholds_version == last + 1
    resolved = audit.thresholds(MODEL, judged_with)
    assert resolved is not None and resolved["actor"] == "admin:alice"
    assert resolved["after"]["thresholds"] == with_07.model_dump()
    assert resolved["after"]["sha256"] == served.models[MODEL].spec.sha256
    config = audit.thresholds(MODEL, last + 1)
    assert config is not None and config["actor"] == "config"
    next(run, None)
    assert main(["audit", "--path", str(trail), "--thresholds", MODEL, str(judged_with)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["after"]["thresholds"]["default"] == 0.7


def audit_records(trail: Path) -> list[dict[str, Any]]:
    log = AuditLog(trail)
    try:
        return log.query(action=THRESHOLDS_VERSION)
    finally:
        log.close()

"""Issue 16 as an attacker on the line network would try it, through the real FastAPI app
(TestClient): protected mode, roles (401 vs 403), confined model paths, malformed audit queries.
Each refusal must change nothing: control is never called and the audit trail stays empty."""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service import security
from service.api.deps import Api
from service.api.server import create_app
from service.audit import AuditLog
from service.cli import main
from service.config import ApiConfig, ConfigError, Settings, load_settings
from service.metrics import Metrics
from service.review_store import export
from service.served import ServedModels
from service.sinks.drift import NullDrift
from service.sinks.live import LiveView
from tests.unit.test_api import FakeControl, FakeRecipes

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "neu-cls-demo.onnx"
ADMIN = "admin-secret-0123456789abcdef"
OPERATOR = "operator-secret-0123456789abc"
LEGACY = "legacy-secret-0123456789abcdef"
SECRETS = (ADMIN, OPERATOR, LEGACY)
CAMERA, ITEM = "cam1", "1700000000000-1"


@pytest.fixture(scope="module")
def served() -> Iterator[ServedModels]:
    settings = Settings.model_validate(
        {"models": [{"path": str(MODEL)}], "runtime": {"warmup_runs": 1, "parallel_runs": 1}}
    )
    s = ServedModels(settings, Metrics())
    s.start()
    yield s
    s.stop()


class Setup:
    def __init__(self, served: ServedModels, tmp: Path, **api: Any) -> None:
        self.review = tmp / "review"
        day = self.review / CAMERA / "2026-11-30"
        day.mkdir(parents=True)
        item = {"id": ITEM, "camera": CAMERA, "model": {"name": "neu-cls-demo"},
                "task": "classify", "width": 200, "height": 200, "label": None}  # fmt: skip
        (day / f"{ITEM}.json").write_text(json.dumps(item))
        (day / f"{ITEM}.jpg").write_bytes(b"\xff\xd8 a jpeg")  # exports copy it as it is
        self.settings = Settings.model_validate(
            {"models": [{"path": str(MODEL)}], "review": {"path": str(self.review)}, "api": api}
        )
        self.control = FakeControl()
        self.control.models = dict(served.models)
        self.audit = AuditLog(tmp / "audit.sqlite")
        self.client = TestClient(create_app(Api(
            settings=self.settings, metrics=served.metrics, ready=lambda: served.ready,
            models=served, control=self.control, live=LiveView(), drift=NullDrift(), cameras={},
            link_status=lambda: (False, "off"), outbox_depth=lambda: (0, None),
            recipes=FakeRecipes(), audit=self.audit,
        )))  # fmt: skip


ROLES = {
    "tokens": [
        {"id": "alice", "role": "admin", "secret": ADMIN},
        {"id": "bob", "role": "operator", "secret": OPERATOR},
    ],
    "token": LEGACY,
}
BASE = "/v1/models/neu-cls-demo"
ADMIN_ROUTES: list[tuple[str, str, Any]] = [
    ("PUT", "/v1/thresholds", {"default": 0.6}),
    ("POST", f"{BASE}/reload", None),
    ("POST", f"{BASE}/candidate", {"path": str(MODEL)}),
    ("DELETE", f"{BASE}/candidate", None),
    ("POST", f"{BASE}/candidate/promote", None),
    ("POST", f"{BASE}/rollback", None),
    ("PUT", "/v1/recipe", {"recipe": "b"}),
    ("GET", "/v1/audit", None),
    ("GET", "/v1/audit/thresholds/neu-cls-demo/1", None),
]
OPERATOR_ROUTES: list[tuple[str, str, Any]] = [
    ("POST", f"/v1/cameras/{CAMERA}/trigger", {"part_id": "P-1"}),
    ("POST", f"/v1/review/{CAMERA}/{ITEM}/label", {"label": "crazing", "inspector": "Ann"}),
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_mutating_route_refuses_a_missing_wrong_or_weaker_token(
    served: ServedModels, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s = Setup(served, tmp_path, **ROLES)
    c = s.client
    thresholds = served.models["neu-cls-demo"].thresholds_version
    for method, path, body in ADMIN_ROUTES + OPERATOR_ROUTES:
        for headers in ({}, bearer("wrong-secret-0123456789abcdef"), {"Authorization": ADMIN}):
            r = c.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
    for method, path, body in ADMIN_ROUTES:
        r = c.request(method, path, json=body, headers=bearer(OPERATOR))
        assert r.status_code == 403, (method, path, r.text)
        assert "bob" in r.json()["detail"] and "admin token" in r.json()["detail"]
    assert s.control.calls == [], "a refused request reached control"
    assert s.audit.count() == 0, "a refused request left a record"
    assert served.models["neu-cls-demo"].thresholds_version == thresholds
    item = json.loads(next(s.review.glob("*/*/*.json")).read_text())
    assert item["label"] is None, "a refused label was written"
    for secret in SECRETS:
        assert secret not in caplog.text, "a token reached the log"
    assert "refused: unknown bearer token" in caplog.text  # the attempt itself is logged


def test_roles_act_and_are_recorded_by_token_id(
    served: ServedModels, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s = Setup(served, tmp_path, **ROLES)
    c = s.client
    for method, path, body in OPERATOR_ROUTES:  # operator work: operator and admin tokens
        r = c.request(method, path, json=body, headers=bearer(OPERATOR))
        assert r.status_code in (200, 202), (path, r.text)
    assert c.post(f"/v1/cameras/{CAMERA}/trigger", json={"part_id": "P-2"},
                  headers=bearer(ADMIN)).status_code == 202  # fmt: skip
    assert c.post(f"{BASE}/rollback", headers=bearer(ADMIN)).status_code == 200
    assert c.post(f"{BASE}/rollback", headers=bearer(LEGACY)).status_code == 200
    assert [call for call in s.control.calls if call[0] == "rollback"] == [
        ("rollback", ("neu-cls-demo", "admin:alice")),
        ("rollback", ("neu-cls-demo", "admin:default")),
    ]
    records = c.get("/v1/audit", headers=bearer(ADMIN)).json()["records"]
    assert [(r["action"], r["actor"], r["role"], r["token_id"]) for r in records] == [
        ("camera.trigger", "operator:bob", "operator", "bob"),
        ("review.label", "operator:bob", "operator", "bob"),
        ("camera.trigger", "admin:alice", "admin", "alice"),
        ("model.rollback", "admin:alice", "admin", "alice"),
        ("model.rollback", "admin:default", "admin", "default"),
    ]
    label = records[1]
    assert label["target"] == f"{CAMERA}/{ITEM}" and label["before"]["label"] is None
    assert label["after"] == {"label": "crazing", "inspector": "Ann"}
    for secret in SECRETS:
        assert secret not in caplog.text and secret not in json.dumps(records)
    assert c.get("/v1/models").status_code == 200  # reading stays open
    # the review export carries who labelled, with which token (the audit trail's share)
    assert export(s.review, tmp_path / "export", "folders") == 1
    (row,) = [
        json.loads(x) for x in (tmp_path / "export" / "labels.jsonl").read_text().splitlines()
    ]
    assert (row["item"], row["label"], row["labelled_by"], row["labelled_with"]) == (
        f"{CAMERA}-{ITEM}", "crazing", "Ann", "operator:bob"
    )  # fmt: skip


def test_no_change_is_made_while_the_audit_trail_cannot_record_it(
    served: ServedModels, tmp_path: Path
) -> None:
    """A trail another process holds locked (as a full or read-only disk would leave it): every
    change is refused with 503 and the reason, nothing reaches control or the review item;
    camera triggers (production traffic) and reading go on; once it is free, changes go
    through and are recorded."""
    import sqlite3

    s = Setup(served, tmp_path, **ROLES)
    c = s.client
    holder = sqlite3.connect(tmp_path / "audit.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for method, path, body in ADMIN_ROUTES[:2]:  # each waits out the 2 s lock timeout
            r = c.request(method, path, json=body, headers=bearer(ADMIN))
            assert r.status_code == 503, (method, path, r.text)
            assert "change refused" in r.json()["detail"] and "locked" in r.json()["detail"]
        label = OPERATOR_ROUTES[1]
        r = c.request(label[0], label[1], json=label[2], headers=bearer(OPERATOR))
        assert r.status_code == 503, r.text
        assert s.control.calls == [], "a change was made with nothing to record it"
        item = json.loads(next(s.review.glob("*/*/*.json")).read_text())
        assert item["label"] is None
        trigger = OPERATOR_ROUTES[0]
        r = c.request(trigger[0], trigger[1], json=trigger[2], headers=bearer(OPERATOR))
        assert r.status_code == 202, "a part trigger waited on the audit trail"
        assert c.get("/v1/models").status_code == 200
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert c.post(f"{BASE}/rollback", headers=bearer(ADMIN)).status_code == 200
    actions = [r["action"] for r in c.get("/v1/audit", headers=bearer(ADMIN)).json()["records"]]
    assert actions[-1] == "model.rollback"


def test_predict_takes_any_role_when_required(served: ServedModels, tmp_path: Path) -> None:
    s = Setup(served, tmp_path, require_token_for_predict=True, **ROLES)
    body = MODEL.read_bytes()[:10]  # not an image: past the token check it is a 400
    for token in (OPERATOR, ADMIN):
        assert s.client.post("/v1/predict", content=body, headers=bearer(token)).status_code == 400
    assert s.client.post("/v1/predict", content=body).status_code == 401


def test_the_operator_page_works_with_an_operator_token(
    served: ServedModels, tmp_path: Path
) -> None:
    s = Setup(served, tmp_path, tokens=[{"id": "bob", "role": "operator", "secret": OPERATOR}])
    assert s.client.get("/v1/operator/state").json()["token_required"] is True
    items = s.client.get("/v1/review").json()["items"]
    assert [i["id"] for i in items] == [ITEM]
    r = s.client.post(f"/v1/review/{CAMERA}/{ITEM}/label", headers=bearer(OPERATOR),
                      json={"label": "crazing", "inspector": "Ann"})  # fmt: skip
    assert r.status_code == 200 and r.json()["label"] == "crazing"


def test_identify_compares_every_token_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    api = ApiConfig.model_validate(ROLES)
    tokens = security.Tokens(api)
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    for presented, expected in ((ADMIN, "admin:alice"), (OPERATOR, "operator:bob"),
                                (LEGACY, "admin:default"), ("nope", None)):  # fmt: skip
        calls.clear()
        found = tokens.identify(presented)
        assert (found.name if found else None) == expected
        assert len(calls) == 3, "no early exit: the first match must not stop the loop"


def test_token_configuration_is_checked() -> None:
    for bad in (
        {"token": "CHANGE-ME"},
        {"tokens": [{"id": "a", "role": "admin", "secret": "<the token>"}]},
        {"tokens": [{"id": "a", "role": "root", "secret": ADMIN}]},
        {"tokens": [{"id": "a b", "role": "admin", "secret": ADMIN}]},
        {"tokens": [{"id": "default", "role": "admin", "secret": ADMIN}], "token": LEGACY},
        {
            "tokens": [
                {"id": "a", "role": "admin", "secret": ADMIN},
                {"id": "b", "role": "operator", "secret": ADMIN},
            ]
        },
        {"tokens": [{"id": "a", "role": "admin", "secret": ADMIN, "extra": 1}]},
        {"tls_cert_file": "cert.pem"},
    ):
        with pytest.raises(ValidationError):
            ApiConfig.model_validate(bad)
    env = {"LINEINSPECT__API__TOKENS": json.dumps(ROLES["tokens"])}
    assert [t.id for t in load_settings(None, env).api.tokens] == ["alice", "bob"]
    with pytest.raises(ConfigError, match="placeholder"):
        load_settings(None, {"LINEINSPECT__API__TOKEN": "change-me"})


@pytest.mark.parametrize(
    ("host", "api", "refused"),
    [
        ("127.0.0.1", {}, False),
        ("::1", {}, False),
        ("localhost", {}, False),
        ("0.0.0.0", {}, True),
        ("::", {}, True),
        ("10.1.2.3", {}, True),
        ("box.plant.example", {}, True),
        ("0.0.0.0", {"token": "short-token"}, True),
        ("0.0.0.0", {"token": LEGACY}, False),
        ("0.0.0.0", {"tokens": ROLES["tokens"]}, False),
        ("0.0.0.0", {"allow_unauthenticated": True}, False),
    ],
)
def test_protected_mode(host: str, api: dict[str, Any], refused: bool) -> None:
    config = ApiConfig.model_validate({"host": host} | api)
    problem = security.exposure_problem(config)
    assert (problem is not None) == refused, problem
    # the explicit opt-out, and only it, starts with the loud warning
    warning = security.exposure_warning(config) if problem is None else None
    assert (warning is not None) == ("allow_unauthenticated" in api), warning


def test_an_exposed_start_without_a_token_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LINEINSPECT__"):
            monkeypatch.delenv(name)
    config = tmp_path / "c.yaml"
    config.write_text(f"models: [{{path: {MODEL}}}]\napi: {{port: 1}}\n")  # port 1: never bound
    assert main(["serve", "--config", str(config), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "refusing to start" in err and "LINEINSPECT__API__TOKEN" in err
    assert "allow_unauthenticated" in err
    # config validate: the file is valid (a token may come at deploy time), with a note
    config.write_text(f"models: [{{path: {MODEL}}}]\napi: {{host: 0.0.0.0}}\n")
    assert main(["config", "validate", str(config)]) == 0
    assert "serve would refuse" in capsys.readouterr().err
    monkeypatch.setenv("LINEINSPECT__API__TOKEN", LEGACY)
    assert main(["config", "validate", str(config)]) == 0
    assert "refuse" not in capsys.readouterr().err


def test_model_paths_are_confined(served: ServedModels, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.onnx").write_bytes(MODEL.read_bytes())
    inside = tmp_path / "models"
    inside.mkdir()
    (inside / "link.onnx").symlink_to(outside / "evil.onnx")  # a symlink leading out
    (inside / "ok.onnx").write_bytes(MODEL.read_bytes())
    s = Setup(served, tmp_path, model_dirs=[str(inside)], **ROLES)
    c, auth = s.client, bearer(ADMIN)
    attacks = [
        str(inside / ".." / "outside" / "evil.onnx"),
        str(inside / "link.onnx"),
        "/etc/passwd",
        f"{inside}/../../../../etc/shadow",
        str(MODEL),  # the default folder is not allowed once api.model_dirs is set
        f"{inside}/ok.onnx\x00.txt",  # a NUL byte: refused, never a 500
        f"{inside}/" + "x" * 300 + "/m.onnx",  # a name too long to resolve
    ]
    for path in attacks:
        r = c.post(f"{BASE}/reload", json={"path": path}, headers=auth)
        reason = r.json()["detail"]
        assert r.status_code == 403, (path, reason)
        assert "outside the model folders" in reason or "cannot be resolved" in reason, reason
        r = c.post(f"{BASE}/candidate", json={"path": path}, headers=auth)
        assert r.status_code == 403, path
        card = {"path": str(inside / "ok.onnx"), "card": path}
        assert c.post(f"{BASE}/candidate", json=card, headers=auth).status_code == 403, path
    assert s.control.calls == [] and s.audit.count() == 0
    ok = c.post(f"{BASE}/candidate", json={"path": str(inside / "ok.onnx")}, headers=auth)
    assert ok.status_code == 200, ok.text
    assert s.control.calls[-1][1][1] == (inside / "ok.onnx").resolve()


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "since=-1",
        "since=yesterday",
        "until=1e300",
        "since=2000&until=1000",
        "action=DROP%20TABLE",
        "action=" + "a" * 65,
        "target=" + "x" * 257,
        "target=",
        "bogus=1",
    ],
)
def test_malformed_or_oversized_audit_queries_are_422(
    served: ServedModels, tmp_path: Path, query: str
) -> None:
    s = Setup(served, tmp_path, **ROLES)
    r = s.client.get(f"/v1/audit?{query}", headers=bearer(ADMIN))
    assert r.status_code == 422, (query, r.text)
    assert s.client.get("/v1/audit?limit=1000", headers=bearer(ADMIN)).status_code == 200

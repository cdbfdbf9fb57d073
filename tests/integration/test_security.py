"""Issue 16 on the wire: real uvicorn, a real line, a real mosquitto.

- As an auditor: a day of changes (thresholds twice, a reload, a label) reconstructed from
  `GET /v1/audit` alone, the same records announced on MQTT, and a verdict the PLC received
  traced to the thresholds it was judged with.
- As an attacker: refused requests over real HTTP change nothing, the line keeps serving.
- HTTPS: `lineinspect serve` with a certificate from a throw-away CA.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from tests.integration.conftest import REPO, Broker, Plc, dies_with_parent, free_port
from tests.integration.test_line import Serve, _make_certs, folder_camera, line_config

ADMIN = "alice-admin-0123456789abcdef01"
OPERATOR = "bob-operator-0123456789abcdef0"
MODEL = "neu-cls-demo"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def frames(tmp_path: Path, n: int) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(16)
    for i in range(n):
        image = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return folder


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_day_of_changes_is_reconstructed_from_the_audit_trail_alone(
    serve: Serve, broker: Broker, plc: Plc, tmp_path: Path
) -> None:
    cam = folder_camera("cam1", frames(tmp_path, 6), fps=4, loop=True)
    tokens = [
        {"id": "alice", "role": "admin", "secret": ADMIN},
        {"id": "bob", "role": "operator", "secret": OPERATOR},
    ]
    cfg = line_config(tmp_path, broker, [cam], api={"tokens": tokens},
                      review={"sample_rate": 1.0, "budget_per_hour": 1000})  # fmt: skip
    running = serve(config=cfg)
    c, admin, operator = running.client, bearer(ADMIN), bearer(OPERATOR)
    # the attacker first: nothing they send changes anything or lands on record
    for headers in ({}, bearer("guess-0123456789abcdef0123"), operator):
        assert c.put("/v1/thresholds", json={"default": 0.1}, headers=headers).status_code in (
            401,
            403,
        )
        r = c.post(f"/v1/models/{MODEL}/reload", json={"path": "/etc/passwd"}, headers=headers)
        assert r.status_code in (401, 403)
    r = c.post(f"/v1/models/{MODEL}/reload", json={"path": "../../etc/passwd"}, headers=admin)
    assert r.status_code == 403 and "outside the model folders" in r.json()["detail"]
    assert c.get("/v1/audit", headers=operator).status_code == 403

    # the day: thresholds twice, a reload, a label
    assert c.put("/v1/thresholds", json={"default": 0.6}, headers=admin).status_code == 200
    assert c.put("/v1/thresholds", json={"default": 0.8, "band": 0.05},
                 headers=admin).status_code == 200  # fmt: skip
    assert c.post(f"/v1/models/{MODEL}/reload", headers=admin).status_code == 200
    items = wait_for(lambda: c.get("/v1/review").json()["items"], 20, "a review item")
    item = items[0]
    label = {"label": "crazing", "inspector": "Ann"}
    url = f"/v1/review/{item['camera']}/{item['id']}/label"
    assert c.post(url, json=label, headers=operator).status_code == 200
    now = c.get("/v1/models").json()["models"][0]["thresholds_version"]
    verdict = wait_for(
        lambda: [v for v in plc.verdicts() if v["model"]["thresholds_version"] == now],
        20, "a verdict judged after the reload",
    )[0]  # fmt: skip

    # the auditor, from GET /v1/audit alone
    records = c.get("/v1/audit", headers=admin).json()["records"]
    changes = [r for r in records if r["action"] != "thresholds.version"]
    assert [(r["action"], r["actor"]) for r in changes] == [
        ("thresholds.set", "admin:alice"),
        ("thresholds.set", "admin:alice"),
        ("model.reload", "admin:alice"),
        ("review.label", "operator:bob"),
    ], "refused requests must leave no record, every change one"
    first, second, reload, labelled = changes
    assert first["after"]["thresholds"]["default"] == 0.6
    assert second["before"] == first["after"], "each change starts where the last one ended"
    assert (second["after"]["thresholds"]["default"], second["after"]["thresholds"]["band"]) == (
        0.8,
        0.05,
    )
    assert reload["before"]["thresholds_version"] == second["after"]["thresholds_version"]
    assert reload["after"]["thresholds_version"] == now
    assert reload["after"]["sha256"] == verdict["model"]["sha256"]
    assert labelled["target"] == f"{item['camera']}/{item['id']}"
    assert labelled["after"] == label and labelled["before"]["label"] is None
    assert all(r["route"] and r["at"] > 0 and r["token_id"] for r in changes)
    # every thresholds version is on record, consecutive, each with its full thresholds
    versions = [r for r in records if r["action"] == "thresholds.version"]
    numbers = [r["after"]["thresholds_version"] for r in versions]
    assert numbers == list(range(numbers[0], now + 1)), numbers
    # a verdict the PLC received, traced to the thresholds it was judged with
    v = verdict["model"]["thresholds_version"]
    traced = c.get(f"/v1/audit/thresholds/{MODEL}/{v}", headers=admin).json()
    current = c.get("/v1/thresholds").json()["thresholds"]
    assert traced["after"]["thresholds"] == current and traced["actor"] == "admin:alice"
    earliest = plc.verdicts()[0]["model"]["thresholds_version"]
    at_start = c.get(f"/v1/audit/thresholds/{MODEL}/{earliest}", headers=admin).json()
    assert at_start["actor"] == "config"
    assert c.get(f"/v1/audit/thresholds/{MODEL}/{now + 99}", headers=admin).status_code == 404
    # the same records on MQTT <prefix>/<line>/audit (those after the link came up)

    def on_mqtt() -> list[dict[str, Any]]:
        got = [p for t, p in plc.messages if t.endswith("/audit")]
        return got if any(p["action"] == "review.label" for p in got) else []

    announced = wait_for(on_mqtt, 10, "the audit records on MQTT")
    by_id = {r["id"]: r for r in records}
    assert all(by_id[p["id"]] == p for p in announced)
    assert {p["action"] for p in announced} >= {"thresholds.set", "model.reload", "review.label"}
    # and the line kept serving throughout
    assert c.get("/readyz").status_code == 200


def test_the_api_over_https_with_a_throwaway_ca(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    _make_certs(certs)  # a CA and a certificate for 127.0.0.1 (as the MQTT TLS test makes)
    port = free_port()
    config = tmp_path / "https.yaml"
    config.write_text(json.dumps({
        "models": [{"path": str(REPO / "models" / f"{MODEL}.onnx")}],
        "runtime": {"warmup_runs": 1},
        "api": {"host": "127.0.0.1", "port": port, "tokens": [
                    {"id": "alice", "role": "admin", "secret": ADMIN}],
                "tls_cert_file": str(certs / "broker.crt"),
                "tls_key_file": str(certs / "broker.key")},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "history": {"path": str(tmp_path / "history")},
    }))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEINSPECT__")}
    proc = subprocess.Popen(
        dies_with_parent([sys.executable, "-m", "service", "serve", "--config", str(config)]),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    try:
        trust = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        with httpx.Client(base_url=url, verify=trust, timeout=10) as c:

            def ready() -> bool:
                try:
                    return c.get("/readyz").status_code == 200
                except httpx.TransportError:
                    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                    return False

            wait_for(ready, 60, "the HTTPS server")
            assert c.get("/v1/models").json()["models"][0]["name"] == MODEL
            ok = c.put("/v1/thresholds", json={"default": 0.6}, headers=bearer(ADMIN))
            assert ok.status_code == 200
        # the lifecycle commands over HTTPS, trusting the site CA as documented
        cli = subprocess.run(
            [sys.executable, "-m", "service", "models", "history", MODEL, "--url", url],
            env=env | {"SSL_CERT_FILE": str(certs / "ca.crt")},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert cli.returncode == 0 and json.loads(cli.stdout)["model"] == MODEL, cli.stderr
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
            httpx.get(f"{url}/readyz", timeout=5)
        with pytest.raises(httpx.TransportError):  # no plain HTTP on the port
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"serving on https://127.0.0.1:{port}" in out
    assert ADMIN not in out, "a token reached the log"

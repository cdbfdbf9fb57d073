"""Recipes on a real line: real NEU images through capture, two shipped classifiers (real ONNX
Runtime), a real mosquitto and a subscriber standing in for the PLC, which selects recipes over
MQTT and reads the acknowledgements on the status topic.

A changeover under load loses no frame and keeps each camera's order; verdicts carry the recipe
and the model they were judged with; an unknown recipe is refused (MQTT and HTTP) and the line
keeps the current one."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO, Broker, Plc, Running, sample
from tests.integration.test_line import assert_complete, folder_camera, image_folder, line_config

Serve = Callable[..., Running]
RECIPES = [
    {"name": "plain", "cameras": {"cam1": {"model": "neu-cls-demo"}}},
    {
        "name": "strict",
        "cameras": {
            "cam1": {"model": "neu-cls-int8", "thresholds": {"default": 0.3, "band": 0.05}},
        },
    },
]


def acks(plc: Plc) -> list[dict[str, Any]]:
    return [p for t, p in plc.messages if t.endswith("/status") and p.get("event") == "recipe"]


def wait_until(what: str, check: Callable[[], bool], timeout: float, state: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s: {state() if state else ''}")
        time.sleep(0.05)


def test_a_plc_changes_recipe_under_load_without_losing_a_frame(
    serve: Serve, broker: Broker, plc: Plc, tmp_path: Path, neu_images: list[Path]
) -> None:
    n = 150
    folder = image_folder(tmp_path, neu_images, n)
    cfg = line_config(
        tmp_path, broker,
        [folder_camera("cam1", folder, fps=25), folder_camera("cam2", folder, fps=25)],
        models=[{"path": str(REPO / "models" / "neu-cls-demo.onnx")},
                {"path": str(REPO / "models" / "neu-cls-int8.onnx")}],
        line={"recipe": "plain"}, recipes=RECIPES,
    )  # fmt: skip
    running = serve(config=cfg)
    assert running.client.get("/v1/recipes").json()["active"] == "plain"
    wait_until("30 verdicts of cam1", lambda: len(plc.verdicts("cam1")) >= 30, 60)

    recipe_topic = "lineinspect/line-1/recipe"
    plc.client.publish(recipe_topic, json.dumps({"recipe": "strict", "request_id": "r-1"}), qos=1)
    wait_until("the acknowledgement", lambda: len(acks(plc)) >= 1, 30, lambda: plc.messages[-3:])
    ack = acks(plc)[0]
    assert ack["accepted"] is True and ack["active"] == "strict" and ack["request_id"] == "r-1"
    assert ack["state"] == "online"

    plc.client.publish(recipe_topic, json.dumps({"recipe": "nope", "request_id": "r-2"}), qos=1)
    wait_until("the refusal", lambda: len(acks(plc)) >= 2, 30)
    refused = acks(plc)[1]
    assert refused["accepted"] is False and refused["active"] == "strict"
    assert "no recipe named 'nope'" in refused["reason"] and refused["request_id"] == "r-2"

    for camera in ("cam1", "cam2"):
        got = plc.wait_for(n, 120, camera)
        assert_complete(got, n)
        assert [v["frame_id"] for v in got] == list(range(1, n + 1)), camera
    cam1 = plc.verdicts("cam1")
    models = [v["model"]["name"] for v in cam1]
    recipes = [v["recipe"] for v in cam1]
    switch = models.index("neu-cls-int8")
    assert 30 <= switch < n, "the changeover came after the first 30 verdicts"
    assert set(models[:switch]) == {"neu-cls-demo"} and set(models[switch:]) == {"neu-cls-int8"}
    assert recipes[0] == "plain" and recipes[-1] == "strict"
    assert recipes.index("strict") >= switch, "no verdict of the old model says the new recipe"
    assert all(r == "strict" for r in recipes[recipes.index("strict") :]), "one clean switch"
    assert {v["model"]["name"] for v in plc.verdicts("cam2")} == {"neu-cls-demo"}
    strict = [v for v in cam1 if v["recipe"] == "strict"]
    assert all(f["threshold"] == 0.3 for v in strict for f in v["findings"]), strict[0]

    # HTTP: an unknown recipe is a 404, the line keeps its recipe; a known one switches back
    r = running.client.put("/v1/recipe", json={"recipe": "nope"})
    assert r.status_code == 404 and "recipes: ['plain', 'strict']" in r.json()["detail"]
    state = running.client.get("/v1/recipes").json()
    assert state["active"] == "strict" and state["routing"]["cam1"] == "neu-cls-int8"
    page = running.client.get("/v1/operator/state").json()  # the operator page shows the same
    assert page["recipe"] == "strict"
    assert page["cameras"]["cam1"]["model"] == "neu-cls-int8"
    assert page["cameras"]["cam2"]["model"] == "neu-cls-demo"
    r = running.client.put("/v1/recipe", json={"recipe": "plain"})
    assert r.status_code == 200 and r.json()["routing"] == {
        "cam1": "neu-cls-demo",
        "cam2": "neu-cls-demo",
    }
    metrics = running.client.get("/metrics").text
    assert sample(metrics, "lineinspect_recipe_changes_total", result="refused") == 2
    assert sample(metrics, "lineinspect_recipe_changes_total", result="ok") == 3
    assert sample(metrics, "lineinspect_recipe_active", recipe="plain") == 1
    assert sample(metrics, "lineinspect_recipe_active", recipe="strict") == 0
    # the audit trail names each changeover and who asked for it (issue 16)
    selections = running.client.get("/v1/audit?action=recipe.select").json()["records"]
    assert [(r["actor"], r["route"], r["before"], r["after"]) for r in selections] == [
        ("mqtt", f"MQTT {recipe_topic}", {"recipe": "plain"}, {"recipe": "strict"}),
        ("api", "PUT /v1/recipe", {"recipe": "strict"}, {"recipe": "plain"}),
    ]

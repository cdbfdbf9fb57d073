"""The HTTP API on its own, through Starlette's TestClient: no broker, no camera, no server.

The routers see the service only through `service.api.deps.Api`; these tests fill it with the
real served models (the shipped classifier, real ONNX Runtime) and small stand-ins for control
and the live view, so each route's mapping of outcomes to status codes is checked directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.deps import Api
from service.api.server import create_app
from service.config import Settings
from service.core.errors import ConflictError, NotFoundError, RefusedError
from service.core.types import Frame, Judged, Result
from service.core.wire import verdict_payload
from service.inference.card import ThresholdSpec
from service.inference.model import Model
from service.metrics import Metrics
from service.recipes import RecipeError, UnknownRecipeError
from service.served import ServedModels
from service.sinks.candidate import Candidate, Origin
from service.sinks.drift import NullDrift
from service.sinks.live import LiveView

REPO = Path(__file__).resolve().parents[2]
TOKEN = "unit-test-token"


class FakeControl:
    """Records calls; raises what a test tells it to."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.trigger_error: Exception | None = None
        self.reload_error: Exception | None = None
        self.models: dict[str, Model] = {}
        self.errors: dict[str, Exception] = {}

    def trigger(self, camera: str, part_id: str) -> None:
        self.calls.append(("trigger", (camera, part_id)))
        if self.trigger_error is not None:
            raise self.trigger_error

    def reload_model(self, name: str, path: Path | None = None, by: str = "api") -> Model:
        self.calls.append(("reload", (name, path)))
        raise self.reload_error or KeyError(name)

    def set_thresholds(self, model: Model, thresholds: ThresholdSpec, by: str = "api") -> None:
        self.calls.append(("thresholds", thresholds))

    # -- model changes: unknown models are a KeyError, `errors[change]` is raised when set
    def _change(self, change: str, name: str, *args: Any) -> None:
        self.calls.append((change, (name, *args)))
        if name not in self.models:
            raise KeyError(name)
        if change in self.errors:
            raise self.errors[change]

    def _report(self, name: str) -> dict[str, Any]:
        model = self.models[name]
        origin = Origin("/m/candidate.onnx", None, "api", 1.0)
        return Candidate(name, model, origin, Metrics(), ["cam1"], model.spec.classes).report()

    def load_candidate(
        self, name: str, path: Path, card: Path | None = None, by: str = "api"
    ) -> dict[str, Any]:
        self._change("candidate", name, path, card, by)
        return self._report(name)

    def candidate_report(self, name: str) -> dict[str, Any]:
        self._change("report", name)
        return self._report(name)

    def promote_candidate(self, name: str, by: str = "api") -> Model:
        self._change("promote", name, by)
        return self.models[name]

    def discard_candidate(self, name: str, by: str = "api") -> dict[str, Any]:
        self._change("discard", name, by)
        return self._report(name)

    def rollback(self, name: str, by: str = "api") -> Model:
        self._change("rollback", name, by)
        return self.models[name]

    def history_of(self, name: str) -> dict[str, Any]:
        self._change("history", name)
        return {"model": name, "enabled": True, "keep": 10, "entries": []}


class FakeRecipes:
    """Two recipes; `fail` is one that cannot be applied."""

    def __init__(self) -> None:
        self.active: str | None = "a"

    def state(self) -> dict[str, Any]:
        return {"active": self.active, "routing": {}, "recipes": [{"name": "a"}, {"name": "b"}]}

    def select(self, name: str, by: str = "api") -> dict[str, Any]:
        if name == "fail":
            raise RecipeError("recipe fail names models that are not loaded: ['x']")
        if name not in ("a", "b"):
            raise UnknownRecipeError(f"no recipe named {name!r}; recipes: ['a', 'b']")
        self.active = name
        return self.state()


@pytest.fixture(scope="module")
def served() -> Iterator[ServedModels]:
    settings = Settings.model_validate(
        {
            "models": [{"path": str(REPO / "models" / "neu-cls-demo.onnx")}],
            "runtime": {"warmup_runs": 1, "parallel_runs": 1, "intra_op_threads": 1},
        }
    )
    served = ServedModels(settings, Metrics())
    served.start()
    yield served
    served.stop()


def make_api(served: ServedModels, control: FakeControl, live: LiveView, **api: Any) -> Api:
    settings = Settings.model_validate(
        {"models": [{"path": str(REPO / "models" / "neu-cls-demo.onnx")}], "api": api}
    )
    return Api(
        settings=settings,
        metrics=served.metrics,
        ready=lambda: served.ready,
        models=served,
        control=control,
        live=live,
        drift=NullDrift(),
        cameras={},
        link_status=lambda: (False, "mqtt disabled"),
        outbox_depth=lambda: (0, None),
        recipes=FakeRecipes(),
    )


def png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".png", image)
    assert ok
    return bytes(data)


def test_predict_answers_with_the_wire_format(served: ServedModels) -> None:
    client = TestClient(create_app(make_api(served, FakeControl(), LiveView())))
    r = client.post("/v1/predict", content=png(), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["schema_version"] == 1 and body["model"]["name"] == "neu-cls-demo"
    assert body["verdict"] in ("pass", "fail", "uncertain")
    assert body["image"] == {"width": 200, "height": 200}
    assert len(body["classes"]) == 6 and body["detections"] is None
    # the same image in-process gives the same verdict and scores
    image = cv2.imdecode(np.frombuffer(png(), np.uint8), cv2.IMREAD_COLOR)
    alone = served.models["neu-cls-demo"].predict([image])[0]
    assert body["verdict"] == alone.decision.verdict.value
    assert [c["probability"] for c in body["classes"]] == [
        round(f.confidence, 6) for f in alone.decision.findings
    ]


def test_bad_input_is_a_4xx_and_the_api_keeps_serving(served: ServedModels) -> None:
    client = TestClient(create_app(make_api(served, FakeControl(), LiveView())))
    corrupt = client.post("/v1/predict", content=png()[:100], headers={"content-type": "image/png"})
    assert corrupt.status_code == 400, corrupt.text
    assert client.post("/v1/predict?model=nope", content=png()).status_code == 404
    text = client.post("/v1/predict", content=b"hi", headers={"content-type": "text/plain"})
    assert text.status_code == 415
    assert client.get("/readyz").status_code == 200


def test_not_ready_is_503(served: ServedModels) -> None:
    api = make_api(served, FakeControl(), LiveView())
    client = TestClient(create_app(Api(**{**vars(api), "ready": lambda: False})))
    assert client.get("/readyz").status_code == 503
    assert client.post("/v1/predict", content=png()).status_code == 503


def test_mutating_routes_need_the_token_and_reach_control(served: ServedModels) -> None:
    control = FakeControl()
    client = TestClient(create_app(make_api(served, control, LiveView(), token=TOKEN)))
    body = {"default": 0.6}
    assert client.put("/v1/thresholds", json=body).status_code == 401
    bad = client.put("/v1/thresholds", json=body, headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401
    assert control.calls == []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ok = client.put("/v1/thresholds", json=body, headers=auth)
    assert ok.status_code == 200, ok.text
    assert control.calls == [("thresholds", ThresholdSpec(default=0.6))]


def test_trigger_and_reload_map_refusals_to_status_codes(served: ServedModels) -> None:
    control = FakeControl()
    client = TestClient(create_app(make_api(served, control, LiveView())))
    part = {"part_id": "P-1"}
    control.trigger_error = KeyError("cam9")
    assert client.post("/v1/cameras/cam9/trigger", json=part).status_code == 404
    control.trigger_error = ValueError("camera cam1 is free-running, not in trigger mode")
    conflict = client.post("/v1/cameras/cam1/trigger", json=part)
    assert conflict.status_code == 409 and "free-running" in conflict.json()["detail"]
    control.trigger_error = None
    assert client.post("/v1/cameras/cam1/trigger", json=part).status_code == 202
    assert client.post("/v1/cameras/cam1/trigger", json={}).status_code == 422
    assert client.post("/v1/models/nope/reload").status_code == 404
    missing = REPO / "models" / "x.onnx"  # inside the model folder: the loader refuses it
    control.reload_error = FileNotFoundError(f"model not found: {missing}")
    refused = client.post("/v1/models/neu-cls-demo/reload", json={"path": str(missing)})
    assert refused.status_code == 422 and "keeps serving" in refused.json()["detail"]
    assert control.calls[-1] == ("reload", ("neu-cls-demo", missing))


def _judged(served: ServedModels, camera: str, frame_id: int) -> Judged:
    image = cv2.imdecode(np.frombuffer(png(frame_id), np.uint8), cv2.IMREAD_COLOR)
    result: Result = served.models["neu-cls-demo"].predict([image])[0]
    frame = Frame(camera, frame_id, image, time.monotonic(), time.time())
    payload = verdict_payload("line1", frame, result, None, frame_id, time.monotonic())
    return Judged(frame, result, None, time.monotonic(), frame_id, payload)


def test_live_view_feeds_the_operator_routes(served: ServedModels) -> None:
    live = LiveView()
    client = TestClient(create_app(make_api(served, FakeControl(), live)))
    assert client.get("/v1/operator/state").json()["feed"] == []
    for i in (1, 2, 3):
        live.handle(_judged(served, "cam1", i))
    state = client.get("/v1/operator/state?feed=2").json()
    assert [item["frame_id"] for item in state["feed"]] == [3, 2]  # newest first, bounded
    cameras = client.get("/v1/cameras").json()
    assert cameras["mqtt_connected"] is False and cameras["outbox"]["messages"] == 0


def test_the_live_view_is_safe_to_read_while_written(served: ServedModels) -> None:
    live = LiveView(feed_size=50)
    judged = [_judged(served, f"cam{i % 3}", i) for i in range(1, 31)]
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(300):
                assert len(live.recent(50)) <= 50
                live.last_frame("cam1")
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(10):
        for j in judged:
            live.handle(j)
    reader.join()
    assert errors == []
    last = live.last_verdict("cam0")
    assert last is not None and last["frame_id"] == 30


def test_model_change_routes_map_refusals_to_status_codes(served: ServedModels) -> None:
    control = FakeControl()
    control.models = dict(served.models)
    client = TestClient(create_app(make_api(served, control, LiveView())))
    base = "/v1/models/neu-cls-demo"
    models = REPO / "models"  # the folder of the configured model: candidates may come from it
    body = {"path": str(models / "candidate.onnx")}
    # unknown model: 404 on every route, the names loaded in the reason
    for method, path in [("POST", "/candidate"), ("GET", "/candidate"), ("DELETE", "/candidate"),
                         ("POST", "/candidate/promote"), ("POST", "/rollback"), ("GET", "/history")]:  # fmt: skip
        r = client.request(
            method, f"/v1/models/nope{path}", json=body if path == "/candidate" else None
        )
        assert r.status_code == 404 and "neu-cls-demo" in r.json()["detail"], (method, path, r.text)
    # a bad body is a 422 before control is asked
    calls = len(control.calls)
    for bad in ({}, {"path": ""}, body | {"extra": 1}, body | {"card": ""}):
        assert client.post(f"{base}/candidate", json=bad).status_code == 422, bad
    assert len(control.calls) == calls
    # loaded: the report; who loaded it is "api" without a token
    ok = client.post(f"{base}/candidate", json=body | {"card": str(models / "c.card.yaml")})
    assert ok.status_code == 200, ok.text
    report = ok.json()
    assert report["model"] == "neu-cls-demo" and report["candidate"]["version"] == "0.1.0"
    assert set(report["totals"]["flips"]) == {
        "pass->fail", "pass->uncertain", "fail->pass", "fail->uncertain",
        "uncertain->pass", "uncertain->fail",
    }  # fmt: skip
    assert report["cameras"]["cam1"]["compared"] == 0
    assert control.calls[-1] == (
        "candidate",
        ("neu-cls-demo", models / "candidate.onnx", models / "c.card.yaml", "api"),
    )
    assert client.get(f"{base}/candidate").status_code == 200
    control.errors["candidate"] = RefusedError("candidate refused, neu-cls-demo keeps serving: x")
    refused = client.post(f"{base}/candidate", json=body)
    assert refused.status_code == 422 and "keeps serving" in refused.json()["detail"]
    control.errors["report"] = NotFoundError("model neu-cls-demo has no candidate")
    assert client.get(f"{base}/candidate").status_code == 404
    control.errors["discard"] = NotFoundError("model neu-cls-demo has no candidate")
    assert client.delete(f"{base}/candidate").status_code == 404
    del control.errors["discard"]
    assert client.delete(f"{base}/candidate").json()["model"] == "neu-cls-demo"
    # promote and rollback answer the model now serving, with its thresholds version
    promoted = client.post(f"{base}/candidate/promote")
    assert promoted.status_code == 200 and promoted.json()["thresholds_version"] >= 1
    control.errors["promote"] = ConflictError("model neu-cls-demo has no candidate to promote")
    conflict = client.post(f"{base}/candidate/promote")
    assert conflict.status_code == 409 and "no candidate" in conflict.json()["detail"]
    assert client.post(f"{base}/rollback").status_code == 200
    control.errors["rollback"] = ConflictError("no earlier model of neu-cls-demo in the history")
    assert client.post(f"{base}/rollback").status_code == 409
    control.errors["rollback"] = RefusedError("rollback refused, neu-cls-demo keeps serving: x")
    assert client.post(f"{base}/rollback").status_code == 422
    history = client.get(f"{base}/history")
    assert history.status_code == 200 and history.json()["entries"] == []


def test_model_changes_need_the_token_and_record_who(served: ServedModels) -> None:
    control = FakeControl()
    control.models = dict(served.models)
    client = TestClient(create_app(make_api(served, control, LiveView(), token=TOKEN)))
    base = "/v1/models/neu-cls-demo"
    for method, path in [("POST", "/candidate"), ("DELETE", "/candidate"),
                         ("POST", "/candidate/promote"), ("POST", "/rollback"), ("POST", "/reload")]:  # fmt: skip
        r = client.request(
            method, base + path, json={"path": "/m.onnx"} if path == "/candidate" else None
        )
        assert r.status_code == 401, (method, path)
    assert control.calls == []
    assert client.get(f"{base}/history").status_code == 200  # reading needs no token
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post(f"{base}/rollback", headers=auth).status_code == 200
    assert control.calls[-1] == ("rollback", ("neu-cls-demo", "admin:default"))


def test_verdicts_carry_the_thresholds_version(served: ServedModels) -> None:
    client = TestClient(create_app(make_api(served, FakeControl(), LiveView())))
    model = served.models["neu-cls-demo"]
    before = client.post("/v1/predict", content=png(), headers={"content-type": "image/png"})
    version = before.json()["model"]["thresholds_version"]
    assert version == model.thresholds_version
    assert set(before.json()["model"]) == {
        "name",
        "version",
        "sha256",
        "task",
        "thresholds_version",
    }
    model.set_policy(model.policy)  # a threshold change, even to the same values
    after = client.post("/v1/predict", content=png(), headers={"content-type": "image/png"})
    assert after.json()["model"]["thresholds_version"] == version + 1
    listed = client.get("/v1/models").json()["models"][0]
    assert listed["thresholds_version"] == version + 1


def test_recipe_routes_map_refusals_and_need_the_token(served: ServedModels) -> None:
    client = TestClient(create_app(make_api(served, FakeControl(), LiveView(), token=TOKEN)))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/v1/recipes").json()["active"] == "a"
    assert client.put("/v1/recipe", json={"recipe": "b"}).status_code == 401
    unknown = client.put("/v1/recipe", json={"recipe": "nope"}, headers=auth)
    assert unknown.status_code == 404 and "keeps its recipe" in unknown.json()["detail"]
    refused = client.put("/v1/recipe", json={"recipe": "fail"}, headers=auth)
    assert refused.status_code == 409 and "not loaded" in refused.json()["detail"]
    assert client.put("/v1/recipe", json={}, headers=auth).status_code == 422
    assert client.get("/v1/recipes").json()["active"] == "a", "nothing changed"
    ok = client.put("/v1/recipe", json={"recipe": "b"}, headers=auth)
    assert ok.status_code == 200 and ok.json()["active"] == "b"

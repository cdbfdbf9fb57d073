"""Model changes without a line: a candidate beside the live model, promote, discard, the model
history and rollback, and the thresholds version, on real ONNX Runtime sessions of the shipped
models (service.control, service.sinks.candidate, service.history)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from service.config import Settings, ShadowConfig
from service.control import Control
from service.core.errors import ConflictError, NotFoundError, RefusedError
from service.core.types import Frame, Judged, Result
from service.core.wire import verdict_payload
from service.history import HistoryError, ModelHistory
from service.inference.card import ThresholdSpec
from service.inference.registry import file_sha256
from service.metrics import Metrics
from service.served import ServedModels
from service.sinks.candidate import Candidate, CandidateSink, Origin
from service.sinks.drift import NullDrift

REPO = Path(__file__).resolve().parents[2]
LIVE = "neu-cls-demo"


def copy_model(stem: str, folder: Path, **card_fields: Any) -> Path:
    """A shipped model and its card in `folder`, the card's fields replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "models" / f"{stem}.onnx", folder / f"{stem}.onnx")
    card = yaml.safe_load((REPO / "models" / f"{stem}.card.yaml").read_text())
    (folder / f"{stem}.card.yaml").write_text(yaml.safe_dump(card | card_fields))
    return folder / f"{stem}.onnx"


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Noise, gradients, stripes: images the two NEU classifiers disagree on now and then."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 3 == 0:
            image = rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)
        elif i % 3 == 1:
            image = rng.normal(128, 20 + i, (160, 200, 3)).clip(0, 255).astype(np.uint8)
        else:
            image = np.full((160, 200, 3), 128, np.uint8)
            image[:: 4 + i % 7] = rng.integers(0, 255)
        out.append(image)
    return out


@dataclass
class Review:
    """Stands in for the review sink: takes every offer, remembers the frames."""

    frames: list[tuple[int, str, str]] = field(default_factory=list)

    def offer(self, frame: Frame, result: Result, sequence: int, candidate: Result) -> bool:
        live, cand = result.decision.verdict.value, candidate.decision.verdict.value
        self.frames.append((frame.frame_id, live, cand))
        return True


@dataclass
class Setup:
    served: ServedModels
    control: Control
    metrics: Metrics
    history: ModelHistory
    live_file: Path
    candidate_file: Path
    tmp: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    live_file = copy_model(LIVE, tmp_path / "live")
    # the INT8 classifier, its card naming it as the live model: a candidate for it
    candidate_file = copy_model("neu-cls-int8", tmp_path / "candidate", name=LIVE)
    settings = Settings.model_validate({
        "models": [{"path": str(live_file)}],
        "runtime": {"warmup_runs": 1, "parallel_runs": 1, "intra_op_threads": 1},
        "cameras": [{"name": "cam1", "source": "folder:/nowhere"}],
        "history": {"path": str(tmp_path / "history"), "keep": 3},
    })  # fmt: skip
    metrics = Metrics()
    served = ServedModels(settings, metrics)
    served.start()
    history = ModelHistory(tmp_path / "history", 3)
    # nice rather than SCHED_IDLE: an idle-class worker may starve on a busy shared test machine
    shadow = ShadowConfig(queue_size=64, idle=False)
    control = Control(served, {}, metrics, NullDrift(), CandidateSink(), history, shadow)
    control.start()
    yield Setup(served, control, metrics, history, live_file, candidate_file, tmp_path)
    control.candidates.close()
    served.stop()


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def judged(model_result: Result, image: np.ndarray, frame_id: int) -> Judged:
    frame = Frame("cam1", frame_id, image, time.monotonic(), time.time())
    payload = verdict_payload("line1", frame, model_result, None, frame_id, time.monotonic())
    return Judged(frame, model_result, None, time.monotonic(), frame_id, payload)


def test_a_candidate_that_cannot_serve_is_refused_and_the_live_model_keeps_serving(
    setup: Setup,
) -> None:
    live = setup.served.models[LIVE]
    bad = setup.tmp / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    other_task = copy_model("mt-anomaly", setup.tmp / "anomaly", name=LIVE)
    other_name = copy_model("neu-cls-int8", setup.tmp / "renamed")  # its card says neu-cls-int8
    cases = [
        (bad, None, "cannot load"),
        (setup.tmp / "missing.onnx", None, "no model file"),
        (setup.candidate_file, setup.tmp / "missing.card.yaml", "card"),
        (other_task, None, "change its task from classify to anomaly"),
        (other_name, None, "rename it to 'neu-cls-int8'"),
    ]
    for path, card, reason in cases:
        with pytest.raises(
            RefusedError, match="candidate refused, neu-cls-demo keeps serving"
        ) as e:
            setup.control.load_candidate(LIVE, path, card)
        assert reason in str(e.value), str(e.value)
    with pytest.raises(KeyError):
        setup.control.load_candidate("nope", setup.candidate_file)
    assert setup.served.models[LIVE] is live and setup.control.candidates.get(LIVE) is None
    failed = value(setup.metrics, "lineinspect_model_changes_total",
                   model=LIVE, change="candidate", result="failed")  # fmt: skip
    assert failed == len(cases)
    with pytest.raises(NotFoundError):
        setup.control.candidate_report(LIVE)
    with pytest.raises(NotFoundError):
        setup.control.discard_candidate(LIVE)
    with pytest.raises(ConflictError, match="no candidate to promote"):
        setup.control.promote_candidate(LIVE)


def test_the_candidate_report_equals_an_offline_comparison(setup: Setup) -> None:
    review = Review()
    setup.control.review = review
    report = setup.control.load_candidate(LIVE, setup.candidate_file, by="api")
    assert report["candidate"]["version"] == "1.0.0" and report["candidate"]["loaded_by"] == "api"
    assert report["candidate"]["card"].endswith("neu-cls-int8.card.yaml")
    live = setup.served.models[LIVE]
    candidate = setup.control.candidates.get(LIVE)
    assert candidate is not None
    shots = images(30)
    sink = setup.control.candidates
    for i, image in enumerate(shots, 1):
        sink.handle(judged(live.predict([image])[0], image, i))
        time.sleep(0.02)  # a paced camera: the queue (16) never fills
    deadline = time.monotonic() + 30
    while setup.control.candidate_report(LIVE)["totals"]["compared"] < len(shots):
        assert time.monotonic() < deadline, setup.control.candidate_report(LIVE)["totals"]
        time.sleep(0.05)
    # offline: both models over the same images, in-process
    pairs = zip(live.predict(shots), candidate.model.predict(shots), strict=True)
    offline = [
        (i, a.decision.verdict.value, b.decision.verdict.value) for i, (a, b) in enumerate(pairs, 1)
    ]
    disagree = [row for row in offline if row[1] != row[2]]
    assert disagree, "the test images should make the two models disagree at least once"
    got = setup.control.candidate_report(LIVE)["cameras"]["cam1"]
    assert got["compared"] == len(shots) and got["dropped"] == 0 and got["errors"] == 0
    assert got["agreements"] == len(shots) - len(disagree)
    for flip, n in got["flips"].items():
        a, b = flip.split("->")
        assert n == sum(1 for _, x, y in disagree if (x, y) == (a, b)), flip
    assert review.frames == disagree and got["kept_for_review"] == len(disagree)
    m = setup.metrics
    assert value(m, "lineinspect_candidate_frames_total", model=LIVE, camera="cam1") == len(shots)
    ratio = value(m, "lineinspect_candidate_agreement_ratio", model=LIVE, camera="cam1")
    assert ratio == pytest.approx(got["agreement"], abs=1e-6)
    assert value(m, "lineinspect_candidate_score_shift_count",
                 model=LIVE, camera="cam1", **{"class": "crazing"}) == len(shots)  # fmt: skip
    assert value(m, "lineinspect_candidate_duration_seconds_count", model=LIVE, camera="cam1") > 0
    for name, shift in got["score_shift"].items():
        mean = value(m, "lineinspect_candidate_score_shift_mean",
                     model=LIVE, camera="cam1", **{"class": name})  # fmt: skip
        assert mean == pytest.approx(shift["mean"], abs=1e-6), name
    final = setup.control.discard_candidate(LIVE)
    assert final["totals"]["compared"] == len(shots) and setup.control.candidates.get(LIVE) is None
    assert m.registry.get_sample_value(
        "lineinspect_candidate_info", {"model": LIVE, "version": "1.0.0",
                                       "sha256": candidate.model.spec.sha256}
    ) is None  # fmt: skip


def test_a_full_candidate_queue_drops_for_the_candidate_and_never_blocks(setup: Setup) -> None:
    live = setup.served.models[LIVE]
    metrics = setup.metrics
    origin = Origin(str(setup.candidate_file), None, "api", time.time())
    candidate = Candidate(LIVE, live, origin, metrics, ["cam1"], live.spec.classes, queue_size=2)
    image = images(1)[0]
    frame = judged(live.predict([image])[0], image, 1)
    t0 = time.perf_counter()
    for _ in range(10):  # not started: nothing takes frames from its queue
        candidate.offer(frame)
    assert time.perf_counter() - t0 < 0.05
    assert candidate.report()["cameras"]["cam1"]["dropped"] == 8
    dropped = value(
        metrics, "lineinspect_candidate_frames_dropped_total", model=LIVE, camera="cam1"
    )
    assert dropped == 8


def test_the_candidate_worker_runs_at_the_lowest_cpu_priority(setup: Setup) -> None:
    """By default (shadow.idle) under SCHED_IDLE; with idle: false, `nice` steps lower."""
    live = setup.served.models[LIVE]
    origin = Origin(str(setup.candidate_file), None, "api", time.time())
    for idle, policy in ((True, os.SCHED_IDLE), (False, os.SCHED_OTHER)):
        candidate = Candidate(LIVE, live, origin, setup.metrics, [], (), idle=idle, nice=7)
        candidate.start()
        try:
            tid = candidate._thread.native_id
            assert tid is not None
            deadline = time.monotonic() + 5
            while os.sched_getscheduler(tid) != policy and time.monotonic() < deadline:
                time.sleep(0.01)
            assert os.sched_getscheduler(tid) == policy
            if not idle:
                assert (
                    os.getpriority(os.PRIO_PROCESS, tid) >= os.getpriority(os.PRIO_PROCESS, 0) + 7
                )
        finally:
            candidate.stop()


def test_promote_then_rollback_through_the_history(setup: Setup) -> None:
    served, control, history = setup.served, setup.control, setup.history
    old = served.models[LIVE]
    first = history.current(LIVE)
    assert first is not None and (first.by, first.event, first.sha256) == (
        "config",
        "start",
        old.spec.sha256,
    )
    with pytest.raises(ConflictError, match="no earlier model of neu-cls-demo"):
        control.rollback(LIVE)
    control.load_candidate(LIVE, setup.candidate_file, by="token:default")
    candidate = control.candidates.get(LIVE)
    assert candidate is not None
    promoted = control.promote_candidate(LIVE, by="token:default")
    assert promoted is candidate.model and served.models[LIVE] is promoted
    assert served.slots[LIVE].model is promoted and served.batchers[LIVE].model is promoted
    assert promoted.thresholds_version == old.thresholds_version + 1
    assert control.candidates.get(LIVE) is None
    entries = control.history_of(LIVE)["entries"]
    assert [(e["event"], e["by"], e["version"], e["current"]) for e in entries] == [
        ("promote", "token:default", "1.0.0", True),
        ("start", "config", "0.1.0", False),
    ]
    # the kept copy is the file that served, under its own name, with its card
    kept, card = history.paths(history.entries(LIVE)[-1])
    assert kept.name == "neu-cls-int8.onnx" and card is not None and card.is_file()
    assert kept.read_bytes() == setup.candidate_file.read_bytes()
    back = control.rollback(LIVE, by="api")
    assert back.spec.sha256 == old.spec.sha256 and served.models[LIVE] is back
    assert back.thresholds_version == promoted.thresholds_version + 1
    entries = control.history_of(LIVE)["entries"]
    assert entries[0]["rolled_back_by"] == "api" and entries[1]["current"]
    with pytest.raises(ConflictError):  # nothing before the first model
        control.rollback(LIVE)
    ok = value(setup.metrics, "lineinspect_model_changes_total",
               model=LIVE, change="rollback", result="ok")  # fmt: skip
    assert ok == 1
    assert value(setup.metrics, "lineinspect_thresholds_version", model=LIVE) == (
        back.thresholds_version
    )


def test_a_kept_copy_that_no_longer_loads_is_refused(setup: Setup) -> None:
    control = setup.control
    control.load_candidate(LIVE, setup.candidate_file)
    control.promote_candidate(LIVE)
    first = setup.history.entries(LIVE)[0]
    kept, _ = setup.history.paths(first)
    kept.write_bytes(b"damaged")
    serving = setup.served.models[LIVE]
    with pytest.raises(RefusedError, match="rollback refused, neu-cls-demo keeps serving"):
        control.rollback(LIVE)
    assert setup.served.models[LIVE] is serving


def test_reload_and_threshold_changes_number_the_thresholds(setup: Setup) -> None:
    served, control = setup.served, setup.control
    model = served.models[LIVE]
    v = model.thresholds_version
    control.set_thresholds(model, ThresholdSpec(default=0.7))
    assert model.thresholds_version == v + 1
    assert model.predict(images(1))[0].model.thresholds_version == v + 1
    same = control.reload_model(LIVE)  # the same file again: no new history entry
    assert same.thresholds_version == v + 2
    assert len(setup.history.entries(LIVE)) == 1
    card = setup.live_file.with_name(f"{LIVE}.card.yaml")
    card.write_text(card.read_text().replace("version: 0.1.0", "version: 0.1.1"))
    control.reload_model(LIVE, by="api")
    latest = setup.history.current(LIVE)
    assert latest is not None and (latest.version, latest.event, latest.by) == (
        "0.1.1",
        "reload",
        "api",
    )


def test_the_history_keeps_its_bound_and_never_a_changed_file(tmp_path: Path) -> None:
    history = ModelHistory(tmp_path / "h", keep=3)
    files = []
    for i in range(5):
        f = tmp_path / f"m{i}.onnx"
        f.write_bytes(b"model %d" % i)
        files.append(f)
    for i, f in enumerate(files):
        history.record("parts/A", f, None, file_sha256(f), f"0.{i}", "api", "reload")
        time.sleep(0.002)
    entries = history.entries("parts/A")
    assert [e.version for e in entries] == ["0.2", "0.3", "0.4"]  # the oldest went first
    assert (tmp_path / "h" / "parts_A").is_dir()  # a model name is one safe folder
    again = history.record("parts/A", files[4], None, file_sha256(files[4]), "0.4", "api", "reload")
    assert again == entries[-1] and len(history.entries("parts/A")) == 3
    changed = tmp_path / "changed.onnx"
    changed.write_bytes(b"new bytes")
    with pytest.raises(HistoryError, match="changed since it was loaded"):
        history.record("parts/A", changed, None, "0" * 64, "0.5", "api", "reload")
    assert len(history.entries("parts/A")) == 3 and not list((tmp_path / "h").glob("*/.tmp*"))
    target = history.rollback_target("parts/A", entries[-1].sha256)
    assert target is not None and target[0] == entries[-2] and target[1] == entries[-1]
    # the history's newest entry is not what serves (its copy failed): go back to it
    target = history.rollback_target("parts/A", "f" * 64)
    assert target is not None and target == (entries[-1], None)

"""Remote inference on a real Triton Inference Server on loopback (pytriton's tritonserver binary
serving a repository written by `lineinspect models export-triton`, scripts/dev/triton_server.py):
the same judgements as in process, mis-built repositories refused by name, and a line that keeps
every verdict, in order, through a server outage.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from scripts.harness import TritonServer
from service.cli import main as cli_main
from service.inference.errors import ModelError
from service.inference.model import Model, load_model
from service.inference.runtime import CPU, RuntimeOptions
from service.inference.triton import TritonOptions
from tests.integration.conftest import REPO, Broker, Plc, sample
from tests.integration.test_line import Serve, folder_camera, image_folder, line_config

MODELS = ("neu-cls-demo", "neu-det-demo", "mt-anomaly")
# How long the outage test keeps the server away; 4 s in CI, the 30 s by hand:
# LINEINSPECT_TRITON_OUTAGE_S=30 pytest tests/integration/test_triton.py -k outage
OUTAGE_S = float(os.environ.get("LINEINSPECT_TRITON_OUTAGE_S", "4"))


def export(out: Path, *names: str) -> Path:
    paths = [str(REPO / "models" / f"{n}.onnx") for n in names]
    assert cli_main(["models", "export-triton", *paths, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    work = tmp_path_factory.mktemp("triton")
    server = TritonServer(export(work / "repository", *MODELS), work / "triton.log")
    server.start()
    yield server
    server.stop()


def local(name: str) -> Model:
    return load_model(REPO / "models" / f"{name}.onnx", RuntimeOptions(providers=(CPU,)))


def remote(name: str, url: str, protocol: str, **options: object) -> Model:
    triton = TritonOptions(url=url, protocol=protocol, **options)  # type: ignore[arg-type]
    opts = RuntimeOptions(providers=(CPU,), warmup_runs=1, triton=triton)
    return load_model(REPO / "models" / f"{name}.onnx", opts)


def test_exported_config_is_what_triton_reads(tmp_path: Path) -> None:
    """config.pbtxt parsed by Triton's own protobuf schema: batched dims without the batch axis,
    a batch-only output reshaped, dynamic batching, the file's sha256 for the line to check."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from service.inference.registry import file_sha256

    repo = export(tmp_path, *MODELS)
    for name in MODELS:
        cfg = model_config_pb2.ModelConfig()
        text_format.Parse((repo / name / "config.pbtxt").read_text(), cfg)
        assert cfg.name == name and cfg.platform == "onnxruntime_onnx"
        assert cfg.max_batch_size == 8 and cfg.dynamic_batching.max_queue_delay_microseconds == 1000
        assert (repo / name / "1" / "model.onnx").read_bytes() == (
            REPO / "models" / f"{name}.onnx"
        ).read_bytes()
        assert (repo / name / f"{name}.card.yaml").is_file()
        sha = cfg.parameters["lineinspect_sha256"].string_value
        assert sha == file_sha256(REPO / "models" / f"{name}.onnx")
    cls = model_config_pb2.ModelConfig()
    text_format.Parse((repo / "neu-cls-demo" / "config.pbtxt").read_text(), cls)
    assert list(cls.input[0].dims) == [3, 128, 128] and list(cls.output[0].dims) == [6]
    det = model_config_pb2.ModelConfig()
    text_format.Parse((repo / "neu-det-demo" / "config.pbtxt").read_text(), det)
    assert list(det.input[0].dims) == [3, -1, -1]  # rect letterbox: any height and width
    mt = model_config_pb2.ModelConfig()
    text_format.Parse((repo / "mt-anomaly" / "config.pbtxt").read_text(), mt)
    score = next(o for o in mt.output if o.name == "pred_score")
    assert list(score.dims) == [1] and list(score.reshape.shape) == []


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_remote_judges_as_in_process(
    triton: TritonServer, protocol: str, neu_images: list[Path], tile_images: list[Path]
) -> None:
    """Real NEU and magnetic-tile images: the same scores, boxes and verdicts over the wire."""
    images = {
        "neu-cls-demo": neu_images[::97][:12],
        "neu-det-demo": neu_images[5::89][:12],
        "mt-anomaly": tile_images[::53][:12],
    }
    for name, paths in images.items():
        frames = [cv2.imread(str(p)) for p in paths]
        here = local(name).predict(frames)
        model = remote(name, triton.url(protocol), protocol)
        assert model.providers[0].startswith(f"Triton({protocol}://")
        there = model.predict(frames)
        assert [r.decision.verdict for r in there] == [r.decision.verdict for r in here], name
        for a, b in zip(here, there, strict=True):
            pa, pb = a.prediction, b.prediction
            if pa.probabilities is not None:
                assert pb.probabilities is not None
                np.testing.assert_allclose(pb.probabilities, pa.probabilities, atol=1e-5)
            if pa.detections is not None:
                assert pb.detections is not None
                np.testing.assert_allclose(pb.detections.xyxy, pa.detections.xyxy, atol=1e-3)
                np.testing.assert_array_equal(pb.detections.class_id, pa.detections.class_id)
            if pa.anomaly is not None:
                assert pb.anomaly is not None
                assert abs(pb.anomaly.score - pa.anomaly.score) < 1e-4
        assert any(r.prediction.detections is not None and len(r.prediction.detections.xyxy)
                   for r in there) or name != "neu-det-demo"  # fmt: skip


@pytest.fixture(scope="module")
def misbuilt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A repository whose configs disagree with the line's model file, served as written."""
    work = tmp_path_factory.mktemp("misbuilt")
    repo = export(work / "src", "neu-cls-demo")
    out = work / "repository"
    edits = {
        "bad-shape": ("dims: [ 3, 128, 128 ]", "dims: [ 3, 224, 224 ]"),
        "bad-names": ('name: "probabilities"', 'name: "output0"'),
        "bad-sha": ('string_value: "', 'string_value: "0000'),
    }
    for name, (old, new) in edits.items():
        shutil.copytree(repo / "neu-cls-demo", out / name)
        config = (out / name / "config.pbtxt").read_text()
        assert old in config
        config = config.replace('name: "neu-cls-demo"', f'name: "{name}"').replace(old, new)
        (out / name / "config.pbtxt").write_text(config)
    server = TritonServer(out, work / "triton.log")
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("served", "message"),
    [
        ("bad-shape", r"input 'images' has shape \[-1, 3, 224, 224\] but the model file"),
        ("bad-names", r"has outputs \['output0'\] but the model file has \['probabilities'\]"),
        ("bad-sha", r"exported from a file with sha256 0000.*different models"),
        ("missing", r"inference server unavailable|not found"),
    ],
)
def test_a_repository_that_does_not_hold_the_model_is_refused(
    misbuilt: TritonServer, served: str, message: str
) -> None:
    if served == "missing":  # a model the server does not have: not served, and said why
        model = remote("neu-cls-demo", misbuilt.url("grpc"), "grpc", model_name="missing")
        assert not model.session.up
        with pytest.raises(Exception, match=message):
            model.predict([np.zeros((128, 128, 3), np.uint8)])
        return
    with pytest.raises(ModelError, match=message):
        remote("neu-cls-demo", misbuilt.url("grpc"), "grpc", model_name=served)


def test_a_line_starts_while_the_server_is_away() -> None:
    """Resolved from the local file, the model loads with no server; each run fails at once
    with the reason while the back-off holds, instead of waiting out a timeout per batch."""
    from scripts.harness import free_port
    from service.inference.triton import ServerUnavailableError

    model = remote("neu-cls-demo", f"127.0.0.1:{free_port()}", "grpc", retry_initial_s=5.0)
    assert model.warmed and not model.session.up
    assert model.spec.classes and model.spec.preprocess.size == (128, 128)
    image = np.zeros((128, 128, 3), np.uint8)
    t0 = time.perf_counter()
    with pytest.raises(ServerUnavailableError, match=r"^inference server unavailable \(grpc://"):
        model.predict([image])
    assert time.perf_counter() - t0 < 0.5, "a run during the back-off waited for the network"


@pytest.mark.parametrize(
    ("protocol", "outage"),
    [("grpc", "killed"), ("http", "killed"), ("grpc", "frozen"), ("http", "frozen")],
)
def test_line_keeps_every_verdict_through_a_server_outage(
    serve: Serve, broker: Broker, plc: Plc, tmp_path: Path, neu_images: list[Path],
    protocol: str, outage: str,
) -> None:  # fmt: skip
    """The server is killed mid-stream and started again (or frozen, SIGSTOP, and thawed: it
    answers nothing within the timeout): every frame gets exactly one verdict, in order; those
    judged while it was away are UNCERTAIN errors that say why, counted; the link comes back by
    itself; HTTP answers 503 meanwhile."""
    server = TritonServer(export(tmp_path / "repository", "neu-cls-demo"), tmp_path / "tri.log")
    server.start()
    try:
        n = int(25 + OUTAGE_S * 10 + 100)  # 10 fps: before, during, and after with a restart
        folder = image_folder(tmp_path, neu_images, n)
        cfg = line_config(
            tmp_path, broker, [folder_camera("cam1", folder, fps=10)],
            runtime={"warmup_runs": 1, "backend": "triton", "triton": {
                "url": server.url(protocol), "protocol": protocol, "timeout_s": 1.0,
                "retry_initial_s": 0.2, "retry_max_s": 1.0}},
        )  # fmt: skip
        running = serve(config=cfg)
        plc.wait_for(25, 30, "cam1")
        if outage == "frozen":
            server.pause()
        else:
            server.stop()
        down = time.monotonic()
        plc.wait_for(len(plc.verdicts("cam1")) + 10, 10, "cam1")
        image = cv2.imencode(".jpg", cv2.imread(str(neu_images[0])))[1].tobytes()
        answer = running.client.post(
            "/v1/predict", content=image, headers={"content-type": "image/jpeg"}
        )
        assert answer.status_code == 503, answer.text
        assert "inference server unavailable" in answer.json()["detail"]
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
        if outage == "frozen":
            server.resume()
        else:
            server.start()
        got = plc.wait_for(n, 90 + OUTAGE_S, "cam1")
    finally:
        server.stop()
    assert [v["sequence"] for v in got] == list(range(1, n + 1))
    assert [v["frame_id"] for v in got] == list(range(1, n + 1))
    failed = [i for i, v in enumerate(got) if v["error"]]
    assert len(failed) >= OUTAGE_S * 10 * 0.75, f"only {len(failed)} frames judged in the outage"
    assert failed == list(range(failed[0], failed[-1] + 1)), "errors outside the one outage"
    for i in failed:
        assert got[i]["verdict"] == "uncertain"
        assert got[i]["reason"].startswith(f"inference server unavailable ({protocol}://"), got[i]
    assert failed[0] >= 25 and failed[-1] < n - 10, "no judged frames after the server returned"
    print(f"\n{protocol} {outage} {OUTAGE_S:.0f} s: {len(failed)} of {n} frames UNCERTAIN "
          f"(frames {failed[0] + 1}-{failed[-1] + 1}), all {n} in order")  # fmt: skip
    assert all(v["model"]["name"] == "neu-cls-demo" for v in got[failed[-1] + 1 :])
    text = running.client.get("/metrics").text
    # one frame a request at this pace; plus the HTTP request answered 503
    errors = sample(text, "lineinspect_inference_server_errors_total", model="neu-cls-demo")
    assert errors == len(failed) + 1
    assert sample(text, "lineinspect_inference_server_up", model="neu-cls-demo") == 1

"""`lineinspect models quantize` refusals and the detector's head selection, without the data:
an int8 request without a validation split, anomaly models (not yet), a graph with no Detect
head to keep in fp32."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from service import cli
from tests.conftest import REPO
from training.dataset import Manifest
from training.quantize import head_nodes, quantize_detector

DETECTOR = REPO / "models" / "neu-det-demo.onnx"
SPLIT = REPO / "models" / "neu-cls-split.json"  # the shared NEU split both demo models used


def _without_val(tmp_path: Path) -> Path:
    data = json.loads(SPLIT.read_text())
    data["splits"]["val"] = []
    data.pop("sha256", None)
    data["root"] = str((SPLIT.parent / data["root"]).resolve())  # absolute: the file moves
    path = tmp_path / "no-val.json"
    path.write_text(json.dumps(data))
    return path


def test_detector_without_a_validation_split_is_refused(tmp_path: Path) -> None:
    manifest = Manifest.load(_without_val(tmp_path))
    out = tmp_path / "int8.onnx"
    with pytest.raises(ValueError, match="no validation split"):
        quantize_detector(DETECTOR, out, manifest)
    assert not out.exists()


def test_cli_says_why_without_a_validation_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["models", "quantize", str(DETECTOR), "--manifest", str(_without_val(tmp_path))]
    code = cli.main([*args, "--out", str(tmp_path / "int8.onnx")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no validation split" in err and "Traceback" not in err


def test_cli_says_anomaly_int8_is_not_there_yet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = REPO / "models" / "mt-anomaly.onnx"
    args = ["models", "quantize", str(model), "--manifest", str(SPLIT)]
    code = cli.main([*args, "--out", str(tmp_path / "a.onnx")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "anomaly models is not implemented yet" in err and "Traceback" not in err
    assert not (tmp_path / "a.onnx").exists()


def test_head_nodes_are_the_detect_head_after_its_last_convolutions() -> None:
    graph = onnx.load(str(DETECTOR))
    kept = head_nodes(graph)
    ops = {n.name: n.op_type for n in graph.graph.node}
    assert kept and all(name.startswith("/model.22/") for name in kept)
    assert "/model.22/dfl/conv/Conv" in kept  # the DFL's fixed-weight conv
    assert {"Sigmoid", "Softmax", "Concat"} <= {ops[n] for n in kept}
    # The per-level conv branches (boxes cv2, classes cv3) stay quantised.
    assert not [n for n in kept if "/cv2." in n or "/cv3." in n]
    convs = [n for n in kept if ops[n] == "Conv"]
    assert convs == ["/model.22/dfl/conv/Conv"]


def test_a_graph_without_a_detect_head_is_refused() -> None:
    graph = onnx.load(str(REPO / "models" / "neu-cls-demo.onnx"))
    with pytest.raises(ValueError, match="--head int8"):
        head_nodes(graph)

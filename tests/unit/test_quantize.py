"""`lineinspect models quantize` refusals and the detector's head selection, without the data:
an int8 request without a validation split, an anomaly card without its split or images, a graph
with no Detect head or no backbone to tell from the parts kept in fp32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import yaml

from service import cli
from service.inference.card import card_path_for
from tests.conftest import REPO
from training.dataset import Manifest
from training.quantize import head_nodes, quantize_detector
from training.quantize_anomaly import (
    _choice,
    bank_product_nodes,
    distance_nodes,
    quantize_anomaly,
)

DETECTOR = REPO / "models" / "neu-det-demo.onnx"
SPLIT = REPO / "models" / "neu-cls-split.json"  # the shared NEU split both demo models used
ANOMALY = REPO / "models" / "mt-anomaly.onnx"


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


def test_classifier_without_a_validation_split_is_refused(tmp_path: Path) -> None:
    from training.quantize import quantize_classifier

    manifest = Manifest.load(_without_val(tmp_path))
    out = tmp_path / "int8.onnx"
    with pytest.raises(ValueError, match="no validation split"):
        quantize_classifier(REPO / "models" / "neu-cls-demo.onnx", out, manifest)
    assert not out.exists()


def test_cli_says_why_without_a_validation_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["models", "quantize", str(DETECTOR), "--manifest", str(_without_val(tmp_path))]
    code = cli.main([*args, "--out", str(tmp_path / "int8.onnx")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no validation split" in err and "Traceback" not in err


def test_anomaly_card_without_its_split_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "a.onnx"
    shutil.copy(ANOMALY, model)
    card = yaml.safe_load(card_path_for(ANOMALY).read_text())
    del card["training"]["split"]
    card_path_for(model).write_text(yaml.safe_dump(card))
    code = cli.main(["models", "quantize", str(model), "--out", str(tmp_path / "a-int8.onnx")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "records no split" in err and "Traceback" not in err
    assert not (tmp_path / "a-int8.onnx").exists()


def test_anomaly_without_its_images_says_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["models", "quantize", str(ANOMALY), "--data", str(tmp_path / "nowhere")]
    code = cli.main([*args, "--out", str(tmp_path / "a.onnx")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "not found: pass --data" in err and "Traceback" not in err


def test_supervised_or_hybrid_anomaly_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="supervised or hybrid"):
        quantize_anomaly(REPO / "models" / "mt-defect.onnx", tmp_path / "d.onnx")
    assert not (tmp_path / "d.onnx").exists()


def test_classifier_without_a_manifest_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["models", "quantize", str(DETECTOR), "--out", str(tmp_path / "d.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "needs --manifest" in err, err


def test_distance_nodes_are_everything_after_the_backbone() -> None:
    graph = onnx.load(str(ANOMALY))
    kept = set(distance_nodes(graph))
    by_name = {n.name: n for n in graph.graph.node}
    assert {by_name[n].op_type for n in kept} >= {"MatMul", "ReduceMin", "Sqrt", "ReduceMax"}
    assert all("/blocks." not in n and "/stem/" not in n for n in kept)
    convs = [n.name for n in graph.graph.node if n.op_type == "Conv" and n.name not in kept]
    assert len(convs) >= 40  # the backbone's convolutions are quantised
    with pytest.raises(ValueError, match="cannot find the backbone"):
        distance_nodes(onnx.load(str(DETECTOR)))  # a YOLO graph has no EfficientNet blocks


def test_matmul_choice_quantises_only_the_bank_product_after_the_backbone() -> None:
    graph = onnx.load(str(ANOMALY))
    kept = set(_choice("matmul")(graph))
    assert bank_product_nodes(graph) == ["/MatMul"] and "/MatMul" not in kept
    assert kept == set(distance_nodes(graph)) - {"/MatMul"}
    assert _choice("int8")(graph) == []


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

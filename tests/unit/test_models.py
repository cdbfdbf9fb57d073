"""Real ONNX Runtime sessions on real ONNX files in every layout, checked against hand-computed
boxes, probabilities and scores. Off-by-one, swapped-axis and colour-order bugs fail here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from service.core.types import Outcome, Verdict
from service.inference.card import CardError
from service.inference.errors import ModelError
from service.inference.model import Model, load_model
from service.inference.runtime import RuntimeOptions, RuntimeSetupError, choose_providers
from tests import onnx_factory as f

FAST = RuntimeOptions(warmup_runs=1)
WIDE = np.zeros((250, 400, 3), np.uint8)  # h=250, w=400: r=1.6, 120 px padding top and bottom
TALL = np.zeros((400, 250, 3), np.uint8)


def write_card(model: Path, **card: object) -> Path:
    path = model.with_name(model.stem + ".card.yaml")
    path.write_text(yaml.safe_dump(card), encoding="utf-8")
    return path


def boxes(model: Model, image: np.ndarray) -> list[tuple[str, float, list[float]]]:
    result = model.predict([image])[0]
    d = result.prediction.detections
    assert d is not None
    return [
        (model.policy.class_name(int(c)), round(float(s), 4), [round(float(v), 3) for v in b])
        for b, s, c in zip(d.xyxy, d.confidence, d.class_id, strict=True)
    ]


# -- YOLOv8 / YOLO11 / v3u: (batch, 4 + nc, N)


def test_yolov8_layout_decodes_nms_and_maps_back(v8_detector: Path) -> None:
    model = load_model(v8_detector, FAST)
    assert (model.spec.task, model.spec.layout, model.spec.classes) == (
        "detect",
        "yolov8",
        ("a", "b"),
    )
    assert model.spec.fixed_batch is None
    assert boxes(model, WIDE) == [
        ("b", 0.95, [59.375, 109.375, 65.625, 115.625]),  # tiny box: 10 px in the input = 6.25 px
        ("a", 0.9, [150.0, 100.0, 250.0, 150.0]),  # (240, 280, 400, 360) in the input
        ("b", 0.7, [151.25, 101.25, 251.25, 151.25]),  # other class survives class-aware NMS
    ]
    # a tall image: the padding is on the x axis now
    assert boxes(model, TALL)[1] == ("a", 0.9, [75.0, 175.0, 175.0, 225.0])


def test_min_box_size_ignores_the_tiny_box(v8_detector: Path, tmp_path: Path) -> None:
    path = tmp_path / "v8.onnx"
    path.write_bytes(v8_detector.read_bytes())
    write_card(path, thresholds={"min_box_size": 20})
    result = load_model(path, FAST).predict([WIDE])[0]
    outcomes = {(f.class_name, round(f.confidence, 2)): f.outcome for f in result.decision.findings}
    assert outcomes[("b", 0.95)] is Outcome.TOO_SMALL
    assert outcomes[("a", 0.9)] is Outcome.FAIL
    assert result.decision.verdict is Verdict.FAIL


def test_letterbox_inverse_on_real_non_square_tiles(
    tile_images: list[Path], tmp_path: Path
) -> None:
    """For real magnetic-tile images of varying size, a box around the letterboxed content must
    map back to the whole image (independent arithmetic, not the service's Geometry)."""
    sizes_seen = set()
    for path in tile_images[::97][:6]:
        image = cv2.imread(str(path))
        h, w = image.shape[:2]
        sizes_seen.add((h, w))
        r = min(640 / h, 640 / w)
        cw, ch = round(w * r), round(h * r)
        left, top = round((640 - cw) / 2 - 0.1), round((640 - ch) / 2 - 0.1)
        out = np.zeros((5, 100), np.float32)  # 1 class
        out[:, 0] = [left + cw / 2, top + ch / 2, cw, ch, 0.9]
        model_path = f.constant_model(
            tmp_path / f"tile_{h}x{w}.onnx",
            out,
            metadata=f.ultralytics_metadata(["defect"], (640, 640), "detect"),
        )
        ((_, _, box),) = boxes(load_model(model_path, FAST), image)
        np.testing.assert_allclose(box, [0, 0, w, h], atol=0.5 / r + 1e-3)
    assert len(sizes_seen) >= 3, "the sample should cover several image sizes"


# -- YOLOv5: (batch, N, 5 + nc) with objectness


def test_yolov5_layout_multiplies_objectness(models_dir: Path) -> None:
    out = np.zeros((25200, 7), np.float32)
    out[0] = [320, 320, 160, 80, 0.9, 1.0, 0.0]  # a: 0.9
    out[1] = [100, 300, 60, 60, 0.5, 0.2, 0.9]  # b: 0.5 * 0.9 = 0.45 -> uncertain
    out[2] = [400, 300, 60, 60, 0.3, 1.0, 0.0]  # objectness under the floor: dropped
    path = f.constant_model(
        models_dir / "v5.onnx", out, metadata={"stride": "32", "names": "{0: 'a', 1: 'b'}"}
    )
    model = load_model(path, FAST)
    assert model.spec.layout == "yolov5"
    assert boxes(model, WIDE) == [
        ("a", 0.9, [150.0, 100.0, 250.0, 150.0]),
        ("b", 0.45, [43.75, 93.75, 81.25, 131.25]),  # (70, 270, 130, 330) in the input
    ]
    assert model.predict([WIDE])[0].decision.verdict is Verdict.FAIL


# -- end-to-end (YOLOv10 / YOLO26): (batch, K, 6), no NMS


def test_end2end_layout(models_dir: Path) -> None:
    out = np.zeros((300, 6), np.float32)
    out[0] = [240, 280, 400, 360, 0.55, 1]
    out[1] = [240, 280, 400, 360, 0.52, 0]  # overlapping, other class: kept (no NMS)
    meta = f.ultralytics_metadata(["a", "b"], (640, 640), "detect", end2end=True)
    model = load_model(f.constant_model(models_dir / "e2e.onnx", out, metadata=meta), FAST)
    assert model.spec.layout == "end2end"
    assert boxes(model, WIDE) == [
        ("b", 0.55, [150.0, 100.0, 250.0, 150.0]),
        ("a", 0.52, [150.0, 100.0, 250.0, 150.0]),
    ]
    assert model.predict([WIDE])[0].decision.verdict is Verdict.UNCERTAIN


def test_static_batch_model_runs_a_batch_image_by_image(models_dir: Path) -> None:
    out = np.zeros((6, 8400), np.float32)
    out[:4, 0], out[4, 0] = [320, 320, 160, 80], 0.9
    path = f.constant_model(
        models_dir / "static.onnx", out, batch=1,
        metadata=f.ultralytics_metadata(["a", "b"], (640, 640), "detect"),
    )  # fmt: skip
    model = load_model(path, FAST)
    assert model.max_batch == 1
    results = model.predict([WIDE, TALL, WIDE])
    assert [r.prediction.detections.xyxy.tolist() for r in results] == [  # type: ignore[union-attr]
        [[150, 100, 250, 150]],
        [[75, 175, 175, 225]],
        [[150, 100, 250, 150]],
    ]


def test_layout_from_shape_alone_without_metadata(models_dir: Path) -> None:
    out = np.zeros((84, 8400), np.float32)  # 80 classes, nothing else known
    model = load_model(f.constant_model(models_dir / "bare.onnx", out), FAST)
    assert (model.spec.layout, len(model.spec.classes)) == ("yolov8", 80)
    assert model.spec.classes[0] == "class0"
    assert any("class names unknown" in w for w in model.spec.warnings)


# -- classification


def solid(bgr: tuple[int, int, int], size: tuple[int, int] = (30, 50)) -> np.ndarray:
    image = np.zeros((*size, 3), np.uint8)
    image[:] = bgr
    return image


def softmax(x: list[float]) -> np.ndarray:
    e = np.exp(np.array(x) - max(x))
    return e / e.sum()


def test_classifier_logits_softmaxed_in_rgb_order_per_image(
    models_dir: Path, tmp_path: Path
) -> None:
    path = f.channel_mean_model(tmp_path / "cls.onnx")
    write_card(path, classes=["red", "green", "blue"], input={"mean": 0.5, "std": 0.5})
    model = load_model(path, FAST)
    assert (model.spec.task, model.spec.output_kind) == ("classify", "logits")
    images = [solid((10, 20, 30)), solid((200, 0, 0)), solid((0, 0, 255))]
    results = model.predict(images)  # one batch of three
    for image, result in zip(images, results, strict=True):
        b, g, r = (int(v) for v in image[0, 0])
        logits = [(v / 255 - 0.5) / 0.5 for v in (r, g, b)]
        np.testing.assert_allclose(result.prediction.probabilities, softmax(logits), atol=1e-6)
    assert results[2].decision.findings[0].class_name == "red"  # (0,0,255) BGR is red


def test_classifier_with_softmax_inside_is_not_softmaxed_twice(tmp_path: Path) -> None:
    path = f.channel_mean_model(tmp_path / "prob.onnx", softmax=True)
    write_card(path, classes=["x", "y", "z"], good_classes=["x"])
    model = load_model(path, FAST)
    assert model.spec.output_kind == "probabilities"
    probs = model.predict([solid((255, 0, 0))])[0].prediction.probabilities
    np.testing.assert_allclose(probs, softmax([0.0, 0.0, 1.0]), atol=1e-6)


def test_ultralytics_classifier_uses_center_crop(tmp_path: Path) -> None:
    meta = f.ultralytics_metadata(["l", "m", "r"], (64, 64), "classify")
    model = load_model(f.channel_mean_model(tmp_path / "ucls.onnx", metadata=meta), FAST)
    assert model.spec.preprocess.resize == "center_crop"
    assert model.spec.classes == ("l", "m", "r")
    # left third blue, right two thirds black, 64x192: the centre crop sees no blue at all
    image = np.zeros((64, 192, 3), np.uint8)
    image[:, :64] = (255, 0, 0)
    probs = model.predict([image])[0].prediction.probabilities
    np.testing.assert_allclose(probs, softmax([0, 0, 0]), atol=1e-6)


# -- anomaly


def test_anomaly_score_normalised_around_the_calibrated_threshold(tmp_path: Path) -> None:
    path = f.anomaly_model(tmp_path / "anom.onnx")
    write_card(path, task="anomaly", anomaly={"threshold": 0.5, "min": 0.1, "max": 0.9})
    model = load_model(path, FAST)
    assert (model.spec.score_output, model.spec.map_output) == ("pred_score", "anomaly_map")
    cases = {50: Verdict.PASS, 130: Verdict.UNCERTAIN, 230: Verdict.FAIL}
    for grey, verdict in cases.items():
        result = model.predict([solid((grey, grey, grey))])[0]
        a = result.prediction.anomaly
        assert a is not None
        assert a.raw == pytest.approx(grey / 255, abs=1e-5)  # float32 mean of 12k values
        assert a.score == pytest.approx(min(max((grey / 255 - 0.5) / 0.8 + 0.5, 0), 1), abs=1e-5)
        assert a.map is not None and a.map.shape == (64, 64)
        assert result.decision.verdict is verdict


def test_anomaly_detected_from_output_names_without_card(tmp_path: Path) -> None:
    model = load_model(f.anomaly_model(tmp_path / "a2.onnx", with_map=False), FAST)
    assert model.spec.task == "anomaly" and model.spec.map_output is None
    assert any("normalisation" in w for w in model.spec.warnings)


# -- what cannot be served, and why


def test_refusals_name_the_reason(tmp_path: Path, v8_detector: Path) -> None:
    seg = f.constant_model(
        tmp_path / "seg.onnx", np.zeros((6, 100), np.float32),
        metadata=f.ultralytics_metadata(["a", "b"], (640, 640), "segment"),
    )  # fmt: skip
    with pytest.raises(ModelError, match="instance segmentation"):
        load_model(seg, FAST)

    dyn = f.channel_mean_model(tmp_path / "dyn.onnx", size=None)
    with pytest.raises(ModelError, match="dynamic size"):
        load_model(dyn, FAST)
    write_card(dyn, input={"size": [32, 48]})
    assert load_model(dyn, FAST).spec.preprocess.size == (32, 48)

    wrong = tmp_path / "wrong.onnx"
    wrong.write_bytes(v8_detector.read_bytes())
    write_card(wrong, classes=["a", "b", "c"])
    with pytest.raises(ModelError, match="fits no known layout for 3 classes"):
        load_model(wrong, FAST)
    write_card(wrong, sha256="0" * 64)
    with pytest.raises(ModelError, match="do not belong together"):
        load_model(wrong, FAST)
    write_card(wrong, thresholds={"bogus": 1})
    with pytest.raises(CardError, match=r"thresholds.bogus: Extra inputs"):
        load_model(wrong, FAST)

    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "missing.onnx", FAST)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(RuntimeSetupError, match="cannot load"):
        load_model(junk, FAST)


def test_two_inputs_and_uint8_input_refused(tmp_path: Path) -> None:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 8, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two", [a, b], [y])
    two = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(two))
    with pytest.raises(ModelError, match="2 inputs"):
        load_model(two, FAST)

    u = helper.make_tensor_value_info("u", TensorProto.UINT8, [1, 3, 8, 8])
    uy = helper.make_tensor_value_info("uy", TensorProto.UINT8, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["u"], ["uy"])], "u8", [u], [uy])
    u8 = tmp_path / "u8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(u8))
    with pytest.raises(ModelError, match=r"tensor\(uint8\)"):
        load_model(u8, FAST)


def test_provider_preference() -> None:
    trt, cuda, cpu = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
    assert choose_providers([trt, cuda, cpu], [cuda, cpu]) == [cuda, cpu]
    assert choose_providers([cuda, trt], [trt, cuda, cpu]) == [cuda, trt, cpu]
    assert choose_providers([cpu], [trt, cuda, cpu]) == [cpu]
    assert choose_providers([trt], ["AzureExecutionProvider", cpu]) == [cpu]


def test_session_reports_providers_actually_in_use(v8_detector: Path) -> None:
    # This machine's build has no CUDA: the default preference falls back to CPU and says so.
    model = load_model(v8_detector, FAST)
    assert model.providers == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeSetupError, match="unknown execution providers"):
        load_model(v8_detector, RuntimeOptions(providers=("NoSuchExecutionProvider",)))


def test_two_onnxruntime_packages_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.inference import runtime

    # The real check, on this machine's real install: exactly one ORT wheel is present.
    assert len(runtime.installed_ort_distributions()) == 1
    # Installing both wheels here would break the test environment, so fake the metadata only.
    versions = {"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.20.0"}

    def version(name: str) -> str:
        if name in versions:
            return versions[name]
        raise runtime.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(runtime.importlib.metadata, "version", version)
    with pytest.raises(RuntimeSetupError, match="onnxruntime==1.20.0, onnxruntime-gpu==1.20.0"):
        runtime.import_onnxruntime()


def test_fixed_batch_of_four_pads_and_chunks(models_dir: Path) -> None:
    path = f.channel_mean_model(models_dir / "b4.onnx", batch=4, size=(16, 16))
    write_card(path, classes=["r", "g", "b"], output={"kind": "logits"})
    model = load_model(path, FAST)
    assert model.max_batch == 4
    images = [solid((i * 40, 0, 255 - i * 40)) for i in range(6)]  # 6 = one chunk of 4 + 2 padded
    together = model.predict(images)
    alone = [model.predict([img])[0] for img in images]
    assert len(together) == 6
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(
            a.prediction.probabilities, b.prediction.probabilities, atol=1e-6
        )
    assert together[0].prediction.probabilities[0] > together[5].prediction.probabilities[0]


def test_gpu_provider_options(tmp_path: Path) -> None:
    # No GPU here: the options handed to ONNX Runtime are checked, not a CUDA session.
    from service.inference.runtime import provider_options

    cache = tmp_path / "trt"
    opts = RuntimeOptions(device_id=1, tensorrt_cache_dir=cache, tensorrt_fp16=False)
    trt = provider_options("TensorrtExecutionProvider", opts)
    assert trt == {
        "device_id": 1,
        "trt_fp16_enable": False,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
    }
    assert cache.is_dir()
    assert provider_options("CUDAExecutionProvider", opts) == {"device_id": 1}
    assert provider_options("CPUExecutionProvider", opts) == {}


@pytest.mark.parametrize(
    ("metadata", "card", "expected"),
    [
        ({"author": "Ultralytics", "stride": "32", "names": "{0: 'a'}"}, None, (0.7, 300)),
        ({"stride": "32", "names": "{0: 'a'}"}, None, (0.45, 1000)),  # YOLOv5 repository
        ({}, None, (0.45, 300)),
        ({"author": "Ultralytics"}, {"nms_iou": 0.5}, (0.5, 300)),
        ({"author": "Ultralytics"}, {"max_detections": 50}, (0.7, 50)),
        ({"author": "Ultralytics"}, {"name": "no nms fields"}, (0.7, 300)),
    ],
)
def test_nms_follows_the_card_else_the_exporters_predict(
    metadata: dict[str, str], card: dict[str, object] | None, expected: tuple[float, int]
) -> None:
    from service.inference.card import ModelCard
    from service.inference.metadata import parse_metadata
    from service.inference.registry import nms_settings

    parsed = ModelCard.model_validate(card) if card is not None else None
    iou, max_det, _ = nms_settings(parsed, parse_metadata(metadata))
    assert (iou, max_det) == expected

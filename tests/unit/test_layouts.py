"""Detector layouts beyond Ultralytics' (service/inference/layouts): what is recognised without a
card, what each card field does, and every refusal naming the card field to fix. The models are
the committed ones of tests/data/layouts (their boxes are checked against independent references
on real images in tests/integration/test_layouts.py); images here are synthetic.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper

from service.inference.errors import ModelError
from service.inference.model import Model, load_model
from service.inference.preprocess import letterbox_top_left
from service.inference.runtime import RuntimeOptions
from tests import onnx_factory

LAYOUTS = Path(__file__).resolve().parents[1] / "data" / "layouts"
FAST = RuntimeOptions(warmup_runs=0)
TINY_ANCHORS = [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]]


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A steel-like grey texture with a few bright and dark streaks, tinted."""
    rng = np.random.default_rng(seed)
    base = rng.normal(128, 30, (h // 4 + 1, w // 4 + 1)).clip(0, 255)
    image = np.kron(base, np.ones((4, 4)))[:h, :w]
    image[h // 3 : h // 3 + 6, :] = 240
    image[:, w // 2 : w // 2 + 5] = 20
    bgr = np.stack([image * 0.6, image * 0.85, image], axis=2)
    return bgr.clip(0, 255).astype(np.uint8)


def copy(name: str, tmp_path: Path, card: dict[str, Any] | None = None) -> Path:
    """The committed model alone (no card), or with `card` as its card."""
    path = tmp_path / f"{name}.onnx"
    shutil.copyfile(LAYOUTS / f"{name}.onnx", path)
    if card is not None:
        path.with_name(f"{name}.card.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")
    return path


def committed_card(name: str, **changes: Any) -> dict[str, Any]:
    card = yaml.safe_load((LAYOUTS / f"{name}.card.yaml").read_text(encoding="utf-8"))
    card.pop("sha256")
    return {k: v for k, v in (card | changes).items() if v is not None}


def served(model: Model, image: np.ndarray) -> list[tuple[int, float, list[float]]]:
    d = model.predict([image])[0].prediction.detections
    assert d is not None
    return [(int(c), float(s), [float(v) for v in b])
            for b, s, c in zip(d.xyxy, d.confidence, d.class_id, strict=True)]  # fmt: skip


# -- recognised from the graph alone


def test_darknet_heads_recognised_but_anchors_asked_for(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        load_model(copy("tiny-yolov3", tmp_path), FAST)
    message = str(err.value)
    assert "look like Darknet YOLO heads (strides 32, 16)" in message
    assert "set card field `anchors` (and `masks`, `scale_x_y`, `classes`" in message
    assert "'015_convolutional [1, 33, 10, 10]'" in message


def test_graphs_that_say_enough_are_served_without_a_card(tmp_path: Path) -> None:
    expect = {
        "yolov4-boxes-confs": ("boxes_confs", "resize", "rgb", 1 / 255, "pytorch-YOLOv4's demo"),
        "tiny-yolov3-zoo": ("onnx_zoo_yolov3", "letterbox", "rgb", 1 / 255, "inside the graph"),
        "yolox": ("yolox", "letterbox_top_left", "bgr", 1.0, "YOLOX's ONNX demo"),
    }
    for name, (layout, resize, color, scale, nms) in expect.items():
        model = load_model(copy(name, tmp_path), FAST)
        spec = model.spec
        assert (spec.layout, spec.task, len(spec.classes)) == (layout, "detect", 6), name
        pre = spec.preprocess
        assert (pre.resize, pre.color, pre.scale, pre.stride) == (resize, color, scale, None), name
        assert spec.sources["nms"].startswith(nms), (name, spec.sources["nms"])
        assert any("no model card: preprocessing assumed" in w for w in spec.warnings), name
    zoo = load_model(copy("tiny-yolov3-zoo", tmp_path), FAST)
    assert zoo.spec.preprocess.pad_value == 128 and zoo.max_batch == 1
    yolox = load_model(copy("yolox", tmp_path), FAST)
    assert yolox.spec.sources["sigmoid"] == "test inference: scores in [0, 1], already in the graph"


def test_nms_in_graph_needs_only_the_class_names(tmp_path: Path) -> None:
    names = ["a", "b", "c", "d", "e", "f"]
    for name, layout in (("yolov7-end2end", "yolov7_end2end"), ("yolov7-efficient-nms",
                                                                "efficient_nms")):  # fmt: skip
        with pytest.raises(ModelError, match=f"a {layout} detector's output does not say how many"):
            load_model(copy(name, tmp_path), FAST)
        model = load_model(copy(name, tmp_path, {"classes": names}), FAST)
        assert (model.spec.layout, model.spec.sources["nms"]) == (layout, "inside the graph")
        assert (
            model.spec.preprocess.resize == "letterbox" and model.spec.preprocess.pad_value == 114
        )


# -- the card's fields, each refusal naming the field


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"masks": None, "anchors": TINY_ANCHORS[:5]},
         r"card field `anchors` has 5 pairs, which do not split evenly over the 2 heads"),
        ({"masks": [[3, 4, 9], [1, 2, 3]]},
         r"card field `masks\[0\]` refers to anchor 9, but `anchors` has 6 pairs \(indices 0 to 5\)"),
        ({"masks": [[3, 4], [1, 2, 3]]},
         r"card field `masks\[0\]` gives head '015_convolutional' 2 anchors, but its 33 channels "
         r"are not 2 x \(5 \+ classes\); anchor counts that fit: \[1, 3\]"),
        ({"masks": [[3, 4, 5]]},
         r"card field `masks` has 1 entries but the model has 2 heads"),
        ({"masks": [[3, 4, 5], []]}, r"card field `masks\[1\]` is empty"),
        ({"classes": ["a", "b", "c", "d", "e"]},
         r"card field `classes` lists 5 classes, but head '015_convolutional' has 33 channels = "
         r"3 anchors x \(5 \+ 6\)"),
        ({"scale_x_y": [1.05, 1.1, 1.2]},
         r"card field `scale_x_y` has 3 values but the model has 2 heads"),
        ({"scale_x_y": 0.5}, r"card field `scale_x_y`: 0.5 is outside Darknet's 1 to 2"),
        ({"outputs": {"heads": ["015_convolutional", "nope"]}},
         r"card field `outputs.heads` names 'nope', but the model's outputs are"),
        ({"outputs": {"boxes": "015_convolutional"}},
         r"card field `outputs.boxes`: layout darknet has one output role, `heads`"),
        ({"strides": [8, 16, 32]}, r"card field `strides` applies to layout yolox only"),
    ],
)  # fmt: skip
def test_darknet_card_refusals_name_the_field(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = copy("tiny-yolov3", tmp_path, committed_card("tiny-yolov3", **changes))
    with pytest.raises(ModelError, match=message):
        load_model(path, FAST)


def test_darknet_default_masks_and_heads_in_any_order(tmp_path: Path) -> None:
    """Without `masks` the anchors split evenly, the largest to the coarsest head, with a warning
    naming the tiny cfgs' own masks; with `outputs.heads` reversed the masks follow them."""
    card = committed_card("tiny-yolov3", masks=None)
    model = load_model(copy("tiny-yolov3", tmp_path, card), FAST)
    assert [h.anchors for h in model.spec.decoder.heads] == [  # type: ignore[attr-defined]
        tuple(map(tuple, TINY_ANCHORS[3:])), tuple(map(tuple, TINY_ANCHORS[:3]))]  # fmt: skip
    assert any("yolov4-tiny cfgs use [[3,4,5],[1,2,3]]" in w for w in model.spec.warnings)

    image = texture(200, 240)
    as_cfg = load_model(copy("tiny-yolov3", tmp_path, committed_card("tiny-yolov3")), FAST)
    heads = ["022_convolutional", "015_convolutional"]
    card = committed_card("tiny-yolov3", outputs={"heads": heads}, masks=[[1, 2, 3], [3, 4, 5]])
    reordered = load_model(copy("tiny-yolov3", tmp_path, card), FAST)
    got, want = served(reordered, image), served(as_cfg, image)
    assert want and got == want


def test_other_layout_refusals_name_the_field(tmp_path: Path) -> None:
    cases = [
        ("yolox", {"strides": [8, 16]},
         r"card field `strides` \[8, 16\] give 1280 grid cells at 256x256, but output 'output' "
         r"has 1344 rows"),
        ("yolox", {"anchors": TINY_ANCHORS}, r"card field `anchors` applies to layout darknet"),
        ("yolox", {"classes": ["a"]}, r"card field `classes` lists 1 classes, but output 'output'"),
        ("yolov4-boxes-confs", {"outputs": {"boxes": "nope"}},
         r"card field `outputs.boxes` names 'nope', but the model's outputs are \['boxes', 'confs'\]"),
        ("yolov4-boxes-confs", {"outputs": {"heads": "boxes"}},
         r"card field `outputs.heads`: layout boxes_confs has no output role 'heads'; its roles "
         r"are \['boxes', 'confs'\]"),
        ("yolov4-boxes-confs", {"layout": "darknet", "anchors": TINY_ANCHORS},
         r"layout darknet needs raw heads \(batch, A\*\(5\+nc\), H, W\); inputs 'input' "
         r"\['batch_size', 3, 256, 320\]; outputs 'boxes' \[1, 1200, 1, 4\], 'confs' \[1, 1200, 6\]"),
        ("yolov7-end2end", {"layout": "efficient_nms", "classes": list("abcdef")},
         r"layout efficient_nms: cannot tell which output is num_dets, boxes, scores, classes"),
    ]  # fmt: skip
    for name, card, message in cases:
        with pytest.raises(ModelError, match=message):
            load_model(copy(name, tmp_path, card), FAST)


def test_card_preprocessing_overrides_the_layout_default(tmp_path: Path) -> None:
    card = {"input": {"resize": "letterbox", "color": "rgb", "scale": 0.5, "pad_value": 7}}
    spec = load_model(copy("yolox", tmp_path, card), FAST).spec
    pre = spec.preprocess
    assert (pre.resize, pre.color, pre.scale, pre.pad_value) == ("letterbox", "rgb", 0.5, 7)
    assert spec.sources["input.resize"] == "card"


def test_class_agnostic_nms_from_the_card(tmp_path: Path) -> None:
    image = texture(256, 256, seed=3)
    per_class = served(load_model(copy("yolox", tmp_path, {}), FAST), image)
    model = load_model(copy("yolox", tmp_path, {"nms_class_agnostic": True}), FAST)
    assert model.spec.sources["nms"] == "YOLOX's ONNX demo (nms_thr 0.45), across classes"
    agnostic = served(model, image)
    assert per_class and len(agnostic) <= len(per_class)
    boxes = np.array([b for _, _, b in agnostic])
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert _iou(boxes[i], boxes[j]) <= 0.45


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


# -- the model zoo's second input, and what cannot be served


def test_model_zoo_graph_gets_each_images_size_and_its_boxes_are_served(tmp_path: Path) -> None:
    """The graph is the reference: its selected boxes (fed the original size) are served as they
    are, for frames of different sizes in one batch."""
    model = load_model(LAYOUTS / "tiny-yolov3-zoo.onnx", FAST)
    sess = ort.InferenceSession(str(LAYOUTS / "tiny-yolov3-zoo.onnx"))
    frames = [texture(180, 300, 1), texture(300, 160, 2), texture(416, 416, 3)]
    results = model.predict(frames)
    total = 0
    for frame, result in zip(frames, results, strict=True):
        tensor, _ = model.preprocess(frame)
        h, w = frame.shape[:2]
        boxes, scores, picks = sess.run(None, {"input_1": tensor[None],
                                               "image_shape": np.float32([[h, w]])})  # fmt: skip
        want = sorted(
            (float(scores[0, c, i]), int(c), [min(max(boxes[0, i, k], 0), lim)
             for k, lim in ((1, w), (0, h), (3, w), (2, h))])
            for _, c, i in picks[0] if scores[0, c, i] > model.policy.confidence_floor()
        )  # fmt: skip
        d = result.prediction.detections
        assert d is not None
        got = sorted((float(s), int(c), list(b)) for b, s, c in zip(d.xyxy, d.confidence,
                                                                      d.class_id, strict=True))  # fmt: skip
        assert len(got) == len(want)
        for (gs, gc, gb), (ws, wc, wb) in zip(got, want, strict=True):
            assert gc == wc and abs(gs - ws) < 1e-6
            np.testing.assert_allclose(gb, wb, atol=1e-3)
        total += len(got)
    assert total >= 5, "too few boxes to tell anything"


def test_second_input_only_for_the_model_zoo_layout(tmp_path: Path) -> None:
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])
    shape = helper.make_tensor_value_info("image_shape", TensorProto.FLOAT, [1, 2])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Add", ["flat", "bias"], ["logits"]),
        helper.make_node("ReduceSum", ["image_shape"], ["unused"], keepdims=1),
    ]
    bias = onnx.numpy_helper.from_array(np.zeros((1, 3), np.float32), "bias")
    unused = helper.make_tensor_value_info("unused", TensorProto.FLOAT, [1, 1])
    graph = helper.make_graph(nodes, "cls", [image, shape], [out, unused], initializer=[bias])
    path = tmp_path / "cls.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    (tmp_path / "cls.card.yaml").write_text("task: classify\n", encoding="utf-8")
    with pytest.raises(ModelError, match="second input `image_shape`, which only layout "
                                         "onnx_zoo_yolov3 feeds, but this model family"):  # fmt: skip
        load_model(path, FAST)


def test_unknown_layout_says_what_it_saw_and_what_would_serve_it(tmp_path: Path) -> None:
    """A (1, 3, 13, 13, 11) head (a Darknet export that keeps the anchors apart) fits nothing."""
    path = onnx_factory.constant_model(
        tmp_path / "odd.onnx", np.zeros((3, 13, 13, 11), np.float32), size=(416, 416),
        output_name="yolo_out",
    )  # fmt: skip
    with pytest.raises(ModelError) as err:
        load_model(path, FAST)
    message = str(err.value)
    assert "cannot tell the task: inputs 'images' ['batch', 3, 416, 416]; outputs 'yolo_out' " \
           "[1, 3, 13, 13, 11]" in message  # fmt: skip
    assert "`layout: darknet` + `anchors`" in message and "`layout: yolox`" in message

    path.with_name("odd.card.yaml").write_text("task: detect\n", encoding="utf-8")
    with pytest.raises(ModelError) as err:
        load_model(path, FAST)
    message = str(err.value)
    assert message.startswith(
        "cannot tell the detector layout: inputs 'images' ['batch', 3, 416, 416]; outputs "
        "'yolo_out' [1, 3, 13, 13, 11]. A model card can make it servable: `layout: "
        "efficient_nms` + `classes` (`outputs`: num_dets, boxes, scores, classes); "
    )
    assert "`layout: yolov8 | yolov5 | end2end` (+ `classes` for end2end)" in message


def test_yolox_letterbox_top_left_as_yolox_preproc() -> None:
    image = texture(150, 200)
    boxed, geometry = letterbox_top_left(image, (256, 256), 114)
    r = min(256 / 150, 256 / 200)
    assert boxed.shape == (256, 256, 3)
    assert (boxed[int(150 * r) :, :] == 114).all() and (boxed[:, int(200 * r) :] == 114).all()
    assert (geometry.scale_x, geometry.scale_y, geometry.pad_x, geometry.pad_y) == (r, r, 0, 0)

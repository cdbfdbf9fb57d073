"""The detector trainer end to end (CI-sized), and served boxes == Ultralytics' own boxes.

(a) `lineinspect train detect --quick` on real NEU images: train -> ONNX -> model card ->
    served by lineinspect's `load_model` -> a prediction on a real NEU image; an interrupted
    run continued with --resume.
(b) Parity: on real NEU images, the boxes lineinspect decodes from the shipped detector equal
    Ultralytics' predict on the same ONNX file with the same confidence floor (the decision
    policy's threshold - band), NMS IoU (the card's `nms_iou`) and max_det: same count, same
    class, IoU >= 0.99 per matched box, confidence within 1e-3.

Needs the `train-yolo` extra (Ultralytics); without it the module is skipped with that reason.
Without the shared data the `data_dir` fixture fails, naming LINEINSPECT_DATA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from training import detect

detect.prepare_offline()  # before Ultralytics is imported: no network, no font download
pytest.importorskip(
    "ultralytics",
    reason="needs the train-yolo extra (Ultralytics): pip install -e '.[train-yolo]'",
)

from service.cli import main  # noqa: E402
from service.inference.card import ThresholdSpec, card_path_for, load_card  # noqa: E402
from service.inference.model import Model, make_policy  # noqa: E402
from training.commands import detect as detect_command  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "neu-det-demo.onnx"
MIN_IOU = 0.99
MAX_CONF_DIFF = 1e-3
# One image per class plus a few more: square 200x200, as the line camera's crops are.
PARITY_IMAGES = [
    "crazing_10.jpg",
    "inclusion_10.jpg",
    "patches_10.jpg",
    "pitted_surface_10.jpg",
    "rolled-in_scale_10.jpg",
    "scratches_10.jpg",
    "inclusion_150.jpg",
    "scratches_150.jpg",
]

pytestmark = pytest.mark.slow


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4) x (m, 4) xyxy -> (n, m) IoU."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-12)


def compare(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Greedy one-to-one matching by IoU within a class; returns the worst deviations."""
    n, m = len(ours["conf"]), len(theirs["conf"])
    out: dict[str, Any] = {"ours": n, "theirs": m, "min_iou": 1.0, "max_conf_diff": 0.0}
    if n != m:
        return out | {"ok": False, "why": f"{n} boxes from lineinspect, {m} from Ultralytics"}
    if n == 0:
        return out | {"ok": True}
    iou = box_iou(ours["xyxy"], theirs["xyxy"])
    iou[ours["cls"][:, None] != theirs["cls"][None, :]] = -1.0
    used: set[int] = set()
    for i in np.argsort(-ours["conf"], kind="stable"):
        candidates = [j for j in np.argsort(-iou[i]) if j not in used]
        j = int(candidates[0])
        used.add(j)
        out["min_iou"] = min(out["min_iou"], float(iou[i, j]))
        out["max_conf_diff"] = max(
            out["max_conf_diff"], abs(float(ours["conf"][i]) - float(theirs["conf"][j]))
        )
    ok = out["min_iou"] >= MIN_IOU and out["max_conf_diff"] <= MAX_CONF_DIFF
    return out | {"ok": ok, "why": "" if ok else "box, class or confidence differ"}


def lineinspect_boxes(model: Model, image: np.ndarray) -> dict[str, np.ndarray]:
    dets = model.predict([image])[0].prediction.detections
    assert dets is not None
    return {"xyxy": dets.xyxy, "conf": dets.confidence, "cls": dets.class_id}


def ultralytics_boxes(
    yolo: Any, image: np.ndarray, conf: float, iou: float, max_det: int, imgsz: int
) -> dict[str, np.ndarray]:
    r = yolo.predict(
        image, conf=conf, iou=iou, max_det=max_det, imgsz=imgsz, device="cpu", verbose=False
    )[0]
    return columns(r)


def columns(result: Any) -> dict[str, np.ndarray]:
    """An Ultralytics result's boxes as the columns `compare` takes."""
    return {
        "xyxy": result.boxes.xyxy.numpy().astype(np.float32),
        "conf": result.boxes.conf.numpy().astype(np.float32),
        "cls": result.boxes.cls.numpy().astype(np.int64),
    }


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([(200, 200)] * 3, 224),  # NEU: native resolution, the next stride multiple
        ([(1280, 720)] * 2, 640),  # large frames: capped
        ([(300, 500), (100, 100), (330, 330)], 352),  # median long side 330 -> 352
        ([(64, 48)], 224),  # tiny crops: at least 224
    ],
)
def test_default_imgsz(sizes: list[tuple[int, int]], expected: int) -> None:
    from types import SimpleNamespace

    samples = [SimpleNamespace(width=w, height=h) for w, h in sizes]
    assert detect.default_imgsz(samples) == expected


# -- (a) CI-sized end-to-end run


def yolo_copy(neu: Path, out: Path) -> Path:
    """14 NEU images per class as a YOLO dataset: images/ + labels/ (txt) + data.yaml."""
    from training.dataset import export_yolo, load_dataset, split_dataset

    manifest = split_dataset(load_dataset(neu, "voc"), seed=0)
    export_yolo(detect.subset_manifest(manifest, {"train": 10, "val": 2, "test": 2}), out)
    return out


@pytest.fixture(scope="module", params=["efflite0", "yolov8n.yaml"])
def quick_run(
    request: pytest.FixtureRequest, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Both model families: the ImageNet-backbone EfficientNet-Lite0 detector on NEU's VOC
    boxes, and a stock Ultralytics YAML on a YOLO-txt copy of a NEU slice (the other layout a
    user brings)."""
    work = tmp_path_factory.mktemp("detector")
    out = work / "neu-det-quick.onnx"
    data = data_dir / "neu-det"
    if request.param != "efflite0":
        data = yolo_copy(data, work / "yolo-data")
    rc = main(
        [
            "train",
            "detect",
            "--quick",
            "--model",
            request.param,
            "--data",
            str(data),
            "--out",
            str(out),
            "--workdir",
            str(work / "work"),
            *(["--int8"] if request.param == "efflite0" else []),
        ]
    )
    assert rc == 0, "lineinspect train detect --quick failed (see the captured output)"
    fmt = "voc" if request.param == "efflite0" else "yolo"
    assert f"({fmt} labels)" in load_card(card_path_for(out)).training["dataset"]
    return out


def test_quick_run_trains_exports_and_is_served(quick_run: Path, neu_images: list[Path]) -> None:
    from service.inference.model import load_model

    card = load_card(card_path_for(quick_run))
    assert card.task == "detect"
    assert card.classes == [
        "crazing",
        "inclusion",
        "patches",
        "pitted_surface",
        "rolled-in_scale",
        "scratches",
    ]
    assert card.thresholds.min_box_size == detect.MIN_BOX_SIZE
    assert card.input.resize == "letterbox"
    assert len(card.training["split"]["manifest_sha256"]) == 64
    assert card.training["cpu_seconds"] > 0
    assert set(card.metrics["test"]["per_class"]) <= set(card.classes)
    assert 0.0 <= card.metrics["test"]["map50"] <= 1.0
    assert card.reference["images"] > 0

    report = quick_run.with_name(quick_run.stem + "-report")
    for name in (
        "report.md",
        "report.html",
        "ap_per_class.png",
        "pr_curves.png",
        "confusion_matrix.png",
        "training_curves.png",
    ):
        assert (report / name).stat().st_size > 0, name
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "## Production readiness: FAIL" in text  # 2 epochs at 64 px are not ready
    for criterion in ("| mAP50 |", "| lowest class AP50 (", "| false-positive rate |"):
        assert criterion in text, criterion
    assert "| miss rate on critical defects |" in text and "## What to do next" in text
    assert "label more `" in text  # 6 training images per class: far below a pilot's 200
    assert '<td class="FAIL">FAIL</td>' in (report / "report.html").read_text(encoding="utf-8")

    model = load_model(quick_run)  # the card beside it is found and its sha256 checked
    assert model.spec.layout == "yolov8"
    assert model.spec.preprocess.size == tuple(card.input.size or ())
    image = cv2.imread(str(neu_images[0]), cv2.IMREAD_COLOR)
    images = [image, image[:, :150]]  # a second, non-square frame in the same batch
    results = model.predict(images)
    assert len(results) == 2
    for result, img in zip(results, images, strict=True):
        dets = result.prediction.detections
        assert dets is not None
        assert result.prediction.image_size == img.shape[:2]
        if len(dets):
            h, w = img.shape[:2]
            assert dets.xyxy[:, [0, 2]].max() <= w and dets.xyxy[:, [1, 3]].max() <= h
        assert result.decision.verdict.value in {"pass", "fail", "uncertain"}


@pytest.mark.parametrize("quick_run", ["efflite0"], indirect=True)
def test_int8_flag_writes_the_int8_detector_and_reports_both(quick_run: Path) -> None:
    from service.inference.model import load_model

    int8 = quick_run.with_name("neu-det-quick-int8.onnx")
    card = load_card(card_path_for(int8))
    q = card.metrics["quantization"]
    assert q["int8"]["bytes"] < q["fp32"]["bytes"] / 2 and q["speed"]["ratio"] > 0
    assert 0.0 <= q["int8"]["test_map50"] <= 1.0 and "heads_compared" in q
    assert "readiness" in card.metrics
    assert load_model(int8).spec.task == "detect"
    report = quick_run.with_name("neu-det-quick-report") / "report.md"
    section = report.read_text(encoding="utf-8").split("## INT8 and fp32")[1]
    assert "| neu-det-quick-int8.onnx |" in section and "| mAP50 |" in section


@pytest.mark.parametrize("quick_run", ["efflite0"], indirect=True)
def test_efflite0_starts_from_imagenet_and_keeps_its_early_blocks(quick_run: Path) -> None:
    """The backbone is ImageNet EfficientNet-Lite0, its stem and blocks 0-4 stay as loaded
    (weights and BatchNorm statistics), and the blocks after them are trained."""
    import torch

    from training import effdet

    card = load_card(card_path_for(quick_run))
    assert "ImageNet" in card.training["weights_init"]
    assert card.training["frozen_layers"] == list(detect.default_freeze("efflite0"))
    weights = quick_run.parent / "work" / "quick" / "weights" / "best.pt"
    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    trained = ckpt["model"].float().model[0]
    assert isinstance(trained, effdet.EfficientNetLite0)
    imagenet = effdet.EfficientNetLite0(pretrained=True)
    random_init = effdet.EfficientNetLite0(pretrained=False)
    ours = trained.state_dict()

    def gap(ref: torch.nn.Module, prefix: str) -> float:
        """Largest relative difference of the tensors under `prefix` (weights and BN stats)."""
        return max(
            float(((ours[k].float() - v.float()).abs() / (v.float().abs() + 1e-2)).max())
            for k, v in ref.state_dict().items()
            if k.startswith(prefix) and v.dtype.is_floating_point
        )

    for prefix in ("stem.", "blocks.0.", "blocks.4."):
        # The checkpoint stores fp16 (relative rounding <= 4.9e-4): equal to ImageNet within it.
        assert gap(imagenet, prefix) < 2e-3, f"{prefix} moved away from the ImageNet weights"
        assert gap(random_init, prefix) > 0.05, f"{prefix} is not the ImageNet weights"
    assert gap(imagenet, "blocks.15.") > 2e-3, "block 15 was not trained"

    # The anomaly trainer can take this backbone instead of ImageNet's (`--backbone best.pt`).
    from training import anomaly

    net = anomaly.load_backbone(weights)
    for ours_t, theirs in (
        (net._blocks[15]._project_conv.weight, trained.blocks[15]._project_conv.weight),
        (net._bn0.running_mean, trained.stem.bn.running_mean),
    ):
        assert torch.equal(ours_t, theirs.float())


def test_cli_reports_bad_data_in_one_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    folders = tmp_path / "folders"  # class folders: labels for a classifier, no boxes
    for name in ("crazing", "scratches"):
        (folders / name).mkdir(parents=True)
        for i in (1, 2):
            image = data_dir / "neu-det" / "IMAGES" / f"{name}_{i}.jpg"
            (folders / name / image.name).symlink_to(image)
    cases = {
        tmp_path / "nowhere": ([], "not found"),
        empty: ([], "no images"),
        folders: ([], "has no boxes"),  # class folders: a classifier's data
        data_dir / "neu-det": (["--resume"], "nothing to resume"),  # no interrupted run there
    }
    for folder, (extra, expected) in cases.items():
        argv = ["train", "detect", "--data", str(folder), "--workdir", str(tmp_path / "w"), *extra]
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2
        assert err.startswith("lineinspect: error: ") and "\n" not in err, err
        assert expected in err and "Traceback" not in err, err


def test_resume_continues_an_interrupted_run(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C after epoch 1 of 2, then --resume: Ultralytics continues from the workdir's
    last.pt at epoch 2 with the run's own settings, and the card has both epochs."""
    argv = ["train", "detect", "--quick", "--no-estimate", "--workdir", str(tmp_path / "w"),
            "--out", str(tmp_path / "det.onnx")]  # fmt: skip
    epoch = detect_command.EpochClock.epoch

    def interrupt_after_one(self: Any, n: int, total: int, metrics: dict[str, float]) -> None:
        epoch(self, n, total, metrics)
        if n == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(detect_command.EpochClock, "epoch", interrupt_after_one)
        assert main(argv) == 130
    first = capsys.readouterr()
    assert "epoch 1/2" in first.out and "ETA: " in first.out
    assert "--resume continues" in first.err
    assert not (tmp_path / "det.onnx").exists()

    assert main([*argv, "--resume", "--image-size", "96"]) == 0  # the run's own 64 px apply
    second = capsys.readouterr().out
    assert "resumed at epoch 2 of 2" in second and "epoch 1/2" not in second
    card = load_card(card_path_for(tmp_path / "det.onnx"))
    assert [int(e["epoch"]) for e in card.training["epoch_log"]] == [1, 2]
    assert card.training["resumed_after_epoch"] == 1 and card.input.size == (64, 64)
    assert card.training["command"].startswith("lineinspect train detect --quick")

    assert main([*argv, "--resume"]) == 2  # finished: nothing left to resume
    assert "nothing to resume: the run in" in capsys.readouterr().err


# -- (b) parity with Ultralytics' own ONNX predict


@pytest.fixture(scope="module")
def shipped() -> Path:
    assert SHIPPED.is_file(), (
        f"the shipped detector is missing: {SHIPPED}; train it with "
        "`lineinspect train detect` (see docs/DETECTOR.md)"
    )
    return SHIPPED


@pytest.mark.parametrize(
    "floor",
    [None, 0.01],
    ids=["card-policy", "low-floor-many-boxes"],
)
def test_served_boxes_equal_ultralytics_onnx_predict(
    shipped: Path, data_dir: Path, floor: float | None
) -> None:
    ul = detect.ultralytics(threads=1)
    model = detect.serve(shipped)
    if floor is not None:  # a policy whose floor (threshold - band) is `floor`
        thresholds = ThresholdSpec(default=floor + 0.01, band=0.01)
        model.set_policy(make_policy(model.spec, thresholds, ()))
    conf = model.policy.confidence_floor()
    iou, max_det = model.spec.nms_iou, model.spec.max_detections
    imgsz = model.spec.preprocess.size[0]
    yolo = ul.YOLO(str(shipped), task="detect")

    report, total = [], 0
    for name in PARITY_IMAGES:
        image = cv2.imread(str(data_dir / "neu-det" / "IMAGES" / name), cv2.IMREAD_COLOR)
        assert image is not None, name
        ours = lineinspect_boxes(model, image)
        theirs = ultralytics_boxes(yolo, image, conf, iou, max_det, imgsz)
        total += len(ours["conf"])
        report.append((name, compare(ours, theirs)))
    print(f"parity conf={conf:.3f} iou={iou} boxes={total}")
    for name, r in report:
        print(f"  {name}: {r}")
    bad = [(n, r) for n, r in report if not r["ok"]]
    assert not bad, f"lineinspect differs from Ultralytics (conf {conf}, iou {iou}): {bad}"
    assert total >= len(PARITY_IMAGES), f"too few boxes ({total}) for a meaningful comparison"


def square_card_copy(shipped: Path, folder: Path) -> Path:
    """The shipped detector beside a copy of its card that says `input.rect: false`."""
    import yaml

    card = yaml.safe_load(card_path_for(shipped).read_text())
    card["input"]["rect"] = False
    onnx = folder / shipped.name
    onnx.write_bytes(shipped.read_bytes())
    card_path_for(onnx).write_text(yaml.safe_dump(card, sort_keys=False))
    return onnx


@pytest.mark.parametrize("rect", [True, False], ids=["rect-default", "square-card"])
def test_non_square_frames_match_ultralytics(
    shipped: Path, data_dir: Path, tmp_path: Path, rect: bool
) -> None:
    """Same as above on non-square frames (a 1280x720 camera, crops of other aspects).

    By default a dynamic-size detector is letterboxed to the minimum stride rectangle, which is
    Ultralytics' own predict default for such an ONNX (rect=True): 150x200 -> 160x224 at 224 px.
    A card with `input.rect: false` feeds the full square, as Ultralytics does with rect=False.
    """
    ul = detect.ultralytics(threads=1)
    model = detect.serve(shipped if rect else square_card_copy(shipped, tmp_path))
    assert model.spec.preprocess.stride == (32 if rect else None)
    model.set_policy(make_policy(model.spec, ThresholdSpec(default=0.02, band=0.01), ()))
    yolo = ul.YOLO(str(shipped), task="detect")
    imgsz = model.spec.preprocess.size[0]
    bad, shapes, total = [], set(), 0
    for name in PARITY_IMAGES[:3]:
        image = cv2.imread(str(data_dir / "neu-det" / "IMAGES" / name), cv2.IMREAD_COLOR)
        wide = cv2.resize(image, (1280, 720))
        for frame in (image[:, :150], image[:123, :], cv2.resize(image, (517, 301)), wide):
            shapes.add(model.preprocess(frame)[0].shape)
            ours = lineinspect_boxes(model, frame)
            r = yolo.predict(
                frame,
                conf=model.policy.confidence_floor(),
                iou=model.spec.nms_iou,
                max_det=model.spec.max_detections,
                imgsz=imgsz,
                rect=rect,
                device="cpu",
                verbose=False,
            )[0]
            theirs = columns(r)
            total += len(ours["conf"])
            result = compare(ours, theirs)
            if not result["ok"]:
                bad.append((name, frame.shape[:2], result))
    assert not bad, f"non-square frames differ: {bad}"
    assert total >= 20, f"too few boxes ({total}) for a meaningful comparison"
    if rect:  # 1280x720 -> 224x128; 150x200 -> 224x192 (w 168 -> 192); 123x200 -> 160x224
        assert (3, 128, 224) in shapes and (3, 224, 192) in shapes and (3, 160, 224) in shapes
    else:
        assert shapes == {(3, 224, 224)}


def test_an_export_without_a_card_gives_ultralytics_own_boxes(
    shipped: Path, data_dir: Path, tmp_path: Path
) -> None:
    """The bare ONNX file, no card: NMS IoU and max detections are Ultralytics' predict
    defaults for an 8.x export (its metadata says so), so `YOLO(onnx).predict()` with nothing but
    the confidence floor and the image size gives the same boxes, on non-square crops too."""
    ul = detect.ultralytics(threads=1)
    bare = tmp_path / shipped.name
    bare.write_bytes(shipped.read_bytes())
    model = detect.serve(bare)
    assert model.card is None
    assert (model.spec.nms_iou, model.spec.max_detections) == (0.7, 300)
    assert model.spec.sources["nms"].startswith("Ultralytics predict default")
    model.set_policy(make_policy(model.spec, ThresholdSpec(default=0.02, band=0.01), ()))
    yolo = ul.YOLO(str(bare), task="detect")
    imgsz = model.spec.preprocess.size[0]
    bad, total = [], 0
    for name in PARITY_IMAGES:
        image = cv2.imread(str(data_dir / "neu-det" / "IMAGES" / name), cv2.IMREAD_COLOR)
        for frame in (image, image[:, :150], image[:123, :], cv2.resize(image, (517, 301))):
            ours = lineinspect_boxes(model, frame)
            r = yolo.predict(  # no iou, no max_det: Ultralytics' own defaults
                frame, conf=model.policy.confidence_floor(), imgsz=imgsz, device="cpu",
                verbose=False,
            )[0]  # fmt: skip
            theirs = columns(r)
            total += len(ours["conf"])
            result = compare(ours, theirs)
            if not result["ok"]:
                bad.append((name, frame.shape[:2], result))
    assert not bad, f"a card-less export differs from Ultralytics' predict: {bad}"
    assert total >= 40, f"too few boxes ({total}) for a meaningful comparison"


def test_mixed_shapes_in_one_batch_equal_one_by_one(shipped: Path, data_dir: Path) -> None:
    """Frames of different aspect ratios in one batch (the line batches across cameras) run as
    one group per tensor shape and give exactly the boxes each frame gets alone."""
    model = detect.serve(shipped)
    model.set_policy(make_policy(model.spec, ThresholdSpec(default=0.02, band=0.01), ()))
    image = cv2.imread(str(data_dir / "neu-det" / "IMAGES" / PARITY_IMAGES[0]), cv2.IMREAD_COLOR)
    frames = [image, cv2.resize(image, (1280, 720)), image[:, :150], cv2.flip(image, 0)]
    together = [r.prediction.detections for r in model.predict(frames)]
    for frame, dets in zip(frames, together, strict=True):
        alone = model.predict([frame])[0].prediction.detections
        assert dets is not None and alone is not None
        np.testing.assert_allclose(dets.xyxy, alone.xyxy, atol=1e-3)
        np.testing.assert_allclose(dets.confidence, alone.confidence, atol=1e-5)
        np.testing.assert_array_equal(dets.class_id, alone.class_id)

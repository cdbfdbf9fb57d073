"""The anomaly trainer end to end on a CI-sized slice of the real magnetic-tile data: split ->
EfficientNet-Lite0 patch features -> coreset bank -> ONNX -> served by lineinspect itself.

About 10-20 s of CPU: 48 good tiles, 4 defects per class, 128x128 input, a 400-patch bank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from service.core.types import Verdict
from service.inference.card import load_card
from service.inference.model import load_model
from service.inference.runtime import RuntimeOptions
from training import anomaly as A  # noqa: N812

FAST = RuntimeOptions(warmup_runs=1, intra_op_threads=1, inter_op_threads=1)


@pytest.fixture(scope="module")
def trained(
    data_dir: Path, tile_images: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> A.Trained:
    out = tmp_path_factory.mktemp("anomaly") / "mt-ci.onnx"
    cfg = A.AnomalyConfig(
        data=data_dir / "magnetic-tile",
        out=out,
        report_dir=out.parent / "report",
        image_size=(128, 128),
        bank_size=400,
        max_good=48,
        max_defects=4,
        calib_per_class=2,
        progress=False,
        command="pytest tests/training/test_anomaly.py",
    )
    return A.fit(cfg)


def test_split_keeps_duplicates_and_defects_out_of_the_bank(trained: A.Trained) -> None:
    split = trained.split
    assert set(split.labels("train")) == {"MT_Free"}, "only good parts may reach the memory bank"
    for part in ("val", "test"):
        labels = set(split.labels(part))
        assert "MT_Free" in labels and len(labels) > 1, f"{part} needs good and defect images"
    seen = [p for rows in split.rows.values() for _, p in rows]
    assert len(seen) == len(set(seen)), "an image is in two splits"
    # every near-duplicate group (same tile, several exposures) lies inside one split
    where = {p: s for s, rows in split.rows.items() for _, p in rows}
    paths = list(seen)
    hashes = [A.phash(A.read_image(split.root / p)) for p in paths]  # type: ignore[arg-type]
    groups = A.duplicate_groups(hashes, names=[Path(p).name for p in paths])
    by_group: dict[int, set[str]] = {}
    for p, g in zip(paths, groups, strict=True):
        by_group.setdefault(g, set()).add(where[p])
    assert all(len(s) == 1 for s in by_group.values()), "a duplicate group straddles splits"


def test_onnx_signature_and_card(trained: A.Trained) -> None:
    path = Path(trained.report["onnx"])
    proto = onnx.load(str(path))
    (inp,) = proto.graph.input

    def dims(v: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    assert inp.name == "images" and dims(inp) == ["batch", 3, 128, 128]
    outs = {o.name: dims(o) for o in proto.graph.output}
    assert outs == {"pred_score": ["batch"], "anomaly_map": ["batch", 1, 128, 128]}
    card = load_card(path.with_name(path.stem + ".card.yaml"))
    assert card.task == "anomaly" and card.anomaly is not None
    assert card.anomaly.min <= card.anomaly.threshold <= card.anomaly.max
    assert card.training["command"] and card.training["split"]["counts"]["train"]["MT_Free"] > 0
    assert card.metrics["test"]["auroc"] is not None
    assert (Path(trained.report["report_dir"]) / "score_histograms.png").stat().st_size > 1000


def test_served_by_lineinspect_with_parity_and_ranking(trained: A.Trained) -> None:
    path = Path(trained.report["onnx"])
    model = load_model(path, FAST)
    assert model.spec.task == "anomaly"
    assert (model.spec.score_output, model.spec.map_output) == ("pred_score", "anomaly_map")
    assert not model.spec.warnings

    split = trained.split
    good = split.paths("test", "MT_Free") + split.paths("val", "MT_Free")
    bad = [split.root / p for s in ("test", "val") for c, p in split.rows[s] if c != "MT_Free"]
    images = [A.read_image(p) for p in good + bad]
    results = model.predict(images)  # type: ignore[arg-type]
    raw = np.array([r.prediction.anomaly.raw for r in results])  # type: ignore[union-attr]
    for r in results:
        a = r.prediction.anomaly
        assert a is not None and 0.0 <= a.score <= 1.0
        assert a.map is not None and a.map.shape == (128, 128)
        assert r.decision.verdict in set(Verdict)
    assert raw[len(good) :].mean() > raw[: len(good)].mean(), (
        f"defects should score higher than good parts on average: defects "
        f"{raw[len(good) :].mean():.3f}, good {raw[: len(good)].mean():.3f}"
    )

    # Parity: the PyTorch model on the service's own preprocessing (from the card) vs the served
    # ONNX scores, relative to the calibrated score range.
    batch = torch.from_numpy(np.stack([model.preprocess(img)[0] for img in images[:6]]))  # type: ignore[arg-type]
    with torch.no_grad():
        torch_raw = trained.model(batch)[0].numpy()
    spread = model.spec.anomaly.max - model.spec.anomaly.min  # type: ignore[union-attr]
    assert np.abs(torch_raw - raw[:6]).max() / spread <= 1e-4
    assert trained.report["parity"]["ok"]


def test_input_norm_masks_padding_and_removes_exposure() -> None:
    """The graph's own normalisation: the letterbox padding is found from the pixels alone, and
    the same tile at another exposure (gain and offset) gives the same normalised input."""
    rng = np.random.default_rng(0)
    tile = rng.integers(40, 200, size=(90, 200), dtype=np.uint8)  # wide: padding above/below
    tile[:, 50] = 114  # tile pixels that happen to equal the padding value stay tile
    cfg = A.AnomalyConfig(data=Path("."), image_size=(128, 128), normalize="std")  # opt-in
    spec = A.preprocess_spec(cfg)
    norm = A.input_norm(cfg)

    def run(image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(A.preprocess(image, spec)[0])[None]
        return norm(x)

    xn, valid = run(tile)
    rows = valid[0, 0, :, 0].numpy()
    _, geom = A.preprocess(tile, spec)
    top = int(geom.pad_y)
    assert rows[:top].sum() == 0 and rows[top] == 1, "padding rows above the tile"
    assert rows.sum() == round(90 * geom.scale_y), "every resized tile row is valid"
    assert valid[0, 0, top].min() == 1, "no padding columns"
    inside = valid[0, 0] > 0
    assert abs(float(xn[0, 0][inside].mean()) - cfg.norm_mean) < 1e-3
    assert abs(float(xn[0, 0][inside].std()) - cfg.norm_std) < 5e-3
    assert torch.all(xn[0, :, ~inside] == cfg.norm_mean), "padding refilled with the mean"
    darker = np.clip(tile.astype(np.float32) * 0.6 + 10, 0, 255).round().astype(np.uint8)
    xd, _ = run(darker)
    assert float((xd - xn)[0, 0][inside].abs().mean()) < 0.01, "exposure changes the input"


def _main(argv: list[str]) -> int:
    from service.cli import main

    return main(["train", "anomaly", "--no-estimate", *argv])


@pytest.mark.parametrize(
    ("name", "good"),
    [
        ("MT_Free", True),
        ("good", True),
        ("OK", True),
        ("defect-free", True),
        ("parts_normal", True),
        ("MT_Crack", False),
        ("goodbye", False),
        ("freeze_marks", False),
    ],
)
def test_good_folder_names(name: str, good: bool) -> None:
    assert A._is_good_name(name) is good


def test_discover_finds_the_good_folder_and_reads_mvtec_layouts(
    data_dir: Path, tmp_path: Path
) -> None:
    tiles = data_dir / "magnetic-tile"
    classes, good = A.discover(tiles)  # the shipped data with the default ("auto")
    assert good == "MT_Free" and len(classes) == 6 and next(iter(classes)) == "MT_Free"

    # MVTec AD: train/good, test/good, test/<defect>, ground_truth/<defect> masks (ignored).
    free, crack = A._images_in(tiles / "MT_Free"), A._images_in(tiles / "MT_Crack")
    mvtec = tmp_path / "tile"
    layout = {
        "train/good": free[:6],
        "test/good": free[6:8],
        "test/crack": crack[:3],
        "ground_truth/crack": [p.with_suffix(".png") for p in crack[:3]],
    }
    for folder, files in layout.items():
        (mvtec / folder).mkdir(parents=True)
        for f in files:
            (mvtec / folder / f.name).symlink_to(f)
    classes, good = A.discover(mvtec)
    assert good == "good"
    assert {k: len(v) for k, v in classes.items()} == {"good": 8, "crack": 3}

    two = tmp_path / "two"
    for folder in ("ok", "good", "scratch"):
        (two / folder).mkdir(parents=True)
        (two / folder / "a.jpg").symlink_to(free[0])
    with pytest.raises(A.AnomalyDataError, match="several folders .* pass --good-class"):
        A.discover(two)
    assert A.discover(two, "ok")[1] == "ok"


def test_cli_errors_are_one_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "m.onnx"), "--no-progress"]
    cases: dict[str, Path] = {}
    cases["does not exist"] = tmp_path / "missing"
    (tmp_path / "empty").mkdir()
    cases["is empty"] = tmp_path / "empty"
    nogood = tmp_path / "nogood"
    (nogood / "MT_Crack").mkdir(parents=True)
    (nogood / "MT_Crack" / "a.jpg").write_bytes(b"\xff\xd8 not really")
    cases["no good-image folder"] = nogood
    bad = tmp_path / "bad"
    (bad / "MT_Free").mkdir(parents=True)
    (bad / "MT_Crack").mkdir(parents=True)
    for folder in ("MT_Free", "MT_Crack"):
        (bad / folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    cases["unreadable image"] = bad
    for expected, data in cases.items():
        assert _main(["--data", str(data), *out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lineinspect: error: ") and expected in err, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
    tiles = str(data_dir / "magnetic-tile")
    for backbone, expected in (
        (tmp_path / "none.pt", "no such file"),
        (bad / "MT_Free" / "broken.jpg", "not a detector checkpoint"),
    ):
        assert _main(["--data", tiles, *out, "--quick", "--backbone", str(backbone)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lineinspect: error: backbone") and expected in err, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
    assert _main(["--data", str(bad), *out, "--augment", "hx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lineinspect: error: augment must be") and err.count("\n") == 1, err

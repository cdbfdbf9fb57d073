"""Dataset import and QA on the real data and on broken datasets made for the test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from training.dataset import (
    DatasetError,
    Manifest,
    export_yolo,
    find_duplicates,
    load_dataset,
    quality_report,
    split_dataset,
)
from training.hygiene import bracket_groups

NEU = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]


@pytest.fixture(scope="module")
def neu(data_dir: Path):
    return load_dataset(data_dir / "neu-det")


def test_neu_voc_quirks(neu) -> None:
    assert neu.fmt == "voc" and neu.classes == NEU
    assert len(neu.samples) == 1440 and not neu.problems and not neu.unreadable
    # some VOC files name the image without its extension: they are still paired
    assert any(s.path.name == "pitted_surface_1.jpg" and s.boxes for s in neu.samples)
    multi = [s for s in neu.samples if len({b.cls for b in s.boxes}) > 1]
    assert multi, "NEU has images with boxes of several classes"
    assert all(s.label == s.path.stem.rsplit("_", 1)[0] for s in neu.samples)
    assert all(s.grey for s in neu.samples), "NEU JPEGs are grey stored as 3 channels"


def test_neu_split_is_stratified_reproducible_and_leak_free(neu) -> None:
    dups = find_duplicates(neu.samples)
    exact = [[neu.samples[i].path.name for i in g] for g in dups["exact"]]
    assert ["patches_101.jpg", "patches_105.jpg"] in [sorted(g) for g in exact]
    groups = dups["exact"] + dups["near"]
    a = split_dataset(neu, seed=0, groups=groups)
    b = split_dataset(neu, seed=0, groups=groups)
    c = split_dataset(neu, seed=1, groups=groups)
    assert a.digest == b.digest != c.digest
    sizes = {k: len(v) for k, v in a.splits.items()}
    assert sum(sizes.values()) == 1440 and 0.68 < sizes["train"] / 1440 < 0.72
    for split in ("val", "test"):
        per_class = {cls: sum(r["label"] == cls for r in a.splits[split]) for cls in NEU}
        assert max(per_class.values()) - min(per_class.values()) <= 2, per_class
    report = quality_report(neu, a)
    assert report["duplicates_across_splits"] == []
    assert report["balance"]["ok"] and report["small_boxes"]["count"] > 0


def test_manifest_round_trip_and_yolo_export(neu, tmp_path: Path) -> None:
    manifest = split_dataset(neu, seed=0)
    manifest.save(tmp_path / "m.json")
    loaded = Manifest.load(tmp_path / "m.json")
    assert loaded.digest == manifest.digest
    data_yaml = export_yolo(loaded, tmp_path / "yolo")
    data = yaml.safe_load(data_yaml.read_text())
    assert list(data["names"].values()) == NEU
    labels = sorted((tmp_path / "yolo" / "labels" / "train").glob("*.txt"))
    assert len(labels) == len(manifest.splits["train"])
    # one label checked against its VOC box by hand: normalised cx cy w h
    sample = next(s for s in loaded.samples("train") if s.boxes)
    txt = next(p for p in labels if p.stem.startswith(sample.path.stem + "_"))
    cls, cx, _cy, w, _h = txt.read_text().splitlines()[0].split()
    b = sample.boxes[0]
    assert NEU[int(cls)] == b.cls
    assert float(cx) == pytest.approx((b.x1 + b.x2) / 2 / 200, abs=1e-5)
    assert float(w) == pytest.approx((b.x2 - b.x1) / 200, abs=1e-5)


@pytest.fixture(scope="module")
def tiles(data_dir: Path):
    return load_dataset(data_dir / "magnetic-tile")


def test_magnetic_tile_masks_become_boxes(tiles) -> None:
    ds = tiles
    assert ds.fmt == "masks"
    assert set(ds.classes) == {
        "MT_Blowhole",
        "MT_Break",
        "MT_Crack",
        "MT_Fray",
        "MT_Free",
        "MT_Uneven",
    }
    free = [s for s in ds.samples if s.label == "MT_Free"]
    assert len(free) == 762 and all(not s.boxes for s in free)
    blow = [s for s in ds.samples if s.label == "MT_Blowhole"]
    assert sum(bool(s.boxes) for s in blow) > 80
    sizes = {(s.width, s.height) for s in ds.samples}
    assert len(sizes) > 50, "tiles vary in size"
    report = quality_report(ds)
    assert not report["balance"]["ok"] and report["balance"]["smallest"] == "MT_Fray"


def test_bracket_groups_chain_frame_numbers() -> None:
    names = ["exp1_num_100.jpg", "exp2_num_130.jpg", "exp3_num_170.jpg", "exp1_num_900.jpg",
             "crazing_1.jpg", "crazing_2.jpg", "exp1_num_2000.jpg", "EXP4_NUM_1960.jpg"]  # fmt: skip
    # 100-130-170 chain (gaps <= 60); 900 alone; NEU-style names are never grouped; case-blind
    assert bracket_groups(names) == [[0, 1, 2], [6, 7]]


def test_exposure_brackets_stay_in_one_split(tiles) -> None:
    """The same tile at several exposures must not straddle splits; pHash alone misses many."""
    dups = find_duplicates(tiles.samples)
    brackets = dups["bracket"]
    assert len(brackets) > 150, len(brackets)
    near = [set(g) for g in dups["near"] + dups["exact"]]
    missed = [g for g in brackets if not any(set(g) <= n for n in near)]
    assert len(missed) > 30, "pHash alone would not keep these siblings together"
    manifest = split_dataset(tiles, seed=0, groups=dups["exact"] + dups["near"] + brackets)
    split_of = {row["path"]: name for name, rows in manifest.splits.items() for row in rows}
    for g in brackets:
        paths = {str(tiles.samples[i].path.relative_to(tiles.root)) for i in g}
        assert len({split_of[p] for p in paths}) == 1, paths
    report = quality_report(tiles, manifest)
    assert len(report["exposure_brackets"]) == len(brackets)
    assert not report["duplicates_across_splits"]


def _folder_dataset(tmp_path: Path, neu_images: list[Path], per_class: dict[str, int]) -> Path:
    root = tmp_path / "ds"
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True)
        for path in [p for p in neu_images if p.name.startswith(cls)][:n]:
            shutil.copy(path, root / cls / path.name)
    return root


def test_bad_inputs_give_clear_errors(tmp_path: Path, neu_images: list[Path]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="dataset folder not found"):
        load_dataset(tmp_path / "nope")

    root = _folder_dataset(tmp_path, neu_images, {"crazing": 5, "scratches": 5, "patches": 1})
    (root / "crazing" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = load_dataset(root)
    assert ds.fmt == "folders" and any("broken.jpg" in u for u in ds.unreadable)
    with pytest.raises(DatasetError, match=r"fewer than 3 distinct images.*'patches': 1"):
        split_dataset(ds)
    with pytest.raises(DatasetError, match=r"unknown classes \['patches'\]"):
        load_dataset(root, classes=["crazing", "scratches"])


def test_yolo_labels_with_unknown_class_index(tmp_path: Path, neu_images: list[Path]) -> None:
    root = tmp_path / "y"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    image = cv2.imread(str(neu_images[0]))
    cv2.imwrite(str(root / "images" / "a.jpg"), image)
    cv2.imwrite(str(root / "images" / "b.jpg"), np.flipud(image))
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n")
    (root / "labels" / "b.txt").write_text("1 0.5 0.5 0.5 0.25\n")
    (root / "data.yaml").write_text("names: [dent, scratch]\n")
    ds = load_dataset(root)
    assert ds.fmt == "yolo" and ds.classes == ["dent", "scratch"]
    assert any("class index 7" in p for p in ds.problems)
    b = next(s for s in ds.samples if s.path.name == "b.jpg")
    assert (
        b.label == "scratch"
        and b.boxes[0].x1 == pytest.approx(50)
        and b.boxes[0].y1 == pytest.approx(75)
    )


def test_cli_qa_and_export_yolo(
    tmp_path: Path, neu_images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`lineinspect dataset qa` / `export-yolo` as a user runs them; bad input is one line."""
    from service.cli import main

    root = _folder_dataset(tmp_path, neu_images, {"crazing": 4, "scratches": 4, "patches": 4})
    out = tmp_path / "qa"
    assert main(["dataset", "qa", str(root), "--out", str(out), "--seed", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    report = json.loads((out / "qa.json").read_text())
    assert report and (out / "qa.md").stat().st_size > 0
    manifest = Manifest.load(out / "manifest.json")
    assert manifest.seed == 3 and sorted(manifest.classes) == ["crazing", "patches", "scratches"]

    assert (
        main(["dataset", "export-yolo", str(out / "manifest.json"), "--out", str(tmp_path / "y")])
        == 0
    )
    assert "data.yaml" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())["names"][0] == "crazing"
    assert len(list((tmp_path / "y" / "images" / "train").iterdir())) == len(
        manifest.splits["train"]
    )

    cases = {
        ("qa", str(tmp_path / "nowhere"), "--out", str(out)): "dataset folder not found",
        ("qa", str(root), "--out", str(out), "--classes", "crazing"): "unknown classes",
        ("export-yolo", str(root / "crazing" / "x.json"), "--out", str(out)): "manifest not found",
        ("export-yolo", str(out / "qa.md"), "--out", str(out)): "is not a split manifest",
    }
    for argv, expected in cases.items():
        assert main(["dataset", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lineinspect: error: ") and err.count("\n") == 1, err
        assert expected in err, err

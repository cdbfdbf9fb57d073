"""Supervised and hybrid good-vs-defect models: the pieces on their own (fast), and bad input to
`lineinspect train anomaly` answered with one line, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.cli import main
from training.anomaly import _images_in, load_backbone
from training.anomaly.candidates import UNLABELLED, extra_labelled, read_mask
from training.anomaly.supervised import Cached, HeadConfig, Taps, fit_head, out_of_fold, topk_pool


def test_taps_bring_every_block_to_the_stride_16_grid() -> None:
    taps = Taps(load_backbone(), (4, 7, 10, 15))
    f = taps(torch.zeros(2, 3, 128, 96))
    # block 4 (40 ch, stride 8) averaged + max-pooled, 7 (80), 10 (112), 15 (320, upsampled)
    assert f.shape == (2, 40 * 2 + 80 + 112 + 320, 8, 6)


def test_topk_pool_ignores_padding() -> None:
    z = torch.tensor([[[[5.0, 1.0], [2.0, 3.0]]]])
    valid = torch.tensor([[[[False, True], [True, True]]]])
    assert topk_pool(z, valid, 1).item() == 3.0  # the 5 sits on padding
    assert topk_pool(z, valid, 2).item() == 2.5


def _toy_cache(n: int = 40, seed: int = 0) -> Cached:
    """Defect images carry a bright patch in channel 0 (and a mask on it); good images do not."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, 4, 6, 6, generator=g)
    defect = torch.arange(n) % 4 == 0
    mask = torch.zeros(n, 1, 6, 6)
    for i in torch.nonzero(defect).flatten().tolist():
        f[i, 0, 2, 3] += 8.0
        mask[i, 0, 2, 3] = 1.0
    return Cached(f.half(), torch.ones(n, 1, 6, 6, dtype=torch.bool), mask.half(),
                  defect.clone(), defect)  # fmt: skip


def test_head_learns_the_defect_patch_and_out_of_fold_holds_groups_out() -> None:
    cache = _toy_cache()
    rows = np.arange(len(cache))
    groups = rows // 2  # pairs of images are one physical part
    cfg = HeadConfig(epochs=40, topk=1, lr=3e-2, batch_size=8)
    seen: list[set[int]] = []
    import training.anomaly.supervised as sup

    real_fit = sup.fit_head

    def spy(c: Cached, r: np.ndarray, h: HeadConfig) -> sup.PatchHead:
        seen.append({int(groups[i]) for i in r})
        return real_fit(c, r, h)

    sup.fit_head = spy  # type: ignore[assignment]
    try:
        scores = out_of_fold(cache, rows, groups, cfg, folds=4)
    finally:
        sup.fit_head = real_fit  # type: ignore[assignment]
    assert len(seen) == 4
    held_out = [set(groups.tolist()) - s for s in seen]
    assert all(held_out) and set().union(*held_out) == set(groups.tolist())
    y = cache.defect.numpy()
    assert scores[y].min() > scores[~y].max(), "out-of-fold scores separate the toy defects"
    head = fit_head(cache, rows, cfg)
    z = head(cache.features[:1].float())
    assert z.shape == (1, 1, 6, 6) and int(z.flatten().argmax()) == 2 * 6 + 3


def test_masks_and_labelled_folders(data_dir: Path, tmp_path: Path) -> None:
    crack = _images_in(data_dir / "magnetic-tile" / "MT_Crack")[0]
    mask = read_mask(crack)
    assert mask is not None and mask.ndim == 2 and (mask > 127).any()
    export = tmp_path / "export"
    for folder, n in (("good", 2), ("MT_Crack", 1), (UNLABELLED, 3)):
        (export / folder).mkdir(parents=True)
        for i in range(n):
            shutil.copy(crack, export / folder / f"{folder}-{i}.jpg")
    paths, labels, notes = extra_labelled([export], "MT_Free")
    assert sorted(labels) == ["MT_Crack", "MT_Free", "MT_Free"]
    assert len(paths) == 3 and len(notes) == 1 and "3 unlabelled item(s)" in notes[0]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["train", "anomaly", "--no-progress", "--no-estimate", *argv])
    return code, capsys.readouterr().err


def _one_line(err: str) -> None:
    assert err.startswith("lineinspect: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_bad_input_is_one_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiles = data_dir / "magnetic-tile"
    free = _images_in(tiles / "MT_Free")
    crack = _images_in(tiles / "MT_Crack")
    out = ["--out", str(tmp_path / "m.onnx"), "--report-dir", str(tmp_path / "r")]

    only_good = tmp_path / "only-good"
    (only_good / "good").mkdir(parents=True)
    for p in free[:20]:
        shutil.copy(p, only_good / "good" / p.name)
    code, err = _run(["--data", str(only_good), "--mode", "all", *out], capsys)
    assert code == 2
    _one_line(err)
    assert "no defect images" in err

    one_defect = tmp_path / "one-defect"
    shutil.copytree(only_good, one_defect)
    (one_defect / "crack").mkdir()
    shutil.copy(crack[0], one_defect / "crack" / crack[0].name)
    code, err = _run(["--data", str(one_defect), "--mode", "all", "--quick", *out], capsys)
    assert code == 2
    _one_line(err)
    assert "too few images to calibrate" in err or "needs labelled defects" in err

    corrupt = tmp_path / "labelled"
    (corrupt / "crack").mkdir(parents=True)
    (corrupt / "crack" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, err = _run(["--data", str(tiles), "--mode", "all", "--quick", "--labelled",
                      str(corrupt), *out], capsys)  # fmt: skip
    assert code == 2
    _one_line(err)
    assert "unreadable image" in err and "broken.jpg" in err

    code, err = _run(["--data", str(tiles), "--labelled", str(tmp_path / "nowhere"), *out], capsys)
    assert code == 2
    _one_line(err)
    assert "does not exist" in err


def test_quick_and_limits_make_a_ci_sized_config(data_dir: Path) -> None:
    from service.cli import build_parser
    from training.commands.anomaly import build_config

    def config(*argv: str) -> Any:
        return build_config(build_parser().parse_args(["train", "anomaly", *argv]))

    quick = config("--quick")
    assert (quick.image_size, quick.max_good, quick.max_defects) == ((128, 128), 60, 6)
    assert (quick.calib_per_class, quick.topk, quick.folds) == (3, 3, 3)
    limited = config("--quick", "--image-size", "256", "--limit-per-class", "10")
    assert (limited.image_size, limited.max_defects, limited.topk) == ((256, 256), 10, 3)
    full = config()
    assert (full.image_size, full.max_good, full.topk, full.calib_per_class) == (
        (512, 512),
        None,
        20,
        20,
    )


@pytest.mark.parametrize(
    ("mode", "augment", "passes"),
    [
        ("good-only", "", 0.7 * 100 + 0.6 * 100),  # bank of the good share, then val + test
        ("good-only", "hvt", 0.7 * 100 * 4 + 0.6 * 100),  # each flip is one more pass
        ("all", "", 0.7 * 100 + 0.6 * 100 + 0.85 * 100 + 0.9 * 100),  # + labelled set, 3 scorings
    ],
)
def test_image_passes_count_what_a_run_computes(mode: str, augment: str, passes: float) -> None:
    from types import SimpleNamespace

    from training.commands.anomaly import image_passes

    cfg = SimpleNamespace(mode=mode, augment=augment)
    assert image_passes(cfg, 100) == pytest.approx(passes)

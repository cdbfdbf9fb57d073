"""The readiness report package on synthetic numbers: criteria, advice, binary metrics, the
comparison of candidates, and the Markdown / HTML / PNG files (no training, a few seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training import report
from training.report import criteria as cr
from training.report.model import Criterion

# 6 good, 2 crack, 2 hole: only 0.4 (hole) < 0.6 (good) is out of order -> AUROC 23/24
LABELS = ["good"] * 6 + ["crack", "crack", "hole", "hole"]
SCORES = np.array([0.1, 0.2, 0.3, 0.2, 0.6, 0.1, 0.7, 0.8, 0.9, 0.4])


def results(criteria: list[Criterion]) -> dict[str, bool]:
    return {c.name: c.passed for c in criteria}


# -- criteria


@pytest.mark.parametrize(
    ("accuracy", "f1", "recall", "gap", "expected"),
    [
        (0.95, 0.90, 0.85, (0.97, 0.95), [True, True, True, True]),
        (0.90, 0.90, 0.85, None, [False, True, True]),  # accuracy must be > 90 %
        (0.95, 0.85, 0.80, None, [True, False, True]),  # F1 > 0.85; recall 0.80 is allowed
        (0.95, 0.90, 0.79, (0.99, 0.85), [True, True, False, False]),  # 14 points: overfitting
    ],
)
def test_classification_criteria(
    accuracy: float,
    f1: float,
    recall: float,
    gap: tuple[float, float] | None,
    expected: list[bool],
) -> None:
    per_class = {"good": {"f1": 0.99, "recall": 0.99}, "crack": {"f1": f1, "recall": recall}}
    train, val = gap or (None, None)
    got = cr.classification_criteria(accuracy, per_class, train_accuracy=train, val_accuracy=val)
    assert [c.passed for c in got] == expected
    assert "`crack`" in got[1].name and "`crack`" in got[2].name


@pytest.mark.parametrize(
    ("map50", "ap", "fp", "miss", "expected"),
    [
        (0.81, {"a": 0.80, "b": 0.76}, 0.09, 0.04, [True, True, True, True]),
        (0.80, {"a": 0.80, "b": 0.75}, 0.10, 0.05, [False, False, False, False]),  # all strict
        (0.90, {"a": 0.9, "b": None}, None, 0.01, [True, True, False, True]),  # fp not measured
    ],
)
def test_detection_criteria(
    map50: float,
    ap: dict[str, float | None],
    fp: float | None,
    miss: float,
    expected: list[bool],
) -> None:
    got = cr.detection_criteria(map50, ap, fp, miss)
    assert [c.passed for c in got] == expected
    if fp is None:
        assert got[2].shown == "not measured"


@pytest.mark.parametrize(
    ("auroc", "miss", "per_class", "fr", "calib", "failed"),
    [
        (0.97, 0.04, {"crack": 0.05, "hole": 0.0}, 0.10, {"crack": 15, "hole": 25}, set()),
        (0.94, 0.04, {"crack": 0.06, "hole": 0.0}, 0.11, {"crack": 14}, {0, 2, 4, 5}),
        (None, None, {}, None, None, {0, 1, 2, 3}),
    ],
)
def test_binary_criteria(
    auroc: float | None,
    miss: float | None,
    per_class: dict[str, float],
    fr: float | None,
    calib: dict[str, int] | None,
    failed: set[int],
) -> None:
    got = cr.binary_criteria(auroc, miss, per_class, fr, calib)
    assert {i for i, c in enumerate(got) if not c.passed} == failed
    assert any("false-reject" in c.name and "no number" in c.note for c in got)


# -- advice


@pytest.mark.parametrize(
    ("metric", "counts", "expected"),
    [
        (
            {"crack": 0.6, "dent": 0.9},
            {"crack": 40, "dent": 300},
            "label more `crack` (40 images now; pilot needs 200)",
        ),
        ({"crack": 0.6, "dent": 0.9}, {"crack": 250, "dent": 30}, None),  # weakest has enough
        ({"crack": 0.6}, {"dent": 3}, None),  # no count for the weakest class
        ({"crack": None, "dent": 0.7}, {"dent": 10}, "label more `dent` (10 images now"),
    ],
)
def test_advise_label_more(
    metric: dict[str, float | None], counts: dict[str, int], expected: str | None
) -> None:
    got = cr.advise_label_more(metric, counts)
    assert got is None if expected is None else got is not None and got.startswith(expected)


def test_advise_label_more_other_stage() -> None:
    got = cr.advise_label_more({"crack": 0.5}, {"crack": 300}, metric="AP50", stage="production")
    assert got is not None and "production needs 500" in got and "AP50" in got
    with pytest.raises(ValueError, match="unknown stage"):
        cr.advise_label_more({"crack": 0.5}, {"crack": 3}, stage="pilot-ish")


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        (
            {"good": 500, "crack": 100, "dent": 200},
            "classes unbalanced 5:1 (`good` 500 vs `crack` 100",
        ),
        ({"good": 340, "crack": 100}, "classes unbalanced 3.4:1"),
        ({"good": 300, "crack": 100}, None),  # 3:1 is the limit
        ({"good": 1250, "crack": 1000}, None),
        ({"good": 1000, "crack": 0}, "classes unbalanced: `crack` has no images"),
        ({"good": 1000}, None),
    ],
)
def test_advise_balance(counts: dict[str, int], expected: str | None) -> None:
    got = cr.advise_balance(counts)
    assert got is None if expected is None else got is not None and got.startswith(expected)


RISING = [0.1 * i for i in range(10)]
PLATEAU = [0.5, 0.7, 0.8, 0.81, 0.8, 0.79, 0.8, 0.78, 0.79, 0.78, 0.77, 0.78]
LATE_BEST = [0.5] * 45 + [0.71, 0.72, 0.7, 0.69, 0.68]  # best at epoch 47 of 50, slope < 0
# the shipped detector's val mAP50 over its last 30 of 170 epochs: a noisy plateau
NOISY_PLATEAU = [0.69] * 140 + [
    0.7075, 0.6849, 0.6939, 0.6897, 0.7071, 0.714, 0.7019, 0.6981, 0.7004, 0.6907, 0.6918,
    0.7107, 0.7077, 0.7111, 0.7006, 0.6901, 0.7067, 0.709, 0.708, 0.7082, 0.6942, 0.6893, 0.701,
    0.702, 0.7041, 0.7069, 0.7012, 0.7085, 0.7065, 0.7043,
]  # fmt: skip


@pytest.mark.parametrize(
    ("curve", "fires"),
    [
        (RISING, True),
        (PLATEAU, False),
        (LATE_BEST, True),
        (NOISY_PLATEAU, False),
        ([*NOISY_PLATEAU[:-3], 0.7085, 0.7065, 0.7143], False),  # best last, by 0.0003 only
        ([*NOISY_PLATEAU[:-3], 0.7085, 0.7065, 0.725], True),  # best last, by 0.011
        ([0.8] * 20, False),
        ([0.1, 0.2], False),
        ([0.5] * 20 + [0.5, 0.51, 0.515, 0.52, 0.53], True),  # 0.007/epoch at the end
    ],
)
def test_advise_epochs(curve: list[float], fires: bool) -> None:
    got = cr.advise_epochs(curve, "val mAP50")
    assert (got is not None) == fires
    if fires:
        assert got is not None and got.startswith("train more epochs: validation still rising")


def test_still_rising_reports_best_epoch_and_slope() -> None:
    rising, best, slope = cr.still_rising(LATE_BEST)
    assert rising and best == 47 and slope < 0
    assert cr.still_rising([0.1, float("nan"), 0.2, 0.3]) == (True, 3, pytest.approx(0.1))


@pytest.mark.parametrize(
    ("rule", "args", "expected"),
    [
        (
            cr.advise_overfitting,
            (0.99, 0.85),
            "overfitting: train accuracy 99.0 % vs validation 85.0 % (14.0 points",
        ),
        (cr.advise_overfitting, (0.95, 0.90), None),
        (cr.advise_overfitting, (None, 0.90), None),
        (
            cr.advise_false_reject,
            (0.18,),
            "false-reject rate 18.0 % (target ≤ 10 %): review the threshold / add good images of the confounders (shadows",
        ),
        (cr.advise_false_reject, (0.10,), None),
        (
            cr.advise_calibration,
            ({"crack": 8, "dent": 20, "hole": 3},),
            "too few real defects to calibrate the threshold (`crack` 8, `hole` 3): collect 15-25",
        ),
        (cr.advise_calibration, ({"crack": 15},), None),
        (
            cr.advise_misses,
            ({"crack": 0.12, "hole": 0.2, "dent": 0.0},),
            "`hole` passes 20.0 % of its defects (target ≤ 5 %) (also `crack` 12.0 %)",
        ),
        (cr.advise_misses, ({"crack": 0.05},), None),
        (
            cr.advise_separation,
            ({"crack": 0.81, "hole": 0.99},),
            "`crack` scores overlap the good parts' (AUROC 0.810 < 0.95)",
        ),
        (cr.advise_separation, ({"crack": 0.96},), None),
    ],
)
def test_advice_rules(rule: Any, args: tuple[Any, ...], expected: str | None) -> None:
    got = rule(*args)
    assert got is None if expected is None else got is not None and got.startswith(expected)


def test_collect_drops_none_and_repeats() -> None:
    assert cr.collect("a", None, ["b", None, "a"], "c") == ["a", "b", "c"]


# -- binary metrics and the comparison


def test_binary_metrics_known_values() -> None:
    m = report.binary_metrics(SCORES, LABELS, "good", 0.5, band=(0.45, 0.65))
    assert m.auroc == pytest.approx(23 / 24)
    assert m.miss_rate == 0.25 and m.false_reject_rate == pytest.approx(1 / 6)
    assert m.class_miss() == {"crack": 0.0, "hole": 0.5}
    assert m.class_auroc() == {"crack": 1.0, "hole": pytest.approx(11 / 12)}
    good, hole = m.per_class["good"], m.per_class["hole"]
    assert (good.passed, good.uncertain, good.failed) == (5, 1, 0)
    assert (hole.passed, hole.uncertain, hole.failed) == (1, 0, 1)
    assert m.defects.images == 4 and m.defects.flagged == 3
    with pytest.raises(ValueError, match="outside its band"):
        report.binary_metrics(SCORES, LABELS, "good", 0.5, band=(0.6, 0.7))
    with pytest.raises(ValueError, match="labels"):
        report.binary_metrics(SCORES[:3], LABELS, "good", 0.5)


def candidates() -> list[report.Candidate]:
    y = np.array(["good"] * 10 + ["crack"] * 10)
    base = np.r_[np.linspace(0, 0.5, 10), np.linspace(0.6, 1.0, 10)]
    return [
        report.Candidate("strict", base, y, 0.1),  # misses none, rejects 80 % of good parts
        report.Candidate("balanced", base, y, 0.55),  # misses none, rejects none
        report.Candidate("loose", base, y, 0.9),  # misses 70 %
    ]


def test_comparison_recommends_lowest_false_reject_among_those_meeting_miss() -> None:
    cmp = report.compare_candidates(candidates(), good_class="good")
    assert cmp.recommended == "balanced"
    assert "lowest false-reject rate (0.0 %) among the 2 with miss rate ≤ 5 %" in cmp.reason
    table = cmp.table()
    assert table.header[-2:] == ["AUROC `crack`", "recommended"]
    marked = [row[0] for row in table.rows if str(row[-1]).startswith("★")]
    assert marked == ["balanced"]


def test_comparison_counts_a_miss_rate_at_the_target_as_meeting_it() -> None:
    # 5 of 100 defects passed is 0.05 exactly, however the rate is computed (1 - 0.95 is not)
    y = np.array(["good"] * 20 + ["crack"] * 100)
    scores = np.r_[np.linspace(0, 0.4, 20), np.full(5, 0.45), np.linspace(0.6, 1, 95)]
    a = report.Candidate("at-target", scores, y, 0.5)
    b = report.Candidate("missing-more", scores, y, 0.7)
    cmp = report.compare_candidates([a, b], good_class="good")
    assert cmp.recommended == "at-target" and "the only one with miss rate ≤ 5 %" in cmp.reason
    unmarked = cmp.table(mark=False)
    assert "recommended" not in unmarked.header and "not used to choose" in unmarked.caption


def test_comparison_without_a_candidate_meeting_miss_picks_best_auroc() -> None:
    y = ["good"] * 4 + ["crack"] * 4
    a = report.Candidate("a", [0, 0.1, 0.2, 0.9, 0.3, 0.4, 0.8, 1.0], y, 0.95)
    b = report.Candidate("b", [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.8, 1.0], y, 0.95)
    cmp = report.compare_candidates([a, b], good_class="good")
    assert cmp.recommended == "b" and "none reaches miss rate ≤ 5 %" in cmp.reason
    with pytest.raises(ValueError, match="same parts"):
        report.compare_candidates(
            [a, report.Candidate("c", [0] * 8, y[::-1], 0.5)], good_class="good"
        )


# -- files


def test_binary_report_files_numbers_and_escaping(tmp_path: Path) -> None:
    weird = "<b>hole&</b>"
    labels = [weird if c == "hole" else c for c in LABELS]
    out = tmp_path / "rep"
    written = report.write_binary_report(
        out,
        title="anomaly <model>",
        model_name="tiles-anomaly",
        scores={"val": (SCORES, labels), "test": (SCORES, labels)},
        good_class="good",
        threshold=0.5,
        band=(0.45, 0.65),
        calib_counts={"crack": 2, weird: 3},
        train_counts={"good": 400},
        advice_context={"val_curve": RISING, "metric_name": "val AUROC"},
        comparison=report.compare_candidates(candidates(), good_class="good"),
        extra_tables=[report.Table(["k", "v"], [("bank", 1024)], "memory bank")],
    )
    md = written.markdown.read_text(encoding="utf-8")
    assert "## Production readiness: FAIL" in md
    assert "AUROC 0.958, miss rate 25.0 % (defects passed), false-reject rate 16.7 %" in md
    assert "| miss rate `crack` | 0.0 % | ≤ 5.0 % | PASS |" in md
    assert f"| miss rate `{weird}` | 50.0 % | ≤ 5.0 % | FAIL |" in md
    assert "| fewest calibration defects per class (`crack`) | 2 | ≥ 15 | FAIL |" in md
    assert "too few real defects to calibrate the threshold" in md
    assert "train more epochs: validation still rising (val AUROC" in md
    assert "false-reject rate 16.7 % (target ≤ 10 %): review the threshold" in md
    assert "Recommended: `balanced`" in md and "| bank | 1024 |" in md

    page = written.html.read_text(encoding="utf-8")
    assert weird not in page and "<model>" not in page
    assert "<code>&lt;b&gt;hole&amp;&lt;/b&gt;</code>" in page
    assert "anomaly &lt;model&gt;" in page
    for name in (
        "roc_val.png",
        "roc_test.png",
        "score_histograms_val.png",
        "score_histograms_test.png",
        "training_curve.png",
        "roc_candidates.png",
    ):
        assert (out / name).stat().st_size > 5000, name
        assert f'src="{name}"' in page and f"]({name})" in md
    assert set(written.figures) == {out / n for n in ("roc_val.png", "roc_test.png",
        "score_histograms_val.png", "score_histograms_test.png", "training_curve.png",
        "roc_candidates.png")}  # fmt: skip


def test_binary_report_without_defects_says_not_measured(tmp_path: Path) -> None:
    written = report.write_binary_report(
        tmp_path,
        title="goods only",
        model_name="m",
        scores={"test": (np.array([0.1, 0.2, 0.3]), ["good"] * 3)},
        good_class="good",
        threshold=0.5,
    )
    md = written.markdown.read_text(encoding="utf-8")
    assert "| image AUROC (good vs defect) | not measured |" in md
    assert not written.report.passed


def yolo_split(root: Path, split: str, boxes: dict[str, list[int]]) -> list[Path]:
    """images/<split>/<name>.jpg (empty) + labels/<split>/<name>.txt with those class ids."""
    (root / "images" / split).mkdir(parents=True)
    (root / "labels" / split).mkdir(parents=True)
    images = []
    for name, ids in boxes.items():
        image = root / "images" / split / f"{name}.jpg"
        image.touch()
        rows = [f"{i} 0.5 0.5 0.2 0.2" for i in ids]
        (root / "labels" / split / f"{name}.txt").write_text("\n".join(rows))
        images.append(image)
    return images


def detector_metrics(classes: list[str]) -> dict[str, Any]:
    conf = np.linspace(0, 1, 1000)
    per_class = {
        c: {"ap50": ap, "ap50_95": ap / 2, "precision": 0.8, "recall": 0.7}
        for c, ap in zip(classes, (0.9, 0.6), strict=True)
    }
    return {
        "split": "test",
        "images": 4,
        "instances": 5,
        "map50": 0.75,
        "map50_95": 0.375,
        "per_class": per_class,
        "curves": {
            "conf": conf,
            "f1": 1 - (conf - 0.4) ** 2,
            "precision": 0.5 + 0.5 * conf,  # 0.85 at 0.7: false-positive rate 15 %
            "recall": 1 - conf,
            "class_precision": np.stack([0.6 + 0.4 * conf, 0.4 + 0.6 * conf]),
            "class_recall": np.stack([1 - conf, 1 - conf**0.5]),
            "pr_recall": conf,
            "pr_precision": np.stack([1 - 0.2 * conf, 1 - 0.6 * conf]),
        },
        "validator": "synthetic",
    }


def test_detector_report(tmp_path: Path) -> None:
    classes = ["crazing", "<scratch>"]
    data = tmp_path / "yolo"
    yolo_split(data, "train", {f"t{i}": [0] for i in range(250)} | {"s1": [1], "s2": [1, 0, 1]})
    test = yolo_split(data, "test", {"a": [0], "b": [0], "c": [1], "d": [1, 1]})
    counts = report.yolo_class_counts(data / "images" / "train", classes)
    assert counts == {"crazing": 251, "<scratch>": 2}
    served = {
        "verdicts": {"fail": 3, "pass": 1},
        "miss_rate": 0.25,
        "confidences": {"crazing": [0.8, 0.9, 0.3], "<scratch>": [0.75]},
        "per_image": [
            {"image": str(test[0]), "verdict": "fail", "top_class": "crazing"},
            {"image": str(test[1]), "verdict": "fail", "top_class": "crazing"},
            {"image": str(test[2]), "verdict": "pass", "top_class": None},
            {"image": str(test[3]), "verdict": "uncertain", "top_class": "crazing"},
        ],
    }
    epoch_log = [
        {"epoch": i, "val_map50": 0.1 * i, "val_map50_95": 0.05 * i, "box_loss": 2 - 0.1 * i}
        for i in range(1, 9)
    ]
    out = tmp_path / "neu-det-report"
    written = report.write_detector_report(
        out,
        detector_metrics(classes),
        model_name="neu-det",
        thresholds={"default": 0.7, "band": 0.1, "rationale": "F1 peak"},
        served=served,
        epoch_log=epoch_log,
        best_epoch=8,
        train_counts=counts,
        classes=classes,
    )
    md = written.markdown.read_text(encoding="utf-8")
    assert "## Production readiness: FAIL" in md
    assert "| mAP50 | 0.750 | > 0.8 | FAIL |" in md
    assert "| lowest class AP50 (`<scratch>`) | 0.600 | > 0.75 | FAIL |" in md
    assert "| false-positive rate | 15.0 % | < 10.0 % | FAIL |" in md
    assert "| miss rate on critical defects | 25.0 % | < 5.0 % | FAIL |" in md
    assert "label more `<scratch>` (2 images now; pilot needs 200): it has the lowest AP50" in md
    assert "classes unbalanced 126:1 (`crazing` 251 vs `<scratch>` 2 images" in md
    assert "train more epochs: validation still rising" in md
    assert "`<scratch>` passes 50.0 % of its defects" in md
    # per-class precision / recall at the threshold come from the class curves
    assert "| `crazing` | 0.900 | 0.450 | 0.800 | 0.700 | 0.880 | 0.300 | 0.0 % | 251 |" in md
    assert "| `<scratch>` | 1 | 0 | 1 |" in md  # image-level confusion: one miss
    page = written.html.read_text(encoding="utf-8")
    assert "<scratch>" not in page and "&lt;scratch&gt;" in page
    for name in (
        "ap_per_class.png",
        "pr_curves.png",
        "confusion_matrix.png",
        "confidence_histogram.png",
        "training_curves.png",
    ):
        assert (out / name).stat().st_size > 5000, name

    critical = report.write_detector_report(
        tmp_path / "critical",
        detector_metrics(classes),
        model_name="neu-det",
        thresholds={"default": 0.7, "band": 0.1},
        served=served,
        critical=["crazing"],
        classes=classes,
    )
    assert "| miss rate on critical defects | 0.0 % | < 5.0 % | PASS |" in (
        critical.markdown.read_text(encoding="utf-8")
    )


def test_detector_report_without_served_boxes_does_not_measure_false_positives(
    tmp_path: Path,
) -> None:
    """Ultralytics' precision curve is 1.0 where a class has no box; over no box at all the
    false-positive rate is not measured (FAIL), not 0 % (PASS)."""
    served = {"verdicts": {"pass": 4}, "miss_rate": 1.0, "confidences": {"crazing": [0.1]}}
    written = report.write_detector_report(
        tmp_path,
        detector_metrics(["crazing", "scratch"]),
        model_name="m",
        thresholds={"default": 0.7, "band": 0.1},
        served=served,
    )
    md = written.markdown.read_text(encoding="utf-8")
    assert "| false-positive rate | not measured | < 10.0 % | FAIL |" in md
    assert "| `crazing` | 0.900 | 0.450 | 0.800 | 0.700 | – | 0.300 |" in md
    # without the served confidences the curve's figure stands
    written = report.write_detector_report(
        tmp_path / "no-confidences",
        detector_metrics(["crazing", "scratch"]),
        model_name="m",
        thresholds={"default": 0.7, "band": 0.1},
        served={"miss_rate": 0.5},
    )
    md = written.markdown.read_text(encoding="utf-8")
    assert "| false-positive rate | 15.0 % | < 10.0 % | FAIL |" in md
    assert "| miss rate on critical defects | 50.0 % | < 5.0 % | FAIL |" in md


def test_markdown_and_html_rendering(tmp_path: Path) -> None:
    figure = tmp_path / "plots" / "a.png"
    report.plot_bars({"x": 0.5}, figure, "bars", target=0.75)
    doc = report.Report(
        "t",
        summary=["one"],
        readiness=[Criterion("c", 0.5, "> 0.4", True)],
        advice=["label more `x|y`"],
        sections=[
            report.Section(
                "s",
                [
                    report.Paragraph("p"),
                    report.Table(["a", "b"], [("x|y", None), (1, 0.25)]),
                    report.Figure(figure, "a [figure]"),
                ],
            )
        ],
    )
    written = report.write(doc, tmp_path)
    md = written.markdown.read_text(encoding="utf-8")
    assert "| x\\|y | – |" in md and "| 1 | 0.250 |" in md
    assert "![a (figure)](plots/a.png)" in md and "## Production readiness: PASS" in md
    assert "1. label more `x|y`" in md
    page = written.html.read_text(encoding="utf-8")
    assert 'src="plots/a.png"' in page and "<code>x|y</code>" in page
    assert '<td class="PASS">PASS</td>' in page


def classifier_inputs() -> dict[str, Any]:
    """12 test images: `crazing` and `good` all right, half the `<patch>` ones called good."""
    from training import evaluate, thresholds

    classes = ["<patch>", "crazing", "good"]
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 0, 2, 2, 1, 1, 1, 1, 2, 2, 2, 2])
    probs = np.full((12, 3), 0.05)
    probs[np.arange(12), pred] = 0.9
    test = evaluate.classification_metrics(y, probs, classes, ["good"])
    return {
        "model_name": "neu-cls",
        "classes": classes,
        "y_test": y,
        "test_probs": probs,
        "metrics": {"train": {"accuracy": 0.99}, "val": {"accuracy": 0.8}, "test": test},
        "tuned": thresholds.tune_classifier(y, probs, classes, ["good"], ["<patch>"]),
        "good_classes": ["good"],
    }


def test_classifier_report(tmp_path: Path) -> None:
    history = [
        {"epoch": i, "train_loss": 1 / i, "val_loss": 1.2 / i, "val_accuracy": 0.5 + 0.04 * i}
        for i in range(1, 9)
    ]
    out = tmp_path / "neu-cls-report"
    written = report.write_classifier_report(
        out,
        **classifier_inputs(),
        history=history,
        best_epoch=8,
        train_counts={"<patch>": 40, "crazing": 300, "good": 300},
    )
    md = written.markdown.read_text(encoding="utf-8")
    assert "## Production readiness: FAIL" in md
    assert "| overall accuracy | 0.833 | > 0.9 | FAIL |" in md
    assert "| lowest class F1 (`<patch>`) | 0.667 | > 0.85 | FAIL |" in md
    assert "| lowest class recall (`<patch>`) | 0.500 | ≥ 0.8 | FAIL |" in md
    assert "| train - validation accuracy (points) | 19.0 | ≤ 10.0 | FAIL |" in md
    assert "## What to do next" in md
    assert "label more `<patch>` (40 images now; pilot needs 200): it has the lowest recall" in md
    assert "classes unbalanced 7.5:1 (`good` 300 vs `<patch>` 40 images" in md
    assert "train more epochs: validation still rising (validation accuracy best at epoch 8" in md
    assert "overfitting: train accuracy 99.0 % vs validation 80.0 %" in md
    # per class: precision, recall, F1, test images, miss rate (called good), training images
    assert "| `<patch>` | 1.000 | 0.500 | 0.667 | 4 | 50.0 % | 40 |" in md
    assert "| `<patch>` | 2 | 0 | 2 |" in md  # the confusion matrix as a table too
    assert "| `<patch>` | 0.050 | critical: highest threshold" in md  # tuned thresholds
    page = written.html.read_text(encoding="utf-8")
    assert "<patch>" not in page and "&lt;patch&gt;" in page
    for name in (
        "confusion_matrix.png",
        "pr_curves.png",
        "confidence_histogram.png",
        "training_curves.png",
        "loss_curves.png",
    ):
        assert (out / name).stat().st_size > 5000, name


def test_classifier_report_without_history_or_counts(tmp_path: Path) -> None:
    inputs = classifier_inputs()
    inputs["metrics"]["train"] = {"accuracy": 0.85}
    written = report.write_classifier_report(tmp_path, **inputs)
    md = written.markdown.read_text(encoding="utf-8")
    assert "| train - validation accuracy (points) | 5.0 | ≤ 10.0 | PASS |" in md
    assert "## What to do next\n\nNothing the automatic checks can point at" in md
    assert "## Training" not in md and not (tmp_path / "training_curves.png").exists()

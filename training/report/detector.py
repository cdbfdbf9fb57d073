"""The detector's readiness report, from what training.detect measures (no Ultralytics import).

Inputs, all plain data so the report is testable without training:
- `metrics`: `training.detect.evaluate()` on the test split: mAP50, mAP50-95, per-class AP50 /
  AP50-95 / precision / recall, and `curves` (Ultralytics' 1000-point grids: the mean F1,
  precision and recall per confidence; when present, per-class precision `class_precision`,
  recall `class_recall`, and the PR curves `pr_precision` over the recall grid `pr_recall`);
- `thresholds`: `tune_threshold()` (default, band, rationale);
- `served`: `served_pass()` on the test images: verdicts, miss rate, confidences per class and,
  when present, `per_image` (image path, verdict, class of the strongest finding);
- `epoch_log`: the card's epoch log (Ultralytics' results.csv: val_map50, val_map50_95, losses).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.report import criteria as cr
from training.report import plots
from training.report.model import (
    Bullets,
    Figure,
    Paragraph,
    Report,
    Section,
    Table,
    WrittenReport,
    percent,
    write,
)

PASSED = "passed (miss)"


def yolo_class_counts(image_dir: Path, classes: Sequence[str]) -> dict[str, int]:
    """Images holding at least one box of each class, from Ultralytics' labels folder beside
    `image_dir` (…/images/<split> -> …/labels/<split>/*.txt). Empty when there is none."""
    label_dir = _label_dir(Path(image_dir))
    if label_dir is None or not label_dir.is_dir():
        return {}
    counts: Counter[str] = Counter()
    for txt in label_dir.glob("*.txt"):
        counts.update(set(_classes_in(txt, classes)))
    return {c: counts.get(c, 0) for c in classes}


def _label_dir(image_dir: Path) -> Path | None:
    parts = list(image_dir.parts)
    if "images" not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:i], "labels", *parts[i + 1 :])


def _classes_in(label_file: Path, classes: Sequence[str]) -> list[str]:
    out = []
    for line in label_file.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields and fields[0].isdigit() and int(fields[0]) < len(classes):
            out.append(classes[int(fields[0])])
    return out


def image_class(image: Path, classes: Sequence[str]) -> str | None:
    """The most frequent box class of one image (its YOLO label file), None without boxes."""
    label_dir = _label_dir(Path(image).parent)
    if label_dir is None:
        return None
    txt = label_dir / (Path(image).stem + ".txt")
    found = _classes_in(txt, classes) if txt.is_file() else []
    if not found:
        return None
    counts = Counter(found)
    return max(counts, key=lambda c: (counts[c], -classes.index(c)))


def _at(
    curves: Mapping[str, Any], key: str, threshold: float, row: int | None = None
) -> float | None:
    values = curves.get(key)
    conf = curves.get("conf")
    if values is None or conf is None:
        return None
    arr = np.asarray(values, dtype=np.float64)
    if row is not None:
        if arr.ndim != 2 or row >= arr.shape[0]:
            return None
        arr = arr[row]
    return round(float(np.interp(threshold, np.asarray(conf, dtype=np.float64), arr)), 4)


def served_confusion(
    per_image: Sequence[Mapping[str, Any]], classes: Sequence[str]
) -> tuple[list[str], list[str], list[list[int]]]:
    """Image-level confusion at the served threshold: rows the image's main labelled class,
    columns the class of the strongest finding (fail or uncertain), or passed (a miss)."""
    cols = [*classes, PASSED]
    rows_seen: list[str] = []
    counts: Counter[tuple[str, str]] = Counter()
    for entry in per_image:
        true = image_class(Path(entry["image"]), classes)
        if true is None:
            continue
        found = entry.get("top_class")
        col = PASSED if entry.get("verdict") == "pass" or not found else str(found)
        counts[(true, col)] += 1
        if true not in rows_seen:
            rows_seen.append(true)
    rows = [c for c in classes if c in rows_seen]
    return rows, cols, [[counts[(r, c)] for c in cols] for r in rows]


def _detector_advice(
    per_class_ap: Mapping[str, float | None],
    train_counts: Mapping[str, int] | None,
    fp_rate: float | None,
    class_miss: Mapping[str, float | None],
    val_curve: Sequence[float],
    ctx: cr.AdviceContext,
) -> list[str]:
    return cr.collect(
        cr.advise_label_more(per_class_ap, train_counts, metric="AP50", stage=ctx.stage),
        cr.advise_balance(dict(train_counts)) if train_counts else None,
        cr.advise_epochs(val_curve or ctx.val_curve, "validation mAP50"),
        cr.advise_misses(
            class_miss,
            cr.DET_CRITICAL_MISS,
            remedy="lower its threshold (per-class thresholds in the card) or label more of "
            "its boxes",
        ),
        cr.advise_false_reject(
            fp_rate,
            cr.DET_FP_RATE,
            ctx.confounders,
            what="false-positive rate (boxes at the threshold matching no defect)",
        ),
        cr.advise_overfitting(ctx.train_accuracy, ctx.val_accuracy),
    )


def write_detector_report(
    out_dir: Path,
    metrics: Mapping[str, Any],
    *,
    model_name: str,
    thresholds: Mapping[str, Any],
    served: Mapping[str, Any] | None = None,
    epoch_log: Sequence[Mapping[str, float]] = (),
    best_epoch: int | None = None,
    train_counts: Mapping[str, int] | None = None,
    critical: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    advice_context: cr.AdviceContext | None = None,
    notes: Sequence[str] = (),
) -> WrittenReport:
    """report.md + report.html + PNGs for a detector, in `out_dir`.

    `critical`: the classes whose misses count for the "miss rate on critical defects"
    criterion (default: every class; the served miss rate over all test images).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = advice_context or cr.AdviceContext()
    split = str(metrics.get("split", "test"))
    per_class: Mapping[str, Mapping[str, float]] = metrics.get("per_class", {})
    names = list(classes) if classes is not None else list(per_class)
    curves: Mapping[str, Any] = metrics.get("curves") or {}
    thr = float(thresholds["default"])
    band = float(thresholds.get("band", 0.0))

    # Boxes lineinspect serves at the threshold, per class: a precision over no box is vacuous
    # (Ultralytics' curves say 1.0 there), so the false-positive rate is then "not measured".
    confidences: Mapping[str, Sequence[float]] = (served or {}).get("confidences") or {}
    boxes = {c: sum(1 for x in v if x >= thr) for c, v in confidences.items()}
    precision_at = _at(curves, "precision", thr)
    fp_rate = None if precision_at is None else round(1.0 - precision_at, 4)
    if confidences and not sum(boxes.values()):
        fp_rate = None

    per_image: Sequence[Mapping[str, Any]] = (served or {}).get("per_image") or []
    rows, cols, matrix = served_confusion(per_image, names) if per_image else ([], [], [])
    class_miss: dict[str, float | None] = {}
    for r, counts in zip(rows, matrix, strict=True):
        class_miss[r] = round(counts[-1] / sum(counts), 4) if sum(counts) else None
    crit = list(critical) if critical else None
    if crit and rows:
        idx = [i for i, r in enumerate(rows) if r in crit]
        total = sum(sum(matrix[i]) for i in idx)
        critical_miss = round(sum(matrix[i][-1] for i in idx) / total, 4) if total else None
    else:
        critical_miss = (served or {}).get("miss_rate")
    crit_words = ", ".join(f"`{c}`" for c in crit) if crit else "every class counted as critical"

    ap50 = {c: v.get("ap50") for c, v in per_class.items()}
    val_curve = [float(e["val_map50"]) for e in epoch_log if "val_map50" in e]

    report = Report(f"{model_name}: detection report")
    report.summary = [
        f"{split} split: {metrics.get('images', '–')} images, {metrics.get('instances', '–')} "
        f"boxes; mAP50 {metrics.get('map50', '–')}, mAP50-95 {metrics.get('map50_95', '–')}",
        f"threshold {thr:.3g} ± {band:.3g} (uncertain band goes to review): "
        f"{thresholds.get('rationale', 'as given')}",
        f"measured by {metrics.get('validator', 'the validator')}",
        *notes,
    ]
    if served:
        report.summary.append(
            f"served by lineinspect on the {split} images: verdicts {served.get('verdicts')}, "
            f"miss rate {percent(served.get('miss_rate'))}"
        )
    report.readiness = cr.detection_criteria(
        metrics.get("map50"),
        ap50,
        fp_rate,
        critical_miss,
        fp_note="1 - box precision at the threshold"
        + ("" if fp_rate is not None or not confidences else "; no box served at it"),
        miss_note=f"defect images lineinspect passes ({crit_words})",
    )
    report.readiness_notes = [
        "false-positive rate: share of boxes at the default threshold that match no labelled "
        "defect; an image-level false-reject rate needs defect-free images in the split",
    ]
    report.advice = _detector_advice(ap50, train_counts, fp_rate, class_miss, val_curve, ctx)

    table_rows: list[list[str | int | float | None]] = []
    for i, c in enumerate(per_class):
        v = per_class[c]
        table_rows.append(
            [
                f"`{c}`",
                v.get("ap50"),
                v.get("ap50_95"),
                v.get("precision"),
                v.get("recall"),
                None
                if confidences and not boxes.get(c)
                else _at(curves, "class_precision", thr, i),
                _at(curves, "class_recall", thr, i),
                percent(class_miss[c]) if class_miss.get(c) is not None else None,
                (train_counts or {}).get(c),
            ]
        )
    header = [
        "class",
        "AP50",
        "AP50-95",
        "precision",
        "recall",
        f"precision @ {thr:.3g}",
        f"recall @ {thr:.3g}",
        "served miss rate",
        "training images",
    ]
    blocks: list[Paragraph | Bullets | Table | Figure] = [
        Table(
            header, table_rows, "precision / recall: Ultralytics' max-F1 point; @: at the threshold"
        ),
    ]
    ap_png = plots.plot_bars(
        {c: ap50[c] for c in per_class},
        out_dir / "ap_per_class.png",
        f"AP50 per class ({split})",
        target=cr.DET_CLASS_AP50,
        ylabel="AP50",
    )
    blocks.append(Figure(ap_png, f"AP50 per class ({split}); dashed: the domain's 0.75"))
    pr = curves.get("pr_precision")
    if pr is not None and len(per_class):
        grid = np.asarray(curves.get("pr_recall", curves.get("conf")), dtype=np.float64)
        pr_arr = np.asarray(pr, dtype=np.float64)
        pr_curves = {c: (grid, pr_arr[i]) for i, c in enumerate(per_class) if i < len(pr_arr)}
        known_ap = {c: a for c, a in ap50.items() if a is not None}
        path = plots.plot_pr_xy(
            pr_curves, out_dir / "pr_curves.png", f"PR per class ({split}, IoU 0.5)", known_ap
        )
        blocks.append(Figure(path, f"precision-recall per class ({split}, IoU 0.5)"))
    report.sections.append(Section(f"Per class ({split})", blocks))

    if served:
        served_blocks: list[Paragraph | Bullets | Table | Figure] = []
        if matrix:
            served_blocks.append(
                Table(
                    ["true \\ served", *cols],
                    [[f"`{r}`", *m] for r, m in zip(rows, matrix, strict=True)],
                    "image-level: the class of the strongest finding, or passed",
                )
            )
            path = plots.plot_confusion(
                matrix,
                rows,
                out_dir / "confusion_matrix.png",
                f"served at threshold {thr:.3g} ({split}, images)",
                columns=cols,
                xlabel="strongest finding",
                ylabel="labelled class",
            )
            served_blocks.append(Figure(path, "image-level confusion at the served threshold"))
        if any(len(v) for v in confidences.values()):
            lo, hi = max(0.0, thr - band), min(1.0, thr + band)
            path = plots.plot_score_histogram(
                {c: v for c, v in confidences.items() if len(v)},
                out_dir / "confidence_histogram.png",
                f"served box confidences ({split})",
                thr,
                band=(lo, hi),
                xlabel="box confidence",
                ylabel="boxes",
            )
            served_blocks.append(
                Figure(path, "confidence of the served boxes per class; threshold and band drawn")
            )
        report.sections.append(Section(f"Served by lineinspect ({split} images)", served_blocks))

    if epoch_log:
        series = {
            name: [float(e[key]) for e in epoch_log if key in e]
            for key, name in (("val_map50", "val mAP50"), ("val_map50_95", "val mAP50-95"))
        }
        series = {k: v for k, v in series.items() if v}
        train_blocks: list[Paragraph | Bullets | Table | Figure] = []
        if series:
            epochs = [float(e.get("epoch", i + 1)) for i, e in enumerate(epoch_log)]
            path = plots.plot_training_curves(
                series,
                out_dir / "training_curves.png",
                "validation per epoch",
                epochs=epochs,
                best_epoch=best_epoch,
                ylabel="mAP",
            )
            train_blocks.append(Figure(path, "validation mAP per epoch (Ultralytics' results.csv)"))
        last = epoch_log[-1]
        train_blocks.insert(
            0,
            Paragraph(
                f"{len(epoch_log)} epochs; best epoch {best_epoch if best_epoch is not None else '–'}; "
                f"last: " + ", ".join(f"{k} {v:g}" for k, v in last.items() if k != "epoch")
            ),
        )
        report.sections.append(Section("Training", train_blocks))
    return write(report, out_dir)

"""The image classifier's readiness report, from what training.classify measures.

Inputs, all plain data so the report is testable without training:
- `metrics`: `training.evaluate.classification_metrics()` per split ("train", "val", "test"):
  accuracy, images, confusion matrix, per-class precision / recall / F1 / support / miss rate
  (a defect class's images called one of the good classes), all of the exported ONNX file served
  by lineinspect on the un-augmented images;
- `y_test`, `test_probs`: the test labels (class indices) and the served class probabilities;
- `tuned`: `training.thresholds.tune_classifier()` (per-class thresholds, band, goal, rationale);
- `history`: the trainer's per-epoch log (epoch, train_loss, val_loss, val_accuracy);
- `train_counts`: training images per class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

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

VAL_METRIC = "validation accuracy"


def _accuracy(metrics: Mapping[str, Mapping[str, Any]], split: str) -> float | None:
    value = metrics.get(split, {}).get("accuracy")
    return None if value is None else float(value)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def classifier_advice(
    per_class: Mapping[str, Mapping[str, Any]],
    train_counts: Mapping[str, int] | None,
    val_curve: Sequence[float],
    train_accuracy: float | None,
    val_accuracy: float | None,
    stage: str = "pilot",
) -> list[str]:
    """Label more of the class with the lowest test recall, balance the classes, train longer
    while validation accuracy still rises, and the train-vs-validation gap (overfitting)."""
    recall = {c: v.get("recall") for c, v in per_class.items()}
    return cr.collect(
        cr.advise_label_more(recall, train_counts, metric="recall", stage=stage),
        cr.advise_balance(dict(train_counts)) if train_counts else None,
        cr.advise_epochs(val_curve, VAL_METRIC),
        cr.advise_overfitting(train_accuracy, val_accuracy),
    )


def _threshold_blocks(tuned: Mapping[str, Any]) -> list[Paragraph | Bullets | Table | Figure]:
    goal = tuned.get("goal", {})
    t = tuned.get("thresholds", {})
    rationale: Mapping[str, str] = tuned.get("rationale", {})
    critical = ", ".join(f"`{c}`" for c in goal.get("critical", ())) or "none"
    lines = [
        f"goal: critical classes ({critical}) at miss rate ≤ {percent(goal.get('max_miss'))} on "
        f"validation, the others at their best F1; the band routes ≥ "
        f"{percent(goal.get('review_share'), 0)} of the frames to review",
        f"default threshold {t.get('default', '–')}; uncertain band ±{t.get('band', '–')}: "
        f"{rationale.get('band', 'as given')}",
    ]
    if "validation_review_share" in tuned:
        lines.append(
            f"validation images the band sends to review: {percent(tuned['validation_review_share'])}"
        )
    per_class: Mapping[str, float] = t.get("per_class", {})
    rows: list[list[str | int | float | None]] = [
        [f"`{c}`", per_class.get(c), why] for c, why in rationale.items() if c != "band"
    ]
    blocks: list[Paragraph | Bullets | Table | Figure] = [Bullets(lines)]
    if rows:
        blocks.append(Table(["class", "threshold", "how it was chosen"], rows))
    return blocks


def write_classifier_report(
    out_dir: Path,
    *,
    model_name: str,
    classes: Sequence[str],
    y_test: Sequence[int] | npt.NDArray[Any],
    test_probs: npt.NDArray[Any],
    metrics: Mapping[str, Mapping[str, Any]],
    tuned: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]] = (),
    best_epoch: int | None = None,
    train_counts: Mapping[str, int] | None = None,
    good_classes: Sequence[str] = (),
    stage: str = "pilot",
    notes: Sequence[str] = (),
) -> WrittenReport:
    """report.md + report.html + PNGs for an image classifier, in `out_dir`.

    Readiness: the domain's classification criteria on the test split, plus the train minus
    validation accuracy gap. `stage`: the images-per-class stage "label more" aims at.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = metrics["test"]
    per_class: Mapping[str, Mapping[str, Any]] = test["per_class"]
    train_acc, val_acc = _accuracy(metrics, "train"), _accuracy(metrics, "val")
    val_curve = [float(e["val_accuracy"]) for e in history if e.get("val_accuracy") is not None]

    def shown(value: float | None) -> str:
        return "–" if value is None else f"{value:.4f}"

    report = Report(f"{model_name}: classification report")
    report.summary = [
        f"test accuracy {shown(_accuracy(metrics, 'test'))} on {test.get('images', '–')} "
        f"images; validation {shown(val_acc)}; train {shown(train_acc)} (the exported ONNX "
        "file served by lineinspect, un-augmented images)",
        f"{len(classes)} classes: {', '.join(f'`{c}`' for c in classes)}"
        + (f"; good: {', '.join(f'`{g}`' for g in good_classes)}" if good_classes else ""),
        *notes,
    ]
    if history:
        report.summary.append(
            f"epochs run: {len(history)}; best epoch {best_epoch if best_epoch is not None else '–'}"
            " (highest validation accuracy, then lowest validation loss) is the one exported"
        )
    report.readiness = cr.classification_criteria(
        _accuracy(metrics, "test"),
        per_class,
        train_accuracy=train_acc,
        val_accuracy=val_acc,
    )
    report.readiness_notes = [
        "accuracy, F1 and recall: test split; overfitting: train minus validation accuracy",
    ]
    report.advice = classifier_advice(
        per_class, train_counts, val_curve, train_acc, val_acc, stage=stage
    )

    rows: list[list[str | int | float | None]] = []
    for c, v in per_class.items():
        miss = v.get("miss_rate")
        rows.append(
            [
                f"`{c}`",
                v.get("precision"),
                v.get("recall"),
                v.get("f1"),
                v.get("support"),
                None if miss is None else percent(miss),
                (train_counts or {}).get(c),
            ]
        )
    header = [
        "class",
        "precision",
        "recall",
        "F1",
        "test images",
        "miss rate (defect called good)",
        "training images",
    ]
    matrix = test["confusion_matrix"]
    names = list(classes)
    y = np.asarray(y_test)
    correct = test_probs.argmax(1) == y if len(y) else np.zeros(0, dtype=bool)
    top = test_probs.max(1) if len(y) else np.zeros(0)
    blocks: list[Paragraph | Bullets | Table | Figure] = [
        Table(header, rows, "per class, test split"),
        Table(
            ["true \\ predicted", *(f"`{c}`" for c in names)],
            [[f"`{c}`", *m] for c, m in zip(names, matrix, strict=True)],
            "confusion matrix, test split (images)",
        ),
        Figure(
            plots.plot_confusion(
                matrix, names, out_dir / "confusion_matrix.png", "confusion matrix (test)"
            ),
            "confusion matrix (test split)",
        ),
        Figure(
            plots.plot_pr_curves(y, test_probs, names, out_dir / "pr_curves.png"),
            "precision-recall per class, one class against the others (test split)",
        ),
        Figure(
            plots.plot_score_histogram(
                {"correct": top[correct].tolist(), "wrong": top[~correct].tolist()},
                out_dir / "confidence_histogram.png",
                "top-class confidence (test)",
                xlabel="top-class probability",
            ),
            "confidence of the predicted class, right and wrong predictions (test split)",
        ),
    ]
    report.sections.append(Section("Per class (test)", blocks))
    report.sections.append(Section("Thresholds (tuned on validation)", _threshold_blocks(tuned)))

    if history:
        train_blocks: list[Paragraph | Bullets | Table | Figure] = []
        last = history[-1]
        values = [f"{k} {v:g}" for k, v in last.items() if k != "epoch" and _number(v)]
        train_blocks.append(
            Paragraph(f"last epoch ({last.get('epoch', len(history))}): {', '.join(values)}")
        )
        epochs = [float(e.get("epoch", i + 1)) for i, e in enumerate(history)]
        if len(val_curve) > 1:
            path = plots.plot_training_curves(
                {VAL_METRIC: val_curve},
                out_dir / "training_curves.png",
                "validation accuracy per epoch",
                epochs=epochs,
                best_epoch=best_epoch,
                ylabel="accuracy",
            )
            train_blocks.append(Figure(path, "validation accuracy per epoch (best epoch dotted)"))
        losses = {
            name: [float(e[key]) for e in history if e.get(key) is not None]
            for key, name in (("train_loss", "train loss"), ("val_loss", "validation loss"))
        }
        losses = {k: v for k, v in losses.items() if len(v) > 1}
        if losses:
            path = plots.plot_training_curves(
                losses,
                out_dir / "loss_curves.png",
                "loss per epoch",
                epochs=epochs,
                best_epoch=best_epoch,
                ylabel="cross-entropy",
            )
            train_blocks.append(
                Figure(path, "loss per epoch: train (augmented images) and validation")
            )
        report.sections.append(Section("Training", train_blocks))
    return write(report, out_dir)

"""Readiness reports for every model family: report.md + report.html + PNG plots.

Report (model.py)        title, summary, readiness criteria (PASS/FAIL), advice, sections
criteria.py              the domain's criteria and the next-step advice, pure functions
plots.py                 confusion matrix, PR / ROC curves, score histograms with the
                         threshold and band, training curves, per-class bars
binary.py                anomaly / supervised / hybrid good-vs-defect models, and the
                         comparison of candidate models on the same parts
detector.py              detectors (from training.detect's evaluation)
classifier.py            image classifiers (from training.classify's evaluation)
"""

from __future__ import annotations

from training.report.binary import BinaryMetrics, ClassStats, binary_metrics, write_binary_report
from training.report.classifier import write_classifier_report
from training.report.compare import Candidate, Comparison, compare_candidates, comparison_section
from training.report.criteria import (
    AdviceContext,
    binary_criteria,
    classification_criteria,
    detection_criteria,
)
from training.report.detector import write_detector_report, yolo_class_counts
from training.report.model import (
    Bullets,
    Criterion,
    Figure,
    Paragraph,
    Report,
    Section,
    Table,
    WrittenReport,
    write,
)
from training.report.plots import (
    plot_bars,
    plot_class_histograms,
    plot_confusion,
    plot_pr_curves,
    plot_pr_xy,
    plot_roc,
    plot_score_histogram,
    plot_training_curves,
)

__all__ = [
    "AdviceContext",
    "BinaryMetrics",
    "Bullets",
    "Candidate",
    "ClassStats",
    "Comparison",
    "Criterion",
    "Figure",
    "Paragraph",
    "Report",
    "Section",
    "Table",
    "WrittenReport",
    "binary_criteria",
    "binary_metrics",
    "classification_criteria",
    "compare_candidates",
    "comparison_section",
    "detection_criteria",
    "plot_bars",
    "plot_class_histograms",
    "plot_confusion",
    "plot_pr_curves",
    "plot_pr_xy",
    "plot_roc",
    "plot_score_histogram",
    "plot_training_curves",
    "write",
    "write_binary_report",
    "write_classifier_report",
    "write_detector_report",
    "yolo_class_counts",
]

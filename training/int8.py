"""`lineinspect train ... --int8`: after training, the int8 variant of the new model, with its
card and the fp32/int8 comparison added to the run's readiness report.

Each family uses the routine `lineinspect models quantize` runs (training.quantize,
training.quantize_anomaly), on the split the run just made; only the other head / distance
choice is not measured here (the quantize command does that), to keep training runs short.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HELP = (
    "also write the int8 variant (OUT-int8.onnx + card, static quantisation calibrated on this "
    "run's split, accuracy and speed measured against fp32) and add both to the readiness report"
)


def int8_path(fp32_path: Path) -> Path:
    return fp32_path.with_name(fp32_path.stem + "-int8.onnx")


def write_int8(
    task: str,
    fp32_path: Path,
    report_dir: Path,
    *,
    manifest: Any = None,
    data: Path | None = None,
    workdir: Path | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Quantise `fp32_path` (a model of `task` this run trained) and report both; returns a
    one-line-able summary: path, accuracy of each, speed ratio, readiness of each."""
    from training.report.int8 import ACCURACY, int8_section, write_int8_section
    from training.report.model import Table

    out = int8_path(fp32_path)
    if task == "classify":
        from training.quantize import quantize_classifier

        q = quantize_classifier(fp32_path, out, manifest)
    elif task == "detect":
        from training.quantize import quantize_detector

        q = quantize_detector(fp32_path, out, manifest, compare=False, workdir=workdir)
    elif task == "anomaly":
        from training.quantize_anomaly import quantize_anomaly

        q = quantize_anomaly(fp32_path, out, data, compare=False, command=command)
    else:
        raise ValueError(f"no int8 path for a {task!r} model")
    section = int8_section(fp32_path, out)  # both cards read once: the report and the summary
    report = write_int8_section(report_dir, fp32_path, section)
    table = section.blocks[0]
    assert isinstance(table, Table)
    rows = table.rows
    key = ACCURACY[task][0]
    return {
        "int8": str(out),
        "metric": ACCURACY[task][1],
        "fp32": q["fp32"].get(key),
        "int8_value": q["int8"].get(key),
        "speed_ratio": rows[1][4],
        "readiness_fp32": rows[0][2],
        "readiness_int8": rows[1][2],
        "report": str(report),
    }


def describe(s: dict[str, Any]) -> str:
    return (
        f"int8: {s['int8']}: {s['metric']} {s['fp32']} fp32 -> {s['int8_value']} int8, speed "
        f"{s['speed_ratio']} fp32, readiness {s['readiness_fp32']} fp32 / {s['readiness_int8']} "
        f"int8 (report: {s['report']})"
    )

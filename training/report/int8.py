"""fp32 and int8 side by side in a readiness report: accuracy, speed ratio, and the verdict the
readiness criteria (training.evaluate, shared/docs/domain.md) give each file.

Everything comes from the two model cards: the int8 card's `metrics.quantization` (what
`lineinspect models quantize` measured on the same test split) and each card's
`metrics.readiness`. An fp32 anomaly card written before readiness was stored gets its verdict
from its own test metrics with the same function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.inference.card import card_path_for, load_card
from training.report.model import Bullets, Paragraph, Section, Table, _html_block, _md_block

# the accuracy figure each family's quantisation summary records, and its name in the table
ACCURACY = {
    "classify": ("test_accuracy", "test accuracy"),
    "detect": ("test_map50", "test mAP50"),
    "anomaly": ("test_auroc", "test AUROC"),
}
HEADING = "INT8 and fp32"


def _readiness(metrics: dict[str, Any], task: str | None) -> dict[str, Any] | None:
    if metrics.get("readiness"):
        return dict(metrics["readiness"])
    if task == "anomaly" and "test" in metrics:
        from training import evaluate

        return evaluate.readiness_anomaly(metrics["test"])
    return None


def _speed(q: dict[str, Any]) -> tuple[float | None, str]:
    if "speed" in q:
        s = q["speed"]
        return s["ratio"], f"{s['measure']}; {s['machine']}"
    t32, t8 = q["fp32"].get("ms_per_image"), q["int8"].get("ms_per_image")
    if t32 and t8:
        return round(t32 / t8, 3), "ms per image through lineinspect's own predict, test split"
    return None, "not measured"


def _num(x: Any) -> str:
    return "–" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def _verdict(r: dict[str, Any] | None) -> str:
    return "not measured" if r is None else ("PASS" if r["passed"] else "FAIL")


def int8_section(fp32_path: Path, int8_path: Path) -> Section:
    """The comparison section, from the fp32 file's card and the int8 file's card."""
    c32, c8 = load_card(card_path_for(fp32_path)), load_card(card_path_for(int8_path))
    q = c8.metrics.get("quantization")
    if not q:
        raise ValueError(f"{int8_path}: its card has no metrics.quantization")
    key, label = ACCURACY.get(c8.task or "", ("", "accuracy"))
    r32, r8 = _readiness(c32.metrics, c32.task), _readiness(c8.metrics, c8.task)
    ratio, measure = _speed(q)
    summary = Table(
        ["file", label, "readiness", "bytes", "speed vs fp32"],
        [
            (
                fp32_path.name,
                _num(q["fp32"].get(key)),
                _verdict(r32),
                q["fp32"].get("bytes"),
                "1.0x",
            ),
            (
                int8_path.name,
                _num(q["int8"].get(key)),
                _verdict(r8),
                q["int8"].get("bytes"),
                "–" if ratio is None else f"{ratio:.2f}x",
            ),
        ],
        caption="the same test split for both files",
    )
    names = [c["criterion"] for c in (r8 or {}).get("criteria", [])]
    names += [
        c["criterion"] for c in (r32 or {}).get("criteria", []) if c["criterion"] not in names
    ]
    by32 = {c["criterion"]: c for c in (r32 or {}).get("criteria", [])}
    by8 = {c["criterion"]: c for c in (r8 or {}).get("criteria", [])}

    def cell(c: dict[str, Any] | None) -> str:
        if c is None:
            return "–"
        value = c["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        return f"{shown} ({'met' if c['passed'] else 'not met'})"

    criteria = Table(
        ["criterion", "limit", "fp32", "int8"],
        [
            (n, (by8.get(n) or by32.get(n) or {}).get("limit"), cell(by32.get(n)), cell(by8.get(n)))
            for n in names
        ],
        caption="readiness criteria (training.evaluate; targets from the domain brief)",
    )
    notes = [
        f"method: {q.get('method', '–')}",
        f"calibration: {q.get('calibration', q.get('calibration_images', '–'))}",
        f"speed: {measure}",
    ]
    for extra in ("head", "distance", "threshold"):
        if extra in q:
            notes.append(f"{extra}: {q[extra]}")
    blocks: list[Any] = [summary, criteria, Bullets(notes)]
    compared = q.get("distance_compared") or q.get("heads_compared")
    if compared:
        shown = "; ".join(f"{k}: {v}" for k, v in compared.items())
        blocks.append(Paragraph(f"choices measured on the same split: {shown}"))
    return Section(HEADING, blocks)


def add_int8_section(report_dir: Path, fp32_path: Path, int8_path: Path) -> Path:
    """Append the comparison to `report_dir`/report.md and report.html (a report of its own
    when the run wrote none, e.g. a good-only anomaly run); returns report.md."""
    return write_int8_section(report_dir, fp32_path, int8_section(fp32_path, int8_path))


def write_int8_section(report_dir: Path, fp32_path: Path, section: Section) -> Path:
    """`add_int8_section` for a section already built (from `int8_section`)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    md, html = report_dir / "report.md", report_dir / "report.html"
    md_text = "\n".join(
        [f"## {section.heading}", ""]
        + [line for b in section.blocks for line in _md_block(b, report_dir)]
    )
    html_text = f"<h2>{section.heading}</h2>\n" + "\n".join(
        _html_block(b, report_dir) for b in section.blocks
    )
    if md.is_file():
        old = md.read_text(encoding="utf-8")
        if f"## {HEADING}" in old:  # a rerun replaces the section instead of repeating it
            old = old[: old.index(f"## {HEADING}")]
        md.write_text(old.rstrip() + "\n\n" + md_text.rstrip() + "\n", encoding="utf-8")
    else:
        md.write_text(
            f"# {fp32_path.stem}: fp32 and int8\n\n{md_text.rstrip()}\n", encoding="utf-8"
        )
    if html.is_file():
        old = html.read_text(encoding="utf-8")
        if f"<h2>{HEADING}</h2>" in old:
            old = old[: old.index(f"<h2>{HEADING}</h2>")] + "</body></html>\n"
        html.write_text(
            old.replace("</body></html>", html_text + "\n</body></html>", 1), encoding="utf-8"
        )
    else:
        html.write_text(
            f"<!doctype html>\n<html lang=en><head><meta charset=utf-8></head><body>\n"
            f"<h1>{fp32_path.stem}: fp32 and int8</h1>\n{html_text}\n</body></html>\n",
            encoding="utf-8",
        )
    return md

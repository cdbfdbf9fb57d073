"""The report as data (title, summary, readiness, advice, sections) and its two renderings.

`Report` is family-neutral: the classifier, detector and anomaly / binary writers fill one and
`write()` turns it into `report.md` and a self-contained `report.html` (inline style, every
piece of text escaped, PNGs referenced by a path relative to the report folder).

Inline code: text between backticks (a class name, "label more `crack`") stays as it is in
Markdown and becomes <code> in HTML.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Cell = str | int | float | None

# Checks a script cannot make (shared/docs/domain.md, "Operational"); listed under every
# readiness table so nobody mistakes an automatic PASS for a sign-off.
MANUAL_CHECKS: tuple[str, ...] = (
    "confusion matrix reviewed by a quality engineer",
    "tested on images from the production camera across all expected conditions",
    "inference latency acceptable for the line",
    "human review defined for edge cases (uncertain frames)",
    "rollback plan",
)


def ratio(value: float) -> str:
    """0.91234 -> '0.912'."""
    return f"{value:.3f}"


def count(value: float) -> str:
    return f"{value:.0f}"


def points(value: float) -> str:
    return f"{value:.1f}"


def rate(value: float) -> str:
    """0.0512 -> '5.1 %'."""
    return f"{100 * value:.1f} %"


@dataclass(frozen=True)
class Criterion:
    """One readiness criterion: what was measured, the target, and whether it was met.

    `value` None means "not measured"; such a criterion never passes.
    """

    name: str
    value: float | None
    target: str  # shown as written: "> 0.90", "≤ 5 %"
    passed: bool
    note: str = ""
    fmt: Callable[[float], str] = ratio  # how `value` (and the limit) is shown: rate, count…

    @property
    def shown(self) -> str:
        return "not measured" if self.value is None else self.fmt(self.value)

    @property
    def result(self) -> str:
        return "PASS" if self.passed else "FAIL"


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


Block = Paragraph | Bullets | Table | Figure


@dataclass
class Section:
    heading: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Report:
    title: str
    summary: list[str] = field(default_factory=list)
    readiness: list[Criterion] = field(default_factory=list)
    readiness_notes: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    manual_checks: Sequence[str] = MANUAL_CHECKS

    @property
    def passed(self) -> bool:
        """Every automatic criterion met (and there is at least one)."""
        return bool(self.readiness) and all(c.passed for c in self.readiness)

    @property
    def figures(self) -> list[Path]:
        return [b.path for s in self.sections for b in s.blocks if isinstance(b, Figure)]


@dataclass(frozen=True)
class WrittenReport:
    markdown: Path
    html: Path
    report: Report

    @property
    def figures(self) -> list[Path]:
        return self.report.figures


def write(report: Report, out_dir: Path) -> WrittenReport:
    """`report.md` and `report.html` in `out_dir` (created); the figures must already exist."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / "report.md"
    html_path = out_dir / "report.html"
    md_path.write_text(to_markdown(report, out_dir), encoding="utf-8")
    html_path.write_text(to_html(report, out_dir), encoding="utf-8")
    return WrittenReport(md_path, html_path, report)


def fmt_cell(value: Cell) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def percent(value: float | None, digits: int = 1) -> str:
    """0.0512 -> '5.1 %'; None -> '–'."""
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def readiness_table(criteria: Sequence[Criterion]) -> Table:
    return Table(
        ["criterion", "measured", "target", "result", "note"],
        [(c.name, c.shown, c.target, c.result, c.note or None) for c in criteria],
    )


def _relative(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(out_dir).resolve())).as_posix()


# -- Markdown


def _md_cell(value: Cell) -> str:
    return fmt_cell(value).replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    lines = [f"*{table.caption}*", ""] if table.caption else []
    lines.append("| " + " | ".join(_md_cell(h) for h in table.header) + " |")
    lines.append("|" + "---|" * len(table.header))
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in table.rows]
    return [*lines, ""]


def _md_block(block: Block, out_dir: Path) -> list[str]:
    if isinstance(block, Paragraph):
        return [block.text, ""]
    if isinstance(block, Bullets):
        return [*(f"- {item}" for item in block.items), ""]
    if isinstance(block, Table):
        return _md_table(block)
    alt = block.caption.replace("[", "(").replace("]", ")")
    return [f"![{alt}]({_relative(block.path, out_dir)})", "", f"*{block.caption}*", ""]


def to_markdown(report: Report, out_dir: Path) -> str:
    lines = [f"# {report.title}", ""]
    lines += [*(f"- {s}" for s in report.summary), ""] if report.summary else []
    verdict = "PASS" if report.passed else "FAIL"
    lines += [f"## Production readiness: {verdict}", ""]
    lines += _md_table(readiness_table(report.readiness))
    lines += [*(f"- {n}" for n in report.readiness_notes), ""] if report.readiness_notes else []
    lines += ["Checks a person must still make:", ""]
    lines += [*(f"- [ ] {m}" for m in report.manual_checks), ""]
    lines += ["## What to do next", ""]
    lines += [f"{i}. {a}" for i, a in enumerate(report.advice, 1)] or [
        "Nothing the automatic checks can point at; do the manual checks above."
    ]
    lines.append("")
    for section in report.sections:
        lines += [f"## {section.heading}", ""]
        for block in section.blocks:
            lines += _md_block(block, out_dir)
    return "\n".join(lines).rstrip() + "\n"


# -- HTML

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:64em;margin:2em auto;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;"
    "padding:.2em .6em;text-align:left}th{background:#f3f3f3}img{max-width:100%}"
    "figure{margin:1em 0}figcaption{color:#555;font-size:.9em}code{background:#f3f3f3;"
    "padding:0 .2em}.PASS{color:#060;font-weight:bold}.FAIL{color:#b00;font-weight:bold}"
    "caption{caption-side:top;text-align:left;font-style:italic}"
)
_CODE = re.compile(r"`([^`]+)`")


def inline(text: str) -> str:
    """Escaped HTML of one line of text, `backticks` as <code>."""
    return _CODE.sub(r"<code>\1</code>", html.escape(text))


def _html_table(table: Table) -> str:
    caption = f"<caption>{inline(table.caption)}</caption>" if table.caption else ""
    head = "".join(f"<th>{inline(fmt_cell(h))}</th>" for h in table.header)
    rows = []
    for row in table.rows:
        cells = []
        for value in row:
            text = fmt_cell(value)
            cls = f' class="{text}"' if text in {"PASS", "FAIL"} else ""
            cells.append(f"<td{cls}>{inline(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{caption}<tr>{head}</tr>{''.join(rows)}</table>"


def _html_block(block: Block, out_dir: Path) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{inline(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{inline(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Table):
        return _html_table(block)
    src = html.escape(_relative(block.path, out_dir), quote=True)
    alt = html.escape(block.caption, quote=True)
    return (
        f'<figure><img src="{src}" alt="{alt}">'
        f"<figcaption>{inline(block.caption)}</figcaption></figure>"
    )


def to_html(report: Report, out_dir: Path) -> str:
    verdict = "PASS" if report.passed else "FAIL"
    body = [f"<h1>{inline(report.title)}</h1>"]
    if report.summary:
        body.append(_html_block(Bullets(report.summary), out_dir))
    body.append(f'<h2>Production readiness: <span class="{verdict}">{verdict}</span></h2>')
    body.append(_html_table(readiness_table(report.readiness)))
    if report.readiness_notes:
        body.append(_html_block(Bullets(report.readiness_notes), out_dir))
    body.append("<p>Checks a person must still make:</p>")
    body.append(
        "<ul>" + "".join(f"<li>&#9744; {inline(m)}</li>" for m in report.manual_checks) + "</ul>"
    )
    body.append("<h2>What to do next</h2>")
    if report.advice:
        body.append("<ol>" + "".join(f"<li>{inline(a)}</li>" for a in report.advice) + "</ol>")
    else:
        body.append("<p>Nothing the automatic checks can point at; do the manual checks above.</p>")
    for section in report.sections:
        body.append(f"<h2>{inline(section.heading)}</h2>")
        body += [_html_block(b, out_dir) for b in section.blocks]
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(report.title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )

"""The first report writer (training/classify.py uses it): Markdown lines in, report.md and
report.html out. New reports build a `training.report.Report` instead."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("-" if v is None else str(v) for v in row) + " |" for row in rows]
    return lines


def readiness_lines(readiness: dict[str, Any]) -> list[str]:
    lines = [f"**Production readiness: {'PASS' if readiness['passed'] else 'FAIL'}**", ""]
    lines += _table(
        ["criterion", "value", "limit", "result"],
        [
            (c["criterion"], c["value"], c["limit"], "pass" if c["passed"] else "FAIL")
            for c in readiness["criteria"]
        ],
    )
    lines += ["", "Checks a person must still make:", *[f"- [ ] {m}" for m in readiness["manual"]]]
    return lines


def write_report(
    out_dir: Path, title: str, sections: list[tuple[str, list[str]]], images: Sequence[Path]
) -> Path:
    """report.md and report.html in out_dir; returns the Markdown path."""
    md = [f"# {title}", ""]
    for heading, lines in sections:
        md += [f"## {heading}", "", *lines, ""]
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, lines in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(_markdown_block_to_html(lines))
    body += ["<h2>Plots</h2>"] + [
        f'<img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}">' for p in images
    ]
    page = (
        "<!doctype html><meta charset=utf-8><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .6em}img{max-width:100%}</style>"
        + "\n".join(body)
    )
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    return md_path


def _markdown_block_to_html(lines: Sequence[str]) -> str:
    out: list[str] = []
    table: list[str] = []
    items: list[str] = []

    def flush() -> None:
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-", ":"}]
            cells = [
                [html.escape(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows
            ]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            body = "".join(
                "<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:]
            )
            out.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in lines:
        if line.startswith("|"):
            table.append(line)
        elif line.startswith("- "):
            items.append(line[2:])
        else:
            flush()
            if line.strip():
                out.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    flush()
    return "\n".join(out)

"""Evaluation report: PNG plots + Markdown and HTML pages a quality engineer can review."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve


def plot_confusion(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str
) -> Path:
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(classes), 1.0 + 0.8 * len(classes)))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j,
                i,
                str(m[i, j]),
                ha="center",
                va="center",
                color="white" if m[i, j] > m.max() / 2 else "black",
            )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pr_curves(
    y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str], path: Path
) -> Path:
    y = np.asarray(y_true)
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, name in enumerate(classes):
        if (y == i).any():
            precision, recall, _ = precision_recall_curve(y == i, probs[:, i])
            ax.plot(recall, precision, label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_title("precision-recall per class (test split)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_score_histogram(
    groups: dict[str, Sequence[float]], path: Path, title: str, threshold: float | None = None
) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    for name, values in groups.items():
        ax.hist(np.clip(values, 0, 1), bins=bins, alpha=0.6, label=f"{name} ({len(values)})")
    if threshold is not None:
        ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("score")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    out, table, items = [], [], []

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

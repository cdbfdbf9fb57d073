"""Read what exporters write into ONNX metadata.

Ultralytics stores `names`, `imgsz`, `stride`, `task`, `batch`, `end2end` as Python reprs
(`"{0: 'crazing', 1: 'inclusion'}"`): they are parsed with `ast.literal_eval`, never `eval`.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExportMetadata:
    names: list[str] | None = None
    imgsz: tuple[int, int] | None = None
    stride: int | None = None
    task: str | None = None
    end2end: bool | None = None
    batch: int | None = None
    version: str | None = None
    author: str | None = None
    description: str | None = None
    problems: list[str] = field(default_factory=list)  # keys present but unreadable


def literal(text: str) -> Any:
    """A Python literal from its repr; the raw string when it is not one."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_names(value: Any) -> list[str] | None:
    """`{0: 'a', 1: 'b'}` or `['a', 'b']` -> `['a', 'b']`; None when not a usable class list."""
    if isinstance(value, Mapping):
        try:
            keys = sorted(int(k) for k in value)
        except (TypeError, ValueError):
            return None
        if keys != list(range(len(keys))):
            return None
        return [str(value[k] if k in value else value[str(k)]) for k in keys]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def parse_imgsz(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and value > 0:
        return (value, value)
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and v > 0 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    return None


def parse_metadata(raw: Mapping[str, str]) -> ExportMetadata:
    problems: list[str] = []
    names = imgsz = stride = end2end = batch = None
    if "names" in raw:
        names = parse_names(literal(raw["names"]))
        if names is None:
            problems.append(f"metadata 'names' is not a class list: {raw['names'][:80]!r}")
    if "imgsz" in raw:
        imgsz = parse_imgsz(literal(raw["imgsz"]))
        if imgsz is None:
            problems.append(f"metadata 'imgsz' is not a size: {raw['imgsz'][:80]!r}")
    if "stride" in raw:
        value = literal(raw["stride"])
        stride = value if isinstance(value, int) else None
    if "end2end" in raw:
        value = literal(raw["end2end"])
        end2end = value if isinstance(value, bool) else None
    if "batch" in raw:
        value = literal(raw["batch"])
        batch = value if isinstance(value, int) else None
    task = raw.get("task")
    return ExportMetadata(
        names=names,
        imgsz=imgsz,
        stride=stride,
        task=task.strip().lower() if task else None,
        end2end=end2end,
        batch=batch,
        version=raw.get("version"),
        author=raw.get("author"),
        description=raw.get("description"),
        problems=problems,
    )

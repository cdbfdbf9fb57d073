"""The review queue on disk: browsing and labelling items (the operator page) and exporting them
as a class-folder, YOLO or Label Studio dataset that the training companion reads back.

Layout: `<root>/<camera>/<YYYY-MM-DD>/<id>.jpg` + `<id>.json` (the record of
`service.core.wire.review_record`, with a `label` field an inspector fills in). The review sink
(`service.sinks.review`) writes the items.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# -- browsing and labelling (the operator page)

# Names that may reach the file system from a URL: the camera pattern of `CameraConfig.name`
# and the `<captured ms>-<sequence>` ids `ReviewQueue.offer` writes. Nothing else is looked up.
CAMERA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ITEM_ID = re.compile(r"^[0-9]{1,16}-[0-9]{1,12}$")
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_label_lock = threading.Lock()


def _order(path: Path) -> tuple[int, int]:
    ms, _, seq = path.stem.partition("-")
    return int(ms), int(seq)


def item_path(root: Path, camera: str, item_id: str) -> Path | None:
    """The JSON file of one item, or None: strict names, and never a path outside `root`."""
    if not CAMERA_NAME.fullmatch(camera) or not ITEM_ID.fullmatch(item_id):
        return None
    base, folder = root.resolve(), root / camera
    if not folder.is_dir():
        return None
    for day in sorted(folder.iterdir(), reverse=True):
        path = day / f"{item_id}.json"
        if _DAY.fullmatch(day.name) and path.is_file():
            resolved = path.resolve()  # a symlink planted in the queue must not lead out of it
            return resolved if resolved.is_relative_to(base) else None
    return None


def list_items(
    root: Path,
    camera: str | None = None,
    status: str = "all",
    limit: int = 50,
    max_read: int = 2000,
) -> list[dict[str, Any]]:
    """Newest first, at most `limit` items; `status` pending (no label yet), labelled or all.

    Walks day folders newest first and reads at most `max_read` records, so a large queue costs
    a bounded amount per call."""
    if camera is not None and not CAMERA_NAME.fullmatch(camera):
        return []
    cameras = [root / camera] if camera else [p for p in root.glob("*") if p.is_dir()]
    days: dict[str, list[Path]] = {}
    for folder in cameras:
        for day in folder.glob("*"):
            if _DAY.fullmatch(day.name) and day.is_dir():
                days.setdefault(day.name, []).append(day)
    out: list[dict[str, Any]] = []
    read = 0
    for day_name in sorted(days, reverse=True):
        paths = [p for d in days[day_name] for p in d.glob("*.json") if ITEM_ID.fullmatch(p.stem)]
        for path in sorted(paths, key=_order, reverse=True):
            if len(out) >= limit or read >= max_read:
                return out
            read += 1
            try:
                item = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("review item %s unreadable: %s", path, exc)
                continue
            labelled = item.get("label") is not None
            if status == "all" or (status == "labelled") == labelled:
                out.append(item)
    return out


def write_label(
    path: Path, label: str | list[dict[str, Any]], inspector: str, token: str | None = None
) -> dict[str, Any]:
    """Store an inspector's label in the item's JSON, atomically (as `offer` writes it), with
    the token it came with (`operator:bob`, as the audit trail names it)."""
    with _label_lock:  # two inspectors on one item: one whole record wins, never a mix
        item: dict[str, Any] = json.loads(path.read_text())
        item |= {"label": label, "labelled_by": inspector, "labelled_at": round(time.time(), 3),
                 "labelled_with": token}  # fmt: skip
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(item, indent=1))
        tmp.replace(path)
    return item


# -- export for labelling and retraining


def iter_items(root: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(root.glob("*/*/*.json")):
        try:
            yield path, json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("review item %s unreadable: %s", path, exc)


def _class_of(item: dict[str, Any]) -> str | None:
    label = item.get("label")
    if isinstance(label, str):
        return label
    findings = item.get("findings") or []
    return findings[0]["class_name"] if findings and item.get("task") == "classify" else None


def _boxes_of(item: dict[str, Any]) -> list[dict[str, Any]]:
    label = item.get("label")
    if isinstance(label, list):
        return label  # [{"class_name", "box": [x1, y1, x2, y2]}, ...] from an inspector
    boxes = [
        f
        for f in item.get("findings") or []
        if "box" in f and f.get("outcome") in ("fail", "uncertain")
    ]
    if isinstance(label, str):  # an image-level class from an inspector names the model's boxes
        return [{"class_name": label, "box": b["box"]} for b in boxes]
    return boxes


def _yolo_row(box: dict[str, Any], names: list[str], w: int, h: int) -> str:
    x1, y1, x2, y2 = box["box"]
    cx, cy = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h
    bw, bh = (x2 - x1) / w, (y2 - y1) / h
    return f"{names.index(box['class_name'])} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}"


def _labelstudio_task(path: Path, item: dict[str, Any]) -> dict[str, Any]:
    w, h = item["width"], item["height"]
    results: list[dict[str, Any]] = []
    for n, b in enumerate(_boxes_of(item)):
        x1, y1, x2, y2 = b["box"]
        value = {
            "x": 100 * x1 / w,
            "y": 100 * y1 / h,
            "width": 100 * (x2 - x1) / w,
            "height": 100 * (y2 - y1) / h,
            "rectanglelabels": [b["class_name"]],
        }
        results.append(
            {"id": f"r{n}", "from_name": "label", "to_name": "image", "type": "rectanglelabels",
             "original_width": w, "original_height": h, "value": value}
        )  # fmt: skip
    chosen = _class_of(item)
    if chosen and not results:
        results.append(
            {"id": "c0", "from_name": "choice", "to_name": "image", "type": "choices",
             "value": {"choices": [chosen]}}
        )  # fmt: skip
    image = str(path.with_suffix(".jpg").resolve())
    version = (item.get("model") or {}).get("version")
    return {
        "data": {"image": image, "review_id": item["id"], "camera": item["camera"]},
        "predictions": [{"model_version": version, "result": results}],
    }


def export(root: Path, out: Path, fmt: str, labelled_only: bool = False) -> int:
    """Write the queue as `folders`, `yolo` or `labelstudio`; returns the number of items.

    An inspector's `label` wins; otherwise the model's own findings are exported as
    pre-annotations to correct."""
    if fmt not in ("folders", "yolo", "labelstudio"):
        raise ValueError(f"unknown export format {fmt!r}: folders, yolo or labelstudio")
    out.mkdir(parents=True, exist_ok=True)
    items = [(p, i) for p, i in iter_items(root) if not labelled_only or i.get("label") is not None]
    if fmt == "folders":
        for path, item in items:
            cls = _class_of(item) or "unlabelled"
            (out / cls).mkdir(exist_ok=True)
            shutil.copy(path.with_suffix(".jpg"), out / cls / f"{item['camera']}-{item['id']}.jpg")
    elif fmt == "yolo":
        names = sorted({b["class_name"] for _, i in items for b in _boxes_of(i)})
        (out / "images").mkdir(exist_ok=True)
        (out / "labels").mkdir(exist_ok=True)
        for path, item in items:
            stem = f"{item['camera']}-{item['id']}"
            shutil.copy(path.with_suffix(".jpg"), out / "images" / f"{stem}.jpg")
            rows = [_yolo_row(b, names, item["width"], item["height"]) for b in _boxes_of(item)]
            (out / "labels" / f"{stem}.txt").write_text("".join(r + "\n" for r in rows))
        data = {
            "path": str(out.resolve()),
            "train": "images",
            "val": "images",
            "names": dict(enumerate(names)),
        }
        (out / "data.yaml").write_text(json.dumps(data))  # JSON is valid YAML
    else:
        tasks = [_labelstudio_task(path, item) for path, item in items]
        (out / "tasks.json").write_text(json.dumps(tasks, indent=1))
    _provenance(items, out / "labels.jsonl")
    return len(items)


def _provenance(items: list[tuple[Path, dict[str, Any]]], path: Path) -> None:
    """Who labelled each exported item, with what token and when, and the model and thresholds
    version that judged it: the review export's share of the audit trail."""
    keys = ("label", "labelled_by", "labelled_with", "labelled_at", "reason", "verdict", "model")
    with path.open("w") as f:
        for _, item in items:
            if item.get("label") is not None:
                row = {"item": f"{item['camera']}-{item['id']}"} | {k: item.get(k) for k in keys}
                f.write(json.dumps(row, sort_keys=True) + "\n")

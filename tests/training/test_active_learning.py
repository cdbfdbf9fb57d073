"""The active-learning loop, closed with the real pieces on real magnetic tiles:

1. `lineinspect train anomaly` on a CI-sized slice: the model the line starts with;
2. that model judges "new line frames" (tiles outside the split, and outside every test tile's
   exposure group) and the real review queue keeps them;
3. an inspector labels them (the queue's own `write_label`), `lineinspect review export
   --format folders --labelled-only` writes them out, with one frame left unlabelled;
4. `lineinspect train anomaly --labelled EXPORT` retrains; on the same held-out test parts the
   new model separates defects from good parts better than the old one.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from service.core.types import Frame, Judged
from service.inference.model import load_model
from service.inference.runtime import RuntimeOptions
from service.metrics import Metrics
from service.review_store import iter_items, write_label
from service.sinks.review import ReviewSink
from service.sinks.verdicts import NullPublisher
from training.anomaly import TILE_GAP, TILE_NAME, _images_in, read_image

FAST = RuntimeOptions(warmup_runs=1, intra_op_threads=1, inter_op_threads=1)
# CI-sized, but with enough held-out parts (about 15 good, 25 defective) for AUROC to mean something
SIZE = ["--quick", "--image-size", "256", "--limit-good", "100", "--limit-per-class", "10",
        "--no-progress", "--no-estimate"]  # fmt: skip
NEW_PER_CLASS = 15  # labelled review frames per defect class (fewer where the class has fewer)


def _frames(name: str) -> int | None:
    m = TILE_NAME.search(name)
    return int(m.group(1)) if m else None


def _same_tile(a: int, b: int) -> bool:
    return abs(a - b) <= 3 * TILE_GAP  # generous: an exposure bracket spans a few gaps


def _auroc(summary: dict[str, object]) -> float:
    metrics = summary["metrics"]
    assert isinstance(metrics, dict)
    return float(metrics[summary["recommended"]]["test"]["auroc"])


@pytest.mark.slow
def test_review_labels_make_a_better_model(data_dir: Path, tmp_path: Path) -> None:
    tiles = data_dir / "magnetic-tile"
    first = tmp_path / "first"
    assert main(["train", "anomaly", "--data", str(tiles), "--out", str(first / "m.onnx"),
                 "--report-dir", str(first / "report"), *SIZE]) == 0  # fmt: skip
    old = json.loads((first / "report" / "summary.json").read_text())
    split = json.loads((first / "report" / "anomaly" / "split.json").read_text())
    used = {Path(p).name for rows in split["files"].values() for ps in rows.values() for p in ps}
    test_frames = [_frames(Path(p).name) for ps in split["files"]["test"].values() for p in ps]
    test_frames_known = [f for f in test_frames if f is not None]

    def fresh(path: Path) -> bool:
        f = _frames(path.name)
        return (
            path.name not in used
            and f is not None
            and not any(_same_tile(f, t) for t in test_frames_known)
        )

    # 2. the line: the first model judges new frames, the review queue keeps every one of them
    model = load_model(first / "m.onnx", FAST)
    queue = ReviewSink(
        tmp_path / "review", NullPublisher(), Metrics(), sample_rate=1.0, queue_size=1000, seed=0
    )
    truth: dict[int, str] = {}
    frame_id = 0
    rng = np.random.default_rng(0)
    for folder in sorted(d for d in tiles.iterdir() if d.is_dir()):
        candidates = [p for p in _images_in(folder) if fresh(p)]
        take = NEW_PER_CLASS * (2 if folder.name == "MT_Free" else 1)
        for path in rng.permutation(np.array(candidates, dtype=object))[:take]:
            image = read_image(path)
            assert image is not None
            frame_id += 1
            result = model.predict([image])[0]
            frame = Frame("tile-cam", frame_id, image, time.monotonic(), time.time() + frame_id)
            queue.handle(Judged(frame, result, None, time.monotonic(), sequence=frame_id))
            truth[frame_id] = "good" if folder.name == "MT_Free" else folder.name
    queue.close()  # the writer thread has stored every item
    items = list(iter_items(tmp_path / "review"))
    assert len(items) == frame_id > 30
    # 3. an inspector labels all but one; the export leaves the unlabelled one out
    for path, item in items[1:]:
        write_label(path, truth[int(item["frame_id"])], "inspector-1")
    export = tmp_path / "export"
    assert main(["review", "export", "--path", str(tmp_path / "review"), "--format", "folders",
                 "--out", str(export), "--labelled-only"]) == 0  # fmt: skip
    assert sum(1 for _ in export.rglob("*.jpg")) == len(items) - 1
    assert (export / "good").is_dir() and not (export / "unlabelled").exists()

    # 4. retrain with the review labels; the same split (same data, seed and settings)
    second = tmp_path / "second"
    assert main(["train", "anomaly", "--data", str(tiles), "--out", str(second / "m.onnx"),
                 "--report-dir", str(second / "report"), "--labelled", str(export), *SIZE]) == 0  # fmt: skip
    new = json.loads((second / "report" / "summary.json").read_text())
    split2 = json.loads((second / "report" / "anomaly" / "split.json").read_text())
    assert split2["sha256"] == split["sha256"], "the comparison must be on the same test parts"
    labelled = new["labelled"]["labelled_images"]
    assert sum(v for k, v in labelled.items() if k != "MT_Free") > sum(
        v for k, v in old["labelled"]["labelled_images"].items() if k != "MT_Free"
    )
    print(f"\nold {old['recommended']} test AUROC {_auroc(old):.3f}; "
          f"new {new['recommended']} test AUROC {_auroc(new):.3f}")  # fmt: skip
    assert _auroc(new) > _auroc(old), (old["metrics"], new["metrics"])
    assert re.search(r"recommended", (second / "report" / "report.md").read_text())

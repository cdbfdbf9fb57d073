"""Does drift monitoring separate a drifted line from a healthy one? And what does it cost?

Feeds a model's held-out test images (never used to build the card's reference) through the
service's own model and DriftMonitor, once as they are and once darkened, shadowed and blurred,
and prints each signal's PSI / KS with the monitor's state. Then times one drift update.

    python scripts/drift_check.py                       # NEU classifier, test split of its manifest
    python scripts/drift_check.py --model models/neu-det-demo.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.config import DriftConfig  # noqa: E402
from service.drift import DriftMonitor, image_stats  # noqa: E402
from service.frames import Frame  # noqa: E402
from service.inference.model import load_model  # noqa: E402
from service.inference.runtime import RuntimeOptions  # noqa: E402
from service.metrics import Metrics  # noqa: E402

Transform = Callable[[np.ndarray], np.ndarray]


def darken(image: np.ndarray) -> np.ndarray:
    """Lighting failing: 55 % of the light."""
    return cv2.convertScaleAbs(image, alpha=0.55)


def shadow(image: np.ndarray) -> np.ndarray:
    """A shadow falling across the part: full light on the left, 35 % on the right."""
    ramp = np.linspace(1.0, 0.35, image.shape[1], dtype=np.float32)[None, :, None]
    return np.clip(image.astype(np.float32) * ramp, 0, 255).astype(np.uint8)


def blur(image: np.ndarray) -> np.ndarray:
    """Lens out of focus or vibration: Gaussian blur, sigma 2 px."""
    return cv2.GaussianBlur(image, (0, 0), 2.0)


CONDITIONS: dict[str, Transform] = {
    "held-out (no drift)": lambda image: image,
    "darkened": darken,
    "shadowed": shadow,
    "blurred": blur,
}


def test_images(split_file: Path, data_root: Path) -> list[tuple[Path, str]]:
    """The manifest's test split: (image, its class label)."""
    manifest = json.loads(split_file.read_text())
    return [(data_root / item["path"], item["label"]) for item in manifest["splits"]["test"]]


def run(
    model_path: Path, images: list[np.ndarray], labels: list[str], settings: DriftConfig
) -> dict[str, dict]:
    model = load_model(model_path, RuntimeOptions(warmup_runs=1, intra_op_threads=1))
    out: dict[str, dict] = {}
    for name, transform in CONDITIONS.items():
        monitor = DriftMonitor(Metrics(), settings)
        monitor.register(model)
        frames = [transform(img) for img in images]
        correct = 0
        for i in range(0, len(frames), 16):
            batch = frames[i : i + 16]
            for k, (image, result) in enumerate(zip(batch, model.predict(batch), strict=True)):
                frame = Frame("cam", i + k + 1, image, time.monotonic(), time.time())
                monitor.update(frame, result)
                probs = result.prediction.probabilities
                if probs is not None:  # a classifier: is its top class the label?
                    correct += model.spec.classes[int(np.argmax(probs))] == labels[i + k]
        out[name] = monitor.snapshot()["cam"]
        if model.spec.task == "classify":
            out[name]["accuracy"] = correct / len(frames)
    return out


def time_update(model_path: Path, image: np.ndarray, repeats: int = 2000) -> dict[str, float]:
    model = load_model(model_path, RuntimeOptions(warmup_runs=1, intra_op_threads=1))
    monitor = DriftMonitor(Metrics(), DriftConfig())
    monitor.register(model)
    result = model.predict([image])[0]
    frame = Frame("cam", 1, image, time.monotonic(), time.time())
    t = time.perf_counter()
    for _ in range(repeats):
        monitor.update(frame, result)
    update_ms = (time.perf_counter() - t) / repeats * 1000
    t = time.perf_counter()
    for _ in range(repeats):
        image_stats(image)
    stats_ms = (time.perf_counter() - t) / repeats * 1000
    hd = cv2.resize(image, (1280, 720))
    t = time.perf_counter()
    for _ in range(200):
        image_stats(hd)
    hd_ms = (time.perf_counter() - t) / 200 * 1000
    return {"update_ms": update_ms, "image_stats_ms": stats_ms, "image_stats_720p_ms": hd_ms}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models/neu-cls-int8.onnx")
    p.add_argument("--split", type=Path, default=ROOT / "models/neu-cls-split.json")
    p.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("LINEINSPECT_DATA", ROOT.parent / "shared/data")) / "neu-det",
    )
    p.add_argument("--window", type=int, default=DriftConfig().window)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args()
    cv2.setNumThreads(1)
    items = test_images(args.split, args.data)
    random.Random(args.seed).shuffle(items)  # a line sees the classes mixed, not sorted
    images = [cv2.imread(str(path), cv2.IMREAD_COLOR) for path, _ in items]
    labels = [label for _, label in items]
    if any(image is None for image in images):
        raise SystemExit(f"unreadable test images under {args.data}")
    settings = DriftConfig(window=args.window, min_frames=min(100, args.window))
    results = run(args.model, images, labels, settings)
    cost = time_update(args.model, images[0])
    if args.json:
        print(json.dumps({"results": results, "cost": cost}, indent=1))
        return
    signals = sorted({s for r in results.values() for s in r["signals"]})
    print(f"model {args.model.name}, {len(images)} held-out test images, window {args.window}")
    accuracy = "accuracy" in next(iter(results.values()))
    print(f"{'condition':22} {'state':8} " + " ".join(f"{s:>18}" for s in signals)
          + ("   accuracy" if accuracy else ""))  # fmt: skip
    for name, r in results.items():
        cells = []
        for s in signals:
            v = r["signals"].get(s)
            ks = "" if v is None or v["ks"] is None else f"/{v['ks']:.2f}"
            text = "-" if v is None else f"{v['psi']:.2f}{ks}"
            cells.append(f"{text:>18}")
        acc = f"   {r['accuracy']:8.3f}" if accuracy else ""
        print(f"{name:22} {r['state']:8} " + " ".join(cells) + acc)
    print("cells: PSI/KS; alert level PSI 0.25")
    print(
        f"cost per frame: drift update {cost['update_ms']:.3f} ms (incl. image stats "
        f"{cost['image_stats_ms']:.3f} ms at {images[0].shape[1]}x{images[0].shape[0]}); "
        f"image stats at 1280x720: {cost['image_stats_720p_ms']:.3f} ms"
    )


if __name__ == "__main__":
    main()

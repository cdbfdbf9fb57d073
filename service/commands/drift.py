"""`lineinspect drift check`: does drift monitoring separate a drifted line from a healthy one?
And what does it cost?

Feeds a model's held-out test images (never used to build the card's reference) through the
service's own model and DriftMonitor, once as they are and once darkened, shadowed and blurred,
and prints each signal's PSI / KS with the monitor's state. Then times one drift update.

    lineinspect drift check                       # NEU classifier, test split of its manifest
    lineinspect drift check --model models/neu-det-demo.onnx
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.config import DriftConfig
from service.paths import REPO, data_root

if TYPE_CHECKING:
    import numpy as np

    Transform = Callable[[np.ndarray], np.ndarray]


def darken(image: np.ndarray) -> np.ndarray:
    """Lighting failing: 55 % of the light."""
    import cv2

    return cv2.convertScaleAbs(image, alpha=0.55)


def shadow(image: np.ndarray) -> np.ndarray:
    """A shadow falling across the part: full light on the left, 35 % on the right."""
    import numpy as np

    ramp = np.linspace(1.0, 0.35, image.shape[1], dtype=np.float32)[None, :, None]
    out: np.ndarray = np.clip(image.astype(np.float32) * ramp, 0, 255).astype(np.uint8)
    return out


def blur(image: np.ndarray) -> np.ndarray:
    """Lens out of focus or vibration: Gaussian blur, sigma 2 px."""
    import cv2

    return cv2.GaussianBlur(image, (0, 0), 2.0)


CONDITIONS: dict[str, Transform] = {
    "held-out (no drift)": lambda image: image,
    "darkened": darken,
    "shadowed": shadow,
    "blurred": blur,
}


def test_images(split_file: Path, data: Path) -> list[tuple[Path, str]]:
    """The manifest's test split: (image, its class label)."""
    manifest = json.loads(split_file.read_text())
    return [(data / item["path"], item["label"]) for item in manifest["splits"]["test"]]


def monitor_conditions(
    model_path: Path, images: list[np.ndarray], labels: list[str], settings: DriftConfig
) -> dict[str, dict[str, Any]]:
    import numpy as np

    from service.core.types import Frame
    from service.inference.model import load_model
    from service.inference.runtime import RuntimeOptions
    from service.metrics import Metrics
    from service.sinks.drift import DriftMonitor

    model = load_model(model_path, RuntimeOptions(warmup_runs=1, intra_op_threads=1))
    out: dict[str, dict[str, Any]] = {}
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
    import cv2

    from service.core.types import Frame
    from service.drift import image_stats
    from service.inference.model import load_model
    from service.inference.runtime import RuntimeOptions
    from service.metrics import Metrics
    from service.sinks.drift import DriftMonitor

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


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    drift = sub.add_parser("drift", help="drift monitoring tools").add_subparsers(
        dest="drift_cmd", required=True, metavar="COMMAND"
    )
    p = drift.add_parser(
        "check",
        help="held-out images vs darkened / shadowed / blurred: PSI, KS, state, cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, default=REPO / "models/neu-cls-int8.onnx")
    p.add_argument("--split", type=Path, default=REPO / "models/neu-cls-split.json")
    p.add_argument("--data", type=Path, default=data_root() / "neu-det")
    p.add_argument("--window", type=int, default=DriftConfig().window)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import cv2

    cv2.setNumThreads(1)
    items = test_images(args.split, args.data)
    random.Random(args.seed).shuffle(items)  # a line sees the classes mixed, not sorted
    images: list[np.ndarray] = []
    for path, _ in items:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"unreadable test images under {args.data}")
        images.append(image)
    labels = [label for _, label in items]
    settings = DriftConfig(window=args.window, min_frames=min(100, args.window))
    results = monitor_conditions(args.model, images, labels, settings)
    cost = time_update(args.model, images[0])
    if args.json:
        print(json.dumps({"results": results, "cost": cost}, indent=1))
        return 0
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

    return 0

"""Train the small NEU steel-surface defect classifier that lineinspect ships as its demo model.

Reads the NEU-DET images (class = file-name prefix), de-duplicates them, makes a seeded,
stratified train/val/test split, trains a small CNN on CPU, exports it to ONNX (input `images`
[batch, 3, H, W] float32, output `probabilities` [batch, 6], softmax in the graph), writes the
model card next to it, and checks the exported file with onnxruntime against the PyTorch model
using only the preprocessing the card describes.

    python scripts/train_demo_classifier.py [--data PATH] [--out models/neu-cls-demo.onnx]

Needs torch, onnx, onnxruntime, numpy, opencv-python-headless, pydantic and PyYAML. The data
path defaults to `$LINEINSPECT_DATA/neu-det`, with `../shared/data` (relative to the repository
root) when LINEINSPECT_DATA is unset. Images are only read, never copied.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from service.inference.card import (  # noqa: E402
    InputSpec,
    ModelCard,
    OutputSpec,
    ThresholdSpec,
    dump_card,
    load_card,
)

MODEL_NAME = "neu-cls-demo"
CLASSES: tuple[str, ...] = (
    "crazing",
    "inclusion",
    "patches",
    "pitted_surface",
    "rolled-in_scale",
    "scratches",
)
IMAGE_DIRS = ("IMAGES", "Validation_Images")
FILE_RE = re.compile(r"^(?P<cls>.+)_(?P<idx>\d+)\.jpe?g$", re.IGNORECASE)

# Preprocessing written into the card; training uses exactly the same values.
COLOR = "rgb"
RESIZE = "resize"
SCALE = 1.0 / 255.0
MEAN = 0.5
STD = 0.5

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
OPSET = 17
MAX_PROB_DIFF = 1e-4


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]


# --------------------------------------------------------------------------------------------
# data


def default_data_dir() -> Path:
    root = os.environ.get("LINEINSPECT_DATA")
    base = Path(root) if root else REPO_ROOT.parent / "shared" / "data"
    return base / "neu-det"


def label_of(name: str) -> int:
    match = FILE_RE.match(name)
    if match is None or match.group("cls") not in CLASSES:
        raise ValueError(f"cannot tell the class of {name!r}; known classes: {CLASSES}")
    return CLASSES.index(match.group("cls"))


def decode_bgr(path: Path) -> np.ndarray:
    """Decode like the service does: encoded bytes -> OpenCV BGR uint8, 3 channels."""
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode {path}")
    return image


def find_samples(data_dir: Path) -> tuple[list[Sample], list[str]]:
    """All labelled images, with exact pixel duplicates removed (the first path in sorted order
    is kept). Returns the samples and a note per dropped duplicate."""
    paths = sorted(p for d in IMAGE_DIRS for p in (data_dir / d).glob("*") if p.is_file())
    if not paths:
        raise SystemExit(f"no images under {data_dir} (looked in {', '.join(IMAGE_DIRS)})")
    seen: dict[str, Path] = {}
    samples: list[Sample] = []
    dropped: list[str] = []
    for path in paths:
        label = label_of(path.name)
        digest = hashlib.sha256(decode_bgr(path).tobytes()).hexdigest()
        if digest in seen:
            first = seen[digest]
            if label_of(first.name) != label:
                raise SystemExit(f"{path} and {first} have the same pixels but different classes")
            dropped.append(f"{path.relative_to(data_dir)} == {first.relative_to(data_dir)}")
            continue
        seen[digest] = path
        samples.append(Sample(path, label))
    return samples, dropped


def stratified_split(samples: list[Sample], seed: int, val: float, test: float) -> Split:
    """Per class: shuffle with the seed, then take test, val and the rest for training."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for label in range(len(CLASSES)):
        members = sorted((s for s in samples if s.label == label), key=lambda s: str(s.path))
        order = rng.permutation(len(members))
        n_test = round(len(members) * test)
        n_val = round(len(members) * val)
        out["test"] += [members[i] for i in order[:n_test]]
        out["val"] += [members[i] for i in order[n_test : n_test + n_val]]
        out["train"] += [members[i] for i in order[n_test + n_val :]]
    return Split(**out)


def load_resized(samples: list[Sample], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Decode, BGR -> RGB and stretch-resize with INTER_LINEAR: uint8 NHWC plus labels.
    Scaling and normalisation happen per batch in `normalize`, in the same order as the card."""
    height, width = size
    images = np.empty((len(samples), height, width, 3), dtype=np.uint8)
    for i, sample in enumerate(samples):
        rgb = cv2.cvtColor(decode_bgr(sample.path), cv2.COLOR_BGR2RGB)
        images[i] = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    return images, labels


def normalize(images_nhwc_u8: torch.Tensor) -> torch.Tensor:
    def f32(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float32)

    x = images_nhwc_u8.to(torch.float32) * f32(SCALE)
    x = (x - f32(MEAN)) / f32(STD)
    return x.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# model


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """About 0.3 M parameters: a strided stem, then three conv-conv-pool stages."""

    def __init__(self, num_classes: int, width: int = 24) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn(3, w, stride=2),
            conv_bn(w, w),
            nn.MaxPool2d(2),
            conv_bn(w, 2 * w),
            conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),
            conv_bn(2 * w, 4 * w),
            conv_bn(4 * w, 4 * w),
            nn.MaxPool2d(2),
            conv_bn(4 * w, 8 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(8 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.features(x))
        return logits


class WithSoftmax(nn.Module):
    """What gets exported: probabilities, not logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and a mild per-image brightness/contrast change (on normalised input)."""
    n = x.shape[0]
    hflip = torch.rand(n, generator=gen) < 0.5
    vflip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(hflip[:, None, None, None], x.flip(3), x)
    x = torch.where(vflip[:, None, None, None], x.flip(2), x)
    contrast = 1.0 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.4
    brightness = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.2
    return x * contrast + brightness


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Softmax probabilities for uint8 NHWC images."""
    net.eval()
    out = [
        torch.softmax(net(normalize(images[i : i + batch_size])), dim=1)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


def train(
    net: nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor],
    val_data: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> dict[str, Any]:
    """AdamW with one-cycle LR; keeps the weights of the epoch with the best val accuracy
    (ties: lower val loss). Returns a per-epoch log and the chosen epoch."""
    x_train, y_train = train_data
    x_val, y_val = val_data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * ((len(x_train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    best: tuple[float, float] = (-1.0, float("inf"))
    best_state: dict[str, torch.Tensor] = {}
    best_epoch = 0
    log: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        net.train()
        order = torch.randperm(len(x_train), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            x = augment(normalize(x_train[idx]), gen)
            y = y_train[idx]
            logits = net(x)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(idx)
        val_prob = predict(net, x_val)
        val_acc = float((val_prob.argmax(1) == y_val).float().mean())
        val_loss = float(nn.functional.nll_loss(torch.log(val_prob.clamp_min(1e-12)), y_val))
        entry = {
            "epoch": epoch,
            "train_loss": loss_sum / total,
            "train_acc_aug": correct / total,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "seconds": time.perf_counter() - start,
        }
        log.append(entry)
        print(
            f"epoch {epoch:2d}/{epochs}  loss {entry['train_loss']:.4f}  "
            f"train(aug) {entry['train_acc_aug']:.4f}  val loss {val_loss:.4f}  "
            f"val acc {val_acc:.4f}  {entry['seconds']:.1f}s",
            flush=True,
        )
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best = (val_acc, val_loss)
            best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    net.eval()
    return {"log": log, "best_epoch": best_epoch}


# --------------------------------------------------------------------------------------------
# metrics


def accuracy(prob: np.ndarray, labels: np.ndarray) -> float:
    return float((prob.argmax(1) == labels).mean())


def per_class_metrics(pred: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(CLASSES):
        tp = int(((pred == k) & (labels == k)).sum())
        fp = int(((pred == k) & (labels != k)).sum())
        fn = int(((pred != k) & (labels == k)).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": tp + fn,
        }
    return out


def confusion(pred: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, int]]:
    """True class -> predicted class -> count, non-zero cells only."""
    return {
        name: {
            other: int(((labels == k) & (pred == j)).sum())
            for j, other in enumerate(CLASSES)
            if ((labels == k) & (pred == j)).any()
        }
        for k, name in enumerate(CLASSES)
    }


# --------------------------------------------------------------------------------------------
# export and verification


def export_onnx(net: nn.Module, size: tuple[int, int], path: Path, version: str) -> None:
    """Export with softmax in the graph and a dynamic batch axis, add metadata, save as one
    self-contained file."""
    model = WithSoftmax(net).eval()
    dummy = torch.zeros(2, 3, *size, dtype=torch.float32)
    raw = path.with_name(path.name + ".raw")
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but still works, needs no onnxscript and
        # writes opset 17 directly.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(raw),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(raw))
    raw.unlink()
    proto.doc_string = (
        f"{MODEL_NAME} {version}: NEU steel-surface defect classifier (lineinspect demo)"
    )
    onnx.helper.set_model_props(
        proto,
        {
            "task": "classify",
            "names": repr(dict(enumerate(CLASSES))),
            "imgsz": repr(list(size)),
            "author": "lineinspect",
            "version": version,
        },
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def check_onnx_signature(path: Path, size: tuple[int, int]) -> None:
    proto = onnx.load(str(path))
    (inp,) = proto.graph.input
    (out,) = proto.graph.output

    def dims(value: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    problems = []
    if inp.name != INPUT_NAME or dims(inp) != ["batch", 3, *size]:
        problems.append(f"input {inp.name} {dims(inp)}")
    if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        problems.append("input is not float32")
    if out.name != OUTPUT_NAME or dims(out) != ["batch", len(CLASSES)]:
        problems.append(f"output {out.name} {dims(out)}")
    if problems:
        raise SystemExit(f"exported model has the wrong signature: {'; '.join(problems)}")


def card_preprocess(path: Path, card: ModelCard) -> np.ndarray:
    """The card's preprocessing, written independently of the training code: what the service
    is expected to do with one image. Returns CHW float32."""
    spec = card.input
    if spec.size is None or spec.resize != "resize" or spec.color != "rgb":
        raise SystemExit(f"verification implements only resize + rgb with a size, not {spec}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read {path}")
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    height, width = spec.size
    resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    x = resized.astype(np.float32) * np.float32(spec.scale)
    x = (x - mean) / std
    return x.transpose(2, 0, 1)


def verify_onnx(
    path: Path, card: ModelCard, test: list[Sample], torch_prob: np.ndarray
) -> dict[str, float]:
    """Run the ONNX file on the test split with only the card's preprocessing and compare it
    with the PyTorch model. Exits non-zero on any mismatch."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.stack([card_preprocess(s.path, card) for s in test])
    labels = np.array([s.label for s in test])
    (onnx_prob,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    (single,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch[:1]})  # batch of one works too
    onnx_acc = accuracy(onnx_prob, labels)
    torch_acc = accuracy(torch_prob, labels)
    max_diff = float(np.abs(onnx_prob - torch_prob).max())
    single_diff = float(np.abs(single - onnx_prob[:1]).max())
    row_sum_err = float(np.abs(onnx_prob.sum(1) - 1.0).max())
    print(
        f"verify: onnxruntime test acc {onnx_acc:.4f}  torch test acc {torch_acc:.4f}  "
        f"max |p_onnx - p_torch| {max_diff:.2e}  batch-1 diff {single_diff:.2e}  "
        f"max |sum(p) - 1| {row_sum_err:.2e}"
    )
    if onnx_acc != torch_acc or max_diff > MAX_PROB_DIFF or single_diff > MAX_PROB_DIFF:
        raise SystemExit(
            f"ONNX verification FAILED: acc {onnx_acc} vs {torch_acc}, max diff {max_diff:.3e} "
            f"(limit {MAX_PROB_DIFF}), batch-1 diff {single_diff:.3e}"
        )
    if row_sum_err > 1e-5:
        raise SystemExit(f"ONNX verification FAILED: probabilities do not sum to 1 ({row_sum_err})")
    return {"onnx_test_accuracy": onnx_acc, "max_abs_prob_diff": max_diff}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=default_data_dir(),
        help="NEU-DET folder holding IMAGES/ and Validation_Images/ "
        "(default: $LINEINSPECT_DATA/neu-det, LINEINSPECT_DATA defaulting to ../shared/data "
        "beside the repository root)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "models" / f"{MODEL_NAME}.onnx",
        help="ONNX file to write; the card goes next to it as <stem>.card.yaml",
    )
    parser.add_argument("--imgsz", type=int, default=128, help="square input size (default 128)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--width", type=int, default=24, help="channels of the first stage")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and training")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2))
    parser.add_argument("--version", default="0.1.0", help="model version for metadata and card")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    cpu_start = time.process_time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    size = (args.imgsz, args.imgsz)
    data_dir: Path = args.data.resolve()
    out: Path = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)

    samples, dropped = find_samples(data_dir)
    for note in dropped:
        print(f"dropped exact duplicate: {note}")
    split = stratified_split(samples, args.seed, args.val_fraction, args.test_fraction)
    counts = {name: len(getattr(split, name)) for name in ("train", "val", "test")}
    print(f"{len(samples)} images from {data_dir}: {counts}")

    arrays = {name: load_resized(getattr(split, name), size) for name in counts}
    tensors = {k: (torch.from_numpy(x), torch.from_numpy(y)) for k, (x, y) in arrays.items()}

    net = SmallCNN(len(CLASSES), width=args.width)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"SmallCNN width {args.width}: {n_params} parameters, input {size}")
    train_cpu_start = time.process_time()
    train_wall_start = time.perf_counter()
    history = train(
        net,
        tensors["train"],
        tensors["val"],
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    train_cpu = time.process_time() - train_cpu_start
    train_wall = time.perf_counter() - train_wall_start

    probs = {k: predict(net, x).numpy() for k, (x, _) in tensors.items()}
    acc = {k: accuracy(probs[k], arrays[k][1]) for k in counts}
    test_pred = probs["test"].argmax(1)
    top = probs["test"].max(1)
    thresholds = ThresholdSpec(default=0.5, band=0.1, min_box_size=0.0)
    per_class = per_class_metrics(test_pred, arrays["test"][1])
    print(
        f"best epoch {history['best_epoch']}: train {acc['train']:.4f}  val {acc['val']:.4f}  "
        f"test {acc['test']:.4f}"
    )
    for name, m in per_class.items():
        print(
            f"  {name:16s} P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}  "
            f"n {m['support']}"
        )

    card_input = InputSpec(size=size, resize=RESIZE, color=COLOR, scale=SCALE, mean=MEAN, std=STD)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        tmp_onnx = Path(tmp) / out.name
        export_onnx(net, size, tmp_onnx, args.version)
        check_onnx_signature(tmp_onnx, size)
        probe = ModelCard(input=card_input)
        check = verify_onnx(tmp_onnx, probe, split.test, probs["test"])
        tmp_onnx.replace(out)

    epochs_log = [
        {k: round(v, 1 if k == "seconds" else 4) for k, v in e.items()} for e in history["log"]
    ]
    card = ModelCard(
        name=MODEL_NAME,
        version=args.version,
        task="classify",
        classes=list(CLASSES),
        good_classes=[],
        input=card_input,
        output=OutputSpec(kind="probabilities"),
        thresholds=thresholds,
        sha256=sha256_of(out),
        training={
            # The interpreter path is machine-specific; the script and its arguments are not.
            "command": shlex.join(["python", *sys.argv]),
            "requires": "pip install torch==2.13.0 onnx onnxruntime opencv-python-headless pydantic PyYAML",
            "script": "scripts/train_demo_classifier.py",
            "data": os.path.relpath(data_dir, REPO_ROOT),
            "dataset": "NEU-DET (Song & Yan 2013; He et al. 2020), class = file-name prefix",
            "duplicates_dropped": dropped,
            "split": {
                "method": "stratified by class, seeded shuffle",
                "seed": args.seed,
                "fractions": {
                    "train": round(1 - args.val_fraction - args.test_fraction, 4),
                    "val": args.val_fraction,
                    "test": args.test_fraction,
                },
                "counts": counts,
            },
            "model": f"SmallCNN(width={args.width})",
            "parameters": n_params,
            "image_size": list(size),
            "epochs": args.epochs,
            "best_epoch": history["best_epoch"],
            "batch_size": args.batch_size,
            "optimizer": f"AdamW(weight_decay=5e-4), OneCycleLR(max_lr={args.lr})",
            "loss": "cross-entropy, label smoothing 0.05",
            "augmentation": "h/v flips, brightness +-0.1, contrast x(0.8-1.2) on normalised input",
            "threads": args.threads,
            "torch": torch.__version__,
            "cpu_seconds": round(train_cpu, 1),
            "wall_seconds": round(train_wall, 1),
            "epoch_log": epochs_log,
        },
        metrics={
            "train_accuracy": round(acc["train"], 4),
            "val_accuracy": round(acc["val"], 4),
            "test_accuracy": round(acc["test"], 4),
            "test_per_class": per_class,
            "test_confusion_true_to_predicted": confusion(test_pred, arrays["test"][1]),
            "test_top_probability": {
                "min": round(float(top.min()), 4),
                "median": round(float(np.median(top)), 4),
                "in_uncertainty_band": int(
                    (np.abs(top - thresholds.default) <= thresholds.band).sum()
                ),
            },
            "onnx_test_accuracy": round(check["onnx_test_accuracy"], 4),
            "onnx_max_abs_prob_diff": float(f"{check['max_abs_prob_diff']:.3g}"),
        },
    )
    card_path = out.with_name(out.stem + ".card.yaml")
    dump_card(card, card_path)
    reread = load_card(card_path)
    if reread.sha256 != sha256_of(out) or reread.input != card.input:
        raise SystemExit(f"card {card_path} does not round-trip")
    # The service must get the same answer from the card it will actually read.
    verify_onnx(out, reread, split.test, probs["test"])

    print(
        f"wrote {out} ({out.stat().st_size} bytes, sha256 {card.sha256}) and {card_path}\n"
        f"training: {train_wall:.1f}s wall, {train_cpu:.1f}s CPU; "
        f"total {time.perf_counter() - wall_start:.1f}s wall, "
        f"{time.process_time() - cpu_start:.1f}s CPU"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

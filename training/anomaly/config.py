"""Settings of an anomaly / supervised good-vs-defect run, and the constants the graph and the card share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# one pHash, union-find and exposure-bracket rule for every split

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
INPUT_NAME = "images"
SCORE_NAME = "pred_score"
MAP_NAME = "anomaly_map"
OPSET = 17
# The backbone's normalisation: RGB, /255, mean = std = 0.5 (values in [-1, 1]).
MEAN = 0.5
STD = 0.5
BANK_NAME = "memory_bank_t"
PAD_VALUE = 114  # the service's letterbox padding (PreprocessSpec.pad_value)
NORMALIZE_MODES = ("none", "mean", "std")
AUGMENTS = "hvt"
MODES = ("good-only", "all", "auto")


class AnomalyDataError(ValueError):
    """The data cannot be used; the message says what to fix (one line)."""


@dataclass
class AnomalyConfig:
    data: Path
    out: Path = Path("models/mt-anomaly.onnx")
    report_dir: Path | None = None  # default: build/anomaly/<model stem>
    image_size: tuple[int, int] = (256, 256)  # (height, width), multiples of 32
    resize: str = "letterbox"  # the service's resize mode: letterbox | resize (stretch)
    layers: tuple[int, ...] = (10, 14)  # EfficientNet-Lite0 block indices
    backbone: Path | None = None  # None: ImageNet; or an efflite0 detector's best.pt
    bank_size: int = 16384
    coreset_pool: int = 0  # random patches the greedy coreset chooses from (0: all)
    coreset_chunk: int = 40_000  # the coreset runs per chunk of this many patches
    projection_dim: int = 64  # random projection used only for the coreset selection
    sigma: float = 4.0  # Gaussian smoothing of the map, in input pixels (0: none)
    normalize: str = "none"  # in-graph per-image grey-level normalisation: none | mean | std
    norm_mean: float = -0.2  # ... the normalised image's mean and std (backbone units, [-1, 1])
    norm_std: float = 0.25
    augment: str = ""  # bank augmentation: h (flip left-right), v (up-down), t (180 deg)
    topk: int = 1  # pred_score = mean of the k highest patch distances (1: the maximum)
    mask_padding: bool = False  # letterbox padding neither scores nor shows in the map
    fp16_bank: bool = True
    seed: int = 0
    good_class: str = "auto"  # "auto": the one folder named like good, ok, normal, ..._free
    good_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    calib_per_class: int = 20
    target_miss: float = 0.05
    band: float = 0.1
    max_good: int | None = None  # CI-sized runs: subsample the good images
    max_defects: int | None = None  # ... and each defect class
    batch_size: int = 8
    threads: int = 1
    skip_unreadable: bool = False
    progress: bool = True
    name: str | None = None
    version: str = "1"
    command: str | None = None
    # supervised and hybrid candidates (when defects are labelled): see candidates.py
    # good-only | all (good-only + supervised + hybrid, one recommended) | auto (all when there
    # are enough labelled defects, else good-only)
    mode: str = "good-only"
    labelled: tuple[Path, ...] = ()  # extra class folders, e.g. `lineinspect review export`
    sup_layers: tuple[int, ...] = (4, 7, 10, 15)  # blocks of the patch classifier's features
    sup_hidden: int = 0  # 0: linear head; > 0: MLP of that width
    sup_epochs: int = 20
    sup_topk: int = 5  # image logit = mean of the k highest patch logits
    folds: int = 5  # grouped folds of the out-of-fold calibration scores

    def validate(self) -> None:
        h, w = self.image_size
        if h % 32 or w % 32 or h < 64 or w < 64:
            raise AnomalyDataError(
                f"image size {h}x{w}: height and width must be multiples of 32 and at least 64 "
                "(the backbone's static 'same' padding is exact only there)"
            )
        if self.resize not in ("resize", "letterbox"):
            raise AnomalyDataError(f"resize must be 'resize' or 'letterbox', got {self.resize!r}")
        if not self.layers or min(self.layers) < 0 or max(self.layers) > 15:
            raise AnomalyDataError(
                f"layers must be EfficientNet-Lite0 blocks 0..15, got {self.layers}"
            )
        if self.bank_size < 1:
            raise AnomalyDataError("bank size must be at least 1")
        if self.normalize not in NORMALIZE_MODES:
            raise AnomalyDataError(
                f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {self.normalize!r}"
            )
        if set(self.augment) - set(AUGMENTS) or len(set(self.augment)) != len(self.augment):
            raise AnomalyDataError(
                f"augment must be letters from {AUGMENTS!r} (each at most once), got {self.augment!r}"
            )
        if self.topk < 1:
            raise AnomalyDataError("topk must be at least 1")
        if self.norm_std <= 0:
            raise AnomalyDataError("norm std must be positive")
        if self.mode not in MODES:
            raise AnomalyDataError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.sup_layers or min(self.sup_layers) < 0 or max(self.sup_layers) > 15:
            raise AnomalyDataError(
                f"supervised layers must be EfficientNet-Lite0 blocks 0..15, got {self.sup_layers}"
            )
        if self.folds < 2:
            raise AnomalyDataError("folds must be at least 2")

"""Good-vs-defect models for one part type, exported to one ONNX file each: a PatchCore-style
anomaly model trained from good parts only, and (when defects are labelled) a supervised patch
classifier and a hybrid of the two.

Modules: `config` (settings), `data` (folders, masks, split by physical tile), `features`
(backbone), `patchcore` (good-only scorer), `supervised` (patch classifier), `hybrid`,
`export` (ONNX, serving check), `evaluate` (calibration, metrics), `pipeline` (the runs).

The good-only model:

Method (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022), with the
pretrained EfficientNet-Lite0 ImageNet backbone instead of WideResNet-50:

0. in-graph input normalisation: the graph finds the letterbox padding in its own input (rows
   and columns that are all exactly the padding value) and standardises each image's grey level
   over the tile pixels (the tiles are shot at about five exposures), so the service's declared
   preprocessing stays unchanged;
1. features: the outputs of two MBConv blocks (default block 10, stride 16, 112 channels, and
   block 15, stride 32, 320 channels), each averaged over its 3x3 neighbourhood (PatchCore's
   local aggregation), the deeper one upsampled to the finer grid, concatenated per position;
2. memory bank: every patch feature of the good training images and of their left-right,
   up-down and 180-degree flips, reduced by greedy k-center coreset subsampling (on a random
   projection, as in the paper) to a fixed number of patches;
3. scoring: each patch's Euclidean distance to its nearest bank entry (|a|^2 + |b|^2 - 2ab, min
   over the bank), padding-only patches set to 0 -> `pred_score` [B] = the mean of the `topk`
   highest patch distances; the patch map, bilinearly upsampled to the input size,
   Gaussian-smoothed and zeroed on the padding -> `anomaly_map` [B, 1, H, W].

Everything runs inside the ONNX graph (the bank is an initializer, stored as fp16 by default).
The bank is position-free: the tiles are not aligned and vary in size, so PaDiM's per-position
Gaussians would model the crop geometry rather than the surface.

The split keeps every tile group (the same tile shot at several exposures, `expN_num_M` with
close frame numbers, plus pHash near-duplicates) inside one split, so no physical tile is both in the bank and in
the evaluation. Good images: 70/15/15 train/val/test by group; each defect class: a calibration
subset (`calib_per_class`, at most half of the class) to validation, the rest to test.
The threshold is calibrated on validation: the highest raw score that keeps the miss rate on the
calibration defects at or under `target_miss`; the card's min/max come from validation scores.
"""

from service.inference.preprocess import preprocess
from training.anomaly.config import (
    AUGMENTS,
    BANK_NAME,
    IMAGE_EXTS,
    INPUT_NAME,
    MAP_NAME,
    MEAN,
    NORMALIZE_MODES,
    OPSET,
    PAD_VALUE,
    SCORE_NAME,
    STD,
    AnomalyConfig,
    AnomalyDataError,
)
from training.anomaly.data import (
    GOOD_NAMES,
    TILE_GAP,
    TILE_NAME,
    Split,
    _images_in,
    _is_good_name,
    discover,
    duplicate_groups,
    make_split,
    read_image,
    resolve_data_root,
)
from training.anomaly.evaluate import auroc, calibrate, pixel_auroc, split_metrics
from training.anomaly.export import (
    export_onnx,
    onnx_scores,
    onnx_session,
    serve_check,
    torch_scores,
)
from training.anomaly.features import (
    InputNorm,
    PatchFeatures,
    augmentations,
    extract_patches,
    input_norm,
    load_backbone,
    load_batches,
    preprocess_spec,
)
from training.anomaly.patchcore import (
    PatchCoreModel,
    build_bank,
    gaussian_kernel,
    greedy_coreset,
    make_model,
    store_bank,
)
from training.anomaly.pipeline import Trained, fit, train
from training.anomaly.recommend import fit_all
from training.hygiene import phash

__all__ = [
    "AUGMENTS",
    "BANK_NAME",
    "GOOD_NAMES",
    "IMAGE_EXTS",
    "INPUT_NAME",
    "MAP_NAME",
    "MEAN",
    "NORMALIZE_MODES",
    "OPSET",
    "PAD_VALUE",
    "SCORE_NAME",
    "STD",
    "TILE_GAP",
    "TILE_NAME",
    "AnomalyConfig",
    "AnomalyDataError",
    "InputNorm",
    "PatchCoreModel",
    "PatchFeatures",
    "Split",
    "Trained",
    "_images_in",
    "_is_good_name",
    "augmentations",
    "auroc",
    "build_bank",
    "calibrate",
    "discover",
    "duplicate_groups",
    "export_onnx",
    "extract_patches",
    "fit",
    "fit_all",
    "gaussian_kernel",
    "greedy_coreset",
    "input_norm",
    "load_backbone",
    "load_batches",
    "make_model",
    "make_split",
    "onnx_scores",
    "onnx_session",
    "phash",
    "pixel_auroc",
    "preprocess",
    "preprocess_spec",
    "read_image",
    "resolve_data_root",
    "serve_check",
    "split_metrics",
    "store_bank",
    "torch_scores",
    "train",
]

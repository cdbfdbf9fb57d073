"""The model card: a YAML file next to an ONNX model that says how to serve it.

`models/foo.onnx` is described by `models/foo.card.yaml`. Everything in the card overrides
what was auto-detected from the ONNX metadata and output shapes; everything missing from it
is auto-detected or defaulted, and `lineinspect models inspect` says which is which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

Layout = Literal[
    "yolov5",
    "yolov8",
    "end2end",
    "darknet",
    "boxes_confs",
    "yolov7_end2end",
    "efficient_nms",
    "onnx_zoo_yolov3",
    "yolox",
]
ResizeMode = Literal["letterbox", "resize", "center_crop", "letterbox_top_left"]
# Each detector layout's output roles, which the card's `outputs` may name (darknet's `heads`
# is a list of outputs, the others one output each).
OUTPUT_ROLES: dict[str, tuple[str, ...]] = {
    "yolov5": ("predictions",),
    "yolov8": ("predictions",),
    "end2end": ("predictions",),
    "darknet": ("heads",),
    "boxes_confs": ("boxes", "confs"),
    "yolov7_end2end": ("detections",),
    "efficient_nms": ("num_dets", "boxes", "scores", "classes"),
    "onnx_zoo_yolov3": ("boxes", "scores", "indices"),
    "yolox": ("predictions",),
}
ColorOrder = Literal["rgb", "bgr", "gray"]


class CardError(ValueError):
    """A model card that cannot be read or does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """How a decoded BGR uint8 image becomes the model's input tensor."""

    size: tuple[int, int] | None = Field(
        None, description="Input height and width in pixels; default: from the ONNX input shape."
    )
    resize: ResizeMode | None = Field(
        None,
        description="letterbox (keep aspect, pad both sides), resize (stretch), center_crop "
        "(resize the short side, crop the centre) or letterbox_top_left (keep aspect, pad right "
        "and bottom, as YOLOX). Default: the detector layout's own (docs/MODELS.md), letterbox "
        "for other detectors, resize otherwise.",
    )
    color: ColorOrder = Field(
        "rgb", description="Channel order the model expects (YOLOX layout default: bgr)."
    )
    scale: float = Field(
        1.0 / 255.0,
        description="Pixel values are multiplied by this first (YOLOX layout default: 1).",
    )
    mean: tuple[float, float, float] | float = Field(
        0.0, description="Subtracted after scaling (per channel, in the model's channel order)."
    )
    std: tuple[float, float, float] | float = Field(
        1.0, description="Divided after subtracting the mean (per channel)."
    )
    pad_value: int = Field(
        114,
        ge=0,
        le=255,
        description="Letterbox border value (darknet and onnx_zoo_yolov3 layouts: 128).",
    )
    rect: bool = Field(
        True,
        description="Detectors whose ONNX input has a dynamic height and width: letterbox to "
        "the smallest multiple of the model's stride that holds the frame (a 1280x720 frame "
        "-> 640x384 at size 640), as Ultralytics' predict does for such models, instead of the "
        "full square. No effect on square frames or fixed-size models. false: always the square.",
    )


class OutputSpec(_Strict):
    """How to read the raw output of a classifier or anomaly model."""

    kind: Literal["probabilities", "logits"] | None = Field(
        None,
        description="classify: whether the output already sums to one per row. Default: "
        "detected from a warm-up run.",
    )
    score: str | None = Field(None, description="anomaly: name of the image-score output.")
    map: str | None = Field(None, description="anomaly: name of the anomaly-map output, if any.")


class ThresholdSpec(_Strict):
    """Decision settings tuned on validation data."""

    default: float = Field(0.5, ge=0.0, le=1.0, description="Threshold for classes not listed.")
    per_class: dict[str, float] = Field(
        default_factory=dict, description="Class name -> confidence threshold."
    )
    band: float = Field(
        0.1, ge=0.0, le=0.5, description="Half-width of the uncertainty band around a threshold."
    )
    per_class_band: dict[str, float] = Field(
        default_factory=dict, description="Class name -> band half-width, where it differs."
    )
    min_box_size: float = Field(
        0.0,
        ge=0.0,
        description="Detections whose shorter side is under this many pixels (in the original "
        "image) are ignored: the domain's minimum reliable defect is about 20x20 px.",
    )


class AnomalySpec(_Strict):
    """Anomaly-score normalisation: raw scores are mapped so that `threshold` lands on 0.5."""

    threshold: float = Field(description="Raw score at which a part stops being good.")
    min: float = Field(description="Raw score of the most normal part seen in calibration.")
    max: float = Field(description="Raw score of the most anomalous part seen in calibration.")

    @model_validator(mode="after")
    def _ordered(self) -> AnomalySpec:
        if not self.max > self.min:
            raise ValueError(f"anomaly.max ({self.max}) must be greater than min ({self.min})")
        return self


class ModelCard(_Strict):
    """Everything the service needs to serve one ONNX model correctly."""

    schema_version: int = Field(1, description="Card format version.")
    name: str | None = Field(None, description="Model name; default: the file's stem.")
    version: str | None = Field(None, description="Model version, carried on every verdict.")
    task: str | None = Field(
        None,
        description="A model family: detect, classify or anomaly (service/inference/families).",
    )
    layout: Layout | None = Field(
        None, description="Detector output layout, if not detected (docs/MODELS.md)."
    )
    outputs: dict[str, str | list[str]] | None = Field(
        None,
        description="Detector output roles -> output names, where the graph's order or names "
        "do not say: darknet `heads` (a list), boxes_confs `boxes` and `confs`, "
        "yolov7_end2end `detections`, efficient_nms `num_dets`, `boxes`, `scores`, `classes`, "
        "onnx_zoo_yolov3 `boxes`, `scores`, `indices`, yolox and the Ultralytics layouts "
        "`predictions`.",
    )
    anchors: list[tuple[PositiveFloat, PositiveFloat]] | None = Field(
        None,
        description="darknet: anchor (width, height) pairs in input pixels, as the cfg's [yolo] "
        "`anchors` lists them.",
    )
    masks: list[list[int]] | None = Field(
        None,
        description="darknet: per head (in `outputs.heads` order, else the graph's output "
        "order), the indices into `anchors` it uses: the cfg's [yolo] `mask`. Default: the "
        "anchors split evenly, the largest to the coarsest head.",
    )
    scale_x_y: float | list[float] | None = Field(
        None,
        description="darknet (YOLOv4): the [yolo] layers' `scale_x_y`, one for every head or one "
        "per head. Default 1.",
    )
    strides: list[PositiveInt] | None = Field(
        None,
        description="yolox: the stride of each grid level, in output order. Default [8, 16, 32].",
    )
    sigmoid: bool | None = Field(
        None,
        description="yolox: apply a sigmoid to objectness and class scores (an export whose graph "
        "ends without one). Default: detected from a test inference.",
    )
    nms_class_agnostic: bool | None = Field(
        None,
        description="One NMS across all classes instead of one per class (default).",
    )
    classes: list[str] | None = Field(None, description="Class names in output order.")
    good_classes: list[str] = Field(
        default_factory=list, description="Classes that mean a good part (never FAIL)."
    )
    input: InputSpec = Field(default_factory=InputSpec, description="Preprocessing.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Output reading.")
    thresholds: ThresholdSpec = Field(default_factory=ThresholdSpec, description="Decisions.")
    anomaly: AnomalySpec | None = Field(None, description="Anomaly normalisation.")
    nms_iou: float = Field(
        0.45,
        gt=0.0,
        le=1.0,
        description="IoU for class-aware NMS; unset: the exporter's predict default "
        "(Ultralytics 0.7, the YOLOv5 repository 0.45).",
    )
    max_detections: int = Field(
        300,
        ge=1,
        description="Detections kept per image after NMS; unset: the exporter's predict "
        "default (Ultralytics 300, the YOLOv5 repository 1000).",
    )
    sha256: str | None = Field(
        None, description="sha256 of the ONNX file this card was written for; checked at load."
    )
    # Written by the training companion; carried through as-is.
    training: dict[str, Any] = Field(default_factory=dict, description="Training summary.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Evaluation metrics.")
    reference: dict[str, Any] = Field(
        default_factory=dict, description="Reference distributions for drift monitoring."
    )

    @model_validator(mode="after")
    def _classes_known(self) -> ModelCard:
        if self.classes is None:
            return self
        known = set(self.classes)
        for where, names in (
            ("good_classes", self.good_classes),
            ("thresholds.per_class", list(self.thresholds.per_class)),
            ("thresholds.per_class_band", list(self.thresholds.per_class_band)),
        ):
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(
                    f"{where} names unknown classes {unknown}; classes: {self.classes}"
                )
        return self


def card_path_for(model_path: Path) -> Path:
    """`models/foo.onnx` -> `models/foo.card.yaml`."""
    return model_path.with_name(model_path.stem + ".card.yaml")


def load_card(path: Path) -> ModelCard:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CardError(f"cannot read model card {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise CardError(f"model card {path} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CardError(f"model card {path} must be a mapping, got {type(data).__name__}")
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<card>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise CardError(f"model card {path} is invalid: {problems}") from exc


def dump_card(card: ModelCard, path: Path) -> None:
    data = card.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")

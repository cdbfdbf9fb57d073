"""Letterbox / resize / crop geometry against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from service.inference.preprocess import (
    PreprocessSpec,
    center_crop,
    letterbox,
    preprocess,
    stretch,
)


def test_letterbox_wide_image_pads_top_and_bottom() -> None:
    image = np.full((250, 400, 3), 7, np.uint8)  # h=250, w=400
    out, geom = letterbox(image, (640, 640))
    assert out.shape == (640, 640, 3)
    # r = min(640/250, 640/400) = 1.6 -> content 640x400, 120 px of padding above and below
    assert (geom.scale_x, geom.scale_y, geom.pad_x, geom.pad_y) == (1.6, 1.6, 0.0, 120.0)
    assert (out[:120] == 114).all() and (out[520:] == 114).all()
    assert (out[120:520] == 7).all()


def test_letterbox_tall_image_pads_left_and_right() -> None:
    image = np.full((400, 250, 3), 7, np.uint8)
    out, geom = letterbox(image, (640, 640))
    assert (geom.pad_x, geom.pad_y) == (120.0, 0.0)
    assert (out[:, :120] == 114).all() and (out[:, 120:520] == 7).all()


def test_letterbox_odd_padding_rounds_like_ultralytics() -> None:
    # 373x248 (a real magnetic-tile size) into 640: r = 640/373, content width round(248*r)=426
    image = np.zeros((373, 248, 3), np.uint8)
    out, geom = letterbox(image, (640, 640))
    assert out.shape == (640, 640, 3)
    assert geom.pad_x == 107.0  # dw = (640 - 426) / 2 = 107.0 -> left round(106.9) = 107
    image = np.zeros((100, 99, 3), np.uint8)  # content 634 wide: dw = 3 -> left 3, right 3
    out, geom = letterbox(image, (640, 640))
    assert geom.pad_x == 3.0 and out.shape == (640, 640, 3)
    image = np.zeros((640, 637, 3), np.uint8)  # dw = 1.5 -> left round(1.4)=1, right round(1.6)=2
    out, geom = letterbox(image, (640, 640))
    assert geom.pad_x == 1.0 and out.shape == (640, 640, 3)
    assert (out[:, 0] == 114).all() and (out[:, 1] == 0).all() and (out[:, -2:] == 114).all()


@pytest.mark.parametrize(
    ("image_hw", "size", "stride", "out_hw", "pad_xy"),
    [
        # 1280x720 camera at 640: content 640x360, 280 rows of padding -> 280 % 32 = 24
        ((720, 1280), (640, 640), 32, (384, 640), (0.0, 12.0)),
        ((720, 1280), (320, 320), 32, (192, 320), (0.0, 6.0)),
        # tall 200x150 at 224: content 168 wide, 56 % 32 = 24 -> 192 (left round(11.9) = 12)
        ((200, 150), (224, 224), 32, (224, 192), (12.0, 0.0)),
        # odd remainder: 123x200 -> content 224x138, 86 % 32 = 22 -> 160, top 11
        ((123, 200), (224, 224), 32, (160, 224), (0.0, 11.0)),
        # square frames and exact multiples are unchanged by the stride
        ((200, 200), (224, 224), 32, (224, 224), (0.0, 0.0)),
        ((480, 640), (640, 640), 32, (480, 640), (0.0, 0.0)),
        ((720, 1280), (640, 640), None, (640, 640), (0.0, 140.0)),
    ],
)
def test_rect_letterbox_pads_to_the_stride_multiple(
    image_hw: tuple[int, int],
    size: tuple[int, int],
    stride: int | None,
    out_hw: tuple[int, int],
    pad_xy: tuple[float, float],
) -> None:
    out, geom = letterbox(np.zeros((*image_hw, 3), np.uint8), size, stride=stride)
    assert out.shape[:2] == out_hw
    assert (geom.pad_x, geom.pad_y) == pad_xy
    assert geom.image_size == image_hw


def test_inverse_mapping_round_trips_hand_computed_box() -> None:
    _, geom = letterbox(np.zeros((250, 400, 3), np.uint8), (640, 640))
    boxes = np.array([[240, 280, 400, 360]], np.float32)
    np.testing.assert_allclose(geom.to_original(boxes), [[150, 100, 250, 150]])
    # outside the content (in the padding) clips to the image
    np.testing.assert_allclose(
        geom.to_original(np.array([[-5, 0, 700, 640]], np.float32)), [[0, 0, 400, 250]]
    )


def test_stretch_and_center_crop_geometry() -> None:
    _, geom = stretch(np.zeros((100, 200, 3), np.uint8), (50, 50))
    assert (geom.scale_x, geom.scale_y) == (0.25, 0.5)
    out, geom = center_crop(
        np.arange(100 * 200, dtype=np.uint32).reshape(100, 200).astype(np.uint8), (100, 100)
    )
    assert out.shape == (100, 100)
    assert geom.pad_x == -50.0  # the crop starts 50 px in


def test_preprocess_colour_order_scale_and_normalisation() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[:] = (10, 20, 30)  # B, G, R
    spec = PreprocessSpec((4, 4), "resize", "rgb", 1 / 255, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    tensor, _ = preprocess(image, spec)
    assert tensor.shape == (3, 4, 4) and tensor.dtype == np.float32
    expected = [(30 / 255 - 0.5) / 0.5, (20 / 255 - 0.5) / 0.5, (10 / 255 - 0.5) / 0.5]
    np.testing.assert_allclose(tensor[:, 0, 0], expected, rtol=1e-6)
    bgr = PreprocessSpec((4, 4), "resize", "bgr", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(preprocess(image, bgr)[0][:, 0, 0], [10, 20, 30])
    gray = PreprocessSpec((4, 4), "resize", "gray", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert preprocess(image, gray)[0].shape == (1, 4, 4)


@pytest.mark.parametrize("shape", [(30, 40), (30, 40, 3)])
def test_preprocess_accepts_grey_and_colour(shape: tuple[int, ...]) -> None:
    spec = PreprocessSpec((16, 16), "letterbox", "rgb", 1 / 255, (0.0,) * 3, (1.0,) * 3)
    tensor, geom = preprocess(np.zeros(shape, np.uint8), spec)
    assert tensor.shape == (3, 16, 16)
    assert geom.image_size == (30, 40)

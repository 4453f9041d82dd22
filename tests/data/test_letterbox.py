"""Letterbox: sizes, padding, and round trips of boxes, points, polygons and masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from armbench_segmentation.data.letterbox import PAD_VALUE, Letterbox
from armbench_segmentation.structures import masks_to_boxes

# (orig_h, orig_w): ARMBench landscape, portrait, exact fit, upscaling, extreme strips
SHAPES = [(2048, 2448), (2448, 2048), (640, 640), (160, 200), (200, 120), (100, 640), (640, 90), (1280, 1280)]


@pytest.mark.parametrize("hw", SHAPES)
def test_geometry(hw):
    lb = Letterbox.compute(hw, 640)
    assert max(lb.new_h, lb.new_w) == 640
    assert abs(lb.new_w / lb.new_h - hw[1] / hw[0]) <= 2 / min(lb.new_h, lb.new_w)
    x1, y1, x2, y2 = lb.content_box()
    assert 0 <= x1 and x2 <= 640 and 0 <= y1 and y2 <= 640
    assert abs(x1 - (640 - x2)) <= 1 and abs(y1 - (640 - y2)) <= 1  # centred


def test_known_values():
    lb = Letterbox.compute((2048, 2448), 640)
    assert (lb.new_w, lb.new_h, lb.pad_x, lb.pad_y) == (640, 535, 0, 52)
    lb = Letterbox.compute((640, 640), 640)
    assert (lb.new_w, lb.new_h, lb.pad_x, lb.pad_y) == (640, 640, 0, 0)
    np.testing.assert_allclose(lb.boxes_to_model([[1, 2, 3, 4]]), [[1, 2, 3, 4]])


@pytest.mark.parametrize("hw", SHAPES)
def test_box_and_point_round_trip(hw):
    lb = Letterbox.compute(hw, 640)
    rng = np.random.default_rng(0)
    h, w = hw
    xy1 = rng.uniform(0, [w * 0.6, h * 0.6], size=(20, 2))
    xy2 = xy1 + rng.uniform(1, [w * 0.4, h * 0.4], size=(20, 2))
    boxes = np.concatenate([xy1, xy2], axis=1)
    back = lb.boxes_to_original(lb.boxes_to_model(boxes))
    assert np.abs(back - boxes).max() < 0.01 * max(1.0, max(hw) / 640)  # float32 only
    pts = rng.uniform(0, [w, h], size=(30, 2))
    np.testing.assert_allclose(lb.points_to_original(lb.points_to_model(pts)), pts, atol=1e-6)
    poly = pts.reshape(-1)
    np.testing.assert_allclose(lb.polygon_to_model(poly), lb.points_to_model(pts).reshape(-1))


@pytest.mark.parametrize("hw", SHAPES)
def test_mask_round_trip_within_one_pixel(hw):
    """Masks made in the model frame survive model -> original -> model exactly up to 1 px,
    and original -> model -> original boxes agree within one model pixel."""
    lb = Letterbox.compute(hw, 640)
    x1, y1, x2, y2 = lb.content_box()
    m = np.zeros((1, 640, 640), bool)
    bx1, by1 = x1 + (x2 - x1) // 5, y1 + (y2 - y1) // 4
    bx2, by2 = x1 + 3 * (x2 - x1) // 5, y1 + 3 * (y2 - y1) // 4
    m[0, by1:by2, bx1:bx2] = True
    orig = lb.masks_to_original(m)
    assert orig.shape == (1, *hw)
    again = lb.masks_to_model(orig)
    assert np.abs(masks_to_boxes(again) - masks_to_boxes(m)).max() <= 1
    # box of the original-frame mask matches the model box mapped back (within 1 model px)
    tol = 1 / min(lb.scale_x, lb.scale_y) + 1
    assert np.abs(masks_to_boxes(orig) - lb.boxes_to_original(masks_to_boxes(m))).max() <= tol
    # orig -> model -> orig
    o = np.zeros((1, *hw), bool)
    o[0, hw[0] // 3 : 2 * hw[0] // 3, hw[1] // 4 : hw[1] // 2] = True
    back = lb.masks_to_original(lb.masks_to_model(o))
    assert np.abs(masks_to_boxes(back) - masks_to_boxes(o)).max() <= tol


def test_apply_image_pads_gray_and_accepts_reduced_decode():
    lb = Letterbox.compute((160, 200), 640)
    img = np.full((160, 200, 3), 7, np.uint8)
    out = lb.apply_image(img)
    assert out.shape == (640, 640, 3)
    assert (out[: lb.pad_y] == PAD_VALUE).all() and (out[lb.pad_y + lb.new_h :] == PAD_VALUE).all()
    assert (out[lb.pad_y : lb.pad_y + lb.new_h] == 7).all()
    big = Letterbox.compute((2048, 2448), 640)
    half = np.full((1024, 1224, 3), 50, np.uint8)  # a 1/2 decode of a 2448x2048 image
    out = big.apply_image(half)
    assert out.shape == (640, 640, 3) and (out[big.pad_y : big.pad_y + big.new_h] == 50).all()


def test_invalid_sizes():
    with pytest.raises(ValueError, match="positive"):
        Letterbox.compute((0, 10), 640)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(8, 4000), w=st.integers(8, 4000), out=st.sampled_from([320, 480, 640]))
def test_property_points_inside_content(h, w, out):
    lb = Letterbox.compute((h, w), out)
    corners = lb.points_to_model(np.array([[0, 0], [w, h]], float))
    x1, y1, x2, y2 = lb.content_box()
    np.testing.assert_allclose(corners, [[x1, y1], [x2, y2]], atol=1e-9)

import numpy as np
import pytest

from armbench_segmentation.structures import Instances
from armbench_segmentation.visualize import (
    GT_COLOR, PALETTE, draw_boxes, draw_comparison, heatmap_overlay, instance_color, overlay_masks, thumbnail,
)


def _gray(h=40, w=60, v=100):
    return np.full((h, w, 3), v, np.uint8)


def test_instance_color_palette():
    assert instance_color(0) == PALETTE[0] and instance_color(len(PALETTE)) == PALETTE[0]
    assert len(set(PALETTE)) == len(PALETTE)
    assert GT_COLOR not in PALETTE
    assert all(len(instance_color(i)) == 3 for i in range(30))


def test_overlay_masks_blends_only_inside_and_does_not_modify_input():
    img = _gray()
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 5:10, 5:10] = True
    masks[1, 8:12, 8:12] = True  # overlaps mask 0: drawn on top
    out = overlay_masks(img, masks, colors=[(200, 0, 0), (0, 0, 200)], alpha=0.5)
    assert (img == 100).all()
    assert tuple(out[6, 6]) == (150, 50, 50)
    assert tuple(out[11, 11]) == (50, 50, 150)
    assert tuple(out[9, 9]) == (75, 25, 125)  # blue over red-blended pixel
    assert (out[20:, :] == 100).all()
    np.testing.assert_array_equal(overlay_masks(img, masks, alpha=0.0), img)
    np.testing.assert_array_equal(overlay_masks(img, np.zeros((0, 40, 60), bool)), img)
    with pytest.raises(ValueError, match="colours"):
        overlay_masks(img, masks, colors=[(1, 2, 3)])


def test_draw_boxes_solid_and_dashed():
    img = _gray()
    out = draw_boxes(img, np.array([[10, 10, 30, 20]]), colors=[(255, 0, 0)])
    assert tuple(out[10, 15]) == (255, 0, 0) and tuple(out[19, 15]) == (255, 0, 0)  # top and bottom rows
    assert tuple(out[15, 10]) == (255, 0, 0) and tuple(out[15, 29]) == (255, 0, 0)  # left and right columns
    assert tuple(out[15, 20]) == (100, 100, 100)  # interior untouched
    dashed = draw_boxes(img, np.array([[10, 10, 50, 30]]), colors=[(255, 0, 0)], dashed=True)
    top = (dashed[10, 10:50] == (255, 0, 0)).all(axis=1)
    assert top.any() and not top.all()  # gaps in the dashes
    labeled = draw_boxes(img, np.array([[10, 20, 50, 38]]), labels=["0.93"], colors=[(255, 0, 0)])
    assert (labeled[:20] != 100).any()  # label drawn above the box
    np.testing.assert_array_equal(draw_boxes(img, np.zeros((0, 4))), img)
    np.testing.assert_array_equal(draw_boxes(img, np.array([[100, 100, 120, 120]])), img)  # outside: nothing


def test_draw_comparison_styles_and_subsets():
    img = _gray(60, 80)
    gt_masks = np.zeros((2, 60, 80), bool)
    gt_masks[0, 10:30, 10:30] = True
    gt_masks[1, 35:55, 40:70] = True
    gt = Instances(boxes=[[10, 10, 30, 30], [40, 35, 70, 55]], class_ids=[0, 0], image_size=(60, 80),
                   masks=gt_masks, ids=[101, 102])
    pm = np.zeros((1, 60, 80), bool)
    pm[0, 12:28, 12:28] = True
    pred = Instances(boxes=[[12, 12, 28, 28]], class_ids=[0], image_size=(60, 80), masks=pm, scores=[0.9], ids=[3])
    out = draw_comparison(img, gt, pred)
    green = (out == GT_COLOR).all(axis=2)
    assert green[10, 20] and green[20, 10] and not green[20, 20]  # GT outline only
    assert green[35, 50]
    fill = out[20, 20].astype(int)
    assert tuple(fill) != (100, 100, 100) and not (fill == GT_COLOR).all()  # translucent prediction fill
    np.testing.assert_array_equal(fill, overlay_masks(img, pm, [instance_color(3)], 0.45)[20, 20])
    only = draw_comparison(img, gt, pred, gt_ids=[102], pred_ids=[])
    green = (only == GT_COLOR).all(axis=2)
    assert not green[10, 20] and green[35, 50] and tuple(only[20, 20]) == (100, 100, 100)
    with pytest.raises(ValueError, match="frame"):
        draw_comparison(_gray(10, 10), gt, None)
    empty = draw_comparison(img, Instances.empty((60, 80)), Instances.empty((60, 80), with_scores=True))
    np.testing.assert_array_equal(empty, img)


def test_heatmap_overlay():
    img = _gray(20, 20, 0)
    heat = np.zeros((10, 10), np.float32)
    heat[:, 5:] = 1.0
    out = heatmap_overlay(img, heat, alpha=1.0)
    assert out.shape == (20, 20, 3)
    assert not np.array_equal(out[5, 2], out[5, 17])  # low vs high
    assert (out[:, :8] == out[0, 0]).all()
    flat = heatmap_overlay(img, np.full((20, 20), 3.0), alpha=0.5)  # constant: no division by zero
    assert flat.dtype == np.uint8
    nan = heatmap_overlay(img, np.full((20, 20), np.nan))
    assert np.isfinite(nan.astype(float)).all()
    np.testing.assert_array_equal(heatmap_overlay(img, heat, alpha=0.0), img)


def test_thumbnail():
    img = np.zeros((200, 100, 3), np.uint8)
    img[:, 50:] = 200
    t = thumbnail(img, 50)
    assert t.shape == (50, 25, 3)
    assert t[:, :10].max() == 0 and t[:, -10:].min() == 200
    assert thumbnail(img, 500).shape == (200, 100, 3)
    with pytest.raises(ValueError):
        thumbnail(img, 0)

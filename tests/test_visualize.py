import numpy as np
import pytest

from armbench_segmentation.structures import Instances
from armbench_segmentation.visualize import (
    GT_COLOR, PALETTE, draw_boxes, draw_comparison, draw_error_instances, heatmap_overlay, instance_color,
    instance_labels, label_map, overlay_masks, thumbnail,
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


def _rect_masks(hw, rects):
    masks = np.zeros((len(rects), *hw), bool)
    for i, (x1, y1, x2, y2) in enumerate(rects):
        masks[i, y1:y2, x1:x2] = True
    return masks


def test_label_map_background_zero_small_on_top():
    masks = _rect_masks((8, 10), [(0, 0, 10, 8), (2, 2, 4, 4)])  # large, then small inside it
    lm, kept = label_map(masks)
    assert lm.dtype == np.uint8 and lm.shape == (8, 10)
    assert lm[0, 0] == 1 and lm[2, 2] == 2  # instance i has value i + 1; the small one stays visible
    np.testing.assert_array_equal(kept, [0, 1])
    empty, none_kept = label_map(np.zeros((0, 8, 10), bool))
    assert not empty.any() and none_kept.shape == (0,)
    lm, _ = label_map(_rect_masks((8, 10), [(2, 2, 4, 4), (0, 0, 10, 8)]))  # order does not matter
    assert lm[0, 0] == 2 and lm[2, 2] == 1


def test_label_map_cap_keeps_the_largest_and_warns(caplog):
    # areas 1, 4, 9, 16: cap at 2 keeps instances 2 and 3, renumbered 1 and 2
    masks = _rect_masks((20, 20), [(0, 0, 1, 1), (2, 0, 4, 2), (5, 0, 8, 3), (10, 0, 14, 4)])
    with caplog.at_level("WARNING"):
        lm, kept = label_map(masks, max_labels=2)
    np.testing.assert_array_equal(kept, [2, 3])
    assert lm[0, 0] == 0 and lm[0, 2] == 0 and lm[0, 5] == 1 and lm[0, 10] == 2
    assert "4 instances, showing the 2 largest" in caplog.text
    with pytest.raises(ValueError, match="max_labels"):
        label_map(masks, max_labels=256)
    masks300 = np.zeros((300, 4, 4), bool)
    masks300[:, 0, 0] = True
    lm, kept = label_map(masks300)  # more than uint8 can number: no overflow
    assert len(kept) == 255 and lm.max() <= 255


def test_instance_labels():
    inst = Instances(boxes=np.zeros((2, 4)), class_ids=[1, 0], image_size=(8, 8), scores=[0.934, 0.5])
    assert instance_labels(inst, ["Object", "Tote"], "pred ") == ["pred Tote #0 0.93", "pred Object #1 0.50"]
    gt = Instances(boxes=np.zeros((1, 4)), class_ids=[0], image_size=(8, 8))
    assert instance_labels(gt, ["Object", "Tote"]) == ["Object #0"]


def test_draw_error_instances_draws_only_the_involved_instances():
    from armbench_segmentation.metrics.sample_evaluation import SampleEvaluation
    from armbench_segmentation.metrics.matching import match
    from armbench_segmentation.metrics.segmentation import segmentation_errors

    hw = (40, 60)
    gt = Instances(np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 20, 50, 30]], np.float32), [0, 0, 0], hw,
                   masks=_rect_masks(hw, [(0, 0, 10, 10), (20, 0, 30, 10), (40, 20, 50, 30)]))
    # prediction 0 swallows GT 0 and 1; prediction 1 matches GT 2 exactly
    pred = Instances(np.array([[0, 0, 30, 10], [40, 20, 50, 30]], np.float32), [0, 0], hw,
                     masks=_rect_masks(hw, [(0, 0, 30, 10), (40, 20, 50, 30)]), scores=[0.9, 0.8])
    ev = SampleEvaluation(predictions=pred, class_names=("Object", "Tote"), uncertainty={}, gt=gt,
                          segmentation=segmentation_errors(gt, pred), matching=match(gt, pred))
    involved = ev.involved()
    assert involved["under_segmenting"] == {"gt": [0, 1], "pred": [0]}
    assert involved["missed"] == {"gt": [0, 1], "pred": []} and involved["false_positive"]["pred"] == [0]
    img = _gray()
    under = draw_error_instances(img, gt, pred, involved, "under_segmenting")
    np.testing.assert_array_equal(under, draw_comparison(img, gt[[0, 1]], pred[[0]]))
    assert (under[25, 45] == img[25, 45]).all()  # the correct prediction is not drawn
    np.testing.assert_array_equal(draw_error_instances(img, gt, pred, involved, "over_segmented"), img)  # no split
    with pytest.raises(ValueError, match="unknown error kind"):
        draw_error_instances(img, gt, pred, involved, "both")
    with pytest.raises(ValueError, match="do not fit"):
        draw_error_instances(img, gt[[0]], pred, involved, "under_segmenting")

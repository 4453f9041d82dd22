"""Over/under segmentation on tiny hand-drawn masks, plus a property test against a
per-pair brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from armbench_segmentation.config import MetricsConfig
from armbench_segmentation.metrics.overlap import mask_overlaps
from armbench_segmentation.metrics.segmentation import duplicate_groups, segmentation_errors
from armbench_segmentation.structures import Instances, masks_to_boxes

H, W = 20, 40
OBJ, TOTE = 0, 1


def inst(boxes, classes=None, scores=None, ids=None, hw=(H, W)) -> Instances:
    masks = np.zeros((len(boxes), *hw), bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = True
    classes = [OBJ] * len(boxes) if classes is None else classes
    return Instances(masks_to_boxes(masks), classes, hw, masks=masks, scores=scores, ids=ids)


def pred(boxes, scores=None, classes=None, ids=None) -> Instances:
    scores = [0.9] * len(boxes) if scores is None else scores
    return inst(boxes, classes, scores, ids)


GT2 = inst([(0, 0, 10, 10), (20, 0, 30, 10)], ids=[101, 102])  # two separate objects


def test_empty_predictions():
    e = segmentation_errors(GT2, Instances.empty((H, W), with_scores=True))
    d = e.as_dict()
    assert d["over_segmented"] == 0 and d["under_segmented"] == 0
    assert d["over_segmented_mean_parts"] is None and d["under_segmented_mean_confidence"] is None
    assert d["num_gt"] == 2 and d["num_pred"] == 0
    assert not any(isinstance(v, float) and math.isnan(v) for v in d.values())


def test_empty_gt():
    e = segmentation_errors(Instances.empty((H, W)), pred([(0, 0, 10, 10)]))
    assert e.as_dict()["under_segmented_count"] == 0 and e.num_pred == 1


def test_one_object_split_in_two():
    p = pred([(0, 0, 5, 10), (5, 0, 10, 10), (20, 0, 30, 10)], scores=[0.6, 0.8, 0.9], ids=[7, 8, 9])
    e = segmentation_errors(GT2, p)
    assert e.over_segmented and e.over_segmented_count == 1 and e.over_segmented_count_legacy == 1
    assert not e.under_segmented
    assert e.over_segmented_mean_parts == 2.0
    np.testing.assert_array_equal(e.over_segmented_gt_ids, [101])
    np.testing.assert_array_equal(e.over_segmented_pred_ids, [7, 8])
    assert e.over_segmented_mean_confidence == pytest.approx(0.7)
    assert e.duplicate_count == 0


def test_two_objects_merged_in_one():
    p = pred([(0, 0, 30, 10)], scores=[0.5], ids=[3])
    e = segmentation_errors(GT2, p)
    assert e.under_segmented and e.under_segmented_count == 1 and not e.over_segmented
    assert e.under_segmented_mean_parts == 2.0
    np.testing.assert_array_equal(e.under_segmented_pred_ids, [3])
    np.testing.assert_array_equal(e.under_segmented_gt_ids, [101, 102])
    assert e.under_segmented_mean_confidence == pytest.approx(0.5)


def test_involved_ids_by_kind():
    over = segmentation_errors(GT2, pred([(0, 0, 5, 10), (5, 0, 10, 10), (20, 0, 30, 10)], ids=[7, 8, 9]))
    gt_ids, pred_ids = over.involved_ids("over")
    np.testing.assert_array_equal(gt_ids, [101])
    np.testing.assert_array_equal(pred_ids, [7, 8])
    assert [len(a) for a in over.involved_ids("under")] == [0, 0]
    under = segmentation_errors(GT2, pred([(0, 0, 30, 10)], ids=[3]))
    gt_ids, pred_ids = under.involved_ids("under")
    np.testing.assert_array_equal(gt_ids, [101, 102])
    np.testing.assert_array_equal(pred_ids, [3])
    with pytest.raises(ValueError, match="'over' or 'under'"):
        under.involved_ids("duplicate")


def test_nested_prediction_is_a_split_not_a_duplicate():
    # a full-object prediction and a small one inside it: IoU 0.16 < duplicate_iou
    p = pred([(0, 0, 10, 10), (0, 0, 4, 4)])
    e = segmentation_errors(GT2, p)
    assert e.over_segmented_count == 1 and e.over_segmented_count_legacy == 1
    assert e.duplicate_count == 0


def test_nested_gt_inside_a_prediction_is_under_segmentation():
    gt = inst([(0, 0, 10, 10), (2, 2, 5, 5)], ids=[1, 2])  # small object lying on a bigger one
    e = segmentation_errors(gt, pred([(0, 0, 10, 10)]))
    assert e.under_segmented_count == 1 and e.under_segmented_mean_parts == 2.0


def test_duplicates_are_reported_apart_from_splits():
    # two near-identical predictions (IoU 0.9) inside object 101
    p = pred([(0, 0, 10, 10), (0, 0, 10, 9)], ids=[5, 6])
    e = segmentation_errors(GT2, p)
    assert e.over_segmented_count_legacy == 1  # legacy rule: 2 predictions inside
    assert e.over_segmented_count == 0 and not e.over_segmented  # collapsed: one part
    assert e.duplicate_count == 1 and e.duplicate_group_count == 1
    np.testing.assert_array_equal(e.duplicate_pred_ids, [5, 6])
    # a stricter duplicate threshold turns it back into a split
    e2 = segmentation_errors(GT2, p, duplicate_iou=0.95)
    assert e2.over_segmented_count == 1 and e2.duplicate_count == 0


def test_duplicates_plus_real_split_counts_collapsed_parts():
    p = pred([(0, 0, 5, 10), (0, 0, 5, 10), (0, 0, 5, 9), (5, 0, 10, 10)])
    e = segmentation_errors(GT2, p)
    assert e.over_segmented_count == 1 and e.over_segmented_mean_parts == 2.0
    assert e.duplicate_count == 2 and e.duplicate_group_count == 1


def test_tote_prediction_never_flags_object():
    p = pred([(0, 0, 30, 10)], classes=[TOTE])  # a Tote prediction covering both objects
    assert not segmentation_errors(GT2, p).under_segmented
    gt = inst([(0, 0, 40, 20)], classes=[TOTE])  # a Tote GT containing two Object predictions
    e = segmentation_errors(gt, pred([(0, 0, 5, 5), (10, 10, 15, 15)]))
    assert not e.over_segmented and e.num_gt == 0
    # asked for explicitly, Tote is evaluated on its own, Tote vs Tote
    cfg = MetricsConfig(segmentation_classes=("Object", "Tote"))
    e = segmentation_errors(gt, pred([(0, 0, 40, 10), (0, 10, 40, 20)], classes=[TOTE, TOTE]), cfg)
    assert e.over_segmented_count == 1 and e.per_class["Tote"].over_segmented_count == 1
    assert e.per_class["Object"].over_segmented_count == 0
    assert e.as_dict(per_class=True)["tote_over_segmented_count"] == 1


def test_threshold_is_strict_and_an_argument():
    gt = inst([(0, 0, 10, 10), (10, 0, 20, 10)])
    # the prediction holds 80 % of each object: exactly at the threshold -> not flagged
    p = pred([(2, 0, 18, 10)])
    assert segmentation_errors(gt, p).under_segmented_count == 0
    assert segmentation_errors(gt, p, ioa_threshold=0.79).under_segmented_count == 1
    assert segmentation_errors(gt, p, MetricsConfig(ioa_threshold=0.5)).under_segmented_count == 1


def test_small_objects_flag():
    cfg = MetricsConfig(small_area_fraction=0.1)  # 80 px of 800
    gt = inst([(0, 0, 4, 4), (4, 0, 8, 4)])  # 16 px each: small
    e = segmentation_errors(gt, pred([(0, 0, 8, 4)]), cfg)
    assert e.under_segmented_small
    e = segmentation_errors(GT2, pred([(0, 0, 30, 10)]), cfg)  # 100 px objects: not small
    assert not e.under_segmented_small


def test_precomputed_overlaps_give_the_same_answer_and_frames_must_match():
    p = pred([(0, 0, 5, 10), (5, 0, 10, 10), (0, 0, 30, 10), (0, 0, 5, 9)], classes=[0, 0, 0, 1])
    a = segmentation_errors(GT2, p)
    b = segmentation_errors(GT2, p, overlaps=mask_overlaps(GT2.masks, p.masks), pred_overlaps=mask_overlaps(p.masks, p.masks))
    assert a.as_dict() == b.as_dict()
    with pytest.raises(ValueError, match="frame"):
        segmentation_errors(GT2, inst([(0, 0, 2, 2)], scores=[0.5], hw=(10, 10)))
    with pytest.raises(ValueError, match="unknown class"):
        segmentation_errors(GT2, p, MetricsConfig(segmentation_classes=("Box",)))


def test_duplicate_groups_components():
    adj = np.zeros((5, 5), bool)
    for i, j in [(0, 3), (3, 4)]:
        adj[i, j] = adj[j, i] = True
    np.testing.assert_array_equal(duplicate_groups(adj), [0, 1, 2, 0, 0])
    assert duplicate_groups(np.zeros((0, 0), bool)).shape == (0,)


# ---------------------------------------------------------------- property test
def reference_counts(gt_masks, pred_masks, t):
    """Per-pair loops over the definitions (legacy style)."""
    under = over = 0
    for p in pred_masks:
        parts = sum(1 for g in gt_masks if g.sum() and np.logical_and(g, p).sum() / g.sum() > t)
        under += parts > 1
    for g in gt_masks:
        parts = sum(1 for p in pred_masks if p.sum() and np.logical_and(g, p).sum() / p.sum() > t)
        over += parts > 1
    return under, over


@st.composite
def scenes(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    h, w = draw(st.integers(4, 16)), draw(st.integers(4, 80))

    def boxes(n):
        out = []
        for _ in range(n):
            x1, y1 = rng.integers(0, w), rng.integers(0, h)
            out.append((x1, y1, rng.integers(x1, w + 1), rng.integers(y1, h + 1)))
        return out

    gt = inst(boxes(draw(st.integers(0, 5))), hw=(h, w))
    n = draw(st.integers(0, 6))
    p = inst(boxes(n), scores=rng.random(n), hw=(h, w))
    return gt, p, draw(st.sampled_from([0.5, 0.8, 0.95]))


@settings(max_examples=60, deadline=None)
@given(scenes())
def test_property_counts_equal_brute_force(scene):
    gt, p, t = scene
    e = segmentation_errors(gt, p, ioa_threshold=t, duplicate_iou=1.01)  # no duplicates possible
    under, over = reference_counts(gt.masks, p.masks, t)
    assert e.under_segmented_count == under
    assert e.over_segmented_count_legacy == over
    assert e.over_segmented_count == over  # nothing collapsed
    # with duplicates collapsed a GT can only lose parts, never gain them
    d = segmentation_errors(gt, p, ioa_threshold=t, duplicate_iou=0.6)
    assert d.over_segmented_count_legacy == over
    assert d.over_segmented_count <= over
    assert d.duplicate_count <= max(0, len(p) - 1)
    assert (d.over_segmented_count < over) <= (d.duplicate_count > 0)

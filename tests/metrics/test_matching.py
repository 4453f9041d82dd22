"""Matching, precision/recall conventions, per-sample AP and confusion elements."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from armbench_segmentation.metrics.matching import (
    BACKGROUND,
    coco_match,
    confusion_elements,
    confusion_matrix,
    match,
    sample_ap,
)
from armbench_segmentation.metrics.overlap import mask_overlaps
from armbench_segmentation.structures import Instances, masks_to_boxes

H, W = 20, 40
OBJ, TOTE = 0, 1


def inst(boxes, classes=None, scores=None, ids=None) -> Instances:
    masks = np.zeros((len(boxes), H, W), bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = True
    classes = [OBJ] * len(boxes) if classes is None else classes
    return Instances(masks_to_boxes(masks), classes, (H, W), masks=masks, scores=scores, ids=ids)


GT = inst([(0, 0, 10, 10), (20, 0, 30, 10), (0, 10, 40, 20)], [OBJ, OBJ, TOTE], ids=[1, 2, 3])
EMPTY_PRED = Instances.empty((H, W), with_scores=True)
EMPTY_GT = Instances.empty((H, W))


@pytest.mark.parametrize(
    "gt, pred, expected",
    [
        (EMPTY_GT, EMPTY_PRED, dict(tp=0, fp=0, fn=0, precision=1.0, recall=1.0, f1=1.0, mean_iou=None)),
        (GT, EMPTY_PRED, dict(tp=0, fp=0, fn=3, precision=1.0, recall=0.0, f1=0.0, mean_iou=None)),
        (EMPTY_GT, inst([(0, 0, 5, 5)], scores=[0.4]), dict(tp=0, fp=1, fn=0, precision=0.0, recall=1.0, f1=0.0, mean_iou=None)),
    ],
)
def test_empty_set_conventions(gt, pred, expected):
    assert match(gt, pred).as_dict() == expected


def test_greedy_by_score_one_to_one_and_class_aware():
    # two predictions on object 1: the higher score (IoU 0.9) wins, the other is FP even
    # though its IoU is 1.0 (COCO greedy rule); a Tote prediction on object 2 is class-wrong
    pred = inst([(0, 0, 10, 10), (0, 0, 10, 9), (20, 0, 30, 10), (0, 10, 40, 20)],
                [OBJ, OBJ, TOTE, TOTE], scores=[0.6, 0.9, 0.8, 0.7])
    r = match(GT, pred)
    assert (r.tp, r.fp, r.fn) == (2, 2, 1)
    np.testing.assert_array_equal(r.pairs, [[0, 1], [2, 3]])
    assert r.mean_iou == pytest.approx((0.9 + 1.0) / 2)
    assert r.precision == 0.5 and r.recall == pytest.approx(2 / 3)
    assert r.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    np.testing.assert_array_equal(r.gt_matched, [True, False, True])
    # class-agnostic matching accepts the Tote prediction on object 2
    assert match(GT, pred, class_aware=False).tp == 3
    # restricted to Object
    ro = match(GT, pred, classes=[OBJ])
    assert (ro.tp, ro.fp, ro.fn) == (1, 1, 1)


def test_iou_threshold_inclusive_and_box_fallback():
    pred = inst([(0, 0, 5, 10)], scores=[0.5])  # IoU 0.5 with object 1
    assert match(GT, pred, 0.5).tp == 1 and match(GT, pred, 0.51).tp == 0
    no_masks = Instances(GT.boxes, GT.class_ids, GT.image_size)
    assert match(no_masks, pred).tp == 1  # box IoU also 0.5
    ov = mask_overlaps(GT.masks, pred.masks)
    assert match(GT, pred, overlaps=ov).tp == 1
    with pytest.raises(ValueError, match="expected"):
        match(GT, pred, overlaps=np.zeros((2, 2)))


def test_score_ties_keep_input_order():
    pred = inst([(0, 0, 10, 9), (0, 0, 10, 10)], scores=[0.5, 0.5])
    r = match(GT, pred)
    np.testing.assert_array_equal(r.pairs, [[0, 0]])  # first one in input order takes the GT


def test_coco_match_crowd_and_ignore():
    ious = np.array([[0.9, 0.6], [0.8, 0.7], [0.1, 0.95]])  # (D, G): GT 1 is a crowd region
    gt_index, dt_ignore = coco_match(ious, np.array([0.5]), gt_ignore=[False, True], gt_crowd=[False, True])
    np.testing.assert_array_equal(gt_index, [[0, 1, 1]])  # det 1 falls back to the crowd region
    np.testing.assert_array_equal(dt_ignore, [[False, True, True]])
    gi, _ = coco_match(np.zeros((0, 2)), np.array([0.5, 0.75]))
    assert gi.shape == (2, 0)


def single_image_cocoeval(gt: Instances, pred: Instances) -> float:
    cat = {OBJ: 2, TOTE: 1}
    enc = lambda m: mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))  # noqa: E731
    anns = []
    for k in range(len(gt)):
        rle = enc(gt.masks[k])
        anns.append({"id": k + 1, "image_id": 1, "category_id": cat[int(gt.class_ids[k])], "segmentation": rle,
                     "area": float(gt.masks[k].sum()), "bbox": list(mask_utils.toBbox(rle)), "iscrowd": 0})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": [{"id": 1, "height": H, "width": W}], "annotations": anns,
                        "categories": [{"id": 1, "name": "Tote"}, {"id": 2, "name": "Object"}]}
        coco.createIndex()
        res = [{"image_id": 1, "category_id": cat[int(pred.class_ids[k])], "segmentation": enc(pred.masks[k]),
                "score": float(pred.scores[k])} for k in range(len(pred))]
        e = COCOeval(coco, coco.loadRes(res), "segm")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return float(e.stats[0])


def test_sample_ap_equals_cocoeval_on_one_image():
    rng = np.random.default_rng(0)
    pred = inst([(0, 0, 10, 10), (1, 0, 10, 9), (21, 1, 30, 10), (0, 10, 40, 19), (30, 0, 40, 5)],
                [OBJ, OBJ, OBJ, TOTE, OBJ], scores=rng.random(5))
    assert sample_ap(GT, pred) == pytest.approx(single_image_cocoeval(GT, pred), abs=1e-6)
    per = sample_ap(GT, pred, per_class=True)
    assert set(per) == {OBJ, TOTE}


def test_sample_ap_edge_cases():
    assert sample_ap(EMPTY_GT, inst([(0, 0, 5, 5)], scores=[0.3])) is None
    assert sample_ap(GT, EMPTY_PRED) == 0.0
    perfect = Instances(GT.boxes, GT.class_ids, GT.image_size, masks=GT.masks, scores=[0.9, 0.8, 0.7])
    assert sample_ap(GT, perfect) == pytest.approx(1.0)
    # a Tote-only GT image and Object predictions: the Object class has no GT -> left out
    tote_gt = GT[np.array([2])]
    assert sample_ap(tote_gt, inst([(0, 0, 5, 5)], scores=[0.3])) == 0.0


def test_confusion_elements_per_class_pattern():
    pred = inst([(0, 0, 10, 10), (20, 0, 30, 10), (30, 10, 40, 20)], [OBJ, TOTE, OBJ], scores=[0.9, 0.8, 0.3], ids=[7, 8, 9])
    recs = confusion_elements(GT, pred, ("Object", "Tote"))
    # 3 predictions + 1 missed GT (the Tote: pred 9 overlaps it with IoU 0.25), 2 classes each
    assert len(recs) == 8
    by_id = {}
    for r in recs:
        by_id.setdefault(r.id, []).append(r)
    tp = {r.label: r for r in by_id["pred:7"]}
    assert tp["Object"].expected and tp["Object"].probability == pytest.approx(0.9)
    assert not tp["Tote"].expected and tp["Tote"].probability == 0.0
    swapped = {r.label: r for r in by_id["pred:8"]}  # Tote predicted on an Object
    assert swapped["Object"].expected and swapped["Object"].probability == 0.0
    assert not swapped["Tote"].expected and swapped["Tote"].probability == pytest.approx(0.8)
    assert swapped["Tote"].gt_class == "Object" and swapped["Tote"].predicted_class == "Tote"
    fp = {r.label: r for r in by_id["pred:9"]}
    assert not fp["Object"].expected and fp["Object"].gt_class == BACKGROUND
    missed = {r.label: r for r in by_id["gt:3"]}
    assert missed["Tote"].expected and missed["Tote"].probability == 0.0
    assert missed["Tote"].predicted_class == BACKGROUND
    compact = confusion_elements(GT, pred, per_class=False)
    assert [(r.label, r.expected) for r in compact] == [("Object", True), ("Tote", False), ("Object", False), ("Tote", True)]
    cm = confusion_matrix(GT, pred)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 0, 1], [1, 0, 0]])  # rows GT, cols pred, last = background
    assert confusion_elements(EMPTY_GT, EMPTY_PRED) == []


def test_frames_and_scores_are_checked():
    with pytest.raises(ValueError, match="frame"):
        match(GT, Instances(np.zeros((1, 4)), [0], (5, 5), scores=[0.5]))
    with pytest.raises(ValueError, match="scores"):
        match(GT, GT)


# ---------------------------------------------------------------- error rate (1 - F1)
@pytest.mark.parametrize(
    "tp,fp,fn,expected",
    [(0, 0, 0, 0.0), (5, 0, 0, 0.0), (0, 3, 0, 1.0), (0, 0, 2, 1.0), (3, 1, 2, 3 / 9), (1, 1, 0, 1 / 3)],
)
def test_error_rate_is_one_minus_f1(tp, fp, fn, expected):
    from armbench_segmentation.metrics.matching import error_rate, precision_recall_f1

    assert error_rate(tp, fp, fn) == pytest.approx(expected)
    if tp + fp + fn:
        assert error_rate(tp, fp, fn) == pytest.approx(1 - precision_recall_f1(tp, fp, fn)[2])


@pytest.mark.parametrize("bad", [(-1, 0, 0), (1.5, 0, 0)])
def test_error_rate_rejects_non_counts(bad):
    from armbench_segmentation.metrics.matching import error_rate

    with pytest.raises(ValueError):
        error_rate(*bad)

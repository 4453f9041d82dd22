"""Prediction-only uncertainty: known answers on tiny predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from armbench_segmentation.config import MetricsConfig
from armbench_segmentation.metrics.uncertainty import (
    binary_entropy,
    entropy_map,
    hardest_region,
    mask_entropy,
    uncertainty_scores,
)
from armbench_segmentation.structures import Instances, masks_to_boxes

H = W = 64


def preds(boxes, scores, proto_probs=None) -> Instances:
    masks = np.zeros((len(boxes), H, W), bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = True
    extras = {} if proto_probs is None else {"proto_probs": proto_probs}
    return Instances(masks_to_boxes(masks), [0] * len(boxes), (H, W), masks=masks, scores=scores, extras=extras)


def h2(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def test_binary_entropy_exact_ends_and_units():
    e = binary_entropy(np.array([0.0, 0.5, 1.0, 0.1]))
    np.testing.assert_allclose(e, [0.0, 1.0, 0.0, h2(0.1)], rtol=1e-6)
    assert e[0] == 0.0 and e[2] == 0.0
    np.testing.assert_allclose(binary_entropy(np.array([0.5]), normalize=False), [math.log(2)], rtol=1e-6)


def test_empty_predictions_give_none_and_zero_counts():
    out = uncertainty_scores(Instances.empty((H, W), with_scores=True))
    assert out["num_detections"] == 0 and out["low_conf_count"] == 0
    assert all(out[k] is None for k in ("score_entropy", "mask_entropy", "least_confidence", "margin", "overlap_margin"))
    assert entropy_map(Instances.empty((H, W), with_scores=True)).shape == (H, W)


def test_scores_known_answers_without_proto_probs():
    p = preds([(0, 0, 20, 20), (10, 10, 30, 30), (40, 40, 60, 60)], [0.9, 0.6, 0.3])
    out = uncertainty_scores(p, MetricsConfig(low_confidence=0.5))
    assert out["score_entropy"] == pytest.approx(np.mean([h2(0.9), h2(0.6), h2(0.3)]), rel=1e-5)
    assert out["least_confidence"] == pytest.approx(0.7)
    assert out["margin"] == pytest.approx(np.mean([0.2, 0.8, 0.6]))
    assert out["low_conf_count"] == 1
    # pixels 10..20 x 10..20 are covered by 0.9 and 0.6: margin 0.3 -> uncertainty 0.7
    assert out["overlap_margin"] == pytest.approx(0.7, rel=1e-6)
    assert out["contested_fraction"] == pytest.approx(100 / 1100)
    # fallback mask entropy: p = score * mask, masks fill their boxes -> score entropy
    assert out["mask_entropy"] == pytest.approx(out["score_entropy"], rel=1e-5)


def test_no_overlap_means_zero_overlap_margin():
    out = uncertainty_scores(preds([(0, 0, 10, 10), (20, 20, 30, 30)], [0.9, 0.2]))
    assert out["overlap_margin"] == 0.0 and out["contested_fraction"] == 0.0


def test_objects_inside_a_tote_are_not_a_conflict():
    p = preds([(0, 0, 64, 64), (10, 10, 20, 20), (30, 30, 40, 40)], [0.9, 0.8, 0.7])
    p = Instances(p.boxes, [1, 0, 0], p.image_size, masks=p.masks, scores=p.scores)  # a Tote and two Objects
    out = uncertainty_scores(p)
    assert out["overlap_margin"] == 0.0 and out["contested_fraction"] == 0.0


def test_mask_entropy_from_proto_probs_inside_boxes():
    pp = np.zeros((2, 16, 16), np.float32)  # 1/4 of the 64 px frame
    pp[0, 0:5, 0:5] = 0.5  # box 0..20 px -> cells 0..5: all at maximum entropy
    pp[1, 10:15, 10:15] = 0.99
    p = preds([(0, 0, 20, 20), (40, 40, 60, 60)], [0.9, 0.9], proto_probs=pp)
    assert mask_entropy(p) == pytest.approx((1.0 + h2(0.99)) / 2, rel=1e-5)
    # an explicit probability map wins over proto_probs
    flat = np.full((2, 64, 64), 0.5, np.float32)
    assert mask_entropy(p, probs=flat) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="aspect"):
        mask_entropy(p, probs=np.zeros((2, 16, 32), np.float32))


def test_entropy_map_and_hardest_region():
    pp = np.zeros((2, 16, 16), np.float32)
    pp[0, 0:5, 0:5] = 0.5
    pp[1, 10:15, 10:15] = 0.9
    p = preds([(0, 0, 20, 20), (40, 40, 60, 60)], [0.9, 0.9], proto_probs=pp)
    m = entropy_map(p)
    assert m.shape == (H, W) and m.dtype == np.float32
    assert 0.0 <= m.min() and m.max() <= 1.0
    assert m[5, 5] == pytest.approx(1.0) and m[32, 5] == 0.0
    assert entropy_map(p, normalize=False).max() == pytest.approx(math.log(2), rel=1e-5)
    x1, y1, x2, y2 = hardest_region(m, 8)
    assert (x2 - x1, y2 - y1) == (8, 8) and x2 <= 20 and y2 <= 20  # inside the 0.5 blob
    # fallback: score entropy painted on masks, the more uncertain one on top
    q = preds([(0, 0, 20, 20), (10, 10, 30, 30)], [0.99, 0.5])
    mq = entropy_map(q)
    assert mq[15, 15] == pytest.approx(1.0) and mq[2, 2] == pytest.approx(h2(0.99), rel=1e-4) and mq[40, 40] == 0
    assert hardest_region(mq, (4, 6)) == (10, 10, 16, 14)


def test_hardest_region_clips_and_validates():
    m = np.zeros((5, 7), np.float32)
    m[4, 6] = 1.0
    assert hardest_region(m, 2) == (5, 3, 7, 5)
    assert hardest_region(m, 100) == (0, 0, 7, 5)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        hardest_region(np.zeros(5), 2)


def test_ground_truth_is_rejected():
    gt = Instances(np.zeros((1, 4)), [0], (H, W))
    with pytest.raises(ValueError, match="scores"):
        uncertainty_scores(gt)

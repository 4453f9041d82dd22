"""Model frame <-> reduced (prototype) frame: exact box scaling, masks at the pixels the
YOLOv5-seg loss reads, and the loss unchanged by the reduction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from armbench_segmentation.frames import (
    frame_factors,
    nearest_index,
    repeat_masks,
    sample_masks,
    scale_boxes,
    to_model_frame,
    to_reduced_frame,
)
from armbench_segmentation.metrics.loss import yolov5_seg_loss
from armbench_segmentation.structures import Instances

LOSS_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "loss_golden.npz"


def _random_instances(hw, n=5, seed=0, scores=True) -> Instances:
    rng = np.random.default_rng(seed)
    h, w = hw
    xy = rng.uniform(0, [w - 8, h - 8], size=(n, 2))
    wh = rng.uniform(1, 64, size=(n, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], axis=1).astype(np.float32)
    masks = rng.random((n, h, w)) < 0.3
    return Instances(boxes=boxes, class_ids=rng.integers(0, 2, n), image_size=hw, masks=masks,
                     scores=rng.random(n).astype(np.float32) if scores else None, ids=np.arange(10, 10 + n),
                     extras={"coeffs": rng.random((n, 32)).astype(np.float32)})


def test_nearest_index_is_torch_nearest():
    np.testing.assert_array_equal(nearest_index(640, 160), np.arange(160) * 4)  # the pixels (4r, 4c)
    np.testing.assert_array_equal(nearest_index(10, 4), [0, 2, 5, 7])  # floor(r * 2.5)
    np.testing.assert_array_equal(nearest_index(4, 10), [0, 0, 0, 1, 1, 2, 2, 2, 3, 3])  # floor(p * 0.4)
    assert nearest_index(5, 0).shape == (0,)
    with pytest.raises(ValueError):
        nearest_index(0, 4)


def test_to_reduced_frame_scales_boxes_exactly_and_samples_loss_pixels():
    inst = _random_instances((640, 640))
    small = to_reduced_frame(inst, (160, 160))
    assert small.image_size == (160, 160)
    np.testing.assert_array_equal(small.boxes, inst.boxes / 4)  # a power of two: exact
    iy = ix = nearest_index(640, 160)
    np.testing.assert_array_equal(small.masks, inst.masks[:, iy][:, :, ix])
    np.testing.assert_array_equal(small.scores, inst.scores)
    np.testing.assert_array_equal(small.ids, inst.ids)
    np.testing.assert_array_equal(small.class_ids, inst.class_ids)
    np.testing.assert_array_equal(small.extras["coeffs"], inst.extras["coeffs"])


def test_to_model_frame_repeats_and_round_trips():
    small = _random_instances((160, 160), scores=False)
    big = to_model_frame(small, (640, 640))
    assert big.image_size == (640, 640) and big.scores is None
    np.testing.assert_array_equal(big.boxes, small.boxes * 4)
    np.testing.assert_array_equal(big.masks[:, 5, 9], small.masks[:, 1, 2])  # block (4..7, 8..11)
    back = to_reduced_frame(big, (160, 160))
    np.testing.assert_array_equal(back.masks, small.masks)
    np.testing.assert_array_equal(back.boxes, small.boxes)
    np.testing.assert_array_equal(back.ids, small.ids)


def test_model_frame_gt_is_unchanged_at_the_loss_pixels():
    gt = _random_instances((640, 640), scores=False)
    restored = to_model_frame(to_reduced_frame(gt, (160, 160)), (640, 640))
    iy = ix = nearest_index(640, 160)
    np.testing.assert_array_equal(restored.masks[:, iy][:, :, ix], gt.masks[:, iy][:, :, ix])


def test_yolov5_loss_unchanged_by_the_reduction():
    with np.load(LOSS_FIXTURE) as g:
        hw = tuple(int(v) for v in g["sq256_input_hw"])
        n = len(g["sq256_boxes"])
        masks = np.unpackbits(g["sq256_masks"], count=n * hw[0] * hw[1]).reshape(n, *hw).astype(bool)
        gt = Instances(g["sq256_boxes"], g["sq256_class_ids"], hw, masks=masks)
        det, protos = g["sq256_detections"], g["sq256_protos"].astype(np.float32)
    reduced = to_reduced_frame(gt, protos.shape[1:])  # the GT encoder's frame
    assert not np.array_equal(to_model_frame(reduced, hw).masks, gt.masks)  # detail is lost ...
    # ... but not at the pixels the loss reads
    assert yolov5_seg_loss(det, protos, to_model_frame(reduced, hw), hw) == yolov5_seg_loss(det, protos, gt, hw)


def test_empty_and_maskless_instances():
    empty = Instances.empty((640, 640), with_scores=True)
    small = to_reduced_frame(empty, (160, 160))
    assert len(small) == 0 and small.masks.shape == (0, 160, 160) and small.scores.shape == (0,)
    assert to_model_frame(Instances.empty((160, 160)), (640, 640)).masks.shape == (0, 640, 640)
    boxes_only = Instances(boxes=[[4, 8, 12, 16]], class_ids=[0], image_size=(640, 640))
    assert to_reduced_frame(boxes_only, (160, 160)).masks is None


def test_non_integer_frames_are_rejected():
    with pytest.raises(ValueError, match="integer multiple"):
        to_reduced_frame(Instances.empty((640, 640)), (150, 160))
    with pytest.raises(ValueError, match="integer multiple"):
        to_model_frame(Instances.empty((160, 160)), (600, 640))
    assert frame_factors((640, 320), (160, 160)) == (4, 2)


def test_helpers_on_rectangular_frames():
    masks = np.random.default_rng(1).random((2, 12, 20)) < 0.5
    np.testing.assert_array_equal(sample_masks(masks, (3, 5)), masks[:, ::4, ::4])
    np.testing.assert_array_equal(sample_masks(masks, (5, 8)),  # non-integer ratios: torch's nearest pixels
                                  masks[:, nearest_index(12, 5)][:, :, nearest_index(20, 8)])
    np.testing.assert_array_equal(sample_masks(repeat_masks(masks, (24, 60)), (12, 20)), masks)
    np.testing.assert_array_equal(scale_boxes([[0, 0, 20, 12]], (12, 20), (24, 60)), [[0, 0, 60, 24]])

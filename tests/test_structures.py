"""Instances: validation, indexing, empty shapes, areas; masks_to_boxes."""

from __future__ import annotations

import numpy as np
import pytest

from armbench_segmentation.structures import Instances, masks_to_boxes


def make(n=3, hw=(8, 10), scores=True):
    masks = np.zeros((n, *hw), bool)
    boxes = []
    for i in range(n):
        masks[i, i : i + 2, i : i + 3] = True  # 2x3 = 6 px
        boxes.append([i, i, i + 3, i + 2])
    return Instances(boxes=boxes, class_ids=[0, 1, 0][:n], image_size=hw, masks=masks,
                     scores=np.linspace(0.9, 0.5, n) if scores else None, ids=[10, 11, 12][:n],
                     extras={"coeffs": np.arange(n * 2).reshape(n, 2)})


def test_dtypes_and_defaults():
    inst = Instances(boxes=[[0, 0, 1, 1]], class_ids=[1], image_size=(4, 5))
    assert inst.boxes.dtype == np.float32 and inst.class_ids.dtype == np.int64
    assert inst.ids.tolist() == [0] and inst.masks is None and not inst.is_prediction
    assert make().is_prediction


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"class_ids": [0, 1]}, "class_ids has 2"),
        ({"masks": np.zeros((1, 3, 3), bool)}, "masks must have shape"),
        ({"scores": [0.1, 0.2]}, "scores has 2"),
        ({"ids": [1, 2]}, "ids has 2"),
        ({"extras": {"x": np.zeros(3)}}, "extras"),
    ],
)
def test_validation(kwargs, match):
    base = {"boxes": [[0, 0, 1, 1]], "class_ids": [0], "image_size": (4, 5)}
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Instances(**base)


def test_indexing_keeps_rows_parallel():
    inst = make()
    one = inst[1]
    assert len(one) == 1 and one.ids.tolist() == [11] and one.class_ids.tolist() == [1]
    assert one.masks.shape == (1, 8, 10) and one.extras["coeffs"].tolist() == [[2, 3]]
    assert inst[1:].ids.tolist() == [11, 12]
    assert inst[np.array([True, False, True])].ids.tolist() == [10, 12]
    assert inst[[2, 0]].ids.tolist() == [12, 10]
    np.testing.assert_allclose(inst[[2, 0]].scores, [0.5, 0.9])
    assert inst.of_class(0).ids.tolist() == [10, 12]
    with pytest.raises(ValueError, match="boolean index"):
        inst[np.array([True, False])]


def test_empty():
    e = Instances.empty((6, 7))
    assert len(e) == 0 and e.boxes.shape == (0, 4) and e.masks.shape == (0, 6, 7)
    assert e.mask_areas().shape == (0,) and e.box_areas().shape == (0,)
    assert len(e.of_class(0)) == 0 and e[np.zeros(0, bool)].masks.shape == (0, 6, 7)
    p = Instances.empty((6, 7), with_masks=False, with_scores=True)
    assert p.masks is None and p.scores.shape == (0,) and p.is_prediction


def test_areas_and_masks_to_boxes():
    inst = make()
    assert inst.mask_areas().tolist() == [6, 6, 6]
    assert inst.box_areas().tolist() == [6, 6, 6]
    np.testing.assert_array_equal(masks_to_boxes(inst.masks), inst.boxes)
    m = np.zeros((2, 5, 5), bool)
    m[1, 4, 4] = True
    np.testing.assert_array_equal(masks_to_boxes(m), [[0, 0, 0, 0], [4, 4, 5, 5]])
    assert masks_to_boxes(np.zeros((0, 5, 5), bool)).shape == (0, 4)
    with pytest.raises(ValueError, match="no masks"):
        Instances(boxes=[[0, 0, 1, 1]], class_ids=[0], image_size=(2, 2)).mask_areas()


def test_unbatch_drops_a_batch_of_one_only():
    from armbench_segmentation.structures import unbatch

    x = np.arange(6).reshape(2, 3)
    assert unbatch(x, 2).shape == (2, 3)
    assert unbatch(x[None], 2).shape == (2, 3)
    with pytest.raises(ValueError, match=r"detections must have 2 dimensions .* got shape \(2, 2, 3\)"):
        unbatch(np.stack([x, x]), 2, "detections")


@pytest.mark.parametrize(
    "value, expected",
    [(np.float32(0.5), 0.5), (np.int64(3), 3), (np.bool_(True), True), (float("nan"), None),
     (np.float64("inf"), None), (None, None), ("blue", "blue"), (7, 7)],
)
def test_python_scalar(value, expected):
    from armbench_segmentation.structures import python_scalar

    out = python_scalar(value)
    assert out == expected and type(out) is type(expected)

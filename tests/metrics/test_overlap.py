"""Overlap matrices: hand-drawn masks with known answers, both paths, a property test
against a per-pair brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from armbench_segmentation.metrics.overlap import (
    box_iou,
    mask_overlaps,
    overlaps_from_counts,
    pack_masks,
    rle_overlaps,
)

METHODS = ["packed", "matmul", "auto"]


def rects(h: int, w: int, *boxes: tuple[int, int, int, int]) -> np.ndarray:
    """(N, H, W) bool masks of xyxy rectangles."""
    out = np.zeros((len(boxes), h, w), bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        out[i, y1:y2, x1:x2] = True
    return out


def brute_force(a: np.ndarray, b: np.ndarray):
    """Per-pair loops, the legacy way: reference values."""
    inter = np.array([[np.logical_and(x, y).sum() for y in b] for x in a], dtype=np.int64).reshape(len(a), len(b))
    area_a = np.array([x.sum() for x in a], dtype=np.int64)
    area_b = np.array([y.sum() for y in b], dtype=np.int64)
    iou = np.zeros(inter.shape)
    a_in_b = np.zeros(inter.shape)
    b_in_a = np.zeros(inter.shape)
    for i in range(len(a)):
        for j in range(len(b)):
            union = area_a[i] + area_b[j] - inter[i, j]
            iou[i, j] = inter[i, j] / union if union else 0.0
            a_in_b[i, j] = inter[i, j] / area_a[i] if area_a[i] else 0.0
            b_in_a[i, j] = inter[i, j] / area_b[j] if area_b[j] else 0.0
    return inter, area_a, area_b, iou, a_in_b, b_in_a


@pytest.mark.parametrize("method", METHODS)
def test_known_answers(method):
    # a0: 4x4 square at origin (16 px); a1: empty mask
    a = rects(8, 70, (0, 0, 4, 4), (0, 0, 0, 0))
    # b0: left half of a0 (8 px); b1: far away, beyond the first 64-bit word (x >= 64)
    b = rects(8, 70, (0, 0, 2, 4), (65, 4, 70, 8))
    ov = mask_overlaps(a, b, method=method)
    np.testing.assert_array_equal(ov.intersection, [[8, 0], [0, 0]])
    np.testing.assert_array_equal(ov.area_a, [16, 0])
    np.testing.assert_array_equal(ov.area_b, [8, 20])
    np.testing.assert_allclose(ov.iou, [[0.5, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(ov.a_in_b, [[0.5, 0.0], [0.0, 0.0]])  # half of a0 lies in b0
    np.testing.assert_allclose(ov.b_in_a, [[1.0, 0.0], [0.0, 0.0]])  # b0 lies entirely in a0
    for m in (ov.iou, ov.a_in_b, ov.b_in_a):
        assert np.isfinite(m).all()
        assert m.dtype == np.float64


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n, m", [(0, 3), (2, 0), (0, 0)])
def test_empty_sets_give_shaped_empty_matrices(method, n, m):
    ov = mask_overlaps(np.zeros((n, 5, 6), bool), np.zeros((m, 5, 6), bool), method=method)
    for arr in (ov.intersection, ov.iou, ov.a_in_b, ov.b_in_a):
        assert arr.shape == (n, m)
    assert ov.area_a.shape == (n,) and ov.area_b.shape == (m,)


def test_zero_area_masks_give_exact_zeros_not_nan():
    z = np.zeros((2, 4, 4), bool)
    ov = mask_overlaps(z, z)
    assert (ov.iou == 0).all() and (ov.a_in_b == 0).all() and (ov.b_in_a == 0).all()


def test_identical_masks_iou_one_and_transpose_swaps_directions():
    a = rects(10, 10, (1, 1, 5, 5), (2, 2, 9, 9))
    ov = mask_overlaps(a, a)
    np.testing.assert_allclose(np.diag(ov.iou), 1.0)
    t = ov.transpose()
    np.testing.assert_array_equal(t.a_in_b, ov.b_in_a.T)
    sub = ov.select(np.array([1]), np.array([True, False]))
    assert sub.iou.shape == (1, 1) and sub.intersection[0, 0] == ov.intersection[1, 0]


def test_mismatched_sizes_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="same frame"):
        mask_overlaps(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5), bool))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        mask_overlaps(np.zeros((4, 4), bool), np.zeros((1, 4, 4), bool))
    with pytest.raises(ValueError, match="method"):
        mask_overlaps(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), bool), method="fast")
    with pytest.raises(ValueError, match="expected"):
        overlaps_from_counts(np.zeros((2, 2)), np.zeros(3), np.zeros(2))


def test_packed_reuse_and_non_bool_input():
    a = rects(20, 130, (0, 0, 100, 10), (60, 5, 130, 20))
    pa = pack_masks(a)
    np.testing.assert_array_equal(pa.areas, [1000, 1050])
    np.testing.assert_array_equal(pa.rows, [[0, 10], [5, 20]])
    np.testing.assert_array_equal(pa.cols, [[0, 2], [0, 3]])  # word columns of 64 px
    ov = mask_overlaps(pa, a.astype(np.uint8))
    np.testing.assert_array_equal(ov.intersection, [[1000, 200], [200, 1050]])


def test_packed_subsets_share_words_and_agree():
    rng = np.random.default_rng(5)
    a = rng.random((6, 9, 150)) < 0.3
    b = rng.random((4, 9, 150)) < 0.3
    pa, pb = pack_masks(a), pack_masks(b)
    ia, ib = np.array([4, 0, 4]), np.array([True, False, True, True])
    sub_a, sub_b = pa[ia], pb[ib][np.array([2, 0])]
    assert sub_a.words is pa.words  # no copy of the packed pixels
    np.testing.assert_array_equal(mask_overlaps(sub_a, sub_b).intersection, brute_force(a[ia], b[ib][[2, 0]])[0])
    np.testing.assert_array_equal(mask_overlaps(sub_a, b[ib][[2, 0]], method="matmul").intersection,
                                  brute_force(a[ia], b[ib][[2, 0]])[0])
    assert len(pa[np.zeros(6, bool)]) == 0


def test_packed_chunking_matches(monkeypatch):
    import armbench_segmentation.metrics.overlap as overlap

    rng = np.random.default_rng(3)
    a = rng.random((6, 30, 70)) < 0.5
    b = rng.random((5, 30, 70)) < 0.5
    expected = brute_force(a, b)[0]
    monkeypatch.setattr(overlap, "_CHUNK_WORDS", 7)  # forces many small chunks
    np.testing.assert_array_equal(mask_overlaps(a, b, method="packed").intersection, expected)


def test_rle_overlaps_equal_mask_overlaps():
    from pycocotools import mask as mask_utils

    a = rects(12, 9, (0, 0, 4, 4), (3, 3, 9, 12))
    b = rects(12, 9, (2, 2, 6, 6), (0, 0, 0, 0), (3, 3, 9, 12))
    enc = lambda ms: [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in ms]  # noqa: E731
    r = rle_overlaps(enc(a), enc(b))
    ov = mask_overlaps(a, b)
    np.testing.assert_array_equal(r.intersection, ov.intersection)
    np.testing.assert_allclose(r.iou, ov.iou)
    assert rle_overlaps([], enc(b)).iou.shape == (0, 3)


def test_box_iou_known_answers():
    a = np.array([[0, 0, 2, 2], [0, 0, 0, 0]], float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 5, 9]], float)
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)
    assert box_iou(a, np.zeros((0, 4))).shape == (2, 0)


@st.composite
def mask_sets(draw):
    h = draw(st.integers(1, 12))
    w = draw(st.integers(1, 140))  # crosses 64-bit word boundaries
    n = draw(st.integers(0, 4))
    m = draw(st.integers(0, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.95]))
    rng = np.random.default_rng(seed)
    a = rng.random((n, h, w)) < density
    b = rng.random((m, h, w)) < density
    # sprinkle rectangles so that extents differ from the whole image
    for masks in (a, b):
        for k in range(len(masks)):
            if rng.random() < 0.5:
                masks[k] = False
                y1, x1 = rng.integers(0, h), rng.integers(0, w)
                masks[k, y1 : rng.integers(y1, h + 1), x1 : rng.integers(x1, w + 1)] = True
    return a, b


@settings(max_examples=60, deadline=None)
@given(mask_sets())
def test_property_equals_brute_force(sets):
    a, b = sets
    inter, area_a, area_b, iou, a_in_b, b_in_a = brute_force(a, b)
    for method in ("packed", "matmul"):
        ov = mask_overlaps(a, b, method=method)
        np.testing.assert_array_equal(ov.intersection, inter)
        np.testing.assert_array_equal(ov.area_a, area_a)
        np.testing.assert_array_equal(ov.area_b, area_b)
        np.testing.assert_allclose(ov.iou, iou, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ov.a_in_b, a_in_b, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ov.b_in_a, b_in_a, rtol=0, atol=1e-12)


def test_rle_overlaps_more_than_255_instances():
    # pycocotools' area() overflows a uint8 for lists of > 255 RLEs under numpy 2; 300
    # detections (the YOLOv5 max_det) must work and give exact counts.
    from pycocotools import mask as mask_utils

    from armbench_segmentation.metrics.overlap import rle_areas, rle_overlaps

    masks = np.zeros((20, 30, 300), np.uint8, order="F")
    for i in range(300):
        masks[i % 20, : 1 + i % 30, i] = 1  # row i % 20, (1 + i % 30) pixels
    preds = mask_utils.encode(masks)
    gt = mask_utils.encode(np.asfortranarray(masks[:, :, :3]))
    areas = rle_areas(preds)
    assert areas.tolist() == [1 + i % 30 for i in range(300)]
    ov = rle_overlaps(gt, preds)
    assert ov.iou.shape == (3, 300)
    dense = masks.reshape(-1, 300).T.astype(np.int64)  # (300, HW), pixel order irrelevant for counts
    expected = dense[:3] @ dense.T
    np.testing.assert_array_equal(ov.intersection, expected)

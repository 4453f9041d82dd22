"""The reduced (prototype) frame the YOLOv5-seg loss reads: torch's nearest pixels."""

from __future__ import annotations

import numpy as np
import pytest

from armbench_segmentation.frames import nearest_index, sample_masks


def test_nearest_index_is_torch_nearest():
    np.testing.assert_array_equal(nearest_index(640, 160), np.arange(160) * 4)  # the pixels (4r, 4c)
    np.testing.assert_array_equal(nearest_index(10, 4), [0, 2, 5, 7])  # floor(r * 2.5)
    np.testing.assert_array_equal(nearest_index(4, 10), [0, 0, 0, 1, 1, 2, 2, 2, 3, 3])  # floor(p * 0.4)
    assert nearest_index(5, 0).shape == (0,)
    with pytest.raises(ValueError):
        nearest_index(0, 4)


def test_sample_masks_on_rectangular_frames():
    masks = np.random.default_rng(1).random((2, 12, 20)) < 0.5
    np.testing.assert_array_equal(sample_masks(masks, (3, 5)), masks[:, ::4, ::4])
    np.testing.assert_array_equal(sample_masks(masks, (5, 8)),  # non-integer ratios: torch's nearest pixels
                                  masks[:, nearest_index(12, 5)][:, :, nearest_index(20, 8)])
    with pytest.raises(ValueError, match="expected"):
        sample_masks(masks[0], (3, 5))

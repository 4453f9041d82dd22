"""The hard-region window of the per-sample evaluation: a known answer and a brute-force
reference (max over instances of the per-cell binary entropy)."""

from __future__ import annotations

import numpy as np

from armbench_segmentation.config import load_settings
from armbench_segmentation.metrics.sample_evaluation import HARD_REGION_WINDOW, _hard_region
from armbench_segmentation.metrics.uncertainty import binary_entropy, hardest_region
from armbench_segmentation.structures import Instances


def _pred(probs: np.ndarray, class_ids) -> Instances:
    n = len(probs)
    return Instances(boxes=np.tile([0, 0, 640, 640], (n, 1)), class_ids=class_ids, image_size=(640, 640),
                     masks=np.zeros((n, 640, 640), bool), scores=np.full(n, 0.9, np.float32),
                     extras={"proto_probs": probs.astype(np.float32)})


def test_window_sits_on_the_uncertain_blob():
    probs = np.zeros((2, 160, 160), np.float32)
    probs[0, 100:140, 20:60] = 0.5  # the most uncertain object pixels: cells (100..139, 20..59)
    probs[1, :, :] = 0.999  # a confident object everywhere
    window = _hard_region(_pred(probs, [0, 0]), load_settings(env={}))
    assert window == (80, 400, 80 + HARD_REGION_WINDOW, 400 + HARD_REGION_WINDOW)  # cells x 4, model pixels


def test_only_segmentation_classes_count_and_the_reference_agrees():
    rng = np.random.default_rng(3)
    probs = rng.random((4, 160, 160)).astype(np.float32) ** 3
    probs[3, 10:50, 10:50] = 0.5  # a tote (class 1): not annotated one by one, so ignored
    settings = load_settings(env={})
    window = _hard_region(_pred(probs, [0, 0, 0, 1]), settings)
    reference = binary_entropy(probs[:3]).max(axis=0)  # brute force: every instance's entropy, then the max
    expected = hardest_region(reference, HARD_REGION_WINDOW // 4)
    assert window == tuple(4 * v for v in expected)
    assert _hard_region(_pred(probs[3:], [1]), settings) is None

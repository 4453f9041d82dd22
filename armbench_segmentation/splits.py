"""The dataset's split names, defined once.

``train`` and ``val`` are labeled (their annotations are evaluated); ``unlabeled`` is the
ARMBench ``test.json`` split, whose images are analysed without ground truth.
"""

from __future__ import annotations

__all__ = ["SPLITS", "LABELED_SPLITS", "UNLABELED"]

UNLABELED = "unlabeled"
LABELED_SPLITS = ("train", "val")
SPLITS = (*LABELED_SPLITS, UNLABELED)

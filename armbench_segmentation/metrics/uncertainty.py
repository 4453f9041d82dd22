"""Uncertainty of a prediction set, from the predictions alone (no GT): usable on the
unlabeled split to decide what to label next.

Scores (``uncertainty_scores``; higher = more uncertain, entropies in bits so in [0, 1]):

- ``score_entropy``: mean binary entropy of the detection scores.
- ``mask_entropy``: per instance, mean binary entropy of its pixel probabilities inside
  its box, averaged over instances. Pixel probabilities are ``extras["proto_probs"]``
  (sigmoid of the prototype combination, (N, h, w) at 1/4 of the model input, zero
  outside the box, from ``model.decode``), or a ``probs`` array given by the caller.
  Without either, the probability of instance ``i`` at a pixel is ``score_i * mask_i``:
  the entropy of the score spread over the mask's share of the box.
- ``least_confidence``: ``1 - min(score)``.
- ``margin``: mean of ``1 - |2 * score - 1|`` (1 when a score sits at 0.5, 0 at 0 or 1).
- ``overlap_margin``: where two or more predictions *of the same class* cover the same
  pixel, ``1 - (s1 - s2)`` with ``s1 >= s2`` the two top scores there, averaged over those
  contested pixels (on a grid of about 160 px per side); 0.0 when no pixel is contested.
- ``contested_fraction``: contested pixels (a pixel contested in two classes counts
  twice) / pixels covered by any prediction.
- ``low_conf_count``: detections scoring below ``MetricsConfig.low_confidence``.
- ``num_detections``.

Means over no detections are None (never NaN); counts are 0.

``entropy_map`` gives the per-pixel "hard regions" map at the predictions' resolution
and ``hardest_region`` the window of highest mean entropy in it.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from armbench_segmentation.config import MetricsConfig
from armbench_segmentation.structures import Instances

__all__ = ["binary_entropy", "uncertainty_scores", "mask_entropy", "overlap_margin", "entropy_map", "hardest_region"]

logger = logging.getLogger(__name__)

LN2 = math.log(2.0)
_GRID = 160  # side of the grid the overlap margin is computed on


def binary_entropy(p: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Binary entropy of probabilities, exactly 0 at p = 0 and p = 1 (no eps).

    Args:
        p: probabilities of any shape (clipped to [0, 1]).
        normalize: bits (in [0, 1]) instead of nats (in [0, ln 2]).
    Returns:
        float32 array of ``p``'s shape.
    """
    p = np.clip(np.asarray(p, np.float32), 0.0, 1.0)
    q = 1.0 - p
    h = np.zeros_like(p)
    np.log(p, out=h, where=p > 0)
    h *= p
    lq = np.zeros_like(q)
    np.log(q, out=lq, where=q > 0)
    h += q * lq
    h *= -1.0 / LN2 if normalize else -1.0
    return np.maximum(h, 0.0)  # -0.0 -> 0.0


def _probability_source(pred: Instances, probs: np.ndarray | None) -> np.ndarray | None:
    """(N, h, w) per-instance probability maps aligned with ``pred.image_size``, or None."""
    source = probs if probs is not None else pred.extras.get("proto_probs")
    if source is None:
        return None
    source = np.asarray(source, np.float32)
    if source.ndim != 3 or len(source) != len(pred):
        raise ValueError(f"probability maps must have shape (N={len(pred)}, h, w), got {source.shape}")
    h, w = pred.image_size
    ph, pw = source.shape[1:]
    if ph == 0 or pw == 0 or abs(ph * w - pw * h) > max(h, w):  # not the same aspect: another frame
        if probs is not None:
            raise ValueError(
                f"probs are {ph}x{pw} but the predictions' frame is {h}x{w} (not the same aspect); "
                "give maps of the predictions' frame"
            )
        logger.debug("proto_probs %sx%s do not match the %sx%s frame; using score x mask instead", ph, pw, h, w)
        return None
    return source


def _box_cells(boxes: np.ndarray, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> np.ndarray:
    """(N, 4) int64 ``x1, y1, x2, y2`` cell ranges of each box on a grid (at least one cell)."""
    h, w = image_hw
    gh, gw = grid_hw
    sy, sx = gh / h, gw / w
    y1 = np.clip(np.floor(boxes[:, 1] * sy), 0, gh - 1).astype(np.int64)
    y2 = np.clip(np.ceil(boxes[:, 3] * sy), y1 + 1, gh).astype(np.int64)
    x1 = np.clip(np.floor(boxes[:, 0] * sx), 0, gw - 1).astype(np.int64)
    x2 = np.clip(np.ceil(boxes[:, 2] * sx), x1 + 1, gw).astype(np.int64)
    return np.stack([x1, y1, x2, y2], axis=1)


def mask_entropy(pred: Instances, probs: np.ndarray | None = None) -> float | None:
    """Mean over instances of the mean binary entropy (bits) of their pixel probabilities
    inside their box; see the module docstring for the sources. None without detections."""
    n = len(pred)
    if n == 0:
        return None
    source = _probability_source(pred, probs)
    if source is not None:
        cells = _box_cells(pred.boxes, pred.image_size, source.shape[1:])  # (N, 4)
        # only the in-box cells: one entropy call on the concatenated crops
        crops = [source[i, y1:y2, x1:x2].ravel() for i, (x1, y1, x2, y2) in enumerate(cells.tolist())]
        sizes = np.array([len(c) for c in crops])
        ent = binary_entropy(np.concatenate(crops)).astype(np.float64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        per_instance = np.add.reduceat(ent, starts) / sizes  # sizes >= 1 by construction
        return float(per_instance.mean())
    if pred.scores is None:
        raise ValueError("mask entropy needs scores, proto_probs or probs")
    share = np.ones(n, np.float64)
    if pred.masks is not None:
        box_area = pred.box_areas().astype(np.float64)
        share = np.minimum(np.divide(pred.mask_areas(), box_area, out=np.ones(n), where=box_area > 0), 1.0)
    return float((binary_entropy(pred.scores) * share).mean())


def overlap_margin(pred: Instances) -> tuple[float, float]:
    """``(overlap_margin, contested_fraction)``, see the module docstring.

    Only predictions of the same class compete for a pixel (an Object lying in a Tote is
    not a conflict). (0.0, 0.0) when no two same-class predictions share a pixel.
    """
    n = len(pred)
    if n < 2 or pred.masks is None or pred.scores is None:
        return 0.0, 0.0
    h, w = pred.image_size
    step = max(1, round(max(h, w) / _GRID))
    grid = np.ascontiguousarray(pred.masks[:, ::step, ::step]).reshape(n, -1)  # (N, h'w')
    covered = int(np.count_nonzero(grid.any(axis=0)))
    uncertainty: list[np.ndarray] = []
    for c in np.unique(pred.class_ids):
        members = np.flatnonzero(pred.class_ids == c)
        if len(members) < 2:
            continue
        cells = grid[members]  # (K, h'w')
        acc = np.uint8 if len(members) < 256 else np.uint16
        count = np.add.reduce(cells.view(np.uint8) if acc is np.uint8 else cells.astype(acc), axis=0, dtype=acc)
        contested = np.flatnonzero(count >= 2)  # (C,)
        if len(contested) == 0:
            continue
        order = np.argsort(-pred.scores[members].astype(np.float64), kind="mergesort")
        scores = pred.scores[members][order].astype(np.float64)
        sub = cells[order][:, contested]  # (K, C) covers of the contested cells, by descending score
        first = np.argmax(sub, axis=0)  # (C,) highest-scoring cover
        sub[first, np.arange(len(contested))] = False
        second = np.argmax(sub, axis=0)
        uncertainty.append(1.0 - (scores[first] - scores[second]))
    if not uncertainty:
        return 0.0, 0.0
    values = np.concatenate(uncertainty)
    return float(values.mean()), float(len(values) / covered)


def uncertainty_scores(
    pred: Instances,
    config: MetricsConfig | None = None,
    *,
    probs: np.ndarray | None = None,
) -> dict[str, float | int | None]:
    """All prediction-only uncertainty scores of one image (see the module docstring).

    Args:
        pred: predictions with scores; masks and ``extras["proto_probs"]`` when available.
        config: ``low_confidence`` threshold; default ``MetricsConfig()``.
        probs: (N, h, w) per-instance probability maps in the predictions' frame (any
            resolution of the same aspect), used instead of ``proto_probs``.
    Returns:
        flat dict: ``num_detections``, ``score_entropy``, ``mask_entropy``,
        ``least_confidence``, ``margin``, ``overlap_margin``, ``contested_fraction``,
        ``low_conf_count``.
    """
    config = config or MetricsConfig()
    n = len(pred)
    if n and pred.scores is None:
        raise ValueError("uncertainty_scores needs predictions with scores (ground truth has none)")
    scores = pred.scores if pred.scores is not None else np.zeros(0, np.float32)
    out: dict[str, float | int | None] = {
        "num_detections": n,
        "score_entropy": None,
        "mask_entropy": None,
        "least_confidence": None,
        "margin": None,
        "overlap_margin": None,
        "contested_fraction": None,
        "low_conf_count": int((scores < config.low_confidence).sum()),
    }
    if n == 0:
        return out
    s = scores.astype(np.float64)
    out["score_entropy"] = float(binary_entropy(scores).mean())
    out["mask_entropy"] = mask_entropy(pred, probs)
    out["least_confidence"] = float(1.0 - s.min())
    out["margin"] = float((1.0 - np.abs(2.0 * s - 1.0)).mean())
    out["overlap_margin"], out["contested_fraction"] = overlap_margin(pred)
    return out


def entropy_map(pred: Instances, normalize: bool = True, probs: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel "hard regions" map at the predictions' resolution.

    Each pixel holds the largest binary entropy of any instance's probability there:
    ``proto_probs`` (or ``probs``) upsampled bilinearly from their grid, else
    ``score * mask`` (the score's entropy painted on the instance's mask).

    Args:
        pred: predictions (model frame for ``proto_probs``).
        normalize: values in [0, 1] (bits) instead of [0, ln 2] (nats).
        probs: (N, h, w) per-instance probability maps of the same aspect as the frame.
    Returns:
        (H, W) float32; zeros without predictions.
    """
    h, w = pred.image_size
    out = np.zeros((h, w), np.float32)
    if len(pred) == 0 or h == 0 or w == 0:
        return out
    source = _probability_source(pred, probs)
    if source is not None:
        import cv2

        small = binary_entropy(source, normalize).max(axis=0)  # (h', w')
        if small.shape != (h, w):
            small = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(small, 0.0, 1.0 if normalize else LN2).astype(np.float32)
    if pred.scores is None:
        raise ValueError("entropy_map needs scores, proto_probs or probs")
    ent = binary_entropy(pred.scores, normalize)  # (N,)
    boxes = np.round(pred.boxes).astype(np.int64)
    for i in np.argsort(ent, kind="mergesort"):  # one crop per instance, highest painted last
        if pred.masks is not None:  # the mask's own extent (boxes may be loose)
            rows, cols = pred.masks[i].any(axis=1), pred.masks[i].any(axis=0)
            if not rows.any():
                continue
            y1, y2 = int(np.argmax(rows)), int(h - np.argmax(rows[::-1]))
            x1, x2 = int(np.argmax(cols)), int(w - np.argmax(cols[::-1]))
            region = pred.masks[i, y1:y2, x1:x2]
        else:  # boxes only: paint the box
            x1, y1 = max(0, int(boxes[i, 0])), max(0, int(boxes[i, 1]))
            x2, y2 = max(x1, min(w, int(boxes[i, 2]))), max(y1, min(h, int(boxes[i, 3])))
            region = np.ones((y2 - y1, x2 - x1), bool)
        view = out[y1:y2, x1:x2]
        np.maximum(view, np.where(region, ent[i], np.float32(0.0)), out=view)
    return out


def hardest_region(entropy: np.ndarray, size: int | tuple[int, int]) -> tuple[int, int, int, int]:
    """The window of highest mean value in a map (ties: the top-left one).

    Args:
        entropy: (H, W) map, e.g. from :func:`entropy_map`.
        size: window side, or ``(height, width)``; clipped to the map.
    Returns:
        ``(x1, y1, x2, y2)`` ints, the window in the map's pixels.
    """
    entropy = np.asarray(entropy, np.float64)
    if entropy.ndim != 2:
        raise ValueError(f"entropy must be an (H, W) map, got shape {entropy.shape}")
    h, w = entropy.shape
    wh, ww = (size, size) if np.isscalar(size) else size
    wh, ww = int(min(max(1, wh), h)), int(min(max(1, ww), w))
    if h == 0 or w == 0:
        return (0, 0, 0, 0)
    integral = np.zeros((h + 1, w + 1), np.float64)
    integral[1:, 1:] = entropy.cumsum(axis=0).cumsum(axis=1)
    sums = integral[wh:, ww:] - integral[:-wh, ww:] - integral[wh:, :-ww] + integral[:-wh, :-ww]  # (H-wh+1, W-ww+1)
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return (int(x), int(y), int(x + ww), int(y + wh))

"""The reduced (prototype) frame the YOLOv5-seg loss reads.

The model frame is the letterboxed model input ``(H, W)`` (640 x 640). YOLOv5-seg predicts
masks at the prototype resolution ``(H / 4, W / 4)`` (160 x 160); its segmentation loss
compares them with the model-frame ground truth resized by ``F.interpolate(mode="nearest")``,
i.e. it reads GT pixel ``(nearest_index(H, h)[r], nearest_index(W, w)[c])`` for reduced pixel
``(r, c)`` -- ``(4r, 4c)`` at 640 -> 160. ``sample_masks`` keeps exactly those pixels.
(Every metric is computed in the model frame: ``metrics.sample_evaluation``.)
"""

from __future__ import annotations

import numpy as np

__all__ = ["nearest_index", "sample_masks"]


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """(n_out,) int64 source indices of ``F.interpolate(mode='nearest')`` along one axis
    resized from ``n_in`` to ``n_out`` (PyTorch: float32 scale ``n_in / n_out``, floor)."""
    if n_in < 1 or n_out < 0:
        raise ValueError(f"expected n_in >= 1 and n_out >= 0, got n_in={n_in}, n_out={n_out}")
    scale = np.float32(n_in) / np.float32(n_out) if n_out else np.float32(1)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def sample_masks(masks: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(N, H, W) masks -> (N, h, w) bool: the pixels ``F.interpolate(mode='nearest')`` reads.

    With ``H, W`` integer multiples of ``h, w`` this is a strided view (no copy).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    masks = masks.astype(bool, copy=False)
    big_h, big_w = masks.shape[1:]
    h, w = (int(v) for v in out_hw)
    if h and w and big_h % h == 0 and big_w % w == 0:  # nearest_index is then (k * r): same pixels
        return masks[:, :: big_h // h, :: big_w // w]
    iy, ix = nearest_index(big_h, h), nearest_index(big_w, w)
    return masks[:, iy[:, None], ix[None, :]]  # (N, h, w)

"""Conversions between the model frame and a reduced frame of the same image.

The model frame is the letterboxed model input ``(H, W)`` (640 x 640). YOLOv5-seg predicts
masks at the prototype resolution ``(H / 4, W / 4)`` (160 x 160); its segmentation loss
compares them with the model-frame ground truth resized by ``F.interpolate(mode="nearest")``,
i.e. it reads GT pixel ``(nearest_index(H, h)[r], nearest_index(W, w)[c])`` for reduced pixel
``(r, c)`` -- ``(4r, 4c)`` at 640 -> 160.

* ``to_reduced_frame`` keeps exactly those pixels of every mask (nothing is averaged), so a
  metric or a loss computed in the reduced frame sees what the loss sees.
* ``to_model_frame`` repeats each reduced pixel over the block it stands for (nearest
  upsampling): reduced -> model -> reduced gives back the same masks, and the model-frame
  masks are identical to the originals at the pixels the loss reads.
* Boxes are scaled by the frame ratio (a power of two at 640 / 160, so exactly).

The model frame must be an integer multiple of the reduced frame on both axes.
"""

from __future__ import annotations

import numpy as np

from armbench_segmentation.structures import Instances

__all__ = ["nearest_index", "frame_factors", "scale_boxes", "sample_masks", "repeat_masks", "to_reduced_frame",
           "to_model_frame"]


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """(n_out,) int64 source indices of ``F.interpolate(mode='nearest')`` along one axis
    resized from ``n_in`` to ``n_out`` (PyTorch: float32 scale ``n_in / n_out``, floor)."""
    if n_in < 1 or n_out < 0:
        raise ValueError(f"expected n_in >= 1 and n_out >= 0, got n_in={n_in}, n_out={n_out}")
    scale = np.float32(n_in) / np.float32(n_out) if n_out else np.float32(1)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def frame_factors(model_hw: tuple[int, int], reduced_hw: tuple[int, int]) -> tuple[int, int]:
    """``(H // h, W // w)``, the integer block size of a reduced pixel.

    Raises:
        ValueError: the model frame is not an integer multiple of the reduced frame.
    """
    (big_h, big_w), (h, w) = (int(v) for v in model_hw), (int(v) for v in reduced_hw)
    if h < 1 or w < 1 or big_h % h or big_w % w:
        raise ValueError(f"the model frame {(big_h, big_w)} must be an integer multiple of the reduced frame "
                         f"{(h, w)} (e.g. 640x640 and the 160x160 prototype frame)")
    return big_h // h, big_w // w


def scale_boxes(boxes: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """(N, 4) xyxy boxes in a ``src_hw`` frame -> the ``dst_hw`` frame of the same image, float32."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scale = np.array([dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0]] * 2, np.float32)
    return boxes * scale  # (N, 4)


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


def repeat_masks(masks: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(N, h, w) masks -> (N, H, W) bool, each pixel repeated over its block (nearest upsampling).

    Raises:
        ValueError: ``out_hw`` is not an integer multiple of the masks' frame.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, h, w) masks, got shape {masks.shape}")
    sy, sx = frame_factors(out_hw, masks.shape[1:])
    return masks.astype(bool, copy=False).repeat(sy, axis=1).repeat(sx, axis=2)  # (N, H, W)


def to_reduced_frame(inst: Instances, hw: tuple[int, int]) -> Instances:
    """Model-frame Instances -> the reduced ``hw`` frame: boxes scaled, masks sampled at the
    pixels the YOLOv5-seg loss reads (``sample_masks``). Scores, ids and extras are kept.

    Raises:
        ValueError: the model frame is not an integer multiple of ``hw``.
    """
    hw = tuple(int(v) for v in hw)
    frame_factors(inst.image_size, hw)
    return Instances(boxes=scale_boxes(inst.boxes, inst.image_size, hw), class_ids=inst.class_ids, image_size=hw,
                     masks=None if inst.masks is None else sample_masks(inst.masks, hw), scores=inst.scores,
                     ids=inst.ids, extras=inst.extras)


def to_model_frame(inst: Instances, hw: tuple[int, int]) -> Instances:
    """Reduced-frame Instances -> the model ``hw`` frame: boxes scaled, masks repeated
    (``repeat_masks``). Scores, ids and extras are kept.

    Raises:
        ValueError: ``hw`` is not an integer multiple of the reduced frame.
    """
    hw = tuple(int(v) for v in hw)
    frame_factors(hw, inst.image_size)
    return Instances(boxes=scale_boxes(inst.boxes, inst.image_size, hw), class_ids=inst.class_ids, image_size=hw,
                     masks=None if inst.masks is None else repeat_masks(inst.masks, hw), scores=inst.scores,
                     ids=inst.ids, extras=inst.extras)


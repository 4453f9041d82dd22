"""Codecs: one implementation of each encoding the project reads or writes.

Beside ``structures.py`` (the typed container), this module holds the small conversions that
several layers need and that must behave the same everywhere:

- bit-packed masks (``pack_mask_bits`` / ``unpack_mask_bits``): how the Tensorleap face
  carries model-frame GT masks exactly through float16 storage.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MASK_BITS_PER_VALUE", "pack_mask_bits", "unpack_mask_bits"]

#: pixels per stored value of a bit-packed mask row (``pack_mask_bits``): values 0..255 are
#: integers that float16 (the Tensorleap platform's storage type) represents exactly.
MASK_BITS_PER_VALUE = 8


def pack_mask_bits(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool masks -> (N, H, ceil(W / 8)) float32, 8 pixels per value (most
    significant bit first, the last value zero-padded): integers 0..255, exact in float16.

    The Tensorleap GT encoder carries model-frame masks this way, so the platform evaluates
    on the same pixels as the local engine: (N, S, S/8) values, which in the platform's float16
    storage take the bytes of a (N, S/4, S/4) float32 stack.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    return np.packbits(masks.astype(bool, copy=False), axis=2).astype(np.float32)  # (N, H, ceil(W/8))


def unpack_mask_bits(packed: np.ndarray, width: int) -> np.ndarray:
    """Inverse of :func:`pack_mask_bits`: (N, H, ceil(W / 8)) values -> (N, H, width) bool.

    Raises:
        ValueError: values that are not integers in [0, 255], or too few values per row.
    """
    packed = np.asarray(packed, dtype=np.float32)
    if packed.ndim != 3 or packed.shape[2] * MASK_BITS_PER_VALUE < width:
        raise ValueError(f"expected (N, H, >= {-(-width // MASK_BITS_PER_VALUE)}) packed masks for width {width}, "
                         f"got shape {packed.shape}")
    if packed.size and (packed.min() < 0 or packed.max() > 255 or not np.array_equal(packed, np.rint(packed))):
        raise ValueError("packed masks must hold integers in [0, 255] (8 pixels per value); got other values: "
                         "were they resized or normalised on the way?")
    return np.unpackbits(packed.astype(np.uint8), axis=2, count=width).astype(bool)  # (N, H, width)

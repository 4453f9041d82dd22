"""Codecs: one implementation of each encoding the project reads or writes.

Beside ``structures.py`` (the typed container), this module holds the small conversions that
several layers need and that must behave the same everywhere:

- bit-packed masks (``pack_mask_bits`` / ``unpack_mask_bits``): how the Tensorleap face
  carries model-frame GT masks exactly through float16 storage.
- JSON values (``json_default``): numpy scalars and arrays, paths -> JSON; the ``default=``
  of every ``json.dumps`` that may meet them (NaN is the caller's ``allow_nan``).
- atomic files (``atomic_path``, ``atomic_write_bytes``, ``atomic_write_text``): a temporary
  file beside the target, renamed over it; a failed write leaves neither.
- boxes (``corner_xywh_to_xyxy`` / ``xyxy_to_corner_xywh``: COCO ``bbox``;
  ``center_xywh_to_xyxy`` / ``xyxy_to_center_xywh``: YOLO): (N, 4) float arrays.
- original-resolution RLE (``mask_to_original_rle``): a model-frame mask -> the compressed
  COCO RLE of ``Letterbox.masks_to_original`` at the original size.
- categories by name (``category_ids_by_name``): model classes -> COCO category ids.

Split names live in ``splits.py``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import secrets
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "MASK_BITS_PER_VALUE", "pack_mask_bits", "unpack_mask_bits", "json_default", "atomic_path",
    "atomic_write_bytes", "atomic_write_text", "corner_xywh_to_xyxy", "xyxy_to_corner_xywh",
    "center_xywh_to_xyxy", "xyxy_to_center_xywh", "mask_to_original_rle", "category_ids_by_name",
]

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


# ---------------------------------------------------------------------------- JSON
def finite_float(value: Any) -> float | None:
    """``float(value)``, or None when it is None, not a number, NaN or infinite: the one
    way a table cell, a metric or a metadata value becomes a JSON-safe number."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def json_default(value: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalar -> ``.item()``, ndarray -> list,
    ``Path`` -> str. Non-finite floats are left to the caller's ``allow_nan``.

    Raises:
        TypeError: any other type (named in the message).
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable (expected a JSON type, a numpy scalar "
                    f"or array, or a Path)")


# ---------------------------------------------------------------------------- atomic files
@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; when the block ends without an exception the
    file written there replaces ``path`` (``os.replace``), otherwise it is removed.

    For writers that want a file name (pandas ``to_csv`` / ``to_parquet``). ``fsync``: flush
    the temporary file to disk before the rename.
    """
    path = Path(path)
    # a unique name, not created here: the writer creates it with the usual (umask) permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``Path(path)``."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8", fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`); returns ``Path(path)``."""
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)


# ---------------------------------------------------------------------------- boxes
def _boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"expected (N, 4) boxes, got shape {b.shape}")
    return b if np.issubdtype(b.dtype, np.floating) else b.astype(np.float64)


def corner_xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) [x, y, w, h] with (x, y) the top-left corner (COCO ``bbox``) -> (N, 4) [x1, y1, x2, y2]."""
    b = _boxes(boxes)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)  # (N, 4)


def xyxy_to_corner_xywh(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) [x1, y1, x2, y2] -> (N, 4) [x, y, w, h] with (x, y) the top-left corner (COCO ``bbox``)."""
    b = _boxes(boxes)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)  # (N, 4)


def center_xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) [cx, cy, w, h] (YOLO) -> (N, 4) [x1, y1, x2, y2]."""
    b = _boxes(boxes)
    xy, half = b[:, :2], b[:, 2:] / 2
    return np.concatenate([xy - half, xy + half], axis=1)  # (N, 4)


def xyxy_to_center_xywh(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) [x1, y1, x2, y2] -> (N, 4) [cx, cy, w, h] (YOLO)."""
    b = _boxes(boxes)
    return np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], axis=1)  # (N, 4)


# ---------------------------------------------------------------------------- original-resolution RLE
@functools.lru_cache(maxsize=64)
def _nearest_maps(lb: Any) -> tuple[np.ndarray, np.ndarray]:
    """For each content-crop row (column) r, the first original row (column) that cv2's
    INTER_NEAREST upscale (``Letterbox.masks_to_original``) fills from it: original y is
    filled from crop row floor(y * (new_h / orig_h)). Arrays of length new_h + 1 (the last
    entry is orig_h), so original rows [first[r], first[r + 1]) come from crop row r."""
    maps = []
    for orig, new in ((lb.orig_h, lb.new_h), (lb.orig_w, lb.new_w)):
        f = 1.0 / (orig / new)  # as cv2 computes it
        src = np.minimum(np.floor(np.arange(orig) * f).astype(np.int64), new - 1)  # (orig,)
        first = np.searchsorted(src, np.arange(new + 1), "left").astype(np.int64)  # (new + 1,)
        first.setflags(write=False)
        maps.append(first)
    return maps[0], maps[1]


def mask_to_original_rle(mask: np.ndarray, lb: Any) -> dict:
    """Model-frame (S, S) bool mask -> compressed COCO RLE ``{"size": [H, W], "counts": str}``
    at the ORIGINAL resolution of the letterbox ``lb`` (a ``data.letterbox.Letterbox``).

    The same pixels as ``lb.masks_to_original(mask[None])[0]`` and the same string as
    ``pycocotools.mask.encode`` of it, without materialising the original-size mask: vertical
    runs are found at model resolution, their row bounds mapped to original rows, and each crop
    column's runs repeated for the original columns that nearest-neighbour upscaling copies
    from it. Cost follows the mask's perimeter.
    """
    from pycocotools import mask as mask_utils

    oh, ow = lb.orig_h, lb.orig_w
    crop = np.asarray(mask, dtype=bool)[lb.pad_y: lb.pad_y + lb.new_h, lb.pad_x: lb.pad_x + lb.new_w]  # (new_h, new_w)
    rows_any = crop.any(axis=1)
    if not rows_any.any():
        counts = [oh * ow]
    else:
        first_y, first_x = _nearest_maps(lb)
        r0, r1 = np.flatnonzero(rows_any)[[0, -1]]
        cols_any = crop[r0: r1 + 1].any(axis=0)
        c0, c1 = np.flatnonzero(cols_any)[[0, -1]]
        sub = crop[r0: r1 + 1, c0: c1 + 1]  # (hs, ws)
        hs, ws = sub.shape
        padded = np.zeros((ws, hs + 2), np.int8)  # column-major, zero-padded so runs stay in a column
        padded[:, 1:-1] = sub.T
        d = np.diff(padded, axis=1)  # (ws, hs + 1)
        sc, sr = np.nonzero(d == 1)  # run starts, sorted by column then row
        _, er = np.nonzero(d == -1)  # run ends (exclusive), same order
        start_y = first_y[sr + r0]  # original rows
        end_y = first_y[er + r0]
        keep = end_y > start_y  # runs shorter than one original row vanish when downscaling
        sc, start_y, end_y = sc[keep], start_y[keep], end_y[keep]
        k = np.bincount(sc, minlength=ws)  # runs per crop column
        offset = np.concatenate([[0], np.cumsum(k)[:-1]])
        xs = np.arange(first_x[c0], first_x[c1 + 1])  # original columns covering the crop columns
        col = np.searchsorted(first_x, xs, "right") - 1 - c0  # crop column each is copied from
        per_x = k[col]
        xs_rep = np.repeat(xs, per_x)
        within = np.arange(per_x.sum()) - np.repeat(np.cumsum(per_x) - per_x, per_x)
        run = np.repeat(offset[col], per_x) + within
        starts = xs_rep * oh + start_y[run]  # flat column-major indices, increasing
        ends = xs_rep * oh + end_y[run]
        # a run ending at a column's last row and one starting at the next column's first row
        # are one run in the flat order: merge them (pycocotools' encoding has no empty runs)
        if len(starts):
            joined = starts[1:] == ends[:-1]
            starts, ends = starts[np.r_[True, ~joined]], ends[np.r_[~joined, True]]
        bounds = np.empty(2 * len(starts) + 2, np.int64)
        bounds[0], bounds[-1] = 0, oh * ow
        bounds[1:-1:2], bounds[2:-1:2] = starts, ends
        counts = np.diff(bounds).tolist()
        if len(counts) > 1 and counts[-1] == 0:  # the last run reaches the last pixel
            counts.pop()
    rle = mask_utils.frPyObjects({"size": [oh, ow], "counts": counts}, oh, ow)
    return {"size": [oh, ow], "counts": rle["counts"].decode("ascii")}


# ---------------------------------------------------------------------------- categories
def category_ids_by_name(categories: Sequence[Mapping[str, Any]],
                         class_names: Sequence[str]) -> tuple[dict[int, tuple[int, ...]], list[str]]:
    """Model class index -> the ids of the COCO categories named like ``class_names[index]``.

    A class matches the categories with exactly its name; when there is none, those whose name
    matches case-insensitively (``str.casefold``). Categories without an ``id`` are ignored.

    Returns:
        (by_class, missing): ``by_class`` holds every class with at least one category (ids in
        file order); ``missing`` lists the class names without one, in class order. The caller
        warns or raises about them.
    """
    cats = [c for c in categories if "id" in c]
    by_class: dict[int, tuple[int, ...]] = {}
    missing: list[str] = []
    for index, name in enumerate(class_names):
        ids = [int(c["id"]) for c in cats if c.get("name") == name]
        if not ids:
            folded = str(name).casefold()
            ids = [int(c["id"]) for c in cats if str(c.get("name", "")).casefold() == folded]
        if ids:
            by_class[index] = tuple(ids)
        else:
            missing.append(name)
    return by_class, missing

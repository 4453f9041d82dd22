"""Pairwise overlap between two sets of masks: one intersection matrix, IoU and IoA from it.

Every pairwise quantity the metrics need (IoU for matching, IoA for over/under
segmentation, pred-vs-pred overlap for duplicates) derives from one ``(N, M)`` intersection
matrix and the two area vectors, so the pixels are visited once per call.

Two exact ways of computing the intersection matrix:

- ``"matmul"``: flattened masks as float32, ``(N, HW) @ (HW, M)``. Counts are exact below
  2^24 pixels per mask. Simple, but its cost is ``N * M * H * W`` whatever the overlap.
- ``"packed"``: the box-pruned path. Each mask row is bit-packed into 64-bit words; only
  pairs whose row span and word-column span intersect are compared, and only on their
  common rows: a gather of ``(rows, words)`` and a popcount. The cost follows the overlapping
  area, not the image size, which matters for 640x640 (and 2448x2048) images with many
  small instances. Exact for any size.

``"auto"`` takes ``"matmul"`` for tiny problems and ``"packed"`` otherwise. Pack a mask set
once with :func:`pack_masks` when it is compared several times (GT vs predictions, then
predictions vs predictions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Overlaps",
    "PackedMasks",
    "pack_masks",
    "mask_overlaps",
    "overlaps_from_counts",
    "rle_overlaps",
    "box_iou",
]

# Above this many gathered 64-bit words the packed path works in chunks (bounded memory).
_CHUNK_WORDS = 1 << 21
# Below this N * M * H * W the dense matmul is as cheap as packing.
_MATMUL_MAX_WORK = 1 << 22


@dataclass(frozen=True)
class Overlaps:
    """Pairwise overlap between set A (rows) and set B (columns).

    Attributes:
        intersection: (N, M) int64 pixel counts of ``a_i & b_j``.
        area_a: (N,) int64 pixel counts of the A masks.
        area_b: (M,) int64 pixel counts of the B masks.
        iou: (N, M) float64 ``inter / (area_a + area_b - inter)``; 0 where the union is empty.
        a_in_b: (N, M) float64 ``inter / area_a``: the share of ``a_i`` lying inside ``b_j``;
            0 where ``area_a`` is 0.
        b_in_a: (N, M) float64 ``inter / area_b``: the share of ``b_j`` lying inside ``a_i``;
            0 where ``area_b`` is 0.
    """

    intersection: np.ndarray
    area_a: np.ndarray
    area_b: np.ndarray
    iou: np.ndarray
    a_in_b: np.ndarray
    b_in_a: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.intersection.shape  # type: ignore[return-value]

    def select(self, rows: np.ndarray | slice, cols: np.ndarray | slice) -> "Overlaps":
        """Sub-matrices for a subset of A (``rows``) and of B (``cols``): index arrays,
        boolean masks or slices. Used to go from all-class overlaps to one class."""
        rows = _as_index(rows)
        cols = _as_index(cols)
        return Overlaps(
            intersection=self.intersection[rows][:, cols],
            area_a=self.area_a[rows],
            area_b=self.area_b[cols],
            iou=self.iou[rows][:, cols],
            a_in_b=self.a_in_b[rows][:, cols],
            b_in_a=self.b_in_a[rows][:, cols],
        )

    def transpose(self) -> "Overlaps":
        """The same overlaps seen from B: rows and columns (and ``a_in_b``/``b_in_a``) swap."""
        return Overlaps(
            intersection=self.intersection.T,
            area_a=self.area_b,
            area_b=self.area_a,
            iou=self.iou.T,
            a_in_b=self.b_in_a.T,
            b_in_a=self.a_in_b.T,
        )


def _as_index(index):
    if isinstance(index, slice):
        return index
    index = np.asarray(index)
    if index.dtype == bool:
        return np.flatnonzero(index)
    return index.astype(np.intp, copy=False)


def overlaps_from_counts(intersection: np.ndarray, area_a: np.ndarray, area_b: np.ndarray) -> Overlaps:
    """Build :class:`Overlaps` from an intersection matrix and the two area vectors.

    Args:
        intersection: (N, M) pixel counts.
        area_a: (N,) pixel counts.
        area_b: (M,) pixel counts.
    Returns:
        Overlaps with exact zeros where a denominator is zero (no eps, no NaN).
    """
    inter = np.asarray(intersection, dtype=np.int64)
    area_a = np.asarray(area_a, dtype=np.int64).reshape(-1)
    area_b = np.asarray(area_b, dtype=np.int64).reshape(-1)
    if inter.shape != (len(area_a), len(area_b)):
        raise ValueError(
            f"intersection has shape {inter.shape}, expected {(len(area_a), len(area_b))} (len(area_a), len(area_b))"
        )
    inter_f = inter.astype(np.float64)
    union = (area_a[:, None] + area_b[None, :] - inter).astype(np.float64)  # (N, M)
    den_a = np.broadcast_to(area_a[:, None].astype(np.float64), inter.shape)
    den_b = np.broadcast_to(area_b[None, :].astype(np.float64), inter.shape)
    return Overlaps(
        intersection=inter,
        area_a=area_a,
        area_b=area_b,
        iou=np.divide(inter_f, union, out=np.zeros_like(inter_f), where=union > 0),
        a_in_b=np.divide(inter_f, den_a, out=np.zeros_like(inter_f), where=den_a > 0),
        b_in_a=np.divide(inter_f, den_b, out=np.zeros_like(inter_f), where=den_b > 0),
    )


# --------------------------------------------------------------------------- packing
@dataclass(frozen=True)
class PackedMasks:
    """Bit-packed masks with their extents, for repeated overlap computations.

    Selecting a subset (``packed[idx]``) does not copy the packed words: the subset keeps
    the parent's ``words`` and an index into them.

    Attributes:
        words: (N0, H, K) uint64, row ``y`` of mask ``i`` packed into ``K = ceil(W / 64)``
            words (for a subset, the parent's array).
        areas: (N,) int64 pixel counts.
        rows: (N, 2) int64 ``[y_first, y_last + 1)`` of each mask; ``[0, 0)`` when empty.
        cols: (N, 2) int64 ``[k_first, k_last + 1)`` word columns of each mask; ``[0, 0)`` when empty.
        hw: ``(H, W)``.
        index: (N,) rows of ``words`` holding these masks (None: all of them, in order).
    """

    words: np.ndarray
    areas: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    hw: tuple[int, int]
    index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.areas)

    def __getitem__(self, index) -> "PackedMasks":
        index = _as_index(index)
        base = np.arange(len(self.words))[index] if self.index is None else self.index[index]
        return PackedMasks(self.words, self.areas[index], self.rows[index], self.cols[index], self.hw,
                           np.atleast_1d(base).astype(np.intp))

    def word_rows(self) -> np.ndarray:
        """(N,) rows of ``words`` holding these masks."""
        return np.arange(len(self.words), dtype=np.intp) if self.index is None else self.index


def _check_masks(masks: np.ndarray, name: str) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W), got {masks.shape}; stack single masks with masks[None]")
    if masks.dtype != bool:
        masks = masks.astype(bool)
    return masks


def _span(any_along: np.ndarray) -> np.ndarray:
    """(N, L) bool -> (N, 2) int64 ``[first, last + 1)``, ``[0, 0)`` for an all-False row."""
    n, length = any_along.shape
    if length == 0:
        return np.zeros((n, 2), np.int64)
    has = any_along.any(axis=1)
    first = np.argmax(any_along, axis=1)
    last = length - np.argmax(any_along[:, ::-1], axis=1)
    out = np.stack([first, last], axis=1).astype(np.int64)  # (N, 2)
    out[~has] = 0
    return out


def pack_masks(masks: np.ndarray | PackedMasks) -> PackedMasks:
    """Bit-pack (N, H, W) bool masks row by row (64 pixels per uint64 word).

    Args:
        masks: (N, H, W) bool (other dtypes are cast with ``!= 0``), or an already packed set.
    Returns:
        PackedMasks; packing an empty set gives ``words`` of shape (0, H, K).
    """
    if isinstance(masks, PackedMasks):
        return masks
    masks = _check_masks(masks, "masks")
    n, h, w = masks.shape
    k = max(1, -(-w // 64))
    packed = np.packbits(masks, axis=-1)  # (N, H, ceil(W/8)) uint8, big-endian bit order
    pad = k * 8 - packed.shape[-1]
    if pad:
        packed = np.concatenate([packed, np.zeros((n, h, pad), np.uint8)], axis=-1)
    words = np.ascontiguousarray(packed).view(np.uint64)  # (N, H, K)
    # OR-reductions: a loop over the few words of a row beats a reduction along a short
    # trailing axis; the column reduction runs along H with K-wide inner loops
    row_or = words[:, :, 0].copy()  # (N, H)
    for j in range(1, k):
        row_or |= words[:, :, j]
    col_or = np.bitwise_or.reduce(words, axis=1) if h else np.zeros((n, k), np.uint64)  # (N, K)
    areas = np.bitwise_count(words).reshape(n, h * k).sum(axis=1, dtype=np.int64)  # (N,)
    return PackedMasks(words=words, areas=areas, rows=_span(row_or != 0), cols=_span(col_or != 0), hw=(h, w))


def _packed_intersection(a: PackedMasks, b: PackedMasks) -> np.ndarray:
    """(N, M) int64 intersections, computed only for pairs whose extents meet."""
    n, m = len(a), len(b)
    inter = np.zeros((n, m), np.int64)
    if n == 0 or m == 0:
        return inter
    y0 = np.maximum(a.rows[:, None, 0], b.rows[None, :, 0])  # (N, M)
    y1 = np.minimum(a.rows[:, None, 1], b.rows[None, :, 1])
    k0 = np.maximum(a.cols[:, None, 0], b.cols[None, :, 0])
    k1 = np.minimum(a.cols[:, None, 1], b.cols[None, :, 1])
    ii, jj = np.nonzero((y1 > y0) & (k1 > k0))  # candidate pairs (P,)
    if len(ii) == 0:
        return inter
    ya, nrows = y0[ii, jj], (y1 - y0)[ii, jj]
    # the common word columns of all candidates: gathering a slice [kmin, kmax) keeps the
    # gather rectangular; a per-pair column range would need ragged indexing
    kmin, kmax = int(k0[ii, jj].min()), int(k1[ii, jj].max())
    words_per_row = kmax - kmin
    wa = a.words[:, :, kmin:kmax] if (kmin, kmax) != (0, a.words.shape[2]) else a.words
    wb = b.words[:, :, kmin:kmax] if (kmin, kmax) != (0, b.words.shape[2]) else b.words
    ii_words, jj_words = a.word_rows()[ii], b.word_rows()[jj]  # rows of the (shared) word arrays
    # process the candidate pairs in chunks of at most _CHUNK_WORDS gathered words
    row_budget = max(1, _CHUNK_WORDS // words_per_row)
    ends = np.cumsum(nrows)
    start_pair = 0
    counts = np.zeros(len(ii), np.int64)
    while start_pair < len(ii):
        done = ends[start_pair - 1] if start_pair else 0
        stop_pair = int(np.searchsorted(ends, done + row_budget, side="right"))
        stop_pair = max(stop_pair, start_pair + 1)
        sel = slice(start_pair, stop_pair)
        lengths = nrows[sel]
        pair = np.repeat(np.arange(stop_pair - start_pair), lengths)  # (R,)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        row = ya[sel][pair] + (np.arange(len(pair)) - offsets[pair])  # (R,)
        both = wa[ii_words[sel][pair], row] & wb[jj_words[sel][pair], row]  # (R, K')
        per_row = np.bitwise_count(both).sum(axis=1, dtype=np.int64)  # (R,)
        counts[sel] = np.bincount(pair, weights=per_row, minlength=stop_pair - start_pair).astype(np.int64)
        start_pair = stop_pair
    inter[ii, jj] = counts
    return inter


def _matmul_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) int64 intersections of (N, H, W) and (M, H, W) bool masks by one float32 matmul."""
    hw = a.shape[1] * a.shape[2]
    fa = a.reshape(len(a), hw).astype(np.float32)  # (N, HW)
    fb = b.reshape(len(b), hw).astype(np.float32)  # (M, HW)
    return np.rint(fa @ fb.T).astype(np.int64)  # (N, M), exact below 2^24 pixels


def mask_overlaps(
    masks_a: np.ndarray | PackedMasks,
    masks_b: np.ndarray | PackedMasks,
    method: str = "auto",
) -> Overlaps:
    """Intersection, IoU and IoA (both directions) between two mask sets.

    Args:
        masks_a: (N, H, W) bool, or a :class:`PackedMasks`.
        masks_b: (M, H, W) bool, or a :class:`PackedMasks`; same (H, W) as ``masks_a``.
        method: ``"auto"``, ``"packed"`` (box-pruned, bit-packed) or ``"matmul"`` (dense
            float32). All give identical results.
    Returns:
        :class:`Overlaps` with (N, M) matrices; (0, M) / (N, 0) when a set is empty.

    Example:
        >>> a = np.zeros((1, 4, 4), bool); a[0, :2] = True      # top half, 8 px
        >>> b = np.zeros((1, 4, 4), bool); b[0, :, :2] = True   # left half, 8 px
        >>> mask_overlaps(a, b).iou
        array([[0.33333333]])
    """
    if method not in ("auto", "packed", "matmul"):
        raise ValueError(f"method must be one of 'auto', 'packed', 'matmul'; got {method!r}")
    hw_a = masks_a.hw if isinstance(masks_a, PackedMasks) else None
    hw_b = masks_b.hw if isinstance(masks_b, PackedMasks) else None
    if hw_a is None:
        masks_a = _check_masks(masks_a, "masks_a")
        hw_a = masks_a.shape[1:]
    if hw_b is None:
        masks_b = _check_masks(masks_b, "masks_b")
        hw_b = masks_b.shape[1:]
    if tuple(hw_a) != tuple(hw_b):
        raise ValueError(
            f"masks_a are {tuple(hw_a)} (H, W) but masks_b are {tuple(hw_b)}; "
            "bring both to the same frame first (e.g. Letterbox.masks_to_model)"
        )
    n, m = len(masks_a), len(masks_b)
    h, w = hw_a
    if method == "auto":
        either_packed = isinstance(masks_a, PackedMasks) or isinstance(masks_b, PackedMasks)
        method = "packed" if either_packed or n * m * h * w > _MATMUL_MAX_WORK or h * w >= 1 << 24 else "matmul"
    if method == "matmul":
        a = _unpack(masks_a)
        b = _unpack(masks_b)
        if h * w >= 1 << 24:
            raise ValueError(f"method='matmul' is exact only below 2^24 pixels per mask, got {h}x{w}; use 'packed'")
        inter = _matmul_intersection(a, b) if n and m else np.zeros((n, m), np.int64)
        area_a = a.reshape(n, h * w).sum(axis=1, dtype=np.int64)
        area_b = b.reshape(m, h * w).sum(axis=1, dtype=np.int64)
        return overlaps_from_counts(inter, area_a, area_b)
    pa, pb = pack_masks(masks_a), pack_masks(masks_b)
    return overlaps_from_counts(_packed_intersection(pa, pb), pa.areas, pb.areas)


def _unpack(masks: np.ndarray | PackedMasks) -> np.ndarray:
    if not isinstance(masks, PackedMasks):
        return masks
    words = masks.words[masks.word_rows()]
    n, h, k = words.shape
    bits = np.unpackbits(words.view(np.uint8).reshape(n, h, k * 8), axis=-1)  # (N, H, 64K)
    return bits[:, :, : masks.hw[1]].astype(bool)


# pycocotools' ``area`` fails under numpy 2 for lists longer than 255 RLEs ("Python
# integer 256 out of bounds for uint8"): it is called on chunks of at most this many.
_RLE_AREA_CHUNK = 255


def rle_areas(rles: list[dict]) -> np.ndarray:
    """(N,) int64 pixel areas of COCO RLEs (any N, including 0 and > 255)."""
    from pycocotools import mask as mask_utils

    rles = list(rles)
    if not rles:
        return np.zeros(0, np.int64)
    parts = [np.asarray(mask_utils.area(rles[i : i + _RLE_AREA_CHUNK]), np.int64).reshape(-1)
             for i in range(0, len(rles), _RLE_AREA_CHUNK)]
    return np.concatenate(parts)


def rle_overlaps(rles_a: list[dict], rles_b: list[dict]) -> Overlaps:
    """Overlaps between two lists of COCO RLEs (pycocotools format), without decoding.

    Uses ``pycocotools.mask.iou`` (non-crowd) and ``area``; the intersection is recovered
    exactly from ``iou = i / (a + b - i)`` as ``round(iou * (a + b) / (1 + iou))``.
    Cheap at full ARMBench resolution (2448x2048), where decoding every mask is not.

    Args:
        rles_a: N compressed RLE dicts ``{"size": [H, W], "counts": ...}``.
        rles_b: M compressed RLE dicts of the same size.
    Returns:
        :class:`Overlaps` (N, M).
    """
    from pycocotools import mask as mask_utils

    n, m = len(rles_a), len(rles_b)
    area_a, area_b = rle_areas(rles_a), rle_areas(rles_b)
    if n == 0 or m == 0:
        return overlaps_from_counts(np.zeros((n, m), np.int64), area_a, area_b)
    iou = np.asarray(mask_utils.iou(list(rles_a), list(rles_b), [0] * m), np.float64).reshape(n, m)  # (N, M)
    total = (area_a[:, None] + area_b[None, :]).astype(np.float64)
    inter = np.rint(iou * total / (1.0 + iou)).astype(np.int64)
    return overlaps_from_counts(inter, area_a, area_b)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes (continuous coordinates, area = w * h).

    Args:
        boxes_a: (N, 4) ``x1, y1, x2, y2``.
        boxes_b: (M, 4).
    Returns:
        (N, M) float64; 0 where the union is empty (degenerate boxes), never NaN.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    wh_a = np.clip(a[:, 2:] - a[:, :2], 0, None)
    wh_b = np.clip(b[:, 2:] - b[:, :2], 0, None)
    area_a = wh_a[:, 0] * wh_a[:, 1]  # (N,)
    area_b = wh_b[:, 0] * wh_b[:, 1]  # (M,)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)

"""Over- and under-segmentation of one image, from the overlap matrices.

Definitions (IoA threshold ``t``, strictly greater, default ``MetricsConfig.ioa_threshold``
= 0.8), for GT and predictions *of the same class*, for each class listed in
``MetricsConfig.segmentation_classes`` (Object by default; a Tote prediction never flags
an Object):

- **under-segmented prediction** ``p``: more than one GT object ``g`` lies inside it,
  ``|g & p| / |g| > t``. Its *parts* are those GT objects.
- **over-segmented GT object** ``g`` (legacy rule): more than one prediction ``p`` lies
  inside it, ``|p & g| / |p| > t``. Its *parts* are those predictions.
- **duplicates**: two predictions lying inside the same GT object with mutual IoU
  ``>= MetricsConfig.duplicate_iou`` are copies of one another (an NMS miss), not a split.
  Duplicate predictions are grouped (connected components of the "duplicate of" relation);
  the default ``over_segmented_count`` counts a GT object only if it still holds more than
  one part after each duplicate group is collapsed into one part;
  ``over_segmented_count_legacy`` keeps the legacy rule (any > 1 contained predictions).

All per-sample numbers are in :class:`SegmentationErrors`; ``as_dict()`` flattens them to
scalars with ``None`` where a mean has nothing to average (never NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Sequence

import numpy as np

from armbench_segmentation.config import MetricsConfig
from armbench_segmentation.metrics.overlap import Overlaps, PackedMasks, mask_overlaps, pack_masks
from armbench_segmentation.structures import Instances

__all__ = ["SegmentationErrors", "segmentation_errors", "class_indices", "duplicate_groups"]

_EMPTY_IDS = np.zeros(0, np.int64)


@dataclass(frozen=True)
class SegmentationErrors:
    """Over/under segmentation of one image (all configured classes, or one class).

    Attributes:
        over_segmented: some GT object is split into > 1 parts (duplicates collapsed).
        over_segmented_legacy: some GT object contains > 1 predictions (legacy rule).
        under_segmented: some prediction contains > 1 GT objects.
        over_segmented_count: GT objects split (duplicates collapsed).
        over_segmented_count_legacy: GT objects containing > 1 predictions.
        under_segmented_count: predictions containing > 1 GT objects.
        over_segmented_mean_parts: mean number of parts (after collapsing duplicates) per
            split GT object; None when none is split.
        under_segmented_mean_parts: mean number of GT objects per merging prediction; None
            when none merges.
        over_segmented_gt_ids / over_segmented_pred_ids: ``Instances.ids`` of the split GT
            objects and of the predictions inside them (sorted, unique).
        under_segmented_pred_ids / under_segmented_gt_ids: ids of the merging predictions
            and of the GT objects they swallow.
        over_segmented_mean_confidence / under_segmented_mean_confidence: mean score of the
            involved predictions; None when none (or no scores).
        over_segmented_small / under_segmented_small: an involved instance (GT or
            prediction) is smaller than ``small_area_fraction`` of the image.
        duplicate_count: redundant predictions (each duplicate group of k counts k - 1).
        duplicate_group_count: number of duplicate groups.
        duplicate_pred_ids: ids of every prediction in a duplicate group.
        duplicate_redundant_ids: ids of the redundant copies: each group without its
            best-scoring member (``duplicate_count`` of them).
        duplicate_gt_ids: ids of the GT objects holding a duplicate group.
        num_gt / num_pred: instances of the evaluated classes.
        per_class: class name -> the same record for that class alone (empty inside a
            per-class record).
    """

    over_segmented: bool = False
    over_segmented_legacy: bool = False
    under_segmented: bool = False
    over_segmented_count: int = 0
    over_segmented_count_legacy: int = 0
    under_segmented_count: int = 0
    over_segmented_mean_parts: float | None = None
    under_segmented_mean_parts: float | None = None
    over_segmented_gt_ids: np.ndarray = field(default_factory=lambda: _EMPTY_IDS)
    over_segmented_pred_ids: np.ndarray = field(default_factory=lambda: _EMPTY_IDS)
    under_segmented_pred_ids: np.ndarray = field(default_factory=lambda: _EMPTY_IDS)
    under_segmented_gt_ids: np.ndarray = field(default_factory=lambda: _EMPTY_IDS)
    over_segmented_mean_confidence: float | None = None
    under_segmented_mean_confidence: float | None = None
    over_segmented_small: bool = False
    under_segmented_small: bool = False
    duplicate_count: int = 0
    duplicate_group_count: int = 0
    duplicate_pred_ids: np.ndarray = field(default_factory=lambda: _EMPTY_IDS)
    duplicate_redundant_ids: np.ndarray = field(default_factory=lambda: _EMPTY_IDS)
    duplicate_gt_ids: np.ndarray = field(default_factory=lambda: _EMPTY_IDS)
    num_gt: int = 0
    num_pred: int = 0
    per_class: dict[str, "SegmentationErrors"] = field(default_factory=dict)

    # sums kept to combine classes exactly (not part of the report)
    _over_parts_sum: int = 0
    _under_parts_sum: int = 0
    _over_conf_sum: float = 0.0
    _over_conf_n: int = 0
    _under_conf_sum: float = 0.0
    _under_conf_n: int = 0

    def involved_ids(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """``(gt_ids, pred_ids)``: the ``Instances.ids`` involved in one kind of error.

        Args:
            kind: ``"over"`` (the split GT objects and the predictions inside them) or
                ``"under"`` (the merging predictions and the GT objects they swallow).
        Returns:
            two sorted, unique (K,) int64 arrays (empty when there is no such error).
        """
        if kind == "over":
            return self.over_segmented_gt_ids, self.over_segmented_pred_ids
        if kind == "under":
            return self.under_segmented_gt_ids, self.under_segmented_pred_ids
        raise ValueError(f"kind must be 'over' or 'under', got {kind!r}")

    def as_dict(self, per_class: bool = False) -> dict[str, int | float | None]:
        """Flat scalars: flags as 0/1 ints, counts as ints, means as float or None.

        Args:
            per_class: also add ``"<class>_<key>"`` entries (class name lower-cased).
        """
        out: dict[str, int | float | None] = {}
        for f in fields(self):
            if f.name.startswith("_") or f.name == "per_class":
                continue
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                continue
            if isinstance(value, (bool, np.bool_)):
                value = int(value)
            elif isinstance(value, (np.integer,)):
                value = int(value)
            elif isinstance(value, (np.floating,)):
                value = float(value)
            out[f.name] = value
        if per_class:
            for name, record in self.per_class.items():
                prefix = name.lower().replace(" ", "_")
                out.update({f"{prefix}_{k}": v for k, v in record.as_dict().items()})
        return out


def class_indices(names: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Model class indices of ``names``; ValueError listing the valid names otherwise."""
    out = []
    for name in names:
        if name not in class_names:
            raise ValueError(f"unknown class {name!r}; valid classes: {list(class_names)}")
        out.append(list(class_names).index(name))
    return out


def duplicate_groups(adjacency: np.ndarray) -> np.ndarray:
    """Connected-component labels of a symmetric (P, P) bool "duplicate of" relation.

    Returns:
        (P,) int64 labels; each component is labelled by its smallest member index.
    """
    adjacency = np.asarray(adjacency, bool)
    p = len(adjacency)
    labels = np.arange(p, dtype=np.int64)
    if p == 0 or not adjacency.any():
        return labels
    while True:  # min-label propagation; converges in (component diameter) rounds
        neighbour_min = np.where(adjacency, labels[None, :], p).min(axis=1)  # (P,)
        new = np.minimum(labels, neighbour_min)
        new = new[new]  # pointer jumping speeds up long chains
        if np.array_equal(new, labels):
            return labels
        labels = new


def _mean_or_none(total: float, n: int) -> float | None:
    return float(total) / n if n else None


def _class_errors(
    ov: Overlaps,
    pred_iou: np.ndarray | None,
    gt_ids: np.ndarray,
    pred_ids: np.ndarray,
    scores: np.ndarray | None,
    threshold: float,
    duplicate_iou: float,
    small_area: float,
) -> SegmentationErrors:
    """Errors for one class. ``ov`` is GT (rows) vs predictions (columns) of that class;
    ``pred_iou`` the (P, P) IoU among those predictions (None: no duplicates possible)."""
    g, p = ov.shape
    if g == 0 or p == 0:
        return SegmentationErrors(num_gt=g, num_pred=p)
    contains = ov.b_in_a > threshold  # (G, P): prediction j lies inside GT i
    inside = ov.a_in_b > threshold  # (G, P): GT i lies inside prediction j
    gt_small = ov.area_a < small_area  # (G,)
    pred_small = ov.area_b < small_area  # (P,)

    # duplicates: predictions sharing a GT object and nearly identical
    n_contained = contains.sum(axis=1)  # (G,) legacy parts
    labels = np.arange(p, dtype=np.int64)
    dup_members = np.zeros(p, bool)
    redundant = np.zeros(p, bool)
    n_groups = n_dups = 0
    if pred_iou is not None and (n_contained > 1).any():
        c32 = contains.astype(np.float32)  # BLAS matmul; counts are exact in float32
        share = (c32.T @ c32) > 0  # (P, P): predictions sharing a GT object
        adjacency = share & (pred_iou >= duplicate_iou)
        np.fill_diagonal(adjacency, False)
        labels = duplicate_groups(adjacency)
        sizes = np.bincount(labels, minlength=p)  # (P,) size per label
        dup_members = sizes[labels] > 1
        n_groups = int((sizes > 1).sum())
        n_dups = int((sizes[sizes > 1] - 1).sum())
        # the best-scoring member of each group stays (ties: the lowest index); the rest are copies
        order = np.argsort(-scores.astype(np.float64), kind="mergesort") if scores is not None else np.arange(p)
        _, first = np.unique(labels[order], return_index=True)
        redundant = dup_members.copy()
        redundant[order[first]] = False
    # parts after collapsing duplicate groups: distinct labels among contained predictions
    gi, pj = np.nonzero(contains)  # contained (GT, prediction) pairs
    distinct = np.unique(gi * p + labels[pj])  # (GT, duplicate group) pairs
    parts = np.bincount(distinct // p, minlength=g)  # (G,)

    over = parts > 1  # (G,)
    over_legacy = n_contained > 1
    over_preds = contains[over].any(axis=0)  # (P,)
    under_parts = inside.sum(axis=0)  # (P,)
    under = under_parts > 1  # (P,)
    under_gts = inside[:, under].any(axis=1)  # (G,)

    over_conf = scores[over_preds] if scores is not None else np.zeros(0, np.float32)
    under_conf = scores[under] if scores is not None else np.zeros(0, np.float32)
    return SegmentationErrors(
        over_segmented=bool(over.any()),
        over_segmented_legacy=bool(over_legacy.any()),
        under_segmented=bool(under.any()),
        over_segmented_count=int(over.sum()),
        over_segmented_count_legacy=int(over_legacy.sum()),
        under_segmented_count=int(under.sum()),
        over_segmented_mean_parts=_mean_or_none(parts[over].sum(), int(over.sum())),
        under_segmented_mean_parts=_mean_or_none(under_parts[under].sum(), int(under.sum())),
        over_segmented_gt_ids=np.unique(gt_ids[over]),
        over_segmented_pred_ids=np.unique(pred_ids[over_preds]),
        under_segmented_pred_ids=np.unique(pred_ids[under]),
        under_segmented_gt_ids=np.unique(gt_ids[under_gts]),
        over_segmented_mean_confidence=_mean_or_none(over_conf.sum(dtype=np.float64), len(over_conf)),
        under_segmented_mean_confidence=_mean_or_none(under_conf.sum(dtype=np.float64), len(under_conf)),
        over_segmented_small=bool(gt_small[over].any() or pred_small[over_preds].any()),
        under_segmented_small=bool(pred_small[under].any() or gt_small[under_gts].any()),
        duplicate_count=n_dups,
        duplicate_group_count=n_groups,
        duplicate_pred_ids=np.unique(pred_ids[dup_members]),
        duplicate_redundant_ids=np.unique(pred_ids[redundant]),
        duplicate_gt_ids=np.unique(gt_ids[contains[:, dup_members].any(axis=1)]),
        num_gt=g,
        num_pred=p,
        _over_parts_sum=int(parts[over].sum()),
        _under_parts_sum=int(under_parts[under].sum()),
        _over_conf_sum=float(over_conf.sum(dtype=np.float64)),
        _over_conf_n=len(over_conf),
        _under_conf_sum=float(under_conf.sum(dtype=np.float64)),
        _under_conf_n=len(under_conf),
    )


# the means of a combined record, from (sum field, count field) totals
_MEANS = {
    "over_segmented_mean_parts": ("_over_parts_sum", "over_segmented_count"),
    "under_segmented_mean_parts": ("_under_parts_sum", "under_segmented_count"),
    "over_segmented_mean_confidence": ("_over_conf_sum", "_over_conf_n"),
    "under_segmented_mean_confidence": ("_under_conf_sum", "_under_conf_n"),
}


def _combine(records: dict[str, SegmentationErrors]) -> SegmentationErrors:
    """One record for several classes: id arrays united, flags or-ed, counts and sums added,
    means recomputed from the summed parts; ``per_class`` keeps the class records."""
    rs = list(records.values())
    values: dict = {}
    for f in fields(SegmentationErrors):
        if f.name == "per_class" or f.name in _MEANS:
            continue
        parts = [getattr(r, f.name) for r in rs]
        if f.name.endswith("_ids"):
            values[f.name] = np.unique(np.concatenate(parts)) if parts else _EMPTY_IDS
        elif isinstance(f.default, bool):
            values[f.name] = any(parts)
        else:
            values[f.name] = sum(parts)
    for name, (total, n) in _MEANS.items():
        values[name] = _mean_or_none(values[total], values[n])
    return SegmentationErrors(**values, per_class=dict(records))


def segmentation_errors(
    gt: Instances,
    pred: Instances,
    config: MetricsConfig | None = None,
    class_names: Sequence[str] = ("Object", "Tote"),
    *,
    ioa_threshold: float | None = None,
    duplicate_iou: float | None = None,
    overlaps: Overlaps | None = None,
    pred_overlaps: Overlaps | None = None,
    packed_gt: PackedMasks | None = None,
    packed_pred: PackedMasks | None = None,
) -> SegmentationErrors:
    """Over/under segmentation of one image for the classes in ``config.segmentation_classes``.

    Args:
        gt: ground truth with masks (N, H, W) bool.
        pred: predictions with masks (M, H, W) bool in the same frame, and scores.
        config: thresholds (``ioa_threshold``, ``duplicate_iou``, ``small_area_fraction``,
            ``segmentation_classes``); default ``MetricsConfig()``.
        class_names: model class order (``settings.data.class_names``).
        ioa_threshold: overrides ``config.ioa_threshold`` (strict ``>``).
        duplicate_iou: overrides ``config.duplicate_iou`` (``>=``).
        overlaps: precomputed GT (rows) vs prediction (columns) overlaps of *all* instances,
            to share with matching; then masks may be None.
        pred_overlaps: precomputed prediction vs prediction overlaps of all predictions
            (only needed when two predictions share a GT object).
        packed_gt / packed_pred: packed masks (:func:`pack_masks`) to reuse.
    Returns:
        :class:`SegmentationErrors` summed over the configured classes, with ``per_class``.
    """
    config = config or MetricsConfig()
    t = config.ioa_threshold if ioa_threshold is None else float(ioa_threshold)
    dup = config.duplicate_iou if duplicate_iou is None else float(duplicate_iou)
    if gt.image_size != pred.image_size:
        raise ValueError(
            f"gt is in a {gt.image_size} frame but pred in {pred.image_size}; "
            "convert predictions with model.decode.to_original or GT with a letterbox first"
        )
    if overlaps is None:
        if gt.masks is None or pred.masks is None:
            raise ValueError("segmentation_errors needs masks on gt and pred, or precomputed overlaps=")
        packed_gt = packed_gt if packed_gt is not None else pack_masks(gt.masks)
        packed_pred = packed_pred if packed_pred is not None else pack_masks(pred.masks)
        overlaps = None
    elif overlaps.shape != (len(gt), len(pred)):
        raise ValueError(f"overlaps has shape {overlaps.shape}, expected {(len(gt), len(pred))} (len(gt), len(pred))")
    h, w = gt.image_size
    small_area = config.small_area_fraction * h * w

    records: dict[str, SegmentationErrors] = {}
    for name, c in zip(config.segmentation_classes, class_indices(config.segmentation_classes, class_names)):
        gi = np.flatnonzero(gt.class_ids == c)
        pi = np.flatnonzero(pred.class_ids == c)
        if overlaps is not None:
            ov = overlaps.select(gi, pi)
        else:
            ov = mask_overlaps(packed_gt[gi], packed_pred[pi])
        pred_iou = None
        if len(gi) and len(pi) > 1 and ((ov.b_in_a > t).sum(axis=1) > 1).any():
            if pred_overlaps is not None:
                pred_iou = pred_overlaps.iou[np.ix_(pi, pi)]
            elif packed_pred is not None:
                pred_iou = mask_overlaps(packed_pred[pi], packed_pred[pi]).iou
            elif pred.masks is not None:
                pred_iou = mask_overlaps(pred.masks[pi], pred.masks[pi]).iou
            else:
                raise ValueError("duplicates need pred_overlaps= or prediction masks")
        scores = None if pred.scores is None else pred.scores[pi]
        records[name] = _class_errors(ov, pred_iou, gt.ids[gi], pred.ids[pi], scores, t, dup, small_area)
    return _combine(records)

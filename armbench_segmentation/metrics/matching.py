"""Matching predictions to ground truth: TP/FP/FN, precision/recall/F1, per-sample AP,
confusion-matrix elements.

One matching rule everywhere, COCO's (``pycocotools.cocoeval.COCOeval.evaluateImg``):
predictions are visited by descending score (stable mergesort, so ties keep input order);
each takes the not-yet-matched GT of its class with the highest IoU ``>= threshold``
(ties in IoU go to the later GT, as in COCOeval). A GT is matched at most once, except
crowd GT which absorb any number of predictions without counting (neither TP nor FP).
Ignored GT are only used when no regular GT is available and neither count.

Conventions for empty sets (documented, never NaN):

- precision = TP / (TP + FP), and **1.0 when there are no predictions** (no false claim);
- recall = TP / (TP + FN), and **1.0 when there is no GT** (nothing was missed);
- F1 = 2PR / (P + R), and **0.0 when P + R = 0**. So: no GT and no predictions -> P = R =
  F1 = 1; predictions but no GT -> P = 0, R = 1, F1 = 0; GT but no predictions -> P = 1,
  R = 0, F1 = 0. F1 is the one number to rank samples by.
- mean IoU of the matches: None when nothing matched.
- per-sample AP: None when the image has no GT of any class (COCO leaves such a class
  out of the mean; so do we).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from armbench_segmentation.metrics.overlap import Overlaps, box_iou, mask_overlaps
from armbench_segmentation.structures import Instances

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "COCO_RECALL_THRESHOLDS",
    "BACKGROUND",
    "MatchResult",
    "ConfusionRecord",
    "coco_match",
    "error_rate",
    "average_precision",
    "pair_iou",
    "match",
    "sample_ap",
    "confusion_elements",
    "confusion_matrix",
]

# exactly the arrays COCOeval's Params builds (same floating values)
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
BACKGROUND = "background"


# --------------------------------------------------------------------------- kernels
def coco_match(
    ious: np.ndarray,
    thresholds: np.ndarray,
    gt_ignore: np.ndarray | None = None,
    gt_crowd: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """COCO greedy matching of one (image, class) at several IoU thresholds at once.

    No input validation (internal kernel): detections must already be sorted by
    descending score (stable) and GT ordered with the ignored ones last.

    Args:
        ious: (D, G) float IoU (for crowd GT: intersection over detection area).
        thresholds: (T,) IoU thresholds; a match needs ``iou >= t``.
        gt_ignore: (G,) bool, default all False.
        gt_crowd: (G,) bool, default all False; crowd GT can be matched repeatedly.
    Returns:
        ``(gt_index, dt_ignore)``: (T, D) int64 index of the matched GT (-1: unmatched) and
        (T, D) bool, True when the detection matched an ignored GT (it then counts neither
        as TP nor FP).
    """
    d, g = ious.shape
    t = len(thresholds)
    gt_index = np.full((t, d), -1, np.int64)
    dt_ignore = np.zeros((t, d), bool)
    if d == 0 or g == 0:
        return gt_index, dt_ignore
    ignore = np.zeros(g, bool) if gt_ignore is None else np.asarray(gt_ignore, bool)
    crowd = np.zeros(g, bool) if gt_crowd is None else np.asarray(gt_crowd, bool)
    thr = np.minimum(np.asarray(thresholds, np.float64), 1 - 1e-10)[:, None]  # (T, 1)
    taken = np.zeros((t, g), bool)
    reusable = crowd[None, :]
    rows = np.arange(t)
    any_ignore = bool(ignore.any())
    for j in range(d):
        row = ious[j]  # (G,)
        ok = (row[None, :] >= thr) & (~taken | reusable)  # (T, G)
        if not ok.any():
            continue
        if any_ignore:
            regular = ok & ~ignore[None, :]
            ok = np.where(regular.any(axis=1, keepdims=True), regular, ok & ignore[None, :])
        found = ok.any(axis=1)  # (T,)
        vals = np.where(ok, row[None, :], -1.0)  # (T, G)
        m = g - 1 - np.argmax(vals[:, ::-1], axis=1)  # last maximum, as COCOeval
        m = np.where(found, m, -1)
        hit = rows[found]
        gt_index[hit, j] = m[found]
        dt_ignore[hit, j] = ignore[m[found]]
        taken[hit, m[found]] = True
    return gt_index, dt_ignore


def average_precision(
    scores: np.ndarray,
    matched: np.ndarray,
    ignored: np.ndarray,
    n_gt: int,
    recall_thresholds: np.ndarray = COCO_RECALL_THRESHOLDS,
    return_recall: bool = False,
):
    """COCO interpolated AP per IoU threshold from pooled detections of one class.

    Mirrors ``COCOeval.accumulate``: detections sorted by descending score (stable
    mergesort, so pass them in image order), cumulative TP/FP (ignored detections count
    as neither), precision made monotone from the right, sampled at ``recall_thresholds``
    with ``searchsorted(side="left")``; recall levels never reached give precision 0.

    Args:
        scores: (D,) detection scores.
        matched: (T, D) bool, detection matched a GT at threshold t.
        ignored: (T, D) bool, detection ignored at threshold t.
        n_gt: number of non-ignored GT of the class.
        recall_thresholds: (R,) recall levels (COCO: 101 points).
        return_recall: also return the (T,) final recall per threshold (COCO's AR input).
    Returns:
        (T,) float64 AP per threshold, or None when ``n_gt == 0`` (class absent);
        ``(ap, recall)`` with ``return_recall``.
    """
    if n_gt == 0:
        return (None, None) if return_recall else None
    matched = np.asarray(matched, bool)
    t, d = matched.shape
    if d == 0:
        zeros = np.zeros(t, np.float64)
        return (zeros, zeros.copy()) if return_recall else zeros
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    matched, ignored = matched[:, order], np.asarray(ignored, bool)[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)  # (T, D)
    fp = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
    recall = tp / n_gt
    precision = tp / (tp + fp + np.spacing(1))  # as COCOeval (no zero denominator)
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # monotone envelope
    out = np.zeros(t, np.float64)
    for k in range(t):  # T is 10: one searchsorted per threshold
        idx = np.searchsorted(recall[k], recall_thresholds, side="left")  # (R,)
        q = np.where(idx < d, precision[k, np.minimum(idx, d - 1)], 0.0)
        out[k] = q.mean()
    if return_recall:
        return out, recall[:, -1].copy()
    return out


# --------------------------------------------------------------------------- per sample
def pair_iou(gt: Instances, pred: Instances, use_masks: bool = True) -> np.ndarray:
    """(G, P) IoU of all GT vs all predictions: masks when both have them (and
    ``use_masks``), boxes otherwise."""
    if use_masks and gt.masks is not None and pred.masks is not None:
        return mask_overlaps(gt.masks, pred.masks).iou
    return box_iou(gt.boxes, pred.boxes)


def _iou_matrix(gt: Instances, pred: Instances, overlaps: Overlaps | np.ndarray | None, use_masks: bool) -> np.ndarray:
    if gt.image_size != pred.image_size:
        raise ValueError(
            f"gt is in a {gt.image_size} frame but pred in {pred.image_size}; bring both to the same frame first"
        )
    if overlaps is None:
        return pair_iou(gt, pred, use_masks)
    iou = overlaps.iou if isinstance(overlaps, Overlaps) else np.asarray(overlaps, np.float64)
    if iou.shape != (len(gt), len(pred)):
        raise ValueError(f"overlaps has shape {iou.shape}, expected {(len(gt), len(pred))} (len(gt), len(pred))")
    return iou


def _score_order(pred: Instances) -> np.ndarray:
    if pred.scores is None:
        raise ValueError("pred has no scores; matching visits predictions by descending score")
    return np.argsort(-pred.scores.astype(np.float64), kind="mergesort")


@dataclass(frozen=True)
class MatchResult:
    """One-to-one matching of one image at one IoU threshold.

    Attributes:
        tp, fp, fn: counts.
        precision, recall, f1: see the module docstring for the empty-set conventions.
        mean_iou: mean IoU of matched pairs, None without matches.
        pairs: (K, 2) int64 ``(gt_row, pred_row)`` positions in the inputs.
        pair_ious: (K,) float64.
        gt_matched: (G,) bool; pred_matched: (P,) bool.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    mean_iou: float | None
    pairs: np.ndarray
    pair_ious: np.ndarray
    gt_matched: np.ndarray
    pred_matched: np.ndarray

    def as_dict(self) -> dict[str, int | float | None]:
        keys = ("tp", "fp", "fn", "precision", "recall", "f1", "mean_iou")
        return {k: getattr(self, k) for k in keys}


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1 with the module's empty-set conventions (never NaN)."""
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def error_rate(tp: int, fp: int, fn: int) -> float:
    """``1 - F1`` of instance matches, in [0, 1]: ``(fp + fn) / (2 tp + fp + fn)``; 0.0 when
    there is nothing to find and nothing predicted (tp = fp = fn = 0).

    Raises:
        ValueError: a count that is not a non-negative integer.
    """
    counts = []
    for name, value in (("tp", tp), ("fp", fp), ("fn", fn)):
        v = int(value)
        if v != value or v < 0:
            raise ValueError(f"{name} must be a non-negative integer count, got {value!r}")
        counts.append(v)
    tp_, fp_, fn_ = counts
    denom = 2 * tp_ + fp_ + fn_
    return 0.0 if denom == 0 else (fp_ + fn_) / denom


def match(
    gt: Instances,
    pred: Instances,
    iou_threshold: float = 0.5,
    *,
    overlaps: Overlaps | np.ndarray | None = None,
    use_masks: bool = True,
    class_aware: bool = True,
    classes: Sequence[int] | None = None,
) -> MatchResult:
    """Greedy one-to-one matching by descending score (COCO rule), class by class.

    Args:
        gt: ground truth (masks or boxes).
        pred: predictions with scores, same frame.
        iou_threshold: a match needs IoU ``>=`` this.
        overlaps: precomputed (G, P) :class:`Overlaps` or IoU matrix of all instances.
        use_masks: mask IoU when both have masks, else box IoU.
        class_aware: match only GT and predictions of the same class (COCO); False
            matches across classes.
        classes: restrict to these class indices (e.g. ``[0]`` for Object); default all.
    Returns:
        :class:`MatchResult`.
    """
    iou = _iou_matrix(gt, pred, overlaps, use_masks)
    order = _score_order(pred)
    g, p = iou.shape
    gt_keep = np.ones(g, bool) if classes is None else np.isin(gt.class_ids, list(classes))
    pred_keep = np.ones(p, bool) if classes is None else np.isin(pred.class_ids, list(classes))
    groups = np.unique(np.concatenate([gt.class_ids[gt_keep], pred.class_ids[pred_keep]])) if class_aware else [None]
    pairs: list[np.ndarray] = []
    thr = np.array([iou_threshold], np.float64)
    for c in groups:
        gi = np.flatnonzero(gt_keep if c is None else gt_keep & (gt.class_ids == c))
        pi = order[(pred_keep if c is None else pred_keep & (pred.class_ids == c))[order]]  # sorted by score
        if len(gi) == 0 or len(pi) == 0:
            continue
        gt_index, _ = coco_match(iou[np.ix_(gi, pi)].T, thr)
        hit = gt_index[0] >= 0
        pairs.append(np.stack([gi[gt_index[0, hit]], pi[hit]], axis=1))
    pairs_arr = np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), np.int64)
    pair_ious = iou[pairs_arr[:, 0], pairs_arr[:, 1]].astype(np.float64)
    gt_matched = np.zeros(g, bool)
    gt_matched[pairs_arr[:, 0]] = True
    pred_matched = np.zeros(p, bool)
    pred_matched[pairs_arr[:, 1]] = True
    tp = len(pairs_arr)
    fp = int(pred_keep.sum()) - tp
    fn = int(gt_keep.sum()) - tp
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    return MatchResult(
        tp=tp,
        fp=fp,
        fn=fn,
        precision=precision,
        recall=recall,
        f1=f1,
        mean_iou=float(pair_ious.mean()) if tp else None,
        pairs=pairs_arr,
        pair_ious=pair_ious,
        gt_matched=gt_matched,
        pred_matched=pred_matched,
    )


def sample_ap(
    gt: Instances,
    pred: Instances,
    *,
    overlaps: Overlaps | np.ndarray | None = None,
    use_masks: bool = True,
    iou_thresholds: np.ndarray = COCO_IOU_THRESHOLDS,
    max_dets: int = 100,
    per_class: bool = False,
) -> float | None | dict[int, float]:
    """COCO-style AP of one image: AP@[.50:.05:.95] (101-point interpolation) per class
    present in the GT, averaged over those classes.

    Args:
        gt, pred: one image (masks for mask AP; boxes when ``use_masks`` is False or masks
            are missing).
        overlaps: precomputed (G, P) overlaps or IoU of all instances.
        iou_thresholds: (T,) IoU thresholds.
        max_dets: keep the top-scoring ``max_dets`` predictions per class (COCO: 100).
        per_class: return ``{class_index: AP}`` instead of the mean.
    Returns:
        The mean AP over classes with GT, None when the image has no GT; or the dict.
    """
    iou = _iou_matrix(gt, pred, overlaps, use_masks)
    order = _score_order(pred) if len(pred) else np.zeros(0, np.int64)
    thresholds = np.asarray(iou_thresholds, np.float64)
    result: dict[int, float] = {}
    for c in np.unique(gt.class_ids):
        gi = np.flatnonzero(gt.class_ids == c)
        pi = order[(pred.class_ids == c)[order]][:max_dets]
        gt_index, dt_ignore = coco_match(iou[np.ix_(gi, pi)].T, thresholds)
        ap = average_precision(pred.scores[pi] if len(pi) else np.zeros(0), gt_index >= 0, dt_ignore, len(gi))
        result[int(c)] = float(ap.mean())
    if per_class:
        return result
    return float(np.mean(list(result.values()))) if result else None


# --------------------------------------------------------------------------- confusion
@dataclass(frozen=True)
class ConfusionRecord:
    """One confusion-matrix element, platform-neutral.

    An adapter turns it into
    ``ConfusionMatrixElement(label, ConfusionMatrixValue.Positive if expected else .Negative,
    probability, id)``.

    Attributes:
        label: the class this element is about.
        expected: True when the instance really is ``label`` (Positive), False otherwise.
        probability: the predicted probability of ``label`` for this instance (the
            detection score for the predicted class, 0.0 otherwise and for missed GT).
        predicted_class: class name of the prediction, or ``"background"`` for a missed GT.
        gt_class: class name of the matched GT, or ``"background"`` for a false positive.
        id: ``"pred:<id>"`` or ``"gt:<id>"`` (``Instances.ids``).
    """

    label: str
    expected: bool
    probability: float
    predicted_class: str
    gt_class: str
    id: str


def _confusion_pairs(
    gt: Instances, pred: Instances, class_names: Sequence[str], iou_threshold: float, iou: np.ndarray
) -> tuple[list[tuple[str, str, float, str]], np.ndarray, np.ndarray]:
    """Class-agnostic COCO matching -> per instance (predicted, gt class, score, id)."""
    order = _score_order(pred) if len(pred) else np.zeros(0, np.int64)
    gt_index, _ = coco_match(iou[:, order].T, np.array([iou_threshold]))
    matched_gt = np.full(len(pred), -1, np.int64)
    matched_gt[order] = gt_index[0]
    names = list(class_names)
    out = []
    for j in range(len(pred)):  # per instance: a handful of records, no numeric work
        gcls = names[gt.class_ids[matched_gt[j]]] if matched_gt[j] >= 0 else BACKGROUND
        out.append((names[pred.class_ids[j]], gcls, float(pred.scores[j]), f"pred:{pred.ids[j]}"))
    gt_hit = np.zeros(len(gt), bool)
    gt_hit[matched_gt[matched_gt >= 0]] = True
    for i in np.flatnonzero(~gt_hit):
        out.append((BACKGROUND, names[gt.class_ids[i]], 0.0, f"gt:{gt.ids[i]}"))
    return out, matched_gt, gt_hit


def confusion_elements(
    gt: Instances,
    pred: Instances,
    class_names: Sequence[str] = ("Object", "Tote"),
    iou_threshold: float = 0.5,
    *,
    overlaps: Overlaps | np.ndarray | None = None,
    use_masks: bool = True,
    per_class: bool = True,
) -> list[ConfusionRecord]:
    """Confusion-matrix elements over {classes} + background for one image.

    Predictions are matched to GT *regardless of class* (COCO greedy rule at
    ``iou_threshold``) so that class confusions (a Tote predicted on an Object) show up.
    Each prediction gives the pair (predicted class, matched GT class or background);
    each unmatched GT gives (background, GT class).

    With ``per_class=True`` (the usual Tensorleap pattern) every instance yields one
    record per class ``k``: ``expected = (gt class == k)``, ``probability = score`` if the
    prediction is of class ``k`` else 0.0 (missed GT: 0.0 for every class). With
    ``per_class=False`` one record per instance: predictions give (predicted class,
    expected = GT class equals it, score); missed GT give (GT class, expected, 0.0).

    Returns:
        list of :class:`ConfusionRecord`; empty when there are no instances.
    """
    iou = _iou_matrix(gt, pred, overlaps, use_masks)
    pairs, _, _ = _confusion_pairs(gt, pred, class_names, iou_threshold, iou)
    records: list[ConfusionRecord] = []
    for predicted, truth, score, ident in pairs:
        if per_class:
            for name in class_names:
                prob = score if predicted == name else 0.0
                records.append(ConfusionRecord(name, truth == name, prob, predicted, truth, ident))
        elif predicted == BACKGROUND:
            records.append(ConfusionRecord(truth, True, 0.0, predicted, truth, ident))
        else:
            records.append(ConfusionRecord(predicted, truth == predicted, score, predicted, truth, ident))
    return records


def confusion_matrix(
    gt: Instances,
    pred: Instances,
    class_names: Sequence[str] = ("Object", "Tote"),
    iou_threshold: float = 0.5,
    *,
    overlaps: Overlaps | np.ndarray | None = None,
    use_masks: bool = True,
) -> np.ndarray:
    """(C+1, C+1) int64 counts, rows = GT class, columns = predicted class, the last row
    and column being background (same matching as :func:`confusion_elements`)."""
    iou = _iou_matrix(gt, pred, overlaps, use_masks)
    pairs, _, _ = _confusion_pairs(gt, pred, class_names, iou_threshold, iou)
    names = list(class_names) + [BACKGROUND]
    out = np.zeros((len(names), len(names)), np.int64)
    for predicted, truth, _, _ in pairs:
        out[names.index(truth), names.index(predicted)] += 1
    return out

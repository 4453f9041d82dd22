"""Dataset-level COCO-style evaluation that agrees with ``pycocotools`` COCOeval.

:class:`CocoEvaluator` accumulates, image by image and class by class, the greedy
matches of :func:`~armbench_segmentation.metrics.matching.coco_match` at all IoU thresholds
at once, then makes one precision/recall pass per class
(:func:`~armbench_segmentation.metrics.matching.average_precision`). The rules are
COCOeval's (``iouType`` segm or bbox, ``areaRng`` all, ``maxDets`` 100, ``useCats`` 1):

- per image and class, detections sorted by score (stable), the top ``max_dets`` kept
  (the others are dropped, and counted: a warning says how many);
- crowd GT (``iscrowd=1``): IoU is intersection over the *detection* area; a crowd GT can
  absorb any number of detections, which then count neither as TP nor FP; crowd GT are
  not counted as GT;
- ignored GT behave like crowd GT for counting but can be matched only once. Note that
  pycocotools overwrites an annotation's own ``ignore`` field with ``iscrowd``, so
  :func:`evaluate_coco_results` does the same to agree with it;
- AP = mean over IoU .50:.05:.95 of the 101-point interpolated precision; AP50 / AP75 at
  one threshold; AR100 = mean final recall. A class with no (non-crowd) GT gets None
  (COCOeval's -1).

:func:`evaluate_coco_results` runs this for a COCO GT file and a COCO results list (masks
compared as RLE at the original resolution, never decoded), together with the Object
TP/FP/FN at IoU 0.5 and the over/under-segmentation counts of every image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from armbench_segmentation.codecs import corner_xywh_to_xyxy, xyxy_to_corner_xywh
from armbench_segmentation.config import MetricsConfig
from armbench_segmentation.errors import ArmbenchError
from armbench_segmentation.metrics.matching import (
    COCO_IOU_THRESHOLDS,
    average_precision,
    coco_match,
    precision_recall_f1,
)
from armbench_segmentation.metrics.overlap import Overlaps, box_iou, mask_overlaps, rle_overlaps
from armbench_segmentation.metrics.segmentation import segmentation_errors
from armbench_segmentation.structures import Instances

__all__ = [
    "APResult",
    "CocoEvaluator",
    "DatasetEvaluation",
    "crowd_iou",
    "validate_results",
    "evaluate_coco_results",
]

logger = logging.getLogger(__name__)


def crowd_iou(overlaps: Overlaps, gt_crowd: np.ndarray) -> np.ndarray:
    """(G, P) IoU with COCO's crowd rule: for a crowd GT, intersection over prediction area."""
    crowd = np.asarray(gt_crowd, bool)
    if not crowd.any():
        return overlaps.iou
    return np.where(crowd[:, None], overlaps.b_in_a, overlaps.iou)


def _box_crowd_iou(gt_xywh: np.ndarray, dt_xywh: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """(G, D) box IoU in COCO's xywh arithmetic, crowd GT -> intersection / detection area."""
    g = np.asarray(gt_xywh, np.float64).reshape(-1, 4)
    d = np.asarray(dt_xywh, np.float64).reshape(-1, 4)
    gx2, gy2 = g[:, 0] + g[:, 2], g[:, 1] + g[:, 3]
    dx2, dy2 = d[:, 0] + d[:, 2], d[:, 1] + d[:, 3]
    w = np.minimum(gx2[:, None], dx2[None, :]) - np.maximum(g[:, None, 0], d[None, :, 0])  # (G, D)
    h = np.minimum(gy2[:, None], dy2[None, :]) - np.maximum(g[:, None, 1], d[None, :, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    ga, da = g[:, 2] * g[:, 3], d[:, 2] * d[:, 3]
    union = np.where(np.asarray(gt_crowd, bool)[:, None], da[None, :], ga[:, None] + da[None, :] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


# --------------------------------------------------------------------------- accumulator
@dataclass
class _ClassPool:
    scores: list[np.ndarray] = field(default_factory=list)
    matched: list[np.ndarray] = field(default_factory=list)
    ignored: list[np.ndarray] = field(default_factory=list)
    n_gt: int = 0


@dataclass(frozen=True)
class APResult:
    """AP per class and their mean over classes with GT.

    Attributes:
        per_class: class name -> {"AP", "AP50", "AP75", "AR100"} (None: no GT of that class).
        mean: the same keys averaged over classes with GT (None if no class has GT).
        num_gt: class name -> non-crowd, non-ignored GT count.
        num_detections: class name -> detections evaluated (after ``max_dets``).
        truncated: detections dropped by the per-image ``max_dets`` cap.
    """

    per_class: dict[str, dict[str, float | None]]
    mean: dict[str, float | None]
    num_gt: dict[str, int]
    num_detections: dict[str, int]
    truncated: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.per_class, "mean": self.mean}


class CocoEvaluator:
    """Accumulates per-image COCO matches of one IoU type; :meth:`result` gives AP.

    Args:
        class_names: model class order; class ``k`` is reported as ``class_names[k]``.
        iou_thresholds: (T,) IoU thresholds (default COCO .50:.05:.95).
        max_dets: detections kept per image and class, by score (COCO: 100).

    Add images in a fixed order (COCOeval uses ascending image id): score ties between
    images are broken by that order, as in COCOeval.
    """

    def __init__(self, class_names: Sequence[str], iou_thresholds: np.ndarray = COCO_IOU_THRESHOLDS, max_dets: int = 100):
        self.class_names = list(class_names)
        self.thresholds = np.asarray(iou_thresholds, np.float64)
        self.max_dets = int(max_dets)
        self._pools = [_ClassPool() for _ in self.class_names]
        self.truncated = 0

    def add_ious(
        self,
        class_id: int,
        ious: np.ndarray,
        scores: np.ndarray,
        gt_crowd: np.ndarray | None = None,
        gt_ignore: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add one (image, class).

        Args:
            class_id: model class index.
            ious: (G, D) IoU, GT rows and detection columns in input order (crowd GT
                already with the crowd rule, see :func:`crowd_iou`).
            scores: (D,) detection scores.
            gt_crowd: (G,) bool; gt_ignore: (G,) bool (crowd GT are ignored as well).
        Returns:
            ``(kept, gt_index)``: detection indices kept (score order) and (T, len(kept))
            matched GT index in input order (-1 unmatched), for callers that need pairs.
        """
        ious = np.asarray(ious, np.float64)
        g, d = ious.shape
        scores = np.asarray(scores, np.float64).reshape(-1)
        if len(scores) != d:
            raise ValueError(f"scores has {len(scores)} entries, ious has {d} detection columns")
        crowd = np.zeros(g, bool) if gt_crowd is None else np.asarray(gt_crowd, bool)
        ignore = crowd | (np.zeros(g, bool) if gt_ignore is None else np.asarray(gt_ignore, bool))
        order = np.argsort(-scores, kind="mergesort")
        if d > self.max_dets:
            self.truncated += d - self.max_dets
            order = order[: self.max_dets]
        gt_order = np.argsort(ignore, kind="mergesort")  # regular GT first, as COCOeval
        gt_index, dt_ignore = coco_match(ious[np.ix_(gt_order, order)].T, self.thresholds, ignore[gt_order], crowd[gt_order])
        pool = self._pools[class_id]
        pool.scores.append(scores[order])
        pool.matched.append(gt_index >= 0)
        pool.ignored.append(dt_ignore)
        pool.n_gt += int((~ignore).sum())
        return order, np.append(gt_order, -1)[gt_index]  # -1 stays -1

    def add_image(
        self,
        gt: Instances,
        pred: Instances,
        iou_type: str = "segm",
        gt_crowd: np.ndarray | None = None,
        gt_ignore: np.ndarray | None = None,
        overlaps: Overlaps | None = None,
    ) -> None:
        """Add one image from Instances (same frame): mask IoU for ``"segm"`` (or the
        given all-instance ``overlaps``), xyxy box IoU for ``"bbox"``."""
        if iou_type not in ("segm", "bbox"):
            raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
        crowd = np.zeros(len(gt), bool) if gt_crowd is None else np.asarray(gt_crowd, bool)
        ignore = np.zeros(len(gt), bool) if gt_ignore is None else np.asarray(gt_ignore, bool)
        if iou_type == "segm":
            if overlaps is None:
                if gt.masks is None or pred.masks is None:
                    raise ValueError("iou_type='segm' needs masks on gt and pred (or overlaps=)")
                overlaps = mask_overlaps(gt.masks, pred.masks)
            iou = crowd_iou(overlaps, crowd)
        else:
            iou = _box_crowd_iou(xyxy_to_corner_xywh(gt.boxes), xyxy_to_corner_xywh(pred.boxes), crowd)
        scores = pred.scores if pred.scores is not None else np.ones(len(pred), np.float32)
        for c in range(len(self.class_names)):
            gi = np.flatnonzero(gt.class_ids == c)
            pi = np.flatnonzero(pred.class_ids == c)
            if len(gi) or len(pi):
                self.add_ious(c, iou[np.ix_(gi, pi)], scores[pi], crowd[gi], ignore[gi])

    def result(self) -> APResult:
        """AP/AP50/AP75/AR100 per class and mean over classes with GT."""
        t50 = np.flatnonzero(np.isclose(self.thresholds, 0.5))
        t75 = np.flatnonzero(np.isclose(self.thresholds, 0.75))
        per_class: dict[str, dict[str, float | None]] = {}
        num_gt: dict[str, int] = {}
        num_det: dict[str, int] = {}
        for name, pool in zip(self.class_names, self._pools):
            scores = np.concatenate(pool.scores) if pool.scores else np.zeros(0)
            t = len(self.thresholds)
            matched = np.concatenate(pool.matched, axis=1) if pool.matched else np.zeros((t, 0), bool)
            ignored = np.concatenate(pool.ignored, axis=1) if pool.ignored else np.zeros((t, 0), bool)
            ap, recall = average_precision(scores, matched, ignored, pool.n_gt, return_recall=True)
            num_gt[name], num_det[name] = pool.n_gt, len(scores)
            if ap is None:
                per_class[name] = {"AP": None, "AP50": None, "AP75": None, "AR100": None}
                continue
            per_class[name] = {
                "AP": float(ap.mean()),
                "AP50": float(ap[t50[0]]) if len(t50) else None,
                "AP75": float(ap[t75[0]]) if len(t75) else None,
                "AR100": float(recall.mean()),
            }
        mean: dict[str, float | None] = {}
        for key in ("AP", "AP50", "AP75", "AR100"):
            vals = [r[key] for r in per_class.values() if r[key] is not None]
            mean[key] = float(np.mean(vals)) if vals else None
        if self.truncated:
            logger.warning(
                "%d detections beyond max_dets=%d per image and class were not evaluated (COCO rule)",
                self.truncated,
                self.max_dets,
            )
        return APResult(per_class, mean, num_gt, num_det, self.truncated)


# --------------------------------------------------------------------------- results files
_RESULT_FIX = (
    "each entry must be {'image_id': int, 'category_id': int, 'score': float, "
    "'segmentation': {'size': [H, W], 'counts': str}, 'bbox': [x, y, w, h] (optional)} as written by "
    "`armbench predict` or pycocotools.mask.encode"
)


def _rle_runs_valid(counts: bytes, total: int) -> bool:
    """Vectorized check of a compressed COCO RLE string: runs non-negative, summing to H*W."""
    x = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if len(x) == 0:
        return total == 0
    if (x < 0).any() or (x > 63).any():
        return False
    more = (x & 0x20) != 0
    if more[-1]:
        return False
    ends = np.flatnonzero(~more)  # last char of each value
    starts = np.concatenate([[0], ends[:-1] + 1])
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    shift = 5 * (np.arange(len(x)) - starts[group])
    if shift.max() > 55:
        return False
    values = np.zeros(len(ends), np.int64)
    np.add.at(values, group, (x & 0x1F) << shift)
    sign = (x[ends] & 0x10) != 0
    values = np.where(sign, values - (np.int64(1) << (shift[ends] + 5)), values)
    # delta coding (pycocotools rleToString): run i > 2 stores c[i] - c[i-2], so each
    # parity chain starting at runs 1 and 2 is a cumulative sum
    for first in (1, 2):
        idx = np.arange(first, len(values), 2)
        values[idx] = np.cumsum(values[idx])
    return bool((values >= 0).all() and values.sum() == total)


def validate_results(
    results: Any,
    images: dict[int, tuple[int, int]],
    category_ids: Iterable[int],
    need_segmentation: bool = True,
) -> list[dict]:
    """Check a COCO results list; return normalized copies (RLE counts as bytes, bbox
    derived from the mask when missing).

    Args:
        results: the parsed JSON.
        images: image id -> (height, width) of the GT images.
        category_ids: the GT COCO category ids.
        need_segmentation: require a mask on every entry.
    Raises:
        ArmbenchError: naming the first bad entry by index, what is wrong and the fix.
    """
    from pycocotools import mask as mask_utils

    if not isinstance(results, list):
        raise ArmbenchError(f"predictions must be a JSON list of detections, got {type(results).__name__}; {_RESULT_FIX}")
    cats = set(int(c) for c in category_ids)
    out = []
    for i, r in enumerate(results):
        where = f"predictions entry {i}"
        if not isinstance(r, dict):
            raise ArmbenchError(f"{where} is a {type(r).__name__}, not an object; {_RESULT_FIX}")
        required = ["image_id", "category_id", "score"] + (["segmentation"] if need_segmentation else ["bbox"])
        missing = [k for k in required if k not in r]
        if missing:
            raise ArmbenchError(f"{where} lacks {missing}; {_RESULT_FIX}")
        try:
            image_id, category_id, score = int(r["image_id"]), int(r["category_id"]), float(r["score"])
        except (TypeError, ValueError):
            raise ArmbenchError(f"{where}: image_id/category_id must be integers and score a number; {_RESULT_FIX}") from None
        if image_id not in images:
            raise ArmbenchError(
                f"{where}: image_id {image_id} is not an image of the ground-truth file; "
                "were the predictions made on another split or dataset? Re-run `armbench predict` on this split"
            )
        if category_id not in cats:
            raise ArmbenchError(
                f"{where}: category_id {category_id} is not a category of the ground-truth file "
                f"(valid: {sorted(cats)}); write COCO category ids of the GT file, mapped by name"
            )
        if not math.isfinite(score):
            raise ArmbenchError(f"{where}: score {r['score']!r} is not a finite number")
        entry = {"image_id": image_id, "category_id": category_id, "score": score}
        h, w = images[image_id]
        seg = r.get("segmentation")
        if seg is not None:
            if not (isinstance(seg, dict) and "size" in seg and "counts" in seg):
                raise ArmbenchError(f"{where}: segmentation must be an RLE dict with 'size' and 'counts'; {_RESULT_FIX}")
            if [int(v) for v in seg["size"]] != [h, w]:
                raise ArmbenchError(
                    f"{where}: RLE size {list(seg['size'])} differs from image {image_id}'s size [{h}, {w}] (H, W); "
                    "masks must be at the original image resolution"
                )
            try:
                counts = seg["counts"]
                if isinstance(counts, list):  # uncompressed RLE
                    if any((not isinstance(c, int)) or c < 0 for c in counts) or sum(counts) != h * w:
                        raise ValueError("run lengths must be non-negative integers summing to H*W")
                    rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
                else:
                    counts = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
                    if not _rle_runs_valid(counts, h * w):
                        raise ValueError("run lengths do not decode to H*W pixels")
                    rle = {"size": [h, w], "counts": counts}
            except (ValueError, TypeError, UnicodeError) as exc:
                raise ArmbenchError(f"{where}: segmentation RLE cannot be decoded ({exc}); {_RESULT_FIX}") from None
            entry["segmentation"] = rle
        bbox = r.get("bbox")
        if bbox is not None:
            try:
                bbox = [float(v) for v in bbox]
                if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
                    raise ValueError
            except (TypeError, ValueError):
                raise ArmbenchError(f"{where}: bbox must be 4 finite numbers [x, y, w, h]; {_RESULT_FIX}") from None
        elif seg is not None:
            bbox = [float(v) for v in mask_utils.toBbox(entry["segmentation"])]
        entry["bbox"] = bbox
        out.append(entry)
    return out


# --------------------------------------------------------------------------- whole dataset
@dataclass(frozen=True)
class DatasetEvaluation:
    """Everything ``armbench evaluate`` reports."""

    segm: APResult
    bbox: APResult
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    over_segmented_images: int
    under_segmented_images: int
    over_segmented_instances: int
    over_segmented_instances_legacy: int
    under_segmented_instances: int
    duplicate_predictions: int
    num_images: int
    num_predictions: int
    match_class: str
    match_iou: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "segm": self.segm.as_dict(),
            "bbox": self.bbox.as_dict(),
            "match_class": self.match_class,
            "match_iou": self.match_iou,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "over_segmented_images": self.over_segmented_images,
            "under_segmented_images": self.under_segmented_images,
            "over_segmented_instances": self.over_segmented_instances,
            "over_segmented_instances_legacy": self.over_segmented_instances_legacy,
            "under_segmented_instances": self.under_segmented_instances,
            "duplicate_predictions": self.duplicate_predictions,
            "num_images": self.num_images,
            "num_predictions": self.num_predictions,
        }


def _gt_rle(ann: dict, h: int, w: int) -> dict | None:
    """A GT annotation's mask as compressed RLE (``COCO.annToRLE``), or None if unusable.

    Polygon parts with < 3 points are dropped first, as the dataset loader does
    (pycocotools would read a 4-number polygon as a box); on well-formed files this is
    exactly ``annToRLE``.
    """
    from pycocotools import mask as mask_utils

    from armbench_segmentation.data.coco import rle_from_segmentation, valid_polygons

    seg = ann.get("segmentation")
    if isinstance(seg, list):
        polys = valid_polygons(seg)
        return mask_utils.merge(mask_utils.frPyObjects(polys, h, w)) if polys else None
    if isinstance(seg, dict):
        try:
            rle = rle_from_segmentation(seg)
        except ValueError:
            return None
        return rle if list(rle["size"]) == [h, w] else None
    return None


def evaluate_coco_results(
    coco_gt,
    results: list[dict],
    class_names: Sequence[str],
    config: MetricsConfig | None = None,
    image_ids: Sequence[int] | None = None,
    max_dets: int = 100,
) -> DatasetEvaluation:
    """COCO AP (segm and bbox, per class) plus Object TP/FP/FN and over/under counts.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` of the split.
        results: validated COCO results (see :func:`validate_results`).
        class_names: model class order; COCO categories are mapped by name, categories
            whose name is not listed are not evaluated.
        config: ``match_iou`` for TP/FP/FN and the over/under thresholds; the first of
            ``segmentation_classes`` (Object) is the class TP/FP/FN are counted for.
        image_ids: images to evaluate (default: all images of ``coco_gt``), in any order
            (sorted internally, as COCOeval).
        max_dets: the COCO per-image, per-class cap for AP only; TP/FP/FN and over/under
            count every prediction.
    """
    config = config or MetricsConfig()
    names = list(class_names)
    cat_to_class = {int(c["id"]): names.index(c["name"]) for c in coco_gt.dataset.get("categories", []) if c["name"] in names}
    image_ids = sorted(int(i) for i in (coco_gt.getImgIds() if image_ids is None else image_ids))
    match_class_name = config.segmentation_classes[0] if config.segmentation_classes else names[0]
    match_class = names.index(match_class_name)
    by_image: dict[int, list[dict]] = {}
    for r in results:
        if r["category_id"] in cat_to_class:
            by_image.setdefault(int(r["image_id"]), []).append(r)
    evaluators = {"segm": CocoEvaluator(names, max_dets=max_dets), "bbox": CocoEvaluator(names, max_dets=max_dets)}
    tp = fp = fn = 0
    over_img = under_img = over_inst = over_legacy = under_inst = dups = n_pred = 0
    thr = np.array([config.match_iou])
    unusable = 0
    for image_id in image_ids:
        info = coco_gt.imgs[image_id]
        h, w = int(info["height"]), int(info["width"])
        anns, g_rle = [], []
        for a in coco_gt.imgToAnns.get(image_id, []):
            if int(a["category_id"]) not in cat_to_class:
                continue
            rle = _gt_rle(a, h, w)
            if rle is None:
                unusable += 1
                continue
            anns.append(a)
            g_rle.append(rle)
        dets = by_image.get(image_id, [])
        n_pred += len(dets)
        g_cls = np.array([cat_to_class[int(a["category_id"])] for a in anns], np.int64)
        g_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        g_box = np.array([_gt_box(a, r) for a, r in zip(anns, g_rle)], np.float64).reshape(-1, 4)
        d_cls = np.array([cat_to_class[r["category_id"]] for r in dets], np.int64)
        d_score = np.array([r["score"] for r in dets], np.float64)
        d_rle = [r["segmentation"] for r in dets]
        d_box = np.array([r["bbox"] for r in dets], np.float64).reshape(-1, 4)
        ov = rle_overlaps(g_rle, d_rle)  # (G, D), at original resolution
        seg_iou = crowd_iou(ov, g_crowd)
        box_iou_ = _box_crowd_iou(g_box, d_box, g_crowd)
        for c in range(len(names)):
            gi, di = np.flatnonzero(g_cls == c), np.flatnonzero(d_cls == c)
            if len(gi) or len(di):
                evaluators["segm"].add_ious(c, seg_iou[np.ix_(gi, di)], d_score[di], g_crowd[gi])
                evaluators["bbox"].add_ious(c, box_iou_[np.ix_(gi, di)], d_score[di], g_crowd[gi])
        # TP/FP/FN of the match class, every prediction (no max_dets), crowd GT absorb
        gi, di = np.flatnonzero(g_cls == match_class), np.flatnonzero(d_cls == match_class)
        order = di[np.argsort(-d_score[di], kind="mergesort")]
        gt_order = gi[np.argsort(g_crowd[gi], kind="mergesort")]
        gt_index, dt_ignore = coco_match(seg_iou[np.ix_(gt_order, order)].T, thr, g_crowd[gt_order], g_crowd[gt_order])
        hits = int(((gt_index[0] >= 0) & ~dt_ignore[0]).sum())
        tp += hits
        fp += int((gt_index[0] < 0).sum())
        fn += int((~g_crowd[gi]).sum()) - hits
        # over/under segmentation on non-crowd GT
        keep = ~g_crowd
        gt_inst = Instances(
            _corner_boxes(g_box[keep]), g_cls[keep], (h, w), ids=np.array([a["id"] for a in anns], np.int64)[keep]
        )
        pr_inst = Instances(_corner_boxes(d_box), d_cls, (h, w), scores=d_score.astype(np.float32))
        pred_pairs = rle_overlaps(d_rle, d_rle) if len(d_rle) > 1 else None
        errs = segmentation_errors(
            gt_inst,
            pr_inst,
            config,
            names,
            overlaps=ov.select(np.flatnonzero(keep), slice(None)),
            pred_overlaps=pred_pairs,
        )
        over_img += int(errs.over_segmented)
        under_img += int(errs.under_segmented)
        over_inst += errs.over_segmented_count
        over_legacy += errs.over_segmented_count_legacy
        under_inst += errs.under_segmented_count
        dups += errs.duplicate_count
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    if unusable:
        logger.warning("%d GT annotations without a usable polygon or RLE were left out (see `armbench info`)", unusable)
    outside = len(results) - n_pred
    if outside:
        logger.warning(
            "%d of %d predictions are for images or categories outside the evaluated set and were not counted",
            outside,
            len(results),
        )
    return DatasetEvaluation(
        segm=evaluators["segm"].result(),
        bbox=evaluators["bbox"].result(),
        tp=tp,
        fp=fp,
        fn=fn,
        precision=precision,
        recall=recall,
        f1=f1,
        over_segmented_images=over_img,
        under_segmented_images=under_img,
        over_segmented_instances=over_inst,
        over_segmented_instances_legacy=over_legacy,
        under_segmented_instances=under_inst,
        duplicate_predictions=dups,
        num_images=len(image_ids),
        num_predictions=n_pred,
        match_class=match_class_name,
        match_iou=float(config.match_iou),
    )


def _gt_box(ann: dict, rle: dict) -> list[float]:
    from pycocotools import mask as mask_utils

    bbox = ann.get("bbox")
    try:
        box = [float(v) for v in bbox]
        if len(box) == 4 and all(math.isfinite(v) for v in box):
            return box
    except (TypeError, ValueError):
        pass
    return [float(v) for v in mask_utils.toBbox(rle)]


def _corner_boxes(b: np.ndarray) -> np.ndarray:
    """COCO ``bbox`` rows (any shape holding 4 per box, empty included) -> (N, 4) float64 xyxy."""
    return corner_xywh_to_xyxy(np.asarray(b, np.float64).reshape(-1, 4))

"""One sample, one truth: the per-sample evaluation both faces call.

``evaluate_sample`` turns one image's raw model outputs (and its ground truth, when the
sample is labeled) into a :class:`SampleEvaluation`: the decoded predictions, the
over/under segmentation with the involved instances, the matching, the sample AP, the
YOLOv5-seg loss, the uncertainty scores and the window of the hardest region. The analysis
engine (``analysis.pipeline``) and the Tensorleap binder (``leap_binder.py``) both call it
and only convert its result (to a result row / to platform metrics), so the two faces give
the same numbers for the same sample and settings (``leap_test.py --dump`` checks that).

The frame
---------
Everything is computed in ONE declared frame, the **model frame**: the letterboxed model
input, ``data.image_size`` x ``data.image_size`` (640 x 640). Ground truth is rasterized
there by the loader; predicted masks are decoded there (``model.decode``); the YOLOv5-seg
loss reads the model-frame GT at the prototype pixels it samples itself. The Tensorleap face
carries the model-frame GT masks bit-packed (``codecs.pack_mask_bits``: 8 pixels per stored
value, integers 0..255, exact through the platform's float16 storage), so it evaluates on the
very same pixels.

Instance ids
------------
Inside the evaluation, instances are numbered by their **position**: GT row ``i`` of the
loader's order (the Tensorleap GT encoders keep that order) and prediction ``j`` of the
decoder's order (descending score after NMS). ``involved`` ids and instance rows use those
positions; the engine adds the COCO annotation id of each GT row to its instance table.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from armbench_segmentation.config import Settings
from armbench_segmentation.structures import Instances, python_scalar

__all__ = [
    "COUNTED_SIDE", "COUNT_COLUMNS", "EVALUATION_FRAME", "ERROR_KINDS", "HARD_REGION_WINDOW", "LOSS_PARTS",
    "MATCH_COLUMNS", "SampleEvaluation", "evaluate_sample", "gt_instance_attributes", "labeled_column_names",
    "prediction_columns",
    "segmentation_column_names",
]

EVALUATION_FRAME = "model frame: the letterboxed model input, data.image_size x data.image_size pixels"

#: error kinds of single instances; ``instance_rows`` flags each, ``SampleEvaluation.involved``
#: lists the instances of each (GT positions, prediction positions).
ERROR_KINDS = ("over_segmented", "under_segmenting", "duplicate", "false_positive", "missed")

#: per error kind, the side (``"gt"`` or ``"pred"``) whose instances its per-sample count
#: counts: ``over_segmented_count`` counts split GT objects, ``under_segmented_count``
#: merging predictions, ``duplicate_count`` redundant copies, ``fp`` / ``fn`` unmatched ones.
COUNTED_SIDE = {"over_segmented": "gt", "under_segmenting": "pred", "duplicate": "pred", "false_positive": "pred",
                "missed": "gt"}
#: per error kind, the samples.csv column holding its per-sample count.
COUNT_COLUMNS = {"over_segmented": "over_segmented_count", "under_segmenting": "under_segmented_count",
                 "duplicate": "duplicate_count", "false_positive": "fp", "missed": "fn"}

#: side of the hardest-region window, model-frame pixels (160 of 640: about 610 px of a
#: 2448 x 2048 ARMBench image).
HARD_REGION_WINDOW = 160

MATCH_COLUMNS = ("tp", "fp", "fn", "precision", "recall", "f1", "mean_iou")
LOSS_PARTS = ("box", "obj", "cls", "mask", "total")


@dataclass(frozen=True, eq=False)
class SampleEvaluation:
    """Everything the views of one sample show (model frame, positions as instance ids).

    Attributes:
        predictions: decoded predictions, masks (P, S, S) bool, scores (P,).
        gt: ground truth with ``ids = arange(G)`` (positions), or None (unlabeled).
        annotation_ids: (G,) int64 the GT rows' own ids (COCO annotation ids in the engine).
        segmentation: ``SegmentationErrors`` (labeled only).
        matching: ``MatchResult`` at ``metrics.match_iou`` (labeled only).
        overlaps: the (G, P) GT x prediction ``Overlaps`` every metric above read (labeled only).
        best_iou_gt / best_iou_pred: (G,) / (P,) float64 best IoU with any counterpart of the
            same class (0.0 when there is none); labeled only.
        ap: sample AP@[.5:.95] (None without GT).
        losses: YOLOv5-seg loss parts ``box, obj, cls, mask, total`` (labeled only).
        uncertainty: ``uncertainty_scores`` of the predictions.
        hard_region: ``(x1, y1, x2, y2)`` model-frame window of highest prediction entropy
            over the segmentation classes (Object), None without such predictions.
        class_names: the model class order.
    """

    predictions: Instances
    class_names: tuple[str, ...]
    uncertainty: dict[str, Any]
    hard_region: tuple[int, int, int, int] | None = None
    gt: Instances | None = None
    annotation_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    segmentation: Any = None
    matching: Any = None
    overlaps: Any = None
    best_iou_gt: np.ndarray | None = None
    best_iou_pred: np.ndarray | None = None
    ap: float | None = None
    losses: dict[str, float] | None = None

    @property
    def labeled(self) -> bool:
        return self.gt is not None

    # ------------------------------------------------------------------ facts
    def involved(self) -> dict[str, dict[str, list[int]]]:
        """Per error kind, the involved instance positions ``{"gt": [...], "pred": [...]}``.

        ``over_segmented``: the split GT objects and the predictions inside them;
        ``under_segmenting``: the merging predictions and the GT objects they swallow;
        ``duplicate``: the redundant copies (each group minus its best-scoring member) and
        the GT they lie in; ``false_positive``: unmatched predictions; ``missed``: unmatched
        GT. Empty lists for an unlabeled sample.
        """
        out = {kind: {"gt": [], "pred": []} for kind in ERROR_KINDS}
        if not self.labeled:
            return out
        seg, m = self.segmentation, self.matching
        out["over_segmented"] = {"gt": _ids(seg.over_segmented_gt_ids), "pred": _ids(seg.over_segmented_pred_ids)}
        out["under_segmenting"] = {"gt": _ids(seg.under_segmented_gt_ids), "pred": _ids(seg.under_segmented_pred_ids)}
        out["duplicate"] = {"gt": _ids(seg.duplicate_gt_ids), "pred": _ids(seg.duplicate_redundant_ids)}
        out["false_positive"] = {"gt": [], "pred": _ids(np.flatnonzero(~m.pred_matched))}
        out["missed"] = {"gt": _ids(np.flatnonzero(~m.gt_matched)), "pred": []}
        return out

    def instance_rows(self) -> list[dict[str, Any]]:
        """One row per GT instance, then one per prediction (column definitions:
        ``analysis.columns.INSTANCE_COLUMNS``). Error flags come from :meth:`involved`; a
        flag that does not apply to the row's side (``missed`` for a prediction) is None,
        and so is every flag of an unlabeled sample."""
        pred, gt = self.predictions, self.gt
        h, w = pred.image_size
        frame_px = float(h * w) or 1.0
        involved = self.involved()
        pairs: dict[str, dict[int, tuple[int, float]]] = {"gt": {}, "pred": {}}
        if self.labeled:
            for (g, p), iou in zip(self.matching.pairs.tolist(), self.matching.pair_ious.tolist()):
                pairs["gt"][g], pairs["pred"][p] = (p, iou), (g, iou)
        # side -> (flag column, error kind whose ids on that side it reads)
        flags = {"gt": (("over_segmented", "over_segmented"), ("missed", "missed"),
                        ("in_under_segmenting", "under_segmenting")),
                 "pred": (("under_segmenting", "under_segmenting"), ("duplicate", "duplicate"),
                          ("false_positive", "false_positive"), ("in_over_segmented", "over_segmented"))}
        all_flags = [name for side in flags.values() for name, _ in side]
        rows: list[dict[str, Any]] = []
        sides = [("gt", gt)] if self.labeled else []
        for side, inst in sides + [("pred", pred)]:
            areas = inst.mask_areas() if inst.masks is not None else np.zeros(len(inst), np.int64)
            best = self.best_iou_gt if side == "gt" else self.best_iou_pred
            members = {name: set(involved[kind][side]) for name, kind in flags[side]}
            for i in range(len(inst)):
                c = int(inst.class_ids[i])
                pair = pairs[side].get(i)
                row: dict[str, Any] = {
                    "kind": side, "index": i,
                    "annotation_id": int(self.annotation_ids[i]) if side == "gt" else None,
                    **_shape_fields(c, int(areas[i]), frame_px, self.class_names),
                    "score": float(inst.scores[i]) if inst.scores is not None else None,
                    "matched_index": pair[0] if pair else None,
                    "iou": float(pair[1]) if pair else None,
                    "best_iou": float(best[i]) if best is not None else None,
                }
                row.update({name: None for name in all_flags})
                if self.labeled:
                    row.update({name: i in ids for name, ids in members.items()})
                row["error_kind"] = _primary_kind(side, row) if self.labeled else None
                rows.append(row)
        return rows

    def facts(self) -> dict[str, Any]:
        """JSON-ready facts the views draw from (stored per sample by the engine)."""
        return {
            "frame": list(self.predictions.image_size),
            "involved": self.involved(),
            "hard_region": list(self.hard_region) if self.hard_region is not None else None,
            "instances": self.instance_rows(),
        }

    # ------------------------------------------------------------------ columns
    def columns(self) -> dict[str, Any]:
        """Flat per-sample columns (prediction summary, labeled metrics or None,
        ``unc_*`` uncertainty); see ``analysis.columns`` for their definitions."""
        from armbench_segmentation.metrics.matching import error_rate

        out = prediction_columns(self.predictions, self.class_names)
        if self.labeled:
            out.update({k: python_scalar(v) for k, v in self.segmentation.as_dict().items()})
            m = self.matching
            for name in MATCH_COLUMNS:
                out[name] = python_scalar(getattr(m, name))
            out["error_rate"] = error_rate(m.tp, m.fp, m.fn)
            out["ap"] = python_scalar(self.ap)
            for part in LOSS_PARTS:
                out[f"yolo_loss_{part}"] = python_scalar(self.losses.get(part)) if self.losses else None
            out["loss"] = out["yolo_loss_total"]
        else:
            out.update(dict.fromkeys(labeled_column_names()))
        for key, value in self.uncertainty.items():
            out[f"unc_{key}"] = python_scalar(value)
        return out


def _shape_fields(class_id: int, area: int, frame_px: float, class_names: Sequence[str]) -> dict[str, Any]:
    """``class``, ``area``, ``area_fraction`` of one instance row (GT or prediction)."""
    name = class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)
    return {"class": name, "area": area, "area_fraction": float(area) / frame_px}


def gt_instance_attributes(gt: Instances, annotations: Sequence[dict] | None,
                           class_names: Sequence[str]) -> list[dict[str, Any]]:
    """The dataset-side columns of each GT instance row, without predictions: ``index``,
    ``annotation_id`` (``gt.ids``), ``class``, ``area``, ``area_fraction`` (the values
    :meth:`SampleEvaluation.instance_rows` gives the GT rows), ``visible_fraction`` (the
    annotation's attribute, by annotation id) and ``box_overlaps`` (other GT boxes of the same
    class overlapping the box), the two the engine adds to ``instances.parquet``.

    Args:
        gt: model-frame ground truth with masks (G, S, S) and ``ids`` = annotation ids.
        annotations: the sample's raw COCO annotations (``ArmbenchDataset.annotations``).
        class_names: the model class order.
    Returns:
        G dicts, in GT order.
    """
    h, w = gt.image_size
    frame_px = float(h * w) or 1.0
    areas = gt.mask_areas() if gt.masks is not None else np.zeros(len(gt), np.int64)
    occlusion = gt_occlusion(gt, gt.ids, annotations)
    ids = gt.ids  # (G,) annotation ids
    return [{"index": i, "annotation_id": int(ids[i]),
             **_shape_fields(int(gt.class_ids[i]), int(areas[i]), frame_px, class_names), **occlusion[i]}
            for i in range(len(gt))]


def gt_occlusion(gt: Instances, annotation_ids: np.ndarray, annotations: Sequence[dict] | None) -> list[dict[str, Any]]:
    """Per GT instance, in GT order: ``visible_fraction`` (the attribute of the annotation whose
    id is ``annotation_ids[i]``; None when it has none) and ``box_overlaps`` (how many other GT
    boxes of the same class overlap its box). ``annotation_ids``: ``gt.ids`` for the loader's
    GT, ``SampleEvaluation.annotation_ids`` for an evaluation's (whose ids are positions)."""
    from armbench_segmentation.metadata import annotation_visible_fraction, box_overlap_counts

    visible = {int(a.get("id", -1)): annotation_visible_fraction(a) for a in annotations or []}
    overlaps = np.zeros(len(gt), np.int64)  # (G,)
    for c in np.unique(gt.class_ids):
        same = np.flatnonzero(gt.class_ids == c)
        overlaps[same] = box_overlap_counts(gt.boxes[same])
    return [{"visible_fraction": visible.get(int(annotation_ids[i])), "box_overlaps": int(overlaps[i])}
            for i in range(len(gt))]


def _ids(values: Any) -> list[int]:
    return sorted(int(v) for v in np.asarray(values).reshape(-1))


def _primary_kind(side: str, row: dict[str, Any]) -> str:
    """The instance's own error for display, by severity ("none" when it has none)."""
    order = ("over_segmented", "missed") if side == "gt" else ("under_segmenting", "duplicate", "false_positive")
    return next((kind for kind in order if row.get(kind)), "none")


def prediction_columns(pred: Instances, class_names: Sequence[str]) -> dict[str, Any]:
    """``n_pred``, ``n_pred_<class>`` (lower case) and ``mean_score`` of a prediction set."""
    out: dict[str, Any] = {"n_pred": len(pred)}
    for c, name in enumerate(class_names):
        out[f"n_pred_{name.lower()}"] = int((pred.class_ids == c).sum())
    scores = pred.scores if pred.scores is not None else np.zeros(0, np.float32)
    out["mean_score"] = float(scores.mean()) if len(scores) else None
    return out


@functools.lru_cache(maxsize=1)
def segmentation_column_names() -> tuple[str, ...]:
    """The over/under segmentation columns (``SegmentationErrors.as_dict`` keys)."""
    from armbench_segmentation.metrics.segmentation import SegmentationErrors

    return tuple(SegmentationErrors().as_dict())


def labeled_column_names() -> tuple[str, ...]:
    """Columns that only labeled samples have (None for unlabeled ones)."""
    return segmentation_column_names() + MATCH_COLUMNS + ("error_rate", "ap") + tuple(
        f"yolo_loss_{p}" for p in LOSS_PARTS) + ("loss",)


def _hard_region(pred: Instances, settings: Settings) -> tuple[int, int, int, int] | None:
    """The model-frame window of highest mean entropy of the segmentation classes'
    predictions (``HARD_REGION_WINDOW`` pixels a side).

    Computed on the prototype grid the probabilities live on (``extras["proto_probs"]``, the
    source of ``unc_mask_entropy``): per cell the entropy of the most uncertain instance
    (binary entropy grows with ``min(p, 1 - p)``, so that is the largest entropy of any
    instance there), the best window of ``HARD_REGION_WINDOW / stride`` cells, scaled back to
    model pixels. Without prototype probabilities (or with a grid that does not divide the
    frame), the model-frame ``entropy_map``.
    """
    from armbench_segmentation.metrics.segmentation import class_indices
    from armbench_segmentation.metrics.uncertainty import binary_entropy, entropy_map, hardest_region

    keep = np.isin(pred.class_ids, class_indices(settings.metrics.segmentation_classes, settings.data.class_names))
    if not keep.any():
        return None
    probs = pred.extras.get("proto_probs")
    h, w = pred.image_size
    if probs is not None and probs.ndim == 3 and probs.shape[1] and h % probs.shape[1] == 0 \
            and w % probs.shape[2] == 0 and h // probs.shape[1] == w // probs.shape[2]:
        stride = h // probs.shape[1]
        probs = np.asarray(probs[keep], np.float32)  # only these maps: no copy of the instances' masks
        cells = binary_entropy(np.minimum(probs, 1.0 - probs).max(axis=0))  # (h', w')
        window = hardest_region(cells, max(1, HARD_REGION_WINDOW // stride))
        return tuple(int(v) * stride for v in window)
    return tuple(int(v) for v in hardest_region(entropy_map(pred[keep]), HARD_REGION_WINDOW))


_loss_warned = False


def _has_yolov5_loss(layout: str) -> bool:
    """Whether the YOLOv5-seg loss can be recomputed for this head layout; for another head
    one warning per process says why the loss columns are empty."""
    global _loss_warned
    from armbench_segmentation.model.layout import HeadLayout

    if HeadLayout.from_value(layout) is HeadLayout.YOLOV5:
        return True
    if not _loss_warned:
        _loss_warned = True
        logging.getLogger(__name__).warning(
            "loss not computed: the model is a %s-layout export and the YOLOv5-seg training loss needs YOLOv5's "
            "objectness and anchor grid, which it does not have; the loss columns stay empty, error_rate and the "
            "other metrics are computed as usual", HeadLayout.from_value(layout).value)
    return False


def evaluate_sample(detections: np.ndarray, protos: np.ndarray, gt: Instances | None, settings: Settings,
                    input_hw: tuple[int, int], layout: str = "yolov5") -> SampleEvaluation:
    """The per-sample evaluation (see the module docstring).

    Args:
        detections: (A, 5 + nc + nm) float32 raw ``output0`` of one image.
        protos: (nm, h, w) float32 raw ``output1``.
        gt: model-frame ground truth with masks (G, S, S), or None for an unlabeled sample.
        settings: decode thresholds (``model``), metric parameters (``metrics``), class names.
        input_hw: the model frame ``(S, S)``.
        layout: the export's head layout (``model.layout.HeadLayout``: ``"yolov5"`` or
            ``"yolov8"``, ``RawOutputs.layout``); ``detections`` is then (4 + nc + nm, A).
            The YOLOv5-seg loss needs yolov5's objectness and anchors: for ``"yolov8"``
            ``losses`` is None (the loss columns are None; one warning per process).
    Returns:
        :class:`SampleEvaluation`.
    """
    from armbench_segmentation.metrics.loss import yolov5_seg_loss
    from armbench_segmentation.metrics.matching import match, sample_ap
    from armbench_segmentation.metrics.overlap import mask_overlaps, pack_masks
    from armbench_segmentation.metrics.segmentation import segmentation_errors
    from armbench_segmentation.metrics.uncertainty import uncertainty_scores
    from armbench_segmentation.model.decode import decode

    class_names = tuple(settings.data.class_names)
    input_hw = tuple(int(v) for v in input_hw)
    detections, protos = np.asarray(detections, np.float32), np.asarray(protos, np.float32)
    pred = decode(detections, protos, input_hw, settings.model, layout)
    base = dict(predictions=pred, class_names=class_names, uncertainty=uncertainty_scores(pred, settings.metrics),
                hard_region=_hard_region(pred, settings))
    if gt is None:
        return SampleEvaluation(**base)
    if tuple(gt.image_size) != input_hw:
        raise ValueError(f"ground truth is in a {gt.image_size} frame, the evaluation frame is {input_hw} "
                         f"({EVALUATION_FRAME})")
    annotation_ids = gt.ids
    gt = Instances(boxes=gt.boxes, class_ids=gt.class_ids, image_size=gt.image_size, masks=gt.masks,
                   extras=gt.extras)  # ids = positions
    packed_gt, packed_pred = pack_masks(gt.masks), pack_masks(pred.masks)
    overlaps = mask_overlaps(packed_gt, packed_pred)  # (G, P), shared by every metric
    seg = segmentation_errors(gt, pred, settings.metrics, class_names, overlaps=overlaps, packed_gt=packed_gt,
                              packed_pred=packed_pred)
    m = match(gt, pred, iou_threshold=settings.metrics.match_iou, overlaps=overlaps)
    same_class = gt.class_ids[:, None] == pred.class_ids[None, :]  # (G, P)
    iou = np.where(same_class, overlaps.iou, 0.0).astype(np.float64)
    best_gt = iou.max(axis=1) if iou.shape[1] else np.zeros(len(gt))
    best_pred = iou.max(axis=0) if iou.shape[0] else np.zeros(len(pred))
    return SampleEvaluation(
        **base, gt=gt, annotation_ids=np.asarray(annotation_ids, np.int64), segmentation=seg, matching=m,
        overlaps=overlaps, best_iou_gt=best_gt, best_iou_pred=best_pred, ap=sample_ap(gt, pred, overlaps=overlaps),
        losses=yolov5_seg_loss(detections, protos, gt, input_hw) if _has_yolov5_loss(layout) else None,
    )

"""What every column of ``samples.csv`` and ``instances.csv`` means: one table.

Each entry: the definition, the range and the direction (``"worse"``: higher is worse,
``"better"``: higher is better, ``""``: descriptive, no direction). The README's column
table is generated from here (``markdown_table``; a test keeps them equal) and the dashboard
shows the definition next to its colour/size selector. The metadata columns (``meta_*``) are
defined by ``metadata.METADATA_FIELDS`` and described here by family.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Column", "SAMPLE_COLUMNS", "INSTANCE_COLUMNS", "INSTANCE_COLUMN_DEFS", "describe", "markdown_table"]


@dataclass(frozen=True)
class Column:
    definition: str
    range: str = ""
    direction: str = ""  # "worse" | "better" | ""


_C = Column
_LABELED = " (labeled samples; empty for unlabeled ones)"

#: samples.csv / samples.parquet, in the order of the table.
SAMPLE_COLUMNS: dict[str, Column] = {
    # identity
    "sample_id": _C("the sample's id: its image file stem (see README for clashing stems)"),
    "split": _C("train, val or unlabeled (test.json)"),
    "file_name": _C("the image's file_name in the split's COCO file"),
    "image_id": _C("the image's COCO id"),
    "width": _C("original image width", "pixels"),
    "height": _C("original image height", "pixels"),
    # the loss and its companions
    "loss": _C("the sample's YOLOv5-seg training loss (box + obj + cls + mask), recomputed from the model's outputs "
               "as yolov5's ComputeLoss does; the map's default colour and size, as on Tensorleap" + _LABELED,
               ">= 0", "worse"),
    "yolo_loss_total": _C("same value as loss" + _LABELED, ">= 0", "worse"),
    "yolo_loss_box": _C("box (CIoU) part of the loss" + _LABELED, ">= 0", "worse"),
    "yolo_loss_obj": _C("objectness part of the loss" + _LABELED, ">= 0", "worse"),
    "yolo_loss_cls": _C("classification part of the loss" + _LABELED, ">= 0", "worse"),
    "yolo_loss_mask": _C("mask part of the loss" + _LABELED, ">= 0", "worse"),
    "error_rate": _C("1 - F1 of the instance matches: (fp + fn) / (2 tp + fp + fn); 0 with nothing to find and "
                     "nothing predicted" + _LABELED, "[0, 1]", "worse"),
    # matching
    "tp": _C("predictions matched one-to-one to a GT instance of their class at mask IoU >= metrics.match_iou, "
             "greedy by score (COCO rule)" + _LABELED, "count", "better"),
    "fp": _C("predictions left unmatched" + _LABELED, "count", "worse"),
    "fn": _C("GT instances left unmatched (missed)" + _LABELED, "count", "worse"),
    "precision": _C("tp / (tp + fp); 1 with no predictions" + _LABELED, "[0, 1]", "better"),
    "recall": _C("tp / (tp + fn); 1 with no GT" + _LABELED, "[0, 1]", "better"),
    "f1": _C("harmonic mean of precision and recall" + _LABELED, "[0, 1]", "better"),
    "mean_iou": _C("mean mask IoU of the matched pairs; empty without matches" + _LABELED, "[0, 1]", "better"),
    "ap": _C("the sample's COCO mask AP@[.50:.05:.95] (101-point), mean over the classes in its GT" + _LABELED,
             "[0, 1]", "better"),
    # over / under segmentation
    "over_segmented": _C("1 when some GT object (of metrics.segmentation_classes) is split into > 1 parts, "
                         "duplicates collapsed" + _LABELED, "0/1", "worse"),
    "over_segmented_count": _C("GT objects split into > 1 parts: > 1 predictions each lying inside it "
                               "(IoA > metrics.ioa_threshold), duplicate copies counted once" + _LABELED,
                               "count", "worse"),
    "over_segmented_legacy": _C("1 when some GT object contains > 1 predictions (legacy rule, duplicates "
                                "not collapsed)" + _LABELED, "0/1", "worse"),
    "over_segmented_count_legacy": _C("GT objects containing > 1 predictions (legacy rule)" + _LABELED,
                                      "count", "worse"),
    "over_segmented_mean_parts": _C("mean parts per split GT object; empty when none is split" + _LABELED,
                                    ">= 2", "worse"),
    "over_segmented_mean_confidence": _C("mean score of the predictions inside split GT objects" + _LABELED,
                                         "[0, 1]", ""),
    "over_segmented_small": _C("1 when an instance involved in a split is smaller than "
                               "metrics.small_area_fraction of the image" + _LABELED, "0/1", ""),
    "under_segmented": _C("1 when some prediction swallows > 1 GT objects" + _LABELED, "0/1", "worse"),
    "under_segmented_count": _C("predictions containing > 1 GT objects (each GT lying inside it with IoA > "
                                "metrics.ioa_threshold)" + _LABELED, "count", "worse"),
    "under_segmented_mean_parts": _C("mean GT objects per merging prediction; empty when none merges" + _LABELED,
                                     ">= 2", "worse"),
    "under_segmented_mean_confidence": _C("mean score of the merging predictions" + _LABELED, "[0, 1]", ""),
    "under_segmented_small": _C("1 when an instance involved in a merge is small" + _LABELED, "0/1", ""),
    "duplicate_count": _C("redundant predictions: copies (mutual IoU >= metrics.duplicate_iou) inside one GT "
                          "object, each group of k counting k - 1" + _LABELED, "count", "worse"),
    "duplicate_group_count": _C("groups of duplicate predictions" + _LABELED, "count", "worse"),
    "num_gt": _C("GT instances of the segmentation classes" + _LABELED, "count", ""),
    "num_pred": _C("predictions of the segmentation classes" + _LABELED, "count", ""),
    # predictions
    "n_pred": _C("predictions after the score filter and NMS", "count", ""),
    "n_pred_object": _C("Object predictions", "count", ""),
    "n_pred_tote": _C("Tote predictions", "count", ""),
    "mean_score": _C("mean prediction score; empty without predictions", "[0, 1]", ""),
    # uncertainty (all splits)
    "unc_num_detections": _C("number of detections (uncertainty family; a count, not weighed by the labeling "
                              "picks)", "count", ""),
    "unc_score_entropy": _C("mean binary entropy of the detection scores", "[0, 1] bits", "worse"),
    "unc_mask_entropy": _C("mean over instances of the mean binary entropy of their prototype pixel probabilities "
                           "inside their box; the entropy strategy's signal", "[0, 1] bits", "worse"),
    "unc_least_confidence": _C("1 - the lowest score", "[0, 1]", "worse"),
    "unc_margin": _C("mean of 1 - |2 score - 1| (1 when scores sit at 0.5)", "[0, 1]", "worse"),
    "unc_overlap_margin": _C("where same-class predictions overlap: mean of 1 - (top score - second score)",
                             "[0, 1]", "worse"),
    "unc_contested_fraction": _C("share of predicted pixels claimed by > 1 same-class prediction", "[0, 1]", "worse"),
    "unc_low_conf_count": _C("detections scoring below metrics.low_confidence", "count", "worse"),
    # map and clusters
    "map_x": _C("population map coordinate (analysis.projection of the model's embedding)", "", ""),
    "map_y": _C("population map coordinate", "", ""),
    "cluster": _C("k-means / HDBSCAN cluster of the embedding (-1: noise)", "id", ""),
}

_METADATA_FAMILY = Column("per-sample metadata (metadata.METADATA_FIELDS): image statistics, GT counts and sizes, "
                          "occlusion, tote colour; GT fields are empty for unlabeled samples", "", "")

#: instances.csv / instances.parquet: one row per GT instance and per prediction.
INSTANCE_COLUMN_DEFS: dict[str, Column] = {
    "kind": _C("gt or pred"),
    "index": _C("the instance's position in its sample: GT in the loader's order, predictions in the decoder's "
                "(descending score); the ids galleries and the stored facts use", "id", ""),
    "annotation_id": _C("COCO annotation id of a GT instance", "id", ""),
    "class": _C("class name (Object, Tote)"),
    "area": _C("mask area in the model frame (the letterboxed model input)", "pixels", ""),
    "area_fraction": _C("area / model-frame pixels", "[0, 1]", ""),
    "score": _C("prediction score (empty for GT)", "[0, 1]", ""),
    "matched_index": _C("index of the one-to-one matched counterpart (empty when unmatched)", "id", ""),
    "iou": _C("mask IoU with the matched counterpart", "[0, 1]", "better"),
    "best_iou": _C("best mask IoU with any counterpart of the same class, matched or not", "[0, 1]", "better"),
    "over_segmented": _C("GT: split into > 1 predictions (counted by over_segmented_count)", "bool", "worse"),
    "missed": _C("GT: unmatched (counted by fn)", "bool", "worse"),
    "in_under_segmenting": _C("GT: swallowed by an under-segmenting prediction", "bool", "worse"),
    "under_segmenting": _C("prediction: swallows > 1 GT objects (counted by under_segmented_count)", "bool",
                           "worse"),
    "duplicate": _C("prediction: a redundant copy (counted by duplicate_count)", "bool", "worse"),
    "false_positive": _C("prediction: unmatched (counted by fp)", "bool", "worse"),
    "in_over_segmented": _C("prediction: one of the parts of a split GT object", "bool", "worse"),
    "error_kind": _C("the instance's own error by severity: GT over_segmented > missed; prediction "
                     "under_segmenting > duplicate > false_positive; none; empty when unlabeled"),
    "visible_fraction": _C("GT: the annotation's attributes.visible_fraction when the dataset has it", "[0, 1]", ""),
    "box_overlaps": _C("GT: other GT boxes of the same class overlapping this one (occlusion proxy)", "count", ""),
}
INSTANCE_COLUMNS: tuple[str, ...] = tuple(INSTANCE_COLUMN_DEFS)


def describe(column: str) -> Column | None:
    """The definition of a samples.csv column (metadata columns by family), None if unknown."""
    if column in SAMPLE_COLUMNS:
        return SAMPLE_COLUMNS[column]
    if column.startswith("meta_"):
        return _METADATA_FAMILY
    return None


def markdown_table() -> str:
    """The README's column table (samples.csv, then instances.csv)."""
    arrow = {"worse": "higher is worse", "better": "higher is better", "": ""}
    lines = ["| column | definition | range | direction |", "|---|---|---|---|"]
    for name, c in SAMPLE_COLUMNS.items():
        lines.append(f"| `{name}` | {c.definition} | {c.range} | {arrow[c.direction]} |")
    lines.append(f"| `meta_*` | {_METADATA_FAMILY.definition} | | |")
    lines += ["", "| instances.csv column | definition | range | direction |", "|---|---|---|---|"]
    for name, c in INSTANCE_COLUMN_DEFS.items():
        lines.append(f"| `{name}` | {c.definition} | {c.range} | {arrow[c.direction]} |")
    return "\n".join(lines)

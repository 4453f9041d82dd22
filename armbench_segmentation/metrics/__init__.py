"""Per-sample and dataset metrics (pure numpy; no code_loader).

overlap       intersection / IoU / IoA matrices between mask sets, box IoU
segmentation  over/under segmentation and duplicates per image
matching      TP/FP/FN, precision/recall/F1, per-sample AP, confusion-matrix elements
evaluation    dataset-level COCO-style AP (agrees with pycocotools COCOeval)
uncertainty   prediction-only uncertainty scores and entropy maps
loss          YOLOv5-seg loss
"""

from armbench_segmentation.metrics.evaluation import (
    APResult,
    CocoEvaluator,
    DatasetEvaluation,
    evaluate_coco_results,
    validate_results,
)
from armbench_segmentation.metrics.matching import (
    BACKGROUND,
    COCO_IOU_THRESHOLDS,
    ConfusionRecord,
    MatchResult,
    confusion_elements,
    confusion_matrix,
    match,
    precision_recall_f1,
    sample_ap,
)
from armbench_segmentation.metrics.overlap import Overlaps, PackedMasks, box_iou, mask_overlaps, pack_masks, rle_overlaps
from armbench_segmentation.metrics.segmentation import SegmentationErrors, segmentation_errors
from armbench_segmentation.metrics.uncertainty import (
    binary_entropy,
    entropy_map,
    hardest_region,
    mask_entropy,
    uncertainty_scores,
)

# from armbench_segmentation.metrics.loss import ...   (added by the loss module's author)

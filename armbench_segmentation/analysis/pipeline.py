"""THE per-sample function of the analysis engine: raw model outputs -> one result row.

``process_sample`` calls ``metrics.sample_evaluation.evaluate_sample`` (the one per-sample
evaluation, the Tensorleap binder calls it too) and adds identity columns, metadata and the
embedding. Every column is defined in ``analysis.columns`` (README's column table).

Row columns (flat scalars; None where a value does not apply, never NaN):

- identity: ``split, sample_id, image_id, file_name, width, height``
- the evaluation's columns (``SampleEvaluation.columns``): predictions (``n_pred``, ...),
  labeled-only metrics (over/under segmentation, ``tp, fp, fn, ...``, ``error_rate`` =
  1 - F1, ``ap``, ``yolo_loss_*`` and ``loss`` = the YOLOv5-seg loss), ``unc_*`` uncertainty
- metadata: the ``sample_metadata(...)`` fields as ``meta_<name>`` (fields repeating an
  identity column, e.g. ``sample_id``, are not repeated)

Besides the row, each sample's *facts* are stored (``SampleEvaluation.facts``): the involved
instances of each error kind, the hard-region window and the per-instance rows. Galleries,
crops and the instance table read them instead of recomputing anything.

Every value is a deterministic function of (image, annotations, model, settings):
rerunning a sample gives an identical row, which is what makes resume safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from armbench_segmentation.codecs import mask_to_original_rle, xyxy_to_corner_xywh
from armbench_segmentation.config import Settings
from armbench_segmentation.data.letterbox import Letterbox
from armbench_segmentation.structures import Instances, python_scalar

logger = logging.getLogger(__name__)

IDENTITY_COLUMNS = ("split", "sample_id", "image_id", "file_name", "width", "height")
# Always present for labeled samples, None for unlabeled ones (the exports rely on them).
REQUIRED_SEGMENTATION_COLUMNS = ("over_segmented_count", "under_segmented_count")
UNCERTAINTY_PREFIX = "unc_"  # analysis.selection reads unc_* columns ("higher = more uncertain")
METADATA_PREFIX = "meta_"  # analysis.clustering describes clusters by their meta_* columns


@dataclass(frozen=True)
class RawSample:
    """Raw model outputs of ONE image.

    Attributes:
        detections: (A, 5 + nc + nm) float32 (yolov5 layout) or (4 + nc + nm, A) (yolov8).
        protos: (nm, h, w) float32.
        embedding: (D,) float32 or None when the export has no embedding output.
        layout: the export's head layout (``model.layout.HeadLayout`` value).
    """

    detections: np.ndarray
    protos: np.ndarray
    embedding: np.ndarray | None = None
    layout: str = "yolov5"


def split_raw(raw: Any) -> list[RawSample]:
    """A batch's ``RawOutputs`` -> one ``RawSample`` per image (views, no copies)."""
    n = len(raw.detections)
    emb = getattr(raw, "embedding", None)
    layout = getattr(raw, "layout", "yolov5")
    return [RawSample(raw.detections[i], raw.protos[i], None if emb is None else emb[i], layout) for i in range(n)]


@dataclass(frozen=True, eq=False)
class SampleResult:
    """What ``process_sample`` returns.

    Attributes:
        row: flat dict of scalars (see the module docstring for the columns).
        embedding: (D,) float32 per-sample embedding.
        predictions: model-frame predicted Instances (masks (N, S, S) bool, scores).
        facts: ``SampleEvaluation.facts()`` (involved instances per error kind, the
            hard-region window, the instance rows), JSON-ready; what the views draw.
    """

    row: dict[str, Any]
    embedding: np.ndarray
    predictions: Instances
    facts: dict[str, Any] | None = None


# ---------------------------------------------------------------------------- embedding
def fallback_embedding(protos: np.ndarray) -> np.ndarray:
    """(nm, h, w) prototypes -> (2 * nm,) float32: per-channel spatial mean and max.

    Used only when the ONNX export has no ``embedding`` output; a coarse image descriptor.
    """
    flat = np.asarray(protos, dtype=np.float32).reshape(len(protos), -1)  # (nm, h*w)
    if flat.shape[1] == 0:
        return np.zeros(2 * len(protos), np.float32)
    return np.concatenate([flat.mean(axis=1), flat.max(axis=1)]).astype(np.float32)


def sample_embedding(raw: RawSample) -> np.ndarray:
    if raw.embedding is not None:
        return np.asarray(raw.embedding, dtype=np.float32).reshape(-1)
    return fallback_embedding(raw.protos)


# ---------------------------------------------------------------------------- helpers
def _merge(row: dict[str, Any], extra: Mapping[str, Any], prefix: str) -> None:
    """Add ``extra`` to ``row`` under ``prefix`` (kept when a name already has it). A field
    repeating an identity column with the same value (e.g. metadata's ``sample_id``) is
    not duplicated."""
    for key, value in extra.items():
        value = python_scalar(value)
        if key in IDENTITY_COLUMNS and row.get(key) == value:
            continue
        name = key if key.startswith(prefix) else f"{prefix}{key}"
        if name in row:
            raise KeyError(f"result column {name!r} produced twice; rename one of the fields")
        row[name] = value


def _input_hw(model: Any, loaded: Any) -> tuple[int, int]:
    hw = getattr(model, "input_hw", None)
    return tuple(int(v) for v in hw) if hw else tuple(int(v) for v in loaded.image.shape[:2])


# ---------------------------------------------------------------------------- the function
def process_sample(loaded: Any, raw: RawSample, model: Any, settings: Settings,
                   annotations: list[dict] | None) -> SampleResult:
    """Evaluate one image (``metrics.sample_evaluation.evaluate_sample``, the function the
    Tensorleap binder calls too) and turn the result into a row and stored facts.

    Args:
        loaded: the ``LoadedSample`` (model input, letterbox, model-frame GT or None).
        raw: this image's raw outputs (see ``split_raw``).
        model: the ``SegmentationModel`` (its input size is used).
        settings: the run's settings (decode thresholds, metric parameters, class names).
        annotations: the sample's raw COCO annotations (for metadata); None/[] if unlabeled.
    Returns:
        ``SampleResult(row, embedding (D,) float32, predictions, facts)``.
    """
    from armbench_segmentation.metadata import sample_metadata
    from armbench_segmentation.metrics.sample_evaluation import evaluate_sample, gt_occlusion

    sample = loaded.sample
    class_names = tuple(settings.data.class_names)
    evaluation = evaluate_sample(raw.detections, raw.protos, loaded.gt, settings, _input_hw(model, loaded), raw.layout)

    row: dict[str, Any] = {
        "split": sample.split, "sample_id": sample.sample_id, "image_id": int(sample.image_id),
        "file_name": sample.file_name, "width": int(sample.width), "height": int(sample.height),
    }
    columns = evaluation.columns()
    missing = [c for c in REQUIRED_SEGMENTATION_COLUMNS if c not in columns]
    if missing:
        raise KeyError(f"the sample evaluation lacks the columns {missing}; the exports need them")
    row.update(columns)
    metadata = sample_metadata(loaded, list(annotations or []), settings.metrics.small_area_fraction, class_names)
    _merge(row, metadata, prefix=METADATA_PREFIX)
    facts = evaluation.facts()
    occlusion = gt_occlusion(evaluation.gt, evaluation.annotation_ids, annotations) if evaluation.labeled else []
    for inst in facts["instances"]:
        inst.update(occlusion[inst["index"]] if inst["kind"] == "gt" else {"visible_fraction": None, "box_overlaps": None})
    return SampleResult(row=row, embedding=sample_embedding(raw), predictions=evaluation.predictions, facts=facts)


# ---------------------------------------------------------------------------- compact predictions
def compact_predictions(pred: Instances, lb: Letterbox) -> list[dict]:
    """Model-frame predictions -> JSON-ready records at the original resolution.

    Each record: ``class_index`` (model class), ``score``, ``bbox`` [x, y, w, h] (original
    pixels, the detector's box), ``segmentation`` (compressed COCO RLE, original size).
    COCO category ids are assigned at export time, by class name.
    """
    out = []
    boxes = lb.boxes_to_original(pred.boxes) if len(pred) else np.zeros((0, 4), np.float32)
    xywh = xyxy_to_corner_xywh(np.asarray(boxes, np.float64))  # (N, 4) COCO bbox
    for i in range(len(pred)):
        rec = {"class_index": int(pred.class_ids[i]),
               "score": round(float(pred.scores[i]), 5) if pred.scores is not None else None,
               "bbox": [round(float(v), 2) for v in xywh[i]]}
        if pred.masks is not None:
            rec["segmentation"] = mask_to_original_rle(pred.masks[i], lb)
        out.append(rec)
    return out

"""THE per-sample function of the analysis engine: raw model outputs -> one result row.

``process_sample`` decodes one image's raw outputs and, for labeled splits, computes every
metric the analysis shows (over/under segmentation, matching, sample AP, YOLOv5-seg loss
components, a readable loss in [0, 1]), plus uncertainty scores and metadata for every
split. It calls the core functions directly; the Tensorleap binder calls the same core
functions one by one.

Row columns (flat scalars; None where a value does not apply, never NaN):

- identity: ``split, sample_id, image_id, file_name, width, height``
- predictions: ``n_pred``, ``n_pred_<class>`` per class (lower case), ``mean_score``
- labeled only (None for unlabeled): the ``segmentation_errors(...).as_dict()`` fields
  (``over_segmented_count``, ``under_segmented_count``, ...), ``tp, fp, fn, precision,
  recall, f1, mean_iou``, ``ap`` (sample AP), ``yolo_loss_box, yolo_loss_obj,
  yolo_loss_cls, yolo_loss_mask, yolo_loss_total`` (YOLOv5-seg training loss) and
  ``loss`` (the readable loss in [0, 1], 0 = perfect)
- uncertainty: the ``uncertainty_scores(...)`` fields as ``unc_<name>``
- metadata: the ``sample_metadata(...)`` fields as ``meta_<name>`` (fields repeating an
  identity column, e.g. ``sample_id``, are not repeated)

Every value in a row is a deterministic function of (image, annotations, model, settings):
rerunning a sample gives an identical row, which is what makes resume safe.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from armbench_segmentation.config import Settings
from armbench_segmentation.data.letterbox import Letterbox
from armbench_segmentation.structures import Instances, python_scalar

logger = logging.getLogger(__name__)

IDENTITY_COLUMNS = ("split", "sample_id", "image_id", "file_name", "width", "height")
MATCH_COLUMNS = ("tp", "fp", "fn", "precision", "recall", "f1", "mean_iou")
LOSS_PARTS = ("box", "obj", "cls", "mask", "total")
YOLO_LOSS_COLUMNS = tuple(f"yolo_loss_{p}" for p in LOSS_PARTS)
LABELED_ONLY_COLUMNS = MATCH_COLUMNS + ("ap",) + YOLO_LOSS_COLUMNS + ("loss",)
# Always present for labeled samples, None for unlabeled ones (the exports rely on them).
REQUIRED_SEGMENTATION_COLUMNS = ("over_segmented_count", "under_segmented_count")
UNCERTAINTY_PREFIX = "unc_"  # analysis.selection reads unc_* columns ("higher = more uncertain")
METADATA_PREFIX = "meta_"  # analysis.clustering describes clusters by their meta_* columns


@dataclass(frozen=True)
class RawSample:
    """Raw model outputs of ONE image.

    Attributes:
        detections: (A, 5 + nc + nm) float32.
        protos: (nm, h, w) float32.
        embedding: (D,) float32 or None when the export has no embedding output.
    """

    detections: np.ndarray
    protos: np.ndarray
    embedding: np.ndarray | None = None


def split_raw(raw: Any) -> list[RawSample]:
    """A batch's ``RawOutputs`` -> one ``RawSample`` per image (views, no copies)."""
    n = len(raw.detections)
    emb = getattr(raw, "embedding", None)
    return [RawSample(raw.detections[i], raw.protos[i], None if emb is None else emb[i]) for i in range(n)]


@dataclass(frozen=True, eq=False)
class SampleResult:
    """What ``process_sample`` returns.

    Attributes:
        row: flat dict of scalars (see the module docstring for the columns).
        embedding: (D,) float32 per-sample embedding.
        predictions: model-frame predicted Instances (masks (N, S, S) bool, scores).
    """

    row: dict[str, Any]
    embedding: np.ndarray
    predictions: Instances


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


def _as_dict(result: Any) -> dict[str, Any]:
    if isinstance(result, Mapping):
        return dict(result)
    if hasattr(result, "as_dict"):
        return dict(result.as_dict())
    raise TypeError(f"expected a mapping or an object with as_dict(), got {type(result).__name__}")


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


def _prediction_summary(pred: Instances, class_names: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_pred": len(pred)}
    for c, name in enumerate(class_names):
        out[f"n_pred_{name.lower()}"] = int((pred.class_ids == c).sum())
    scores = pred.scores if pred.scores is not None else np.zeros(0, np.float32)
    out["mean_score"] = float(scores.mean()) if len(scores) else None
    return out


def _input_hw(model: Any, loaded: Any) -> tuple[int, int]:
    hw = getattr(model, "input_hw", None)
    return tuple(int(v) for v in hw) if hw else tuple(int(v) for v in loaded.image.shape[:2])


@functools.lru_cache(maxsize=8)
def _segmentation_keys(metrics_config: Any, class_names: tuple[str, ...], hw: tuple[int, int]) -> tuple[str, ...]:
    """Column names of segmentation_errors(...).as_dict(), for the None row of unlabeled samples."""
    from armbench_segmentation.metrics.segmentation import segmentation_errors

    empty = Instances.empty(hw)
    pred = Instances.empty(hw, with_scores=True)
    return tuple(_as_dict(segmentation_errors(empty, pred, metrics_config, class_names)).keys())


# ---------------------------------------------------------------------------- the function
def labeled_metrics(gt: Instances, pred: Instances, raw: RawSample, input_hw: tuple[int, int],
                    settings: Settings) -> dict[str, Any]:
    """Every metric and loss of one labeled sample (model frame), as flat columns.

    The GT x prediction overlap matrices are computed once and shared by the over/under
    segmentation, the matching and the sample AP.
    """
    from armbench_segmentation.metrics.loss import readable_loss, yolov5_seg_loss
    from armbench_segmentation.metrics.matching import match, sample_ap
    from armbench_segmentation.metrics.overlap import mask_overlaps, pack_masks
    from armbench_segmentation.metrics.segmentation import segmentation_errors

    class_names = settings.data.class_names
    packed_gt, packed_pred = pack_masks(gt.masks), pack_masks(pred.masks)
    overlaps = mask_overlaps(packed_gt, packed_pred)  # (G, P)
    seg = segmentation_errors(gt, pred, settings.metrics, class_names, overlaps=overlaps,
                              packed_gt=packed_gt, packed_pred=packed_pred)
    seg_dict = _as_dict(seg)
    missing = [c for c in REQUIRED_SEGMENTATION_COLUMNS if c not in seg_dict]
    if missing:
        raise KeyError(f"segmentation_errors(...).as_dict() lacks {missing}; the exports need these columns")
    m = match(gt, pred, iou_threshold=settings.metrics.match_iou, overlaps=overlaps)
    out: dict[str, Any] = {k: python_scalar(v) for k, v in seg_dict.items()}
    for name in MATCH_COLUMNS:
        out[name] = python_scalar(getattr(m, name))
    out["ap"] = python_scalar(sample_ap(gt, pred, overlaps=overlaps))
    losses = yolov5_seg_loss(raw.detections, raw.protos, gt, input_hw)
    for part in LOSS_PARTS:
        out[f"yolo_loss_{part}"] = python_scalar(losses[part]) if part in losses else None
    out["loss"] = python_scalar(readable_loss(m))
    return out


def process_sample(loaded: Any, raw: RawSample, model: Any, settings: Settings,
                   annotations: list[dict] | None) -> SampleResult:
    """Decode one image's raw outputs and compute its result row.

    Args:
        loaded: the ``LoadedSample`` (model input, letterbox, model-frame GT or None).
        raw: this image's raw outputs (see ``split_raw``).
        model: the ``SegmentationModel`` (its input size and config are used).
        settings: the run's settings (decode thresholds, metric parameters, class names).
        annotations: the sample's raw COCO annotations (for metadata); None/[] if unlabeled.
    Returns:
        ``SampleResult(row, embedding (D,) float32, predictions)`` (model-frame predictions).
    """
    from armbench_segmentation.metadata import sample_metadata
    from armbench_segmentation.metrics.uncertainty import uncertainty_scores
    from armbench_segmentation.model.decode import decode

    sample = loaded.sample
    class_names = tuple(settings.data.class_names)
    input_hw = _input_hw(model, loaded)
    pred = decode(raw.detections, raw.protos, input_hw, settings.model)

    row: dict[str, Any] = {
        "split": sample.split, "sample_id": sample.sample_id, "image_id": int(sample.image_id),
        "file_name": sample.file_name, "width": int(sample.width), "height": int(sample.height),
    }
    row.update(_prediction_summary(pred, class_names))
    if loaded.gt is not None:
        row.update(labeled_metrics(loaded.gt, pred, raw, input_hw, settings))
    else:
        for key in _segmentation_keys(settings.metrics, class_names, input_hw) + LABELED_ONLY_COLUMNS:
            row.setdefault(key, None)
    _merge(row, _as_dict(uncertainty_scores(pred, settings.metrics)), prefix=UNCERTAINTY_PREFIX)
    metadata = sample_metadata(loaded, list(annotations or []), settings.metrics.small_area_fraction, class_names)
    _merge(row, _as_dict(metadata), prefix=METADATA_PREFIX)
    return SampleResult(row=row, embedding=sample_embedding(raw), predictions=pred)


# ---------------------------------------------------------------------------- compact predictions
@functools.lru_cache(maxsize=64)
def _nearest_maps(lb: Letterbox) -> tuple[np.ndarray, np.ndarray]:
    """For each content-crop row (column) r, the first original row (column) that cv2's
    INTER_NEAREST upscale (``Letterbox.masks_to_original``) fills from it: original y is
    filled from crop row floor(y * (new_h / orig_h)). Arrays of length new_h + 1 (the last
    entry is orig_h), so original rows [first[r], first[r + 1]) come from crop row r."""
    maps = []
    for orig, new in ((lb.orig_h, lb.new_h), (lb.orig_w, lb.new_w)):
        f = 1.0 / (orig / new)
        src = np.minimum(np.floor(np.arange(orig) * f).astype(np.int64), new - 1)  # (orig,)
        first = np.searchsorted(src, np.arange(new + 1), "left").astype(np.int64)  # (new + 1,)
        first.setflags(write=False)
        maps.append(first)
    return maps[0], maps[1]


def mask_to_original_rle(mask: np.ndarray, lb: Letterbox) -> dict:
    """Model-frame (S, S) bool mask -> compressed COCO RLE at the ORIGINAL resolution.

    Same pixels as ``lb.masks_to_original(mask[None])[0]``, without materialising the
    original-size mask: vertical runs are found at model resolution, their row bounds mapped
    to original rows, and each crop column's runs repeated for the original columns that
    nearest-neighbour upscaling copies from it. Cost follows the mask's perimeter.
    """
    oh, ow = lb.orig_h, lb.orig_w
    crop = mask[lb.pad_y: lb.pad_y + lb.new_h, lb.pad_x: lb.pad_x + lb.new_w]  # (new_h, new_w)
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
        starts = xs_rep * oh + start_y[run]
        ends = xs_rep * oh + end_y[run]
        bounds = np.empty(2 * len(starts) + 2, np.int64)
        bounds[0], bounds[-1] = 0, oh * ow
        bounds[1:-1:2], bounds[2:-1:2] = starts, ends
        counts = np.diff(bounds).tolist()
    rle = mask_utils.frPyObjects({"size": [oh, ow], "counts": counts}, oh, ow)
    return {"size": [oh, ow], "counts": rle["counts"].decode("ascii")}


def compact_predictions(pred: Instances, lb: Letterbox) -> list[dict]:
    """Model-frame predictions -> JSON-ready records at the original resolution.

    Each record: ``class_index`` (model class), ``score``, ``bbox`` [x, y, w, h] (original
    pixels, the detector's box), ``segmentation`` (compressed COCO RLE, original size).
    COCO category ids are assigned at export time, by class name.
    """
    out = []
    boxes = lb.boxes_to_original(pred.boxes) if len(pred) else np.zeros((0, 4), np.float32)
    for i in range(len(pred)):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        rec = {"class_index": int(pred.class_ids[i]),
               "score": round(float(pred.scores[i]), 5) if pred.scores is not None else None,
               "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]}
        if pred.masks is not None:
            rec["segmentation"] = mask_to_original_rle(pred.masks[i], lb)
        out.append(rec)
    return out

"""Tensorleap integration of the ARMBench YOLOv5s-seg model (code-loader 1.0.214, decorator API).

An adapter only: every registered function calls ``armbench_segmentation`` core functions and
converts types (batch axes, float16 -> float32, Instances <-> fixed-size arrays, Leap classes).
No analysis logic lives here.

Data contract (what the platform stores per sample)
---------------------------------------------------
``image`` input: (3, S, S) float32 RGB in [0, 1], letterboxed to S = ``data.image_size`` (640)
    with YOLOv5's gray padding. ``channel_dim=1``: the channel axis of the *batched* tensor
    (N, 3, S, S), i.e. axis 0 of the array the encoder returns.
``gt_boxes``: (K, 6) float32, one row per ground-truth instance
    ``[x1, y1, x2, y2, class, valid]`` in model-input pixels (xyxy), ``class`` the model
    class index (order of ``data.class_names``: Object=0, Tote=1), ``valid`` 1.0 for a real
    instance. Rows ``n..K-1`` are padding, all zeros; the number of real instances is
    ``gt_boxes[:, 5].sum()``. K = ``data.max_instances`` or, when that is null, the largest
    number of instances of any image of the configured train/val samples (so nothing is
    cut; an explicit smaller cap is applied by the loader with a warning giving the counts).
``gt_masks``: (K, S, S/8) float32, row i = the model-frame (S x S) mask of instance i
    bit-packed 8 pixels per value (``armbench_segmentation.codecs.pack_mask_bits``): integers
    0..255, exact through the platform's float16 storage, where the stack takes the bytes of a
    (K, S/4, S/4) float32 one. Padding rows are zeros.
Unlabeled samples: both GT encoders return an empty float32 array; GT-based metrics then
    give None (the loss NaN) for that sample. The platform skips them anyway.
Predictions: ``detections`` = ``output0`` (A, 5 + nc + 32), channel last; ``prototypes`` =
    ``output1`` (32, S/4, S/4), channel first; ``embedding`` (512,), the backbone's pooled
    SPPF output (``tools/export_onnx.py``), also registered as the custom latent space.

Element instances (per-object analysis): every GT object of a labeled sample is also a row
    ``<sample id>_<k>`` (k = its row in ``gt_boxes``/``gt_masks``) with its (S, S) mask and
    ``INSTANCE_METADATA_TYPES`` metadata (``metrics.sample_evaluation.gt_instance_attributes``
    plus the sample's tote colour); the ``instance_*`` metrics report, per object, the GT rows
    of ``SampleEvaluation.instance_rows`` (``INSTANCE_ENGINE_COLUMNS``): the instances.csv
    values of the engine. Predictions that match no GT object are false-positive instances
    (``false_positive_instances``: the prediction rows with ``false_positive``).
Metric directions: from the column table (``analysis.columns``, ``metric_registration``):
    quality measures keep theirs; descriptive values get ``compute_insights=False``.

One evaluation: every loss, metric and error visualizer reads the result of
``armbench_segmentation.metrics.sample_evaluation.evaluate_sample`` on the decoded GT (the
model frame: the same pixels the local engine uses) and the raw outputs; this module only
converts types. ``leap_test.py --dump FILE`` writes what these functions return per sample
and ``leap_test.py --compare FILE RUN_DIR/samples.csv`` checks it against ``armbench
analyze`` (``ENGINE_COLUMNS`` maps each platform name to its column).

Float16: the platform stores tensors as float16 and so does the local check when it calls a
metric or loss; every function casts back to float32 before decoding (no float16 arithmetic).
GT masks are exact (bit-packed integers). What the storage loses: scores move by < 5e-4,
boxes (GT and predicted) by up to 0.25 px, and where two overlapping candidates tie at float16
precision NMS may keep the other one. ``leap_test.py`` reports the effect for the samples it
runs; the parity dump turns the simulation off, so it compares the computation itself.

Configuration: ``armbench_segmentation.config.load_settings`` (defaults < user file <
environment < flags). A ``leap_config.yaml`` next to this file, when present, is used as the
user file (the way to set ``data.path`` for the platform, where no environment is set);
``ARMBENCH_CONFIG``, ``ARMBENCH_DATASET`` and ``ARMBENCH_MODEL`` still take precedence.
"""

import os

os.environ.setdefault("TL_DISABLE_ANALYTICS", "1")  # before any code_loader import: no telemetry by default

import dataclasses  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import logging  # noqa: E402
from collections import OrderedDict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, Optional  # noqa: E402

import numpy as np  # noqa: E402
from code_loader.contract.datasetclasses import (  # noqa: E402
    ConfusionMatrixElement,
    ElementInstance,
    PredictionTypeHandler,
    PreprocessResponse,
)
from code_loader.contract.enums import (  # noqa: E402
    ConfusionMatrixValue,
    DatasetMetadataType,
    DataStateType,
    LeapDataType,
    MetricDirection,
)
from code_loader.contract.responsedataclasses import BoundingBox  # noqa: E402
from code_loader.contract.visualizer_classes import (  # noqa: E402
    LeapImage,
    LeapImageMask,
    LeapImageWithBBox,
    LeapImageWithHeatmap,
)
from code_loader.inner_leap_binder.leapbinder_decorators import (  # noqa: E402
    tensorleap_custom_instances_metric,
    tensorleap_custom_latent_space,
    tensorleap_custom_loss,
    tensorleap_custom_metric,
    tensorleap_custom_visualizer,
    tensorleap_element_instance_preprocess,
    tensorleap_false_positive_empty_gt,
    tensorleap_false_positive_instances_encoder,
    tensorleap_gt_encoder,
    tensorleap_input_encoder,
    tensorleap_instances_length_encoder,
    tensorleap_instances_masks_encoder,
    tensorleap_integration_test,
    tensorleap_load_model,
    tensorleap_metadata,
    tensorleap_unlabeled_preprocess,
)

from armbench_segmentation.analysis.columns import INSTANCE_COLUMN_DEFS, SAMPLE_COLUMNS, describe  # noqa: E402
from armbench_segmentation.config import Settings, load_settings  # noqa: E402
from armbench_segmentation.data.coco import ArmbenchDataset, LoadedSample, Sample  # noqa: E402
from armbench_segmentation.data.probe import readable_samples  # noqa: E402
from armbench_segmentation.errors import DatasetError, ModelError  # noqa: E402
from armbench_segmentation.codecs import (  # noqa: E402
    MASK_BITS_PER_VALUE,
    pack_mask_bits,
    unpack_mask_bits,
    xyxy_to_center_xywh,
)
from armbench_segmentation.metadata import METADATA_FIELDS, sample_metadata  # noqa: E402
from armbench_segmentation.metrics.matching import confusion_elements  # noqa: E402
from armbench_segmentation.metrics.sample_evaluation import (  # noqa: E402
    LOSS_PARTS,
    SampleEvaluation,
    evaluate_sample,
    gt_instance_attributes,
    segmentation_column_names,
)
from armbench_segmentation.metrics.uncertainty import entropy_map  # noqa: E402
from armbench_segmentation.model.onnx_model import SegmentationModel  # noqa: E402
from armbench_segmentation.splits import LABELED_SPLITS as LABELED_SPLIT_NAMES, UNLABELED  # noqa: E402
from armbench_segmentation.structures import Instances, python_scalar, unbatch  # noqa: E402
from armbench_segmentation.visualize import draw_error_instances, instance_labels, label_map  # noqa: E402

log = logging.getLogger("leap_binder")

ROOT = Path(__file__).resolve().parent
LEAP_CONFIG = ROOT / "leap_config.yaml"

LABELED_SPLITS = dict(zip(LABELED_SPLIT_NAMES, (DataStateType.training, DataStateType.validation)))  # train, val
UNLABELED_SPLIT = UNLABELED
PROTO_STRIDE = 4  # YOLOv5-seg prototypes are at 1/4 of the input
NUM_MASK_COEFFS = 32  # YOLOv5-seg export contract
EMBEDDING_DIM = 512  # tools/export_onnx.py: pooled SPPF output of yolov5s-seg
GT_BOX_COLUMNS = ("x1", "y1", "x2", "y2", "class", "valid")
MAX_MASK_LABELS = 255  # LeapImageMask is uint8: 0 background, 1..255 instances

# sample_metadata fields -> platform type (needed where a value can be None), derived from the
# core's schema. Identity strings (sample_id, file_name) are not sent: the sample id already
# is the file stem.
METADATA_SKIP = ("sample_id", "file_name")
_PLATFORM_TYPES = {int: DatasetMetadataType.int, float: DatasetMetadataType.float, str: DatasetMetadataType.string,
                   bool: DatasetMetadataType.boolean}
METADATA_TYPES: Dict[str, DatasetMetadataType] = {
    key: _PLATFORM_TYPES[kind] for key, kind in METADATA_FIELDS.items() if key not in METADATA_SKIP
}

MATCHING_KEYS = ("tp", "fp", "fn", "precision", "recall", "f1", "mean_iou", "error_rate", "ap")
LOSS_COMPONENTS = tuple(p for p in LOSS_PARTS if p != "total")

#: platform name (loss, metric or metadata function) -> how its values are named in the
#: engine's samples.csv: a dict output's key ``k`` is the column ``prefix + k``; a single
#: value (the loss) is the column itself. ``leap_test.py --compare`` reads this.
ENGINE_COLUMNS: Dict[str, str] = {
    "yolov5_seg_loss": "loss",
    "yolov5_seg_loss_parts": "yolo_loss_",
    "segmentation_errors": "",
    "matching": "",
    "uncertainty": "unc_",
    "sample": "meta_",
}

#: per-object analysis (element instances, one row per GT object of a labeled sample): the
#: ``instance_metadata`` keys of ``gt_instance`` with their platform types (declared, so a None
#: visible fraction keeps its column). Each key is the instances.csv column of the same name
#: (``metrics.sample_evaluation.gt_instance_attributes``), ``tote_color`` the sample's
#: ``meta_tote_color``.
INSTANCE_METADATA_TYPES: Dict[str, DatasetMetadataType] = {
    "annotation_id": DatasetMetadataType.int, "class": DatasetMetadataType.string,
    "area": DatasetMetadataType.int, "area_fraction": DatasetMetadataType.float,
    "visible_fraction": DatasetMetadataType.float, "box_overlaps": DatasetMetadataType.int,
    "tote_color": DatasetMetadataType.string,
}
#: instance metric name -> the instances.csv column of the GT row it reports
#: (``SampleEvaluation.instance_rows``); ``matched_score`` is the ``score`` of the prediction row
#: the GT row's ``matched_index`` names. ``leap_test.py --compare`` reads this.
INSTANCE_ENGINE_COLUMNS: Dict[str, str] = {
    "instance_iou": "iou", "instance_best_iou": "best_iou", "instance_score": "matched_score",
    "instance_over_segmented": "over_segmented", "instance_missed": "missed",
    "instance_in_under_segmenting": "in_under_segmenting",
}
#: false-positive instances (predictions matching no GT object): the instances.csv columns of
#: their prediction rows that the instance metrics carry (the others are GT-only: NaN), and their
#: metadata (the GT keys, None where only GT has them, plus the row's ``error_kind``).
FP_INSTANCE_COLUMNS: Dict[str, str] = {"instance_best_iou": "best_iou", "instance_score": "score"}
FP_METADATA_TYPES: Dict[str, DatasetMetadataType] = {**INSTANCE_METADATA_TYPES,
                                                     "error_kind": DatasetMetadataType.string}
_COLUMN_DIRECTIONS = {"worse": MetricDirection.Downward, "better": MetricDirection.Upward}


def metric_registration(function: str, keys) -> Dict[str, Dict[str, Any]]:
    """``direction`` and ``compute_insights`` (keyword arguments of ``tensorleap_custom_metric``)
    of the dict metric ``function`` with ``keys``, from the
    column table (``analysis.columns``): a quality measure (higher is worse / better) keeps its
    direction and insights; a descriptive value (a count such as ``num_pred``, a mean score)
    gets ``compute_insights=False`` and no direction."""
    direction, insights = {}, {}
    for key in keys:
        column = describe(ENGINE_COLUMNS[function] + key)
        if column is None:
            raise KeyError(f"metric {function}.{key}: no column {ENGINE_COLUMNS[function] + key!r} in analysis.columns")
        if column.direction:
            direction[key] = _COLUMN_DIRECTIONS[column.direction]
        else:
            insights[key] = False
    return {"direction": direction, "compute_insights": insights}


def instance_metric_registration(name: str) -> dict:
    """Keyword arguments of the instance metric ``name`` (``tensorleap_custom_instances_metric``)
    from its instances.csv column: quality measures keep their direction; a descriptive one gets
    ``compute_insights=False`` and, as that decorator has no "no direction", ``Upward``."""
    column = INSTANCE_COLUMN_DEFS["score" if name == "instance_score" else INSTANCE_ENGINE_COLUMNS[name]]
    if column.direction:
        return {"direction": _COLUMN_DIRECTIONS[column.direction]}
    return {"direction": MetricDirection.Upward, "compute_insights": False}


# ============================================================================ settings, data
@functools.lru_cache(maxsize=None)
def _settings() -> Settings:
    """Settings, read once per process (``leap_config.yaml`` as the user file when present)."""
    config = LEAP_CONFIG if LEAP_CONFIG.is_file() and not os.environ.get("ARMBENCH_CONFIG") else None
    return load_settings(config)


def _class_names() -> List[str]:
    return list(_settings().data.class_names)


@functools.lru_cache(maxsize=None)
def _dataset() -> ArmbenchDataset:
    """The dataset with ``max_instances`` fixed: the configured cap, or the data's maximum."""
    data = _settings().data
    dataset = ArmbenchDataset(data.path, data)
    if data.max_instances is None:
        k = max(1, dataset.max_instances_per_image(tuple(LABELED_SPLITS)))
        dataset = ArmbenchDataset(data.path, dataclasses.replace(data, max_instances=k))
        log.info("GT encoders padded to %d instances (the most on one train/val image)", k)
    return dataset


def max_instances() -> int:
    """K, the fixed number of rows of the GT encoders."""
    return int(_dataset().config.max_instances)


@functools.lru_cache(maxsize=None)
def _samples_by_id(split: str) -> Dict[str, Sample]:
    return {s.sample_id: s for s in _dataset().samples(split)}


def _sample(sample_id: str, preprocess: PreprocessResponse) -> Sample:
    split = preprocess.data["split"]
    try:
        return _samples_by_id(split)[sample_id]
    except KeyError:
        raise KeyError(f"sample id {sample_id!r} is not in the {split!r} split of {_dataset().root}") from None


@functools.lru_cache(maxsize=8)
def _load(split: str, sample_id: str) -> LoadedSample:
    """Decode + letterbox + model-frame GT, shared by the encoders and metadata of a sample."""
    return _dataset().load(_samples_by_id(split)[sample_id])


def _loaded(sample_id: str, preprocess: PreprocessResponse) -> LoadedSample:
    sample = _sample(sample_id, preprocess)
    return _load(sample.split, sample.sample_id)


@functools.lru_cache(maxsize=None)
def _readable(split: str) -> tuple:
    """(readable samples, {sample_id: problem}) of a split (``data.probe.readable_samples``):
    the platform cannot skip a sample whose encoder raises, so unreadable ones are left out
    of the preprocess, each named once in a warning."""
    readable, problems = readable_samples(_dataset(), _dataset().samples(split))
    return tuple(readable), problems


def excluded_samples() -> Dict[str, str]:
    """``{sample_id: problem}`` of every sample the preprocess responses left out."""
    out: Dict[str, str] = {}
    for split in (*LABELED_SPLITS, UNLABELED_SPLIT):
        out.update(_readable(split)[1])
    return out


def _response(split: str, state: DataStateType) -> PreprocessResponse:
    samples, problems = _readable(split)
    ids = [s.sample_id for s in samples]
    if not ids:
        why = f" ({len(problems)} unreadable, e.g. {next(iter(problems.values()))})" if problems else ""
        raise DatasetError(f"split {split!r} of {_dataset().root} has no readable images{why}; check "
                           f"data.{split}_size and the split's COCO file")
    return PreprocessResponse(sample_ids=ids, data={"split": split}, state=state, sample_id_type=str)


# ============================================================================ conversions
def _f32(array: Any) -> np.ndarray:
    """Platform tensors arrive as float16: back to float32 (copy only when needed)."""
    return np.asarray(array, dtype=np.float32)


def _unbatch(array: Any, ndim: int) -> np.ndarray:
    """Visualizer input -> one sample: drop the leading batch axis of 1 when present."""
    return unbatch(array, ndim, "visualizer input")


def _digest(*arrays: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.digest()


class _Memo:
    """A few recent per-sample results, keyed by a digest of the input arrays: the metrics,
    loss and visualizers of one sample decode its outputs once."""

    def __init__(self, size: int = 8):
        self._items: "OrderedDict[bytes, Any]" = OrderedDict()
        self._size = size

    def get(self, key: bytes, make: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return value


_memo = _Memo()


def _fit(n: int, k: int) -> int:
    if n > k:  # the loader already caps at K (data.max_instances) with a warning; never silent here either
        log.warning("%d ground-truth instances, encoding the first %d (GT encoders have K=%d rows)", n, k, k)
    return min(n, k)


def encode_gt_boxes(gt: Instances, k: int) -> np.ndarray:
    """Instances -> (K, 6) float32 ``[x1, y1, x2, y2, class, valid]``, zero rows as padding."""
    out = np.zeros((k, len(GT_BOX_COLUMNS)), np.float32)
    n = _fit(len(gt), k)
    out[:n, :4] = gt.boxes[:n]
    out[:n, 4] = gt.class_ids[:n]
    out[:n, 5] = 1.0
    return out


def encode_gt_masks(gt: Instances, k: int) -> np.ndarray:
    """Instances (N, S, S) masks -> (K, S, ceil(S/8)) float32, bit-packed 8 pixels per value
    (``codecs.pack_mask_bits``), zero rows as padding."""
    h, w = gt.image_size
    out = np.zeros((k, h, -(-w // MASK_BITS_PER_VALUE)), np.float32)
    n = _fit(len(gt), k)
    if n:
        out[:n] = pack_mask_bits(gt.masks[:n])
    return out


def decode_gt(boxes: np.ndarray, masks: np.ndarray, input_hw: tuple) -> Optional[Instances]:
    """One sample's GT encodings -> model-frame Instances, or None (unlabeled).

    ``ids`` are the row numbers of the encoding (the loader's order, as in the engine).
    """
    boxes, masks = _f32(boxes), _f32(masks)
    if boxes.size == 0:
        return None
    if boxes.ndim != 2 or boxes.shape[1] != len(GT_BOX_COLUMNS) or masks.ndim != 3 or len(masks) != len(boxes) \
            or masks.shape[1] != input_hw[0]:
        raise ValueError(f"expected gt_boxes (K, 6) and gt_masks (K, {input_hw[0]}, "
                         f"{-(-input_hw[1] // MASK_BITS_PER_VALUE)}), "
                         f"got {boxes.shape} and {masks.shape}")
    valid = np.flatnonzero(boxes[:, 5] > 0.5)
    return Instances(boxes=boxes[valid, :4], class_ids=np.rint(boxes[valid, 4]).astype(np.int64),
                     image_size=tuple(input_hw), masks=unpack_mask_bits(masks[valid], int(input_hw[1])), ids=valid)


def _input_hw(prototypes: np.ndarray) -> tuple:
    size = int(_settings().data.image_size)
    h, w = prototypes.shape[-2:]
    if h * PROTO_STRIDE != size or w * PROTO_STRIDE != size:
        raise ValueError(f"prototypes are {h}x{w} but data.image_size is {size} (expected {size // PROTO_STRIDE}x"
                         f"{size // PROTO_STRIDE}): run the model on the letterboxed {size}x{size} input")
    return size, size


def _evaluation(detections: np.ndarray, prototypes: np.ndarray, boxes: Optional[np.ndarray] = None,
                masks: Optional[np.ndarray] = None) -> SampleEvaluation:
    """``evaluate_sample`` of one sample (no batch axis), memoized by the input arrays; without
    GT arrays (or with empty ones) the prediction-only evaluation."""
    def make() -> SampleEvaluation:
        hw = _input_hw(prototypes)
        gt = None if boxes is None else decode_gt(boxes, masks, hw)
        return evaluate_sample(_f32(detections), _f32(prototypes), gt, _settings(), hw)

    arrays = (detections, prototypes) if boxes is None else (detections, prototypes, boxes, masks)
    return _memo.get(b"eval" + _digest(*arrays), make)


def _per_sample(fn: Callable[..., Any], *batched: np.ndarray) -> List[Any]:
    """Apply ``fn`` to each sample of batched arrays (leading axis = batch)."""
    n = len(batched[0])
    for a in batched:
        if len(a) != n:
            raise ValueError(f"batched inputs disagree on the batch size: {[len(b) for b in batched]}")
    return [fn(*(a[i] for a in batched)) for i in range(n)]




def _columns(rows: List[Optional[dict]], keys: List[str]) -> Dict[str, List[Any]]:
    """Per-sample dicts (None = undefined sample) -> {key: one value per sample}."""
    return {k: [None if r is None else python_scalar(r.get(k)) for r in rows] for k in keys}


def _display_image(image: np.ndarray) -> np.ndarray:
    """(3, S, S) float 0..1 model input -> (S, S, 3) uint8 RGB."""
    chw = _f32(_unbatch(image, 3))
    return np.clip(chw.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def bounding_boxes(inst: Instances, prefix: str = "") -> List[BoundingBox]:
    """Instances -> Leap boxes (centre x, y, width, height relative to the frame)."""
    h, w = inst.image_size
    names = _class_names()
    frame = np.array([w, h, w, h], np.float64)
    boxes = xyxy_to_center_xywh(np.clip(np.asarray(inst.boxes, np.float64).reshape(-1, 4), 0.0, frame)) / frame  # (N, 4)
    out = []
    for k in range(len(inst)):
        cx, cy, bw, bh = (float(v) for v in boxes[k])
        score = 1.0 if inst.scores is None else float(inst.scores[k])
        out.append(BoundingBox(x=cx, y=cy, width=bw, height=bh,
                               confidence=score, label=f"{prefix}{names[int(inst.class_ids[k])]}"))
    return out


def _mask_view(image: np.ndarray, inst: Instances, prefix: str) -> LeapImageMask:
    """Instances -> LeapImageMask: ``labels[v]`` names mask value ``v`` (0 = background)."""
    values, kept = label_map(inst.masks, MAX_MASK_LABELS)
    texts = instance_labels(inst, _class_names(), prefix)
    return LeapImageMask(values, image, ["background"] + [texts[i] for i in kept])


def _gt_display(gt_boxes_: np.ndarray, gt_masks_: np.ndarray) -> Optional[Instances]:
    """Visualizer GT inputs -> model-frame Instances (None when unlabeled)."""
    boxes, masks = _f32(gt_boxes_), _f32(gt_masks_)
    if boxes.size == 0:
        return None
    hw = (int(_settings().data.image_size),) * 2
    return decode_gt(_unbatch(boxes, 2), _unbatch(masks, 3), hw)


# ============================================================================ element instances
@functools.lru_cache(maxsize=8)
def _gt_instance_rows(split: str, sample_id: str) -> tuple:
    """The sample's GT instance rows: ``gt_instance_attributes`` (the instances.csv columns that
    need no prediction) plus the sample's tote colour, at most K (as the GT encoders)."""
    loaded = _load(split, sample_id)
    if loaded.gt is None:
        return ()
    rows = gt_instance_attributes(loaded.gt, _dataset().annotations(loaded.sample), _class_names())
    tote = _sample_metadata(split, sample_id).get("tote_color")
    return tuple({**r, "tote_color": tote} for r in rows[:max_instances()])


@tensorleap_instances_length_encoder("gt_instances")
def gt_instance_count(sample_id: str, preprocess: PreprocessResponse) -> int:
    """Element instances of a sample: its annotations of a configured class, from the COCO
    index (no image decoded), at most K. An annotation the loader drops (no usable geometry)
    leaves the last ids without an object: ``gt_instance`` returns None for them."""
    sample = _sample(sample_id, preprocess)
    categories = _dataset().category_map(sample.split)
    n = sum(1 for ann in _dataset().annotations(sample) if ann.get("category_id") in categories)
    return int(min(n, max_instances()))


@tensorleap_instances_masks_encoder("gt_instances")
def gt_instance(sample_id: str, preprocess: PreprocessResponse, instance_id: int) -> Optional[ElementInstance]:
    """GT object ``instance_id`` (row ``instance_id`` of ``gt_boxes``/``gt_masks``): its (S, S)
    float32 model-frame mask and ``INSTANCE_METADATA_TYPES`` metadata; None past the last object."""
    sample = _sample(sample_id, preprocess)
    rows = _gt_instance_rows(sample.split, sample.sample_id)
    if not 0 <= instance_id < len(rows):
        return None
    row = rows[instance_id]
    mask = _load(sample.split, sample.sample_id).gt.masks[instance_id].astype(np.float32)
    return ElementInstance(name=f"gt {row['class']} #{instance_id}", mask=mask,
                           instance_metadata={k: python_scalar(row[k]) for k in INSTANCE_METADATA_TYPES})


# ============================================================================ preprocess
@tensorleap_element_instance_preprocess(gt_instance_count, gt_instance, INSTANCE_METADATA_TYPES)
def preprocess() -> List[PreprocessResponse]:
    """Train and validation splits; sample ids are the image file stems. Each GT object is also
    an element instance (``<sample id>_<k>``, appended by code-loader after the sample ids)."""
    return [_response(split, state) for split, state in LABELED_SPLITS.items()]


def image_ids(preprocess: PreprocessResponse) -> List[str]:
    """The response's image sample ids, without the element-instance ids code-loader appends."""
    instances = preprocess.instance_to_sample_ids_mappings or {}
    return [sid for sid in preprocess.sample_ids if sid not in instances]


@tensorleap_unlabeled_preprocess()
def preprocess_unlabeled() -> PreprocessResponse:
    """The unlabeled split (test.json, labels ignored)."""
    return _response(UNLABELED_SPLIT, DataStateType.unlabeled)


# ============================================================================ encoders
@tensorleap_input_encoder("image", channel_dim=1)
def input_image(sample_id: str, preprocess: PreprocessResponse) -> np.ndarray:
    """(3, S, S) float32 RGB in [0, 1], letterboxed."""
    return SegmentationModel.to_input(_loaded(sample_id, preprocess).image)[0]


@tensorleap_gt_encoder("gt_boxes")
def gt_boxes(sample_id: str, preprocess: PreprocessResponse) -> np.ndarray:
    """(K, 6) float32 ``[x1, y1, x2, y2, class, valid]`` (model-input pixels); empty when unlabeled."""
    gt = _loaded(sample_id, preprocess).gt
    if gt is None:
        return np.zeros((0,), np.float32)
    return encode_gt_boxes(gt, max_instances())


@tensorleap_gt_encoder("gt_masks")
def gt_masks(sample_id: str, preprocess: PreprocessResponse) -> np.ndarray:
    """(K, S, S/8) float32 bit-packed model-frame instance masks (8 pixels per value); empty when unlabeled."""
    gt = _loaded(sample_id, preprocess).gt
    if gt is None:
        return np.zeros((0,), np.float32)
    return encode_gt_masks(gt, max_instances())


# ============================================================================ metadata
@functools.lru_cache(maxsize=8)
def _sample_metadata(split: str, sample_id: str) -> Dict[str, Any]:
    s = _settings()
    loaded = _load(split, sample_id)
    meta = sample_metadata(loaded, _dataset().annotations(loaded.sample), s.metrics.small_area_fraction,
                           s.data.class_names)
    return {k: python_scalar(v) for k, v in meta.items() if k not in METADATA_SKIP}


@tensorleap_metadata("sample", metadata_type=METADATA_TYPES)
def metadata(sample_id: str, preprocess: PreprocessResponse) -> Dict[str, Any]:
    """``metadata.sample_metadata``: image statistics, counts, sizes, occlusion, tote colour.
    On the platform every int arrives as a float (the type is inferred from the values)."""
    sample = _sample(sample_id, preprocess)
    return dict(_sample_metadata(sample.split, sample.sample_id))


# ============================================================================ model
def _prediction_types() -> List[PredictionTypeHandler]:
    return [
        PredictionTypeHandler("detections", ["x", "y", "w", "h", "objectness", *_class_names(),
                                             *(f"mask_coef_{i}" for i in range(NUM_MASK_COEFFS))], channel_dim=-1),
        PredictionTypeHandler("prototypes", [f"proto_{i}" for i in range(NUM_MASK_COEFFS)], channel_dim=1),
        PredictionTypeHandler("embedding", [f"embedding_{i}" for i in range(EMBEDDING_DIM)], channel_dim=-1),
    ]


@tensorleap_load_model(_prediction_types())
def load_model():
    """The onnxruntime session of ``model.path`` (``ARMBENCH_MODEL``), checked against the
    three declared outputs: detections, prototypes, embedding."""
    s = _settings()
    model = SegmentationModel(s.model.path, s.model, s.data.class_names)
    ranks = [len(o.shape) for o in model.session.get_outputs()]
    problems = []
    if ranks != [3, 4, 2]:
        problems.append(f"outputs {[(o.name, o.shape) for o in model.session.get_outputs()]}, expected output0 "
                        f"(N, A, 5+nc+32), output1 (N, 32, H/4, W/4), embedding (N, {EMBEDDING_DIM}) in this order")
    if model.layout != "yolov5":  # the declared prediction types and the registered loss are YOLOv5-seg's
        problems.append(f"a {model.layout.value}-layout head (YOLOv8/YOLO11-seg: output0 (N, 4+nc+32, A)); this "
                        f"integration declares YOLOv5-seg's channel-last detections with objectness and registers the "
                        f"YOLOv5-seg loss, which need output0 (N, A, 5+nc+32). The armbench CLI (predict, evaluate, "
                        f"analyze) takes YOLOv8/YOLO11-seg exports")
    if model.num_mask_coeffs != NUM_MASK_COEFFS:
        problems.append(f"{model.num_mask_coeffs} mask coefficients, expected {NUM_MASK_COEFFS}")
    if model.has_embedding and model.embedding_dim not in (None, EMBEDDING_DIM):
        problems.append(f"an embedding of {model.embedding_dim} values, expected {EMBEDDING_DIM}")
    if model.input_hw is not None and tuple(model.input_hw) != (s.data.image_size,) * 2:
        problems.append(f"a static {model.input_hw} input, but data.image_size is {s.data.image_size}")
    if problems:
        raise ModelError(f"{model.path} does not match this integration: " + "; ".join(problems) +
                         ". Export the model with tools/export_onnx.py (dynamic, with the embedding output)")
    return model.session


# ============================================================================ loss and metrics
def _labeled(detections, prototypes, boxes, masks) -> Optional[SampleEvaluation]:
    """The sample's evaluation with GT, None for an unlabeled sample (empty GT arrays)."""
    if _f32(boxes).size == 0:
        return None
    return _evaluation(detections, prototypes, boxes, masks)


@tensorleap_custom_loss("yolov5_seg_loss")
def yolov5_seg_loss_total(detections: np.ndarray, prototypes: np.ndarray, gt_boxes: np.ndarray,
                          gt_masks: np.ndarray) -> np.ndarray:
    """YOLOv5-seg training loss (box + obj + cls + mask) per sample; NaN without GT."""
    evs = _per_sample(_labeled, detections, prototypes, gt_boxes, gt_masks)
    return np.array([np.nan if ev is None else ev.losses["total"] for ev in evs], np.float32)


@tensorleap_custom_metric("yolov5_seg_loss_parts", **metric_registration("yolov5_seg_loss_parts", LOSS_COMPONENTS))
def loss_components(detections: np.ndarray, prototypes: np.ndarray, gt_boxes: np.ndarray,
                    gt_masks: np.ndarray) -> Dict[str, List[Optional[float]]]:
    """The loss's box / obj / cls / mask components."""
    evs = _per_sample(_labeled, detections, prototypes, gt_boxes, gt_masks)
    return _columns([None if ev is None else ev.losses for ev in evs], list(LOSS_COMPONENTS))


@functools.lru_cache(maxsize=None)
def _segmentation_keys() -> List[str]:
    """The evaluation's segmentation columns (error measures, and the descriptive counts)."""
    return list(segmentation_column_names())


@tensorleap_custom_metric("segmentation_errors",
                          **metric_registration("segmentation_errors", segmentation_column_names()))
def segmentation_metrics(detections: np.ndarray, prototypes: np.ndarray, gt_boxes: np.ndarray,
                         gt_masks: np.ndarray) -> Dict[str, List[Any]]:
    """Over/under segmentation (flags, counts, mean parts, mean confidence, duplicates)."""
    evs = _per_sample(_labeled, detections, prototypes, gt_boxes, gt_masks)
    return _columns([None if ev is None else ev.columns() for ev in evs], _segmentation_keys())


@tensorleap_custom_metric("matching", **metric_registration("matching", MATCHING_KEYS))
def matching_metrics(detections: np.ndarray, prototypes: np.ndarray, gt_boxes: np.ndarray,
                     gt_masks: np.ndarray) -> Dict[str, List[Any]]:
    """TP/FP/FN, precision, recall, F1, mean IoU of matches (mask IoU >= metrics.match_iou),
    error rate (1 - F1) and the sample's COCO AP@[.5:.95]."""
    evs = _per_sample(_labeled, detections, prototypes, gt_boxes, gt_masks)
    return _columns([None if ev is None else ev.columns() for ev in evs], list(MATCHING_KEYS))


def _confusion_row(detections, prototypes, boxes, masks) -> List[ConfusionMatrixElement]:
    ev = _labeled(detections, prototypes, boxes, masks)
    if ev is None:
        return []
    s = _settings()
    records = confusion_elements(ev.gt, ev.predictions, s.data.class_names, s.metrics.match_iou, overlaps=ev.overlaps)
    return [ConfusionMatrixElement(r.label, ConfusionMatrixValue.Positive if r.expected else ConfusionMatrixValue.Negative,
                                   float(r.probability), r.id) for r in records]


@tensorleap_custom_metric("confusion_matrix", direction=MetricDirection.Upward)
def confusion_matrix(detections: np.ndarray, prototypes: np.ndarray, gt_boxes: np.ndarray,
                     gt_masks: np.ndarray) -> List[List[ConfusionMatrixElement]]:
    """Per instance and class, class-agnostic matching (missed GT = background predictions)."""
    return _per_sample(_confusion_row, detections, prototypes, gt_boxes, gt_masks)


UNCERTAINTY_KEYS = tuple(c[len("unc_"):] for c in SAMPLE_COLUMNS if c.startswith("unc_"))


@tensorleap_custom_metric("uncertainty", **metric_registration("uncertainty", UNCERTAINTY_KEYS))
def uncertainty_metrics(detections: np.ndarray, prototypes: np.ndarray) -> Dict[str, List[Any]]:
    """Prediction-only uncertainty (higher = more uncertain); defined for unlabeled samples too."""
    evs = _per_sample(_evaluation, detections, prototypes)
    return _columns([ev.uncertainty for ev in evs], list(UNCERTAINTY_KEYS))


# ============================================================================ instance metrics
@functools.lru_cache(maxsize=16)
def _gt_rows(ev: SampleEvaluation) -> tuple:
    """The GT rows of ``ev.instance_rows()`` (what instances.csv stores for them), each with
    ``matched_score``: the ``score`` of the prediction row its ``matched_index`` names."""
    rows = ev.instance_rows()
    pred_score = {r["index"]: r["score"] for r in rows if r["kind"] == "pred"}
    return tuple({**r, "matched_score": None if r["matched_index"] is None else pred_score[r["matched_index"]]}
                 for r in rows if r["kind"] == "gt")


def _instance_column(name: str, detections, prototypes, boxes, masks) -> Dict[int, np.ndarray]:
    """Instance metric ``name``: ``{k: (B,) float32}``, GT object k of each sample of the batch
    (NaN where a sample has fewer objects, the value is undefined (no match) or the sample is
    unlabeled); flags as 0/1."""
    evs = _per_sample(_labeled, detections, prototypes, boxes, masks)
    rows = [() if ev is None else _gt_rows(ev) for ev in evs]
    column = INSTANCE_ENGINE_COLUMNS[name]
    out = {k: np.full(len(evs), np.nan, np.float32) for k in range(max((len(r) for r in rows), default=0))}
    for b, sample_rows in enumerate(rows):
        for k, row in enumerate(sample_rows):
            if row[column] is not None:
                out[k][b] = float(row[column])
    return out


@tensorleap_custom_instances_metric("instance_iou", **instance_metric_registration("instance_iou"))
def instance_iou(detections: np.ndarray, prototypes: np.ndarray, gt_boxes: np.ndarray,
                 gt_masks: np.ndarray) -> Dict[int, np.ndarray]:
    """Per GT object: mask IoU with its one-to-one matched prediction (NaN when missed)."""
    return _instance_column("instance_iou", detections, prototypes, gt_boxes, gt_masks)


@tensorleap_custom_instances_metric("instance_best_iou", **instance_metric_registration("instance_best_iou"))
def instance_best_iou(detections: np.ndarray, prototypes: np.ndarray, gt_boxes: np.ndarray,
                      gt_masks: np.ndarray) -> Dict[int, np.ndarray]:
    """Per GT object: best mask IoU with any prediction of its class, matched or not."""
    return _instance_column("instance_best_iou", detections, prototypes, gt_boxes, gt_masks)


@tensorleap_custom_instances_metric("instance_score", **instance_metric_registration("instance_score"))
def instance_score(detections: np.ndarray, prototypes: np.ndarray, gt_boxes: np.ndarray,
                   gt_masks: np.ndarray) -> Dict[int, np.ndarray]:
    """Per GT object: score of its matched prediction (NaN when missed); a false positive's
    own score on its row (``false_positive_instances``); descriptive."""
    return _instance_column("instance_score", detections, prototypes, gt_boxes, gt_masks)


@tensorleap_custom_instances_metric("instance_over_segmented",
                                    **instance_metric_registration("instance_over_segmented"))
def instance_over_segmented(detections: np.ndarray, prototypes: np.ndarray, gt_boxes: np.ndarray,
                            gt_masks: np.ndarray) -> Dict[int, np.ndarray]:
    """Per GT object: 1 when it is split into > 1 predictions (its error kind over_segmented)."""
    return _instance_column("instance_over_segmented", detections, prototypes, gt_boxes, gt_masks)


@tensorleap_custom_instances_metric("instance_missed", **instance_metric_registration("instance_missed"))
def instance_missed(detections: np.ndarray, prototypes: np.ndarray, gt_boxes: np.ndarray,
                    gt_masks: np.ndarray) -> Dict[int, np.ndarray]:
    """Per GT object: 1 when no prediction matches it (error kind missed)."""
    return _instance_column("instance_missed", detections, prototypes, gt_boxes, gt_masks)


@tensorleap_custom_instances_metric("instance_in_under_segmenting",
                                    **instance_metric_registration("instance_in_under_segmenting"))
def instance_in_under_segmenting(detections: np.ndarray, prototypes: np.ndarray, gt_boxes: np.ndarray,
                                 gt_masks: np.ndarray) -> Dict[int, np.ndarray]:
    """Per GT object: 1 when a prediction swallows it together with other objects."""
    return _instance_column("instance_in_under_segmenting", detections, prototypes, gt_boxes, gt_masks)


# ============================================================================ latent space
@tensorleap_custom_latent_space(name="backbone_embedding", use_ls_for_analysis=True)
def embedding_latent_space(embedding: np.ndarray) -> np.ndarray:
    """The model's ``embedding`` output (N, 512) for the population map."""
    emb = _f32(embedding)
    return emb.reshape(len(emb), -1)


# ============================================================================ visualizers
@tensorleap_custom_visualizer("image", LeapDataType.Image)
def image_visualizer(image: np.ndarray) -> LeapImage:
    """The letterboxed model input."""
    return LeapImage(_display_image(image), compress=True)


@tensorleap_custom_visualizer("gt_instance_masks", LeapDataType.ImageMask)
def gt_masks_visualizer(image: np.ndarray, gt_boxes: np.ndarray, gt_masks: np.ndarray) -> LeapImageMask:
    """One label per GT instance ("gt Object #3"), model-frame masks."""
    img = _display_image(image)
    gt = _gt_display(gt_boxes, gt_masks)
    if gt is None:
        return LeapImageMask(np.zeros(img.shape[:2], np.uint8), img, ["background"])
    return _mask_view(img, gt, "gt ")


@tensorleap_custom_visualizer("pred_instance_masks", LeapDataType.ImageMask)
def pred_masks_visualizer(image: np.ndarray, detections: np.ndarray, prototypes: np.ndarray) -> LeapImageMask:
    """One label per predicted instance ("pred Object #0 0.93")."""
    img = _display_image(image)
    pred = _evaluation(_unbatch(detections, 2), _unbatch(prototypes, 3)).predictions
    return _mask_view(img, pred, "pred ")


@tensorleap_custom_visualizer("gt_bboxes", LeapDataType.ImageWithBBox)
def gt_boxes_visualizer(image: np.ndarray, gt_boxes: np.ndarray) -> LeapImageWithBBox:
    """Ground-truth boxes (confidence 1)."""
    img = _display_image(image)
    boxes = _f32(gt_boxes)
    if boxes.size == 0:
        return LeapImageWithBBox(img, [])
    boxes = _unbatch(boxes, 2)
    valid = boxes[:, 5] > 0.5
    gt = Instances(boxes=boxes[valid, :4], class_ids=np.rint(boxes[valid, 4]).astype(np.int64), image_size=img.shape[:2])
    return LeapImageWithBBox(img, bounding_boxes(gt))


@tensorleap_custom_visualizer("pred_bboxes", LeapDataType.ImageWithBBox)
def pred_boxes_visualizer(image: np.ndarray, detections: np.ndarray, prototypes: np.ndarray) -> LeapImageWithBBox:
    """Predicted boxes with their scores."""
    pred = _evaluation(_unbatch(detections, 2), _unbatch(prototypes, 3)).predictions
    return LeapImageWithBBox(_display_image(image), bounding_boxes(pred))


def _segmentation_view(image, detections, prototypes, gt_boxes_, gt_masks_, kind: str) -> LeapImage:
    img = _display_image(image)
    if _f32(gt_boxes_).size == 0:  # unlabeled
        return LeapImage(img)
    boxes, masks = _unbatch(_f32(gt_boxes_), 2), _unbatch(_f32(gt_masks_), 3)
    ev = _labeled(_unbatch(detections, 2), _unbatch(prototypes, 3), boxes, masks)
    return LeapImage(draw_error_instances(img, ev.gt, ev.predictions, ev.involved(), kind,
                                          class_names=_settings().data.class_names))


@tensorleap_custom_visualizer("under_segmentation", LeapDataType.Image)
def under_segmentation_visualizer(image: np.ndarray, detections: np.ndarray, prototypes: np.ndarray,
                                  gt_boxes: np.ndarray, gt_masks: np.ndarray) -> LeapImage:
    """Only the predictions that swallow several GT objects (filled, dashed box, score) and
    those GT objects (green outlines)."""
    return _segmentation_view(image, detections, prototypes, gt_boxes, gt_masks, "under_segmenting")


@tensorleap_custom_visualizer("over_segmentation", LeapDataType.Image)
def over_segmentation_visualizer(image: np.ndarray, detections: np.ndarray, prototypes: np.ndarray,
                                 gt_boxes: np.ndarray, gt_masks: np.ndarray) -> LeapImage:
    """Only the GT objects split into several predictions (green outlines) and those
    predictions (filled, dashed box, score)."""
    return _segmentation_view(image, detections, prototypes, gt_boxes, gt_masks, "over_segmented")


@tensorleap_custom_visualizer("uncertainty_heatmap", LeapDataType.ImageWithHeatmap)
def uncertainty_heatmap_visualizer(image: np.ndarray, detections: np.ndarray,
                                   prototypes: np.ndarray) -> LeapImageWithHeatmap:
    """Per-pixel mask entropy of the predictions (bits, [0, 1])."""
    img = _display_image(image).astype(np.float32)
    pred = _evaluation(_unbatch(detections, 2), _unbatch(prototypes, 3)).predictions
    return LeapImageWithHeatmap(img, entropy_map(pred)[None], ["mask_entropy"])


# ============================================================================ false positives
@tensorleap_false_positive_empty_gt("gt_boxes")
def gt_boxes_empty(sample_id: str, preprocess: PreprocessResponse) -> np.ndarray:
    """The GT of a false-positive row: K padding rows (no object)."""
    return np.zeros((max_instances(), len(GT_BOX_COLUMNS)), np.float32)


@tensorleap_false_positive_empty_gt("gt_masks")
def gt_masks_empty(sample_id: str, preprocess: PreprocessResponse) -> np.ndarray:
    """The GT masks of a false-positive row: K empty packed masks."""
    size = int(_settings().data.image_size)
    return np.zeros((max_instances(), size, -(-size // MASK_BITS_PER_VALUE)), np.float32)


@tensorleap_false_positive_instances_encoder("false_positives", instance_metadata_types=FP_METADATA_TYPES)
def false_positive_instances(sample_id: str, preprocess: PreprocessResponse,
                             predictions: Dict[str, np.ndarray]) -> List[ElementInstance]:
    """The sample's predictions that match no GT object (its instances.csv prediction rows with
    ``false_positive``), one element instance each: the (S, S) predicted mask, metadata (class,
    area, area fraction, the image's tote colour, the row's ``error_kind``: under_segmenting,
    duplicate or false_positive) and ``FP_INSTANCE_COLUMNS`` as instance metrics. ``predictions``:
    one sample's model outputs by prediction-type name. None for an unlabeled sample."""
    sample = _sample(sample_id, preprocess)
    gt = _load(sample.split, sample.sample_id).gt
    if gt is None:
        return []
    k = max_instances()
    ev = _evaluation(_f32(predictions["detections"]), _f32(predictions["prototypes"]), encode_gt_boxes(gt, k),
                     encode_gt_masks(gt, k))
    tote = _sample_metadata(sample.split, sample.sample_id).get("tote_color")
    out = []
    for row in ev.instance_rows():
        if row["kind"] != "pred" or not row["false_positive"]:
            continue
        meta: Dict[str, Any] = dict.fromkeys(INSTANCE_METADATA_TYPES)
        meta.update({key: python_scalar(row[key]) for key in ("class", "area", "area_fraction", "error_kind")})
        meta["tote_color"] = tote
        metrics = {name: float("nan") for name in INSTANCE_ENGINE_COLUMNS}
        metrics.update({name: float(row[column]) for name, column in FP_INSTANCE_COLUMNS.items()
                        if row[column] is not None})
        out.append(ElementInstance(name=f"pred {row['class']} #{row['index']}",
                                   mask=ev.predictions.masks[row["index"]].astype(np.float32),
                                   instance_metadata=meta, instance_metrics=metrics))
    return out


# ============================================================================ integration test
@tensorleap_integration_test()
def integration_test(sample_id: str, preprocess: PreprocessResponse) -> None:
    """What the platform wires: encoders -> model -> loss, metrics, latent space, visualizers."""
    image = input_image(sample_id, preprocess)
    boxes = gt_boxes(sample_id, preprocess)
    masks = gt_masks(sample_id, preprocess)
    model = load_model()
    outputs = model.run(None, {model.get_inputs()[0].name: image})
    detections = outputs[0]
    prototypes = outputs[1]
    embedding = outputs[2]

    yolov5_seg_loss_total(detections, prototypes, boxes, masks)
    loss_components(detections, prototypes, boxes, masks)
    segmentation_metrics(detections, prototypes, boxes, masks)
    matching_metrics(detections, prototypes, boxes, masks)
    confusion_matrix(detections, prototypes, boxes, masks)
    uncertainty_metrics(detections, prototypes)
    instance_iou(detections, prototypes, boxes, masks)
    instance_best_iou(detections, prototypes, boxes, masks)
    instance_score(detections, prototypes, boxes, masks)
    instance_over_segmented(detections, prototypes, boxes, masks)
    instance_missed(detections, prototypes, boxes, masks)
    instance_in_under_segmenting(detections, prototypes, boxes, masks)
    embedding_latent_space(embedding)

    image_visualizer(image)
    gt_masks_visualizer(image, boxes, masks)
    pred_masks_visualizer(image, detections, prototypes)
    gt_boxes_visualizer(image, boxes)
    pred_boxes_visualizer(image, detections, prototypes)
    under_segmentation_visualizer(image, detections, prototypes, boxes, masks)
    over_segmentation_visualizer(image, detections, prototypes, boxes, masks)
    uncertainty_heatmap_visualizer(image, detections, prototypes)

    metadata(sample_id, preprocess)


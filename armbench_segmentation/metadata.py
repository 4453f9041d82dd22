"""Per-sample metadata: flat scalars describing an image and its ground truth.

Everything is computed at model resolution from a ``LoadedSample`` (the letterboxed
image and the model-frame GT masks the loader already made): no full-resolution masks,
no re-decoding. Values are int/float/str/bool/None; never NaN (None when undefined, e.g.
object statistics of an image without objects, or any GT field of an unlabeled sample).
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from armbench_segmentation.codecs import finite_float
from armbench_segmentation.data.coco import LoadedSample, check_annotation

Scalar = int | float | str | bool | None

# OpenCV hue is 0..179 (degrees / 2)
YELLOW_HUE = (12, 40)
BLUE_HUE = (90, 135)
MIN_SATURATION = 60
MIN_VALUE = 40
MIN_COLORED_SHARE = 0.2   # share of saturated pixels needed to call a colour
BORDER_FRACTION = 0.1     # border ring used for the tote colour when there is no tote annotation

#: Every key ``sample_metadata`` returns -> the Python type of its value (int, float, str or
#: bool; ``type(value) is METADATA_FIELDS[key]``) when the value is not None. In the order
#: ``sample_metadata`` returns them.
METADATA_FIELDS: dict[str, type] = {
    # identity and image (always set; the image statistics are None only for an empty image)
    "sample_id": str, "split": str, "file_name": str, "orig_width": int, "orig_height": int,
    "aspect_ratio": float, "labeled": bool,
    "brightness": float, "contrast": float, "sharpness": float, "colorfulness": float,
    # ground truth (GT_FIELDS: all None for an unlabeled sample)
    "n_annotations": int, "n_instances": int, "n_objects": int, "n_totes": int, "n_crowd": int,
    "dropped_annotations": int,
    "object_area_mean": float, "object_area_std": float, "object_area_min": float, "object_area_max": float,
    "small_object_count": int, "small_object_share": float,
    "occluded_object_count": int, "occluded_object_share": float, "mean_box_overlaps": float,
    "max_box_overlaps": int,
    "mean_visible_fraction": float, "min_visible_fraction": float, "multi_polygon_objects": int,
    "tote_area_share": float, "background_share": float, "annotation_problems": int,
    # tote colour (labeled or not; tote_hue None when no colour is called)
    "tote_color_source": str, "tote_color": str, "tote_hue": float,
}

#: The fields computed from the ground truth: None for every unlabeled sample.
GT_FIELDS = (
    "n_annotations", "n_instances", "n_objects", "n_totes", "n_crowd", "dropped_annotations",
    "object_area_mean", "object_area_std", "object_area_min", "object_area_max",
    "small_object_count", "small_object_share",
    "occluded_object_count", "occluded_object_share", "mean_box_overlaps", "max_box_overlaps",
    "mean_visible_fraction", "min_visible_fraction", "multi_polygon_objects",
    "tote_area_share", "background_share", "annotation_problems",
)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 Rec. 601 luma."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


def image_statistics(image: np.ndarray) -> dict[str, float | None]:
    """Brightness (mean luma), contrast (luma std), sharpness (variance of the Laplacian)
    and colorfulness (Hasler & Suesstrunk 2003) of an (H, W, 3) uint8 RGB image.

    Every moment comes from ``cv2.meanStdDev`` (accumulated in float64) over exact integer
    images: the 3x3 Laplacian of uint8 luma fits int16, and so do R - G and
    R + G - 2B (= 2 * yb), so nothing is converted to floating point per pixel."""
    if image.size == 0:
        return {"brightness": None, "contrast": None, "sharpness": None, "colorfulness": None}
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(gray, cv2.CV_16S)
    wide = image.astype(np.int16)
    rg = wide[..., 0] - wide[..., 1]
    yb2 = wide[..., 0] + wide[..., 1] - 2 * wide[..., 2]
    luma_mean, luma_std = (float(v[0, 0]) for v in cv2.meanStdDev(gray))
    _, lap_std = (float(v[0, 0]) for v in cv2.meanStdDev(lap))
    rg_mean, rg_std = (float(v[0, 0]) for v in cv2.meanStdDev(rg))
    yb_mean, yb_std = (0.5 * float(v[0, 0]) for v in cv2.meanStdDev(yb2))
    colorfulness = math.hypot(rg_std, yb_std) + 0.3 * math.hypot(rg_mean, yb_mean)
    return {
        "brightness": finite_float(luma_mean),
        "contrast": finite_float(luma_std),
        "sharpness": finite_float(lap_std * lap_std),
        "colorfulness": finite_float(colorfulness),
    }


def classify_color(pixels: np.ndarray) -> tuple[str, float | None]:
    """("yellow" | "blue" | "other", median hue in degrees or None) of (K, 3) uint8 RGB pixels."""
    if len(pixels) == 0:
        return "other", None
    return _classify_region(pixels.reshape(-1, 1, 3), None)


def _classify_region(image: np.ndarray, region: np.ndarray | None) -> tuple[str, float | None]:
    """``classify_color`` of the pixels of an (H, W, 3) uint8 RGB image inside ``region``
    ((H, W) bool; None = all), without gathering them: HSV of the whole image, a masked
    hue histogram and the median read off it (the exact ``np.median``: mean of the two
    middle values)."""
    n = int(np.count_nonzero(region)) if region is not None else image.shape[0] * image.shape[1]
    if n == 0:
        return "other", None
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # (H, W, 3), H in 0..179
    colored = (hsv[..., 1] >= MIN_SATURATION) & (hsv[..., 2] >= MIN_VALUE)  # (H, W)
    if region is not None:
        colored &= region
    counts = np.bincount(hsv[..., 0][colored], minlength=256) if image.size > 3 * 2**24 else cv2.calcHist(
        [hsv], [0], colored.view(np.uint8), [256], [0, 256]).ravel()  # float32 counts: exact below 2**24 pixels
    m = int(counts.sum())
    if m / n < MIN_COLORED_SHARE:  # == colored.mean() of the region's pixels
        return "other", None
    cum = np.cumsum(counts, dtype=np.float64)  # (256,)
    lo, hi = np.searchsorted(cum, [(m - 1) // 2, m // 2], side="right")  # the two middle order statistics
    hue = (float(lo) + float(hi)) / 2.0
    if YELLOW_HUE[0] <= hue <= YELLOW_HUE[1]:
        name = "yellow"
    elif BLUE_HUE[0] <= hue <= BLUE_HUE[1]:
        name = "blue"
    else:
        name = "other"
    return name, hue * 2.0


def box_overlap_counts(boxes: np.ndarray) -> np.ndarray:
    """(N,) number of *other* boxes each (N, 4) xyxy box intersects with positive area."""
    n = len(boxes)
    if n == 0:
        return np.zeros(0, np.int64)
    x1 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = (x2 > x1) & (y2 > y1)  # (N, N)
    np.fill_diagonal(inter, False)
    return inter.sum(axis=1).astype(np.int64)


def annotation_visible_fraction(ann: dict) -> float | None:
    """The annotation's ``attributes.visible_fraction`` (share of the object not hidden by
    others, as the synthetic generator records it), None when absent or not a finite number."""
    attrs = ann.get("attributes")
    vf = attrs.get("visible_fraction") if isinstance(attrs, dict) else None
    if isinstance(vf, (int, float)) and not isinstance(vf, bool) and math.isfinite(vf):
        return float(vf)
    return None


def sample_metadata(
    loaded: LoadedSample,
    annotations: list[dict],
    small_area_fraction: float = 0.005,
    class_names: Sequence[str] = ("Object", "Tote"),
) -> dict[str, Scalar]:
    """Flat metadata of one sample (>= 20 scalar fields, never NaN).

    Args:
        loaded: the LoadedSample (model-resolution image and GT; ``gt`` None = unlabeled).
        annotations: the sample's raw COCO annotations (``ArmbenchDataset.annotations``).
        small_area_fraction: an object whose mask covers less than this share of the image
            is "small" (``settings.metrics.small_area_fraction``).
        class_names: model class order (``settings.data.class_names``); "Object" and
            "Tote" are looked up by name.
    Returns:
        dict with exactly the keys of ``METADATA_FIELDS`` (in that order), each value of
        the type given there or None; the ``GT_FIELDS`` are None for an unlabeled sample.
        Areas are fractions of the image (the un-padded content of the model input).
    """
    sample, lb, gt = loaded.sample, loaded.letterbox, loaded.gt
    x1, y1, x2, y2 = lb.content_box()
    content = loaded.image[y1:y2, x1:x2]  # (new_h, new_w, 3)
    content_px = float(lb.new_h * lb.new_w)
    meta: dict[str, Scalar] = {
        "sample_id": sample.sample_id,
        "split": sample.split,
        "file_name": sample.file_name,
        "orig_width": int(sample.width),
        "orig_height": int(sample.height),
        "aspect_ratio": finite_float(sample.width / sample.height),
        "labeled": gt is not None,
    }
    meta.update(image_statistics(content))
    meta.update({key: None for key in GT_FIELDS})

    names = list(class_names)
    obj_cls = names.index("Object") if "Object" in names else None
    tote_cls = names.index("Tote") if "Tote" in names else None

    # ------------------------------------------------------------ tote colour region
    tote_region: np.ndarray | None = None  # (new_h, new_w) bool
    objects_union = np.zeros((lb.new_h, lb.new_w), bool)
    if gt is not None and gt.masks is not None and len(gt):
        masks = gt.masks[:, y1:y2, x1:x2]  # (N, new_h, new_w)
        if obj_cls is not None and (gt.class_ids == obj_cls).any():
            objects_union = masks[gt.class_ids == obj_cls].any(axis=0)
        if tote_cls is not None and (gt.class_ids == tote_cls).any():
            tote_region = masks[gt.class_ids == tote_cls].any(axis=0)
    tote_free = tote_region & ~objects_union if tote_region is not None else None
    if tote_free is not None and tote_free.any():
        color_region = tote_free
        meta["tote_color_source"] = "tote"
    else:
        b = max(1, int(round(BORDER_FRACTION * min(lb.new_h, lb.new_w))))
        ring = np.ones((lb.new_h, lb.new_w), bool)
        ring[b:-b, b:-b] = False
        ring &= ~objects_union
        color_region = ring
        meta["tote_color_source"] = "border"
    meta["tote_color"], meta["tote_hue"] = _classify_region(content, color_region)

    if gt is None:
        return meta

    # ------------------------------------------------------------ counts
    is_obj = gt.class_ids == obj_cls if obj_cls is not None else np.zeros(len(gt), bool)
    is_tote = gt.class_ids == tote_cls if tote_cls is not None else np.zeros(len(gt), bool)
    n_obj = int(is_obj.sum())
    gt_ids = set(gt.ids.tolist())
    object_ids = set(gt.ids[is_obj].tolist())
    meta.update({
        "n_annotations": len(annotations),
        "n_instances": len(gt),
        "n_objects": n_obj,
        "n_totes": int(is_tote.sum()),
        "n_crowd": int(np.asarray(gt.extras.get("iscrowd", np.zeros(len(gt), bool))).sum()),
        "dropped_annotations": int(sum(1 for a in annotations if a.get("id") not in gt_ids)),
    })

    # ------------------------------------------------------------ object sizes
    if n_obj:
        areas = gt.mask_areas()[is_obj] / content_px  # (n_obj,)
        small = areas < small_area_fraction
        meta.update({
            "object_area_mean": finite_float(areas.mean()),
            "object_area_std": finite_float(areas.std()),
            "object_area_min": finite_float(areas.min()),
            "object_area_max": finite_float(areas.max()),
            "small_object_count": int(small.sum()),
            "small_object_share": finite_float(small.mean()),
        })
        overlaps = box_overlap_counts(gt.boxes[is_obj])
        meta.update({
            "occluded_object_count": int((overlaps > 0).sum()),
            "occluded_object_share": finite_float((overlaps > 0).mean()),
            "mean_box_overlaps": finite_float(overlaps.mean()),
            "max_box_overlaps": int(overlaps.max()),
        })
    else:
        meta.update({"small_object_count": 0, "occluded_object_count": 0})

    # ------------------------------------------------------------ annotation-level facts
    visible, multi = [], 0
    for ann in annotations:
        if ann.get("id") not in object_ids:
            continue
        vf = annotation_visible_fraction(ann)
        if vf is not None:
            visible.append(vf)
        seg = ann.get("segmentation")
        if isinstance(seg, list) and sum(1 for p in seg if isinstance(p, (list, tuple)) and len(p) >= 6) > 1:
            multi += 1
    meta["mean_visible_fraction"] = finite_float(np.mean(visible)) if visible else None
    meta["min_visible_fraction"] = finite_float(np.min(visible)) if visible else None
    meta["multi_polygon_objects"] = multi
    # annotations with at least one problem (degenerate polygon, no geometry, bad RLE/bbox, out of bounds)
    # (the loader already checked the annotations it loaded: reused, not validated again)
    n_problems = 0
    for i, ann in enumerate(annotations):
        problems = loaded.checked_problems(i, ann)
        if problems is None:
            problems = check_annotation(ann, sample.width, sample.height)[0]
        n_problems += bool(problems)
    meta["annotation_problems"] = n_problems

    # ------------------------------------------------------------ coverage
    region = tote_region if tote_region is not None else np.ones((lb.new_h, lb.new_w), bool)
    region_px = int(region.sum())
    meta["tote_area_share"] = finite_float(tote_region.sum() / content_px) if tote_region is not None else None
    meta["background_share"] = finite_float((region & ~objects_union).sum() / region_px) if region_px else None
    return meta

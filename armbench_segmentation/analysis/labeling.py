"""The labeling round trip: the model's predictions out as editable pre-annotations, the
annotated images back into a train COCO file.

Out (:func:`coco_prelabels`, :func:`label_studio_tasks`, :func:`write_selection_exports`):
the stored predictions (original resolution, ``analysis/store.py``) of the chosen samples
become polygons -- what annotators edit in CVAT and Label Studio -- with classes by name.

- COCO (``<name>.coco.json``): one image per sample, **image ``id`` = rank** (1 = label
  first; the position for a plain selection), so the two converters that keep nothing else
  of an image entry keep the rank: datumaro (CVAT's importer) keeps the image ``id`` as the
  item attribute ``id`` and writes it back on export; label-studio-converter's COCO import
  orders its tasks by image id. The image entry also holds ``rank``, ``score``, ``reason``,
  ``sample_id`` and ``dataset_image_id`` (pycocotools and our own merge read them); every
  annotation repeats ``rank``, ``pick_score`` and ``reason`` in its ``attributes`` (datumaro
  keeps annotation attributes and exports them back) and has the model confidence as
  ``score``. An image without predictions keeps only its rank (as its id) through datumaro.
- Label Studio (``<name>.label_studio.json`` + ``<name>.label_config.xml``): tasks in rank
  order, ``data`` = image URL, sample_id, file_name, rank, score, reason; one prediction per
  task (``model_version`` = the model's sha256 prefix, ``score`` = the pick score, so Label
  Studio's "prediction score" sort is the rank order) with one ``polygonlabels`` region per
  polygon, points in percent of the image, each with the instance's confidence as ``score``.
  The config has the labels of the dataset's categories (Object and Tote for ARMBench).

Polygons (:func:`mask_to_polygons`): ``cv2.findContours`` outer contours with their holes;
each hole is joined to its outer ring by a zero-width cut at the closest vertices (a COCO
polygon list cannot express holes: pycocotools unions the parts), so pycocotools, CVAT and
Label Studio all draw the hole empty; an instance in several parts gives several polygons.
The outline is simplified with ``cv2.approxPolyDP`` (``tolerance`` pixels, at most 1% of
the square root of a small part's area) and moved half a pixel out from the
boundary pixels' centres to their outer edges, so an axis-aligned rectangle of pixels comes
back as exactly its corner coordinates.

Back (:func:`merge_annotated`, ``armbench merge-labels``): COCO files exported by CVAT,
Label Studio (its ``Converter.convert_to_coco``) or datumaro after annotation are added to a
train COCO file: categories matched by name, image and annotation ids renumbered after the
base's, file names resolved inside the dataset's images folder, ``area`` and ``bbox``
recomputed from the segmentation with pycocotools. What cannot be used is named in one line
each and the rest is merged: a file that is not JSON, an unknown category, an image whose
file is missing, a polygon outside the image (clipped to it; dropped when nothing is left).
An image already in the base is kept as it is (``existing="skip"``, the default) or gets the
annotated instances instead of its old ones (``existing="replace"``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from armbench_segmentation.codecs import atomic_write_text, category_ids_by_name, json_default
from armbench_segmentation.errors import ArmbenchError
from armbench_segmentation.splits import SPLITS, UNLABELED

logger = logging.getLogger(__name__)

__all__ = [
    "mask_to_polygons", "coco_prelabels", "label_studio_tasks", "label_studio_config", "write_selection_exports",
    "merge_annotated", "MergeSummary", "EXISTING_POLICIES", "LS_FROM_NAME", "LS_TO_NAME", "safe_name", "resolve_image",
]

DEFAULT_CATEGORIES = ({"id": 1, "name": "Tote", "supercategory": ""},
                      {"id": 2, "name": "Object", "supercategory": ""})  # ARMBench ids
LS_FROM_NAME, LS_TO_NAME = "label", "image"  # the control and object tag names of the config
#: Label Studio's local-files URL; with LOCAL_FILES_DOCUMENT_ROOT = the dataset folder
DEFAULT_IMAGE_URL = "/data/local-files/?d=images/"
POLYGON_TOLERANCE = 2.0  # px (cv2.approxPolyDP) at original resolution; demo picks: IoU 0.997 mean, ~190 vertices
_PICK_ATTRIBUTES = ("rank", "pick_score", "reason")  # what coco_prelabels adds to annotation attributes
EXISTING_POLICIES = ("skip", "replace")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


# ---------------------------------------------------------------------------- masks -> polygons
def _join_hole(ring: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """(K, 2) ring and (L, 2) hole -> one (K + L + 2, 2) ring going around the hole through a
    zero-width cut between their closest vertices."""
    d = ((ring[:, None, :] - hole[None, :, :]) ** 2).sum(-1)  # (K, L)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    return np.concatenate([ring[: i + 1], hole[j:], hole[: j + 1], ring[i:]])


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))  # signed


def _offset_ring(ring: np.ndarray, distance: float, grow: bool) -> np.ndarray:
    """Move each edge of the (K, 2) ring ``distance`` along its normal (miter joins, limited
    at sharp turns), to the side that makes the enclosed area larger (``grow``) or smaller."""
    nxt = np.roll(ring, -1, axis=0)
    edge = nxt - ring  # (K, 2) edge i from vertex i to i + 1
    length = np.linalg.norm(edge, axis=1, keepdims=True)
    normal = np.divide(np.column_stack([edge[:, 1], -edge[:, 0]]), length, out=np.zeros_like(edge), where=length > 0)
    side = -1.0 if (_ring_area(ring) > 0) == grow else 1.0  # (ey, -ex) points right of the edge
    n_in, n_out = np.roll(normal, 1, axis=0), normal  # edges into and out of each vertex
    cos = (n_in * n_out).sum(axis=1, keepdims=True)
    miter = np.divide(n_in + n_out, 1.0 + cos, out=n_out.copy(), where=1.0 + cos > 0.25)  # (K, 2)
    return ring - side * distance * miter


def mask_to_polygons(mask: np.ndarray, tolerance: float = POLYGON_TOLERANCE) -> list[list[float]]:
    """(H, W) bool mask -> COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` (pixel coordinates,
    vertices on pixel centres), one per connected part, holes joined in by a cut (module
    docstring). Parts that simplify to fewer than 3 vertices are left out. ``[]`` for an
    empty mask."""
    import cv2

    full_mask = np.asarray(mask)
    if full_mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {full_mask.shape}")
    rows, cols = np.flatnonzero(full_mask.any(axis=1)), np.flatnonzero(full_mask.any(axis=0))
    if not len(rows):
        return []
    y0, x0 = int(rows[0]), int(cols[0])  # contours of the occupied box only (masks are mostly empty)
    m = np.ascontiguousarray(full_mask[y0: rows[-1] + 1, x0: cols[-1] + 1], dtype=np.uint8)
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE, offset=(x0, y0))
    if hierarchy is None:
        return []
    links = hierarchy[0]  # (n, 4): next, previous, first child, parent

    def simplified(k: int, grow: bool) -> np.ndarray:
        contour = contours[k]
        full = abs(cv2.contourArea(contour))
        if len(contour) < 3 or full == 0:  # one pixel or a one-pixel-wide line: its bounding pixels
            x, y, w, h = cv2.boundingRect(contour)
            return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
        eps = min(tolerance, max(0.5, 0.01 * math.sqrt(full)))  # small parts: at most 1% of their size
        ring = cv2.approxPolyDP(contour, eps, True).reshape(-1, 2).astype(np.float64) + 0.5
        if len(ring) < 3 or abs(_ring_area(ring)) < 0.5 * full:  # a thin part: keep more vertices
            ring = cv2.approxPolyDP(contour, min(tolerance, 0.5), True).reshape(-1, 2).astype(np.float64) + 0.5
        # vertices are boundary pixel centres: move the outline half a pixel out to the pixel edges
        return _offset_ring(ring, 0.5, grow) if len(ring) >= 3 else ring

    polygons = []
    for k in range(len(contours)):
        if links[k][3] != -1:  # a hole: handled with its outer contour
            continue
        ring = simplified(k, grow=True)
        if len(ring) < 3:
            continue
        child = links[k][2]
        while child != -1:
            hole = simplified(child, grow=False)
            if len(hole) >= 3:
                ring = _join_hole(ring, hole)
            child = links[child][0]
        polygons.append(np.round(ring, 2).ravel().tolist())
    return polygons


def _polygons_rle(polygons: Sequence[Sequence[float]], height: int, width: int) -> dict:
    from pycocotools import mask as mask_utils

    return mask_utils.merge(mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width))


def _area_bbox(rle: dict) -> tuple[float, list[float]]:
    from pycocotools import mask as mask_utils

    return float(mask_utils.area(rle)), [round(float(v), 2) for v in mask_utils.toBbox(rle)]


def _decode_rle(segmentation: Mapping[str, Any]) -> np.ndarray:
    """(H, W) uint8 0/1 mask of a compressed COCO RLE."""
    from pycocotools import mask as mask_utils

    counts = segmentation["counts"]
    rle = {"size": list(segmentation["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle)


# ---------------------------------------------------------------------------- which samples
@dataclass(frozen=True)
class _Item:
    position: int  # 1-based, the order given (the rank for picks)
    split: str
    sample_id: str
    image_id: int | None
    file_name: str
    width: int
    height: int
    rank: int | None = None
    score: float | None = None
    reason: str | None = None


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _items(store: Any, sample_ids: Iterable[Any], picks: Any = None) -> list[_Item]:
    """The samples in the given order, resolved in the store (``sample_id`` strings, looked
    up in the unlabeled split first, or ``(split, sample_id)`` pairs). Unknown ids are
    named in one warning and left out."""
    sample_ids = list(sample_ids)
    pairs = [tuple(map(str, e)) for e in sample_ids if isinstance(e, (tuple, list)) and len(e) == 2]
    # only the wanted rows when every entry names its split (a 44k-row store parses in seconds)
    frame = store.frame(keys=pairs) if len(pairs) == len(sample_ids) else store.frame()
    rows: dict[tuple[str, str], Any] = {}
    by_id: dict[str, list[str]] = {}
    for row in frame.itertuples(index=False):
        key = (str(row.split), str(row.sample_id))
        rows[key] = row
        by_id.setdefault(key[1], []).append(key[0])
    pick_rows: dict[str, Any] = {}
    if picks is not None and len(picks):
        for p in picks.itertuples(index=False):
            pick_rows.setdefault(str(p.sample_id), p)
    order = [UNLABELED, *[s for s in SPLITS if s != UNLABELED]]
    items, unknown, no_size, seen = [], [], [], set()
    for entry in sample_ids:
        if isinstance(entry, (tuple, list)) and len(entry) == 2:
            key = (str(entry[0]), str(entry[1]))
        else:
            splits = by_id.get(str(entry), [])
            split = next((s for s in order if s in splits), None)
            key = (split or "", str(entry))
        if key not in rows:
            unknown.append(key[1])
            continue
        if key in seen:
            continue
        seen.add(key)
        row = rows[key]
        width, height = _finite(getattr(row, "width", None)), _finite(getattr(row, "height", None))
        if width is None or height is None:
            no_size.append(key[1])
            continue
        pick = pick_rows.get(key[1])
        image_id = _finite(getattr(row, "image_id", None))
        file_name = getattr(row, "file_name", None)
        items.append(_Item(
            position=len(items) + 1, split=key[0], sample_id=key[1],
            image_id=None if image_id is None else int(image_id),
            file_name=str(file_name) if isinstance(file_name, str) and file_name else f"{key[1]}.jpg",
            width=int(width), height=int(height),
            rank=int(pick.rank) if pick is not None else None,
            score=_finite(pick.score) if pick is not None else None,
            reason=str(pick.reason) if pick is not None and getattr(pick, "reason", None) is not None else None,
        ))
    if unknown:
        shown = ", ".join(map(repr, unknown[:10])) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        logger.warning("%d selected sample(s) are not finished in this run's store and are left out of the export: "
                       "%s", len(unknown), shown)
    if no_size:
        logger.warning("%d selected sample(s) have no stored width/height and are left out of the export: %s",
                       len(no_size), ", ".join(map(repr, no_size[:10])))
    if picks is not None:
        items.sort(key=lambda it: (it.rank is None, it.rank if it.rank is not None else 0, it.position))
        items = [_Item(**{**it.__dict__, "position": i + 1}) for i, it in enumerate(items)]
    return items


def _categories(dataset: Any) -> list[dict]:
    """The dataset's categories (train file first, else the unlabeled one), else ARMBench's."""
    for split in ("train", UNLABELED, "val"):
        try:
            cats = dataset.coco(split).dataset.get("categories") if dataset is not None else None
        except (ArmbenchError, OSError, ValueError):
            cats = None
        if cats:
            return [{"id": int(c["id"]), "name": str(c.get("name", "")), "supercategory": str(c.get("supercategory", ""))}
                    for c in cats if "id" in c]
    return [dict(c) for c in DEFAULT_CATEGORIES]


def _class_names(store: Any, dataset: Any) -> list[str]:
    if dataset is not None and getattr(dataset, "config", None) is not None:
        return list(dataset.config.class_names)
    names = ((store.run_info() or {}).get("settings") or {}).get("data", {}).get("class_names")
    return list(names) if names else ["Object", "Tote"]


def _model_version(store: Any) -> str:
    sha = str((store.run_info() or {}).get("model_sha256") or "")
    return f"armbench-yolov5s-seg-{sha[:12]}" if sha else "armbench-yolov5s-seg"


def _instances(store: Any, item: _Item, class_to_cat: Mapping[int, int], tolerance: float,
               counts: dict[str, int]) -> list[tuple[int, float | None, list[list[float]]]]:
    """(category id, confidence, polygons) of each stored prediction of the sample."""
    out = []
    for pred in store.sample_predictions(item.split, item.sample_id) or []:
        cat = class_to_cat.get(int(pred.get("class_index", -1)))
        if cat is None:
            counts["no_category"] = counts.get("no_category", 0) + 1
            continue
        seg = pred.get("segmentation")
        if not isinstance(seg, dict):
            counts["no_mask"] = counts.get("no_mask", 0) + 1
            continue
        polygons = mask_to_polygons(_decode_rle(seg), tolerance)
        if not polygons:
            counts["empty"] = counts.get("empty", 0) + 1
            continue
        out.append((cat, _finite(pred.get("score")), polygons))
    return out


def _class_to_category(categories: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict[int, int]:
    by_class, missing = category_ids_by_name(categories, class_names)
    if missing:
        logger.warning("pre-annotations: no category named %s; predictions of those classes are left out",
                       ", ".join(map(repr, missing)))
    return {i: ids[-1] for i, ids in by_class.items()}


def _log_counts(counts: Mapping[str, int]) -> None:
    if counts.get("no_category"):
        logger.warning("pre-annotations: %d predictions of classes without a category left out", counts["no_category"])
    if counts.get("empty"):
        logger.info("pre-annotations: %d predictions with a mask too small for a polygon left out", counts["empty"])


@dataclass(frozen=True)
class _Prepared:
    """The samples in export order, each one's (category id, confidence, polygons) per
    prediction, and the categories: computed once for every format written."""

    items: list[_Item]
    instances: list[list[tuple[int, float | None, list[list[float]]]]]
    categories: list[dict]


def _prepare(store: Any, dataset: Any, sample_ids: Iterable[Any], picks: Any, tolerance: float) -> _Prepared:
    items = _items(store, sample_ids, picks)
    categories = _categories(dataset)
    class_to_cat = _class_to_category(categories, _class_names(store, dataset))
    counts: dict[str, int] = {}
    instances = [_instances(store, item, class_to_cat, tolerance, counts) for item in items]
    _log_counts(counts)
    return _Prepared(items, instances, categories)


# ---------------------------------------------------------------------------- COCO with pre-labels
def coco_prelabels(store: Any, dataset: Any, sample_ids: Iterable[Any], picks: Any = None,
                   tolerance: float = POLYGON_TOLERANCE, _prepared: "_Prepared | None" = None) -> dict:
    """COCO dict of the samples with the model's predictions as polygon pre-annotations.

    Args:
        store: an open ``ResultsStore`` with its run started.
        dataset: the ``ArmbenchDataset`` (its categories and class names) or None
            (ARMBench's categories, the run's class names).
        sample_ids: sample ids (or ``(split, sample_id)``) in the order wanted.
        picks: the labeling picks table (rank, sample_id, score, reason): images in rank
            order with their rank, score and reason (module docstring).
    """
    prep = _prepared or _prepare(store, dataset, sample_ids, picks, tolerance)
    images, annotations = [], []
    for item, instances in zip(prep.items, prep.instances):
        image_id = item.rank if item.rank is not None else item.position
        img = {"id": image_id, "file_name": item.file_name, "width": item.width, "height": item.height,
               "sample_id": item.sample_id, "split": item.split, "dataset_image_id": item.image_id}
        attrs: dict[str, Any] = {}
        if item.rank is not None:
            img.update(rank=item.rank, score=item.score, reason=item.reason)
            attrs = {"rank": item.rank, "pick_score": item.score, "reason": item.reason}
        images.append(img)
        for cat, conf, polygons in instances:
            area, bbox = _area_bbox(_polygons_rle(polygons, item.height, item.width))
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat, "segmentation": polygons,
                   "area": area, "bbox": bbox, "iscrowd": 0}
            if conf is not None:
                ann["score"] = round(conf, 5)
            if attrs:
                ann["attributes"] = dict(attrs)
            annotations.append(ann)
    info = {"description": "armbench-segmentation pre-annotations (model predictions as polygons)",
            "model_version": _model_version(store), "image_id": "rank" if picks is not None else "selection order"}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations,
            "categories": [dict(c) for c in prep.categories]}


# ---------------------------------------------------------------------------- Label Studio
def label_studio_config(labels: Sequence[str], with_reason: bool = True) -> str:
    """The labeling config: an image, polygon labels (one per name), the pick's reason."""
    lines = ["<View>"]
    if with_reason:
        lines.append('  <Header value="$reason"/>')
    lines.append(f'  <Image name={quoteattr(LS_TO_NAME)} value="$image" zoom="true"/>')
    lines.append(f'  <PolygonLabels name={quoteattr(LS_FROM_NAME)} toName={quoteattr(LS_TO_NAME)} '
                 'strokeWidth="2" opacity="0.4">')
    lines += [f"    <Label value={quoteattr(str(name))}/>" for name in labels]
    lines += ["  </PolygonLabels>", "</View>", ""]
    return "\n".join(lines)


def _image_url(prefix: str, file_name: str) -> str:
    return prefix + urllib.parse.quote(file_name.replace("\\", "/"), safe="/")


def label_studio_tasks(store: Any, dataset: Any, sample_ids: Iterable[Any], picks: Any = None,
                       image_url: str = DEFAULT_IMAGE_URL, tolerance: float = POLYGON_TOLERANCE,
                       _prepared: "_Prepared | None" = None) -> list[dict]:
    """Label Studio tasks (one per sample, in rank order) with the predictions as polygon
    pre-annotations (module docstring). ``image_url``: prefix of each image's URL (the file
    name, URL-quoted, is appended)."""
    prep = _prepared or _prepare(store, dataset, sample_ids, picks, tolerance)
    names = {int(c["id"]): str(c["name"]) for c in prep.categories}
    version = _model_version(store)
    tasks = []
    for item, instances in zip(prep.items, prep.instances):
        data: dict[str, Any] = {"image": _image_url(image_url, item.file_name), "sample_id": item.sample_id,
                                "file_name": item.file_name, "split": item.split}
        if item.rank is not None:
            data.update(rank=item.rank, score=item.score, reason=item.reason or "")
        result = []
        for k, (cat, conf, polygons) in enumerate(instances):
            for j, poly in enumerate(polygons):
                pts = np.asarray(poly, np.float64).reshape(-1, 2)
                pct = np.column_stack([pts[:, 0] / item.width * 100.0, pts[:, 1] / item.height * 100.0])
                region = {"id": f"i{k}p{j}", "type": "polygonlabels", "from_name": LS_FROM_NAME, "to_name": LS_TO_NAME,
                          "original_width": item.width, "original_height": item.height, "image_rotation": 0,
                          "value": {"points": np.round(pct, 6).tolist(), "closed": True, "polygonlabels": [names[cat]]}}
                if conf is not None:
                    region["score"] = round(conf, 5)
                result.append(region)
        prediction: dict[str, Any] = {"model_version": version, "result": result}
        if item.score is not None:
            prediction["score"] = item.score
        tasks.append({"data": data, "predictions": [prediction]})
    return tasks


# ---------------------------------------------------------------------------- writing
def safe_name(name: str) -> str:
    """A selection name usable as a file name prefix: runs of characters other than
    letters, digits, ``.``, ``_``, ``-`` become ``_``; no leading dot; at most 80 chars.

    Raises:
        ValueError: nothing usable is left.
    """
    clean = _SAFE_NAME.sub("_", str(name)).strip("._")[:80]
    if not clean:
        raise ValueError(f"selection name {name!r} has no letters or digits; use e.g. 'hard-totes'")
    return clean


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=json_default, allow_nan=False) + "\n"


def write_selection_exports(out_dir: str | Path, store: Any, dataset: Any, sample_ids: Sequence[Any], name: str,
                            picks: Any = None, image_url: str = DEFAULT_IMAGE_URL,
                            write_ids: bool = True) -> dict[str, Path]:
    """Write ``<name>.ids.csv`` (sample_id, split, file_name, and rank, score, reason for
    picks), ``<name>.coco.json`` (:func:`coco_prelabels`), ``<name>.label_studio.json``
    (:func:`label_studio_tasks`) and ``<name>.label_config.xml`` into ``out_dir``, each
    atomically. ``name`` is made file-safe (:func:`safe_name`).

    ``write_ids=False`` leaves the ids CSV out (the labeling picks have their own CSV).

    Returns:
        the paths by kind: "ids", "coco", "label_studio", "label_config".
    """
    import pandas as pd

    from armbench_segmentation.analysis.exports import write_csv

    prefix = safe_name(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prep = _prepare(store, dataset, sample_ids, picks, POLYGON_TOLERANCE)
    items = prep.items
    paths = {"ids": out / f"{prefix}.ids.csv", "coco": out / f"{prefix}.coco.json",
             "label_studio": out / f"{prefix}.label_studio.json", "label_config": out / f"{prefix}.label_config.xml"}
    table = pd.DataFrame({"sample_id": [it.sample_id for it in items], "split": [it.split for it in items],
                          "file_name": [it.file_name for it in items]})
    if picks is not None:
        table.insert(0, "rank", [it.rank for it in items])
        table["score"] = [it.score for it in items]
        table["reason"] = [it.reason for it in items]
    if write_ids:
        write_csv(table, paths["ids"])
    else:
        del paths["ids"]
    coco = coco_prelabels(store, dataset, sample_ids, picks, _prepared=prep)
    atomic_write_text(paths["coco"], _dump(coco))
    atomic_write_text(paths["label_studio"], _dump(label_studio_tasks(store, dataset, sample_ids, picks, image_url,
                                                                      _prepared=prep)))
    atomic_write_text(paths["label_config"], label_studio_config([c["name"] for c in coco["categories"]],
                                                                 with_reason=picks is not None))
    return paths


# ---------------------------------------------------------------------------- merging back
@dataclass
class MergeSummary:
    """What :func:`merge_annotated` did. ``problems``: one line per thing left out or changed."""

    out: Path | None = None
    base_images: int = 0
    base_annotations: int = 0
    images_added: int = 0
    images_replaced: int = 0
    images_skipped: int = 0
    annotations_added: int = 0
    annotations_removed: int = 0  # old annotations of replaced images
    annotations_dropped: int = 0
    polygons_clipped: int = 0
    files_read: int = 0
    files_failed: int = 0
    added_by_category: dict[str, int] = field(default_factory=dict)
    added_images: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        return d

    def problem(self, line: str) -> None:
        self.problems.append(line)
        logger.debug("%s", line)  # the caller prints or logs the problems (the CLI: one line each)

    def lines(self) -> list[str]:
        cats = ", ".join(f"{n} {c}" for n, c in sorted(self.added_by_category.items())) or "none"
        out = [f"merged into {self.out}: {self.images_added} images added ({self.images_replaced} replaced, "
               f"{self.images_skipped} skipped), {self.annotations_added} annotations added ({cats})",
               f"base: {self.base_images} images, {self.base_annotations} annotations; read {self.files_read} "
               f"annotated file(s), {self.files_failed} unreadable"]
        if self.annotations_dropped or self.polygons_clipped or self.annotations_removed:
            out.append(f"{self.annotations_dropped} annotations dropped, {self.polygons_clipped} polygons clipped to "
                       f"their image, {self.annotations_removed} old annotations of replaced images removed")
        return out


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ArmbenchError(f"{what} {path} not found; check the path") from None
    except IsADirectoryError:
        raise ArmbenchError(f"{what} {path} is a folder; give the COCO .json file inside it") from None
    except OSError as exc:
        raise ArmbenchError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArmbenchError(f"{what} {path} is not valid JSON ({exc}); export it again from the labeling tool "
                            "as COCO") from None


def _is_coco(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("categories"), list)


_LS_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio's prefix on uploaded file names


def _candidates(file_name: str) -> list[str]:
    """Relative names to try for an exported image name: as given, URL-decoded, without a
    local-files URL, without a leading ``images/``, the bare name, without Label Studio's
    upload prefix."""
    name = file_name.replace("\\", "/")
    out = [name]
    decoded = urllib.parse.unquote(name)
    if "?d=" in decoded:
        decoded = decoded.split("?d=", 1)[1]
    out.append(decoded)
    for n in list(out):
        if n.startswith("images/"):
            out.append(n[len("images/"):])
    base = decoded.rsplit("/", 1)[-1]
    out.append(base)
    if _LS_UPLOAD_PREFIX.match(base):
        out.append(base[9:])
    seen, unique = set(), []
    for n in out:
        if n and n not in seen:
            seen.add(n)
            unique.append(n)
    return unique


def resolve_image(file_name: str, images_dir: Path) -> str | None:
    """The name relative to ``images_dir`` of the file an exported ``file_name`` refers to
    (see :func:`_candidates`), or None. Names resolving outside the folder are refused."""
    root = images_dir.resolve()
    if "\x00" in file_name:
        return None
    for cand in _candidates(file_name):
        path = (root / cand).resolve()
        if path.is_relative_to(root) and path.is_file():
            return path.relative_to(root).as_posix()
    return None


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header (EXIF orientation applied, as the loader does),
    None when the file cannot be read as an image."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - any decoder failure means "unreadable"
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _clip_to_box(pts: np.ndarray, width: float, height: float) -> np.ndarray:
    """Sutherland-Hodgman: the (K, 2) polygon clipped to [0, width] x [0, height]
    ((M, 2), possibly empty). Exact for any simple polygon (concave ones may keep
    zero-width edges along the border, which rasterize to nothing)."""
    for axis, bound, keep_below in ((0, 0.0, False), (0, float(width), True), (1, 0.0, False), (1, float(height), True)):
        if len(pts) == 0:
            break
        inside = pts[:, axis] <= bound if keep_below else pts[:, axis] >= bound
        out = []
        for i in range(len(pts)):
            cur, prev = pts[i], pts[i - 1]
            cin, pin = inside[i], inside[i - 1]
            if cin != pin:  # the edge crosses the line: add the crossing point
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append(prev + t * (cur - prev))
            if cin:
                out.append(cur)
        pts = np.array(out, np.float64).reshape(-1, 2)
    return pts


def _clip_polygons(seg: list, width: int, height: int) -> tuple[list[list[float]], int, int]:
    """The usable polygons of a list segmentation clipped to the image:
    (polygons, number clipped, number left out as unusable or entirely outside)."""
    from armbench_segmentation.data.coco import valid_polygons

    good = valid_polygons(seg)
    dropped = len(seg) - len(good)
    out, clipped = [], 0
    for poly in good:
        pts = np.asarray(poly, np.float64).reshape(-1, 2)
        if pts.min() >= 0 and pts[:, 0].max() <= width and pts[:, 1].max() <= height:
            out.append(poly)
            continue
        clipped += 1
        part = valid_polygons([_clip_to_box(pts, width, height).ravel().tolist()])
        if part:
            out.extend(part)
        else:
            dropped += 1
    return out, clipped, dropped


def _segmentation(ann: Mapping[str, Any], width: int, height: int, where: str,
                  summary: MergeSummary) -> tuple[Any, dict] | None:
    """(segmentation to write, its compressed RLE) of an annotated instance, or None
    (the reason recorded in ``summary``)."""
    from pycocotools import mask as mask_utils

    from armbench_segmentation.data.coco import _rle_counts, rle_from_segmentation

    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        try:
            rle = rle_from_segmentation(seg)
        except (ValueError, TypeError) as exc:
            summary.problem(f"{where}: unusable RLE ({exc}); annotation dropped")
            return None
        if list(rle["size"]) != [height, width]:
            summary.problem(f"{where}: RLE size {list(rle['size'])} is not the image's [{height}, {width}]; "
                            "annotation dropped")
            return None
        try:  # pycocotools decodes any string; a damaged one gives a mask its own area disagrees with
            runs = _rle_counts(rle["counts"])
        except (IndexError, UnicodeError, ValueError):
            runs = [-1]
        if min(runs, default=0) < 0 or sum(runs) != height * width:
            summary.problem(f"{where}: the RLE counts do not cover the {width}x{height} image (damaged or "
                            "truncated); annotation dropped")
            return None
        out = {"size": [height, width], "counts": rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes)
               else rle["counts"]}
        return out, rle
    if isinstance(seg, list) and seg:
        polygons, clipped, dropped = _clip_polygons(seg, width, height)
        if clipped:
            summary.polygons_clipped += clipped
            summary.problem(f"{where}: {clipped} polygon(s) outside the {width}x{height} image clipped to it")
        if dropped and polygons:
            summary.problem(f"{where}: {dropped} unusable polygon part(s) (fewer than 3 points, zero area or "
                            "outside the image) left out")
        if not polygons:
            summary.problem(f"{where}: no usable polygon (fewer than 3 points, zero area or outside the image); "
                            "annotation dropped")
            return None
        return polygons, mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    summary.problem(f"{where}: no segmentation (only polygons or RLE masks are merged); annotation dropped")
    return None


def merge_annotated(base_coco: str | Path, annotated: Sequence[str | Path], out: str | Path,
                    images_dir: str | Path | None = None, existing: str = "skip") -> MergeSummary:
    """Add the images of annotated COCO exports to a train COCO file (module docstring).

    Args:
        base_coco: the train COCO file (e.g. the dataset's ``train.json``); not modified.
        annotated: COCO files exported from CVAT / Label Studio / datumaro after annotation.
        out: the new train COCO file (written atomically; must not be ``base_coco``).
        images_dir: the dataset's images folder (default: ``images/`` beside ``base_coco``).
            Exported file names are resolved inside it and written relative to it.
        existing: an image already in the base: ``"skip"`` (keep the base's annotations) or
            ``"replace"`` (its base annotations are replaced by the annotated ones).
    Returns:
        :class:`MergeSummary`.
    Raises:
        ArmbenchError: the base file is unusable, ``out`` is the base, an unknown policy,
            or no images folder. Problems of the annotated files are recorded, not raised.
    """
    if existing not in EXISTING_POLICIES:
        raise ArmbenchError(f"unknown policy for images already in the base: {existing!r}; use one of "
                            f"{list(EXISTING_POLICIES)}")
    base_path, out_path = Path(base_coco), Path(out)
    if out_path.exists() and base_path.exists() and os.path.samefile(out_path, base_path):
        raise ArmbenchError(f"--out {out_path} is the base file; write the merged file to a new path (the base "
                            "stays as it was)")
    base = _read_json(base_path, "base COCO file")
    if not _is_coco(base):
        raise ArmbenchError(f"base COCO file {base_path} has no 'images' and 'categories' lists; pass the train "
                            "COCO file of the dataset")
    images_root = Path(images_dir) if images_dir is not None else base_path.parent / "images"
    if not images_root.is_dir():
        raise ArmbenchError(f"images folder {images_root} does not exist; pass --images DIR (the dataset's image "
                            "folder)")
    summary = MergeSummary(out=out_path)
    base_images = [im for im in base["images"] if isinstance(im, dict) and "id" in im]
    base_anns = [a for a in base.get("annotations", []) if isinstance(a, dict)]
    categories = [c for c in base["categories"] if isinstance(c, dict) and "id" in c]
    summary.base_images, summary.base_annotations = len(base_images), len(base_anns)
    by_name: dict[str, dict] = {}
    for im in base_images:
        resolved = resolve_image(str(im.get("file_name", "")), images_root)
        by_name.setdefault(resolved or str(im.get("file_name", "")), im)
    cat_names = {int(c["id"]): str(c.get("name", "")) for c in categories}
    next_image = max([int(im["id"]) for im in base_images if _int_like(im["id"])] + [0]) + 1
    next_ann = max([int(a["id"]) for a in base_anns if _int_like(a.get("id"))] + [0]) + 1
    new_images: list[dict] = []
    new_anns: list[dict] = []
    replaced_ids: set[int] = set()
    taken: set[str] = set()  # relative names added from the annotated files
    for src in map(Path, annotated):
        try:
            data = _read_json(src, "annotated COCO file")
        except ArmbenchError as exc:
            summary.files_failed += 1
            summary.problem(str(exc))
            continue
        if not _is_coco(data):
            summary.files_failed += 1
            summary.problem(f"annotated COCO file {src} has no 'images' and 'categories' lists; export it from the "
                            "labeling tool as COCO")
            continue
        summary.files_read += 1
        src_cats = [c for c in data["categories"] if isinstance(c, dict) and "id" in c]
        names = sorted({str(c.get("name", "")) for c in src_cats})
        by_class, _ = category_ids_by_name(categories, names)
        name_to_base = {names[i]: ids[-1] for i, ids in by_class.items()}
        cat_map = {int(c["id"]): name_to_base.get(str(c.get("name", ""))) for c in src_cats if _int_like(c["id"])}
        unknown: dict[str, int] = {}
        anns_by_image: dict[Any, list[dict]] = {}
        for a in data.get("annotations") or []:
            if isinstance(a, dict):
                anns_by_image.setdefault(a.get("image_id"), []).append(a)
        for im in data["images"]:
            if not isinstance(im, dict) or "id" not in im:
                summary.problem(f"{src}: an image entry without an id left out")
                summary.images_skipped += 1
                continue
            fname = str(im.get("file_name", ""))
            where = f"{src.name}: image {fname!r}"
            rel = resolve_image(fname, images_root)
            if rel is None:
                summary.images_skipped += 1
                summary.problem(f"{where}: no such file in {images_root} (checked the name, its base name and "
                                "without a labeling-tool prefix); copy the image there or fix file_name")
                continue
            if rel in taken:
                summary.images_skipped += 1
                summary.problem(f"{where}: already added from an earlier annotated file; this copy is left out")
                continue
            size = _image_size(images_root / rel)
            if size is None:
                summary.images_skipped += 1
                summary.problem(f"{where}: the image file cannot be read; left out")
                continue
            width, height = size
            if _int_like(im.get("width")) and _int_like(im.get("height")) and \
                    (int(im["width"]), int(im["height"])) != (width, height):
                summary.images_skipped += 1
                summary.problem(f"{where}: the export says {im['width']}x{im['height']} but the file is "
                                f"{width}x{height}; left out (was it resized before labeling?)")
                continue
            old = by_name.get(rel)
            if old is not None and existing == "skip":
                summary.images_skipped += 1
                summary.problem(f"{where}: already in the base file (image id {old['id']}); kept as it is "
                                "(use --existing replace to replace its annotations)")
                continue
            anns_out = []
            for k, a in enumerate(anns_by_image.get(im["id"], [])):
                awhere = f"{where} annotation {a.get('id', k)!r}"
                cat = cat_map.get(int(a["category_id"])) if _int_like(a.get("category_id")) else None
                if cat is None:
                    label = next((str(c.get("name")) for c in src_cats if c.get("id") == a.get("category_id")),
                                 repr(a.get("category_id")))
                    unknown[label] = unknown.get(label, 0) + 1
                    summary.annotations_dropped += 1
                    continue
                got = _segmentation(a, width, height, awhere, summary)
                if got is None:
                    summary.annotations_dropped += 1
                    continue
                seg, rle = got
                area, bbox = _area_bbox(rle)
                if area <= 0:
                    summary.annotations_dropped += 1
                    summary.problem(f"{awhere}: covers no pixel; dropped")
                    continue
                entry = {"segmentation": seg, "area": area, "bbox": bbox, "category_id": cat,
                         "iscrowd": 1 if isinstance(seg, dict) and a.get("iscrowd") == 1 else 0}
                attrs = {k2: v for k2, v in (a.get("attributes") or {}).items() if k2 not in _PICK_ATTRIBUTES
                         and k2 not in ("score", "is_crowd")} if isinstance(a.get("attributes"), dict) else {}
                if attrs:
                    entry["attributes"] = attrs
                anns_out.append(entry)
            if old is not None:  # replace
                image_id = old["id"]
                replaced_ids.add(image_id)
                summary.images_replaced += 1
            else:
                image_id = next_image
                next_image += 1
                entry_im = {"id": image_id, "file_name": rel, "width": width, "height": height}
                for key in ("license", "date_captured"):
                    if key in im:
                        entry_im[key] = im[key]
                new_images.append(entry_im)
            taken.add(rel)
            summary.images_added += 1
            summary.added_images.append(rel)
            for entry in anns_out:
                entry = {"id": next_ann, "image_id": image_id, **entry}
                next_ann += 1
                new_anns.append(entry)
                name = cat_names[entry["category_id"]]
                summary.added_by_category[name] = summary.added_by_category.get(name, 0) + 1
            summary.annotations_added += len(anns_out)
        for label, n in sorted(unknown.items()):
            summary.problem(f"{src}: {n} annotation(s) of category {label!r}, which the base file does not have "
                            f"(its categories: {', '.join(repr(c) for c in cat_names.values())}), dropped; rename the "
                            "label in the labeling tool or add the category to the base file")
    kept_anns = [a for a in base_anns if a.get("image_id") not in replaced_ids]
    summary.annotations_removed = len(base_anns) - len(kept_anns)
    merged = dict(base)
    merged["images"] = base["images"] + new_images
    merged["annotations"] = kept_anns + new_anns
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, json.dumps(merged, default=json_default))
    return summary


def _int_like(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, float) and v.is_integer())

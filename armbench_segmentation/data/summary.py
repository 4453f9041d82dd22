"""A dataset's summary from its COCO files (no image decoding): what ``armbench info`` reports.

Counts per split, instances per image, per-class counts and inverse-frequency weights,
instance size quantiles and every annotation problem found (with image/annotation ids).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from armbench_segmentation.codecs import category_ids_by_name
from armbench_segmentation.data.coco import (
    LABELED_SPLITS, PROBLEM_KINDS, SPLIT_FILES, SPLITS, Sample, category_map_by_name, check_annotation,
    sample_id_from_file_name,
)
from armbench_segmentation.errors import SampleError

MAX_EXAMPLES = 20
HIST_BINS = ((0, 0), (1, 4), (5, 9), (10, 19), (20, 49), (50, None))
AREA_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)

PROBLEM_HELP = {
    "missing_image_file": "image listed in the COCO file but not found under images/",
    "image_path_outside_dataset": "file_name points outside images/ (refused)",
    "invalid_image_entry": "image entry without a valid id/file_name/width/height",
    "duplicate_sample_id": "several images share a file stem (sample ids must be unique)",
    "missing_class_name": "a configured class name has no category in the file",
    "unknown_category": "annotation category id not among the configured classes",
    "unknown_image_id": "annotation refers to an image id not in 'images'",
    **PROBLEM_KINDS,
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Problems:
    def __init__(self) -> None:
        self.items: dict[str, list[dict]] = {}

    def add(self, kind: str, **where: Any) -> None:
        self.items.setdefault(kind, []).append(where)

    def as_dict(self) -> dict[str, Any]:
        return {
            kind: {"count": len(rows), "description": PROBLEM_HELP.get(kind, ""), "examples": rows[:MAX_EXAMPLES]}
            for kind, rows in sorted(self.items.items())
        }


def _check_annotation(ann: dict, img: dict | None, split: str, problems: _Problems) -> float | None:
    """Record the annotation's problems; return its area in pixels when measurable."""
    where = {"split": split, "image_id": ann.get("image_id"), "annotation_id": ann.get("id")}
    width = img.get("width") if img else None
    height = img.get("height") if img else None
    found, area = check_annotation(ann, width, height)
    for kind, detail in found:
        problems.add(kind, **where, detail=detail)
    return area


def _histogram(counts: list[int]) -> list[dict]:
    arr = np.asarray(counts, dtype=np.int64)
    out = []
    for lo, hi in HIST_BINS:
        sel = (arr >= lo) if hi is None else ((arr >= lo) & (arr <= hi))
        label = f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")
        out.append({"bin": label, "images": int(sel.sum())})
    return out


def summarize(dataset) -> dict[str, Any]:
    """Everything ``armbench info`` reports, as a JSON-ready dict (no NaN; None when undefined)."""
    config = dataset.config
    class_names = list(config.class_names)
    problems = _Problems()
    images_dir = dataset.root / "images"
    try:
        present = {entry.name for entry in os.scandir(images_dir)}
    except OSError:
        present = set()
    splits: dict[str, Any] = {}
    for split in SPLITS:
        coco = dataset.coco(split)
        data = coco.dataset
        labeled = split in LABELED_SPLITS
        cmap = category_map_by_name(data.get("categories", []), class_names, strict=False)
        if labeled:
            names_present = {c.get("name") for c in data.get("categories", [])}
            for name in category_ids_by_name(data.get("categories", []), class_names)[1]:
                problems.add("missing_class_name", split=split, detail=f"{name!r} not in {sorted(map(str, names_present))}")
        images_by_id: dict[Any, dict] = {}
        stems: dict[str, list[str]] = {}
        missing = 0
        for img in data.get("images", []):
            image_id, file_name = img.get("id"), img.get("file_name")
            if not (isinstance(file_name, str) and file_name and _is_number(img.get("width")) and _is_number(img.get("height"))
                    and img["width"] > 0 and img["height"] > 0):
                problems.add("invalid_image_entry", split=split, image_id=image_id, detail=f"file_name={file_name!r}")
                continue
            images_by_id[image_id] = img
            stems.setdefault(sample_id_from_file_name(file_name), []).append(file_name)
            if file_name in present:
                continue
            sample = Sample(sample_id_from_file_name(file_name), split, image_id, file_name, int(img["width"]), int(img["height"]))
            try:
                exists = dataset.image_path(sample).is_file()
            except SampleError as exc:
                problems.add("image_path_outside_dataset", split=split, image_id=image_id, file_name=file_name, detail=str(exc))
                continue
            if not exists:
                missing += 1
                problems.add("missing_image_file", split=split, image_id=image_id, file_name=file_name)
        for sid, names in stems.items():
            if len(names) > 1:
                problems.add("duplicate_sample_id", split=split, detail=f"{sid!r}: {names}")
        n_images = len(images_by_id)
        size = config.split_size(split)
        entry: dict[str, Any] = {
            "file": SPLIT_FILES[split],
            "images": n_images,
            "selected": n_images if size is None else min(size, n_images),
            "missing_image_files": missing,
            "labeled": labeled,
        }
        if not labeled:
            entry["annotations_ignored"] = len(data.get("annotations", []))
            splits[split] = entry
            continue
        per_image = {image_id: 0 for image_id in images_by_id}
        class_counts = {name: 0 for name in class_names}
        fractions: dict[str, list[float]] = {name: [] for name in class_names}
        for ann in data.get("annotations", []):
            img = images_by_id.get(ann.get("image_id"))
            if img is None:
                problems.add("unknown_image_id", split=split, image_id=ann.get("image_id"), annotation_id=ann.get("id"))
                continue
            cls = cmap.get(ann.get("category_id"))
            if cls is None:
                problems.add("unknown_category", split=split, image_id=ann.get("image_id"), annotation_id=ann.get("id"),
                             detail=f"category_id {ann.get('category_id')!r}")
                continue
            area = _check_annotation(ann, img, split, problems)
            per_image[ann["image_id"]] += 1
            class_counts[class_names[cls]] += 1
            if area is not None:
                fractions[class_names[cls]].append(area / float(img["width"] * img["height"]))
        counts = list(per_image.values())
        total = sum(class_counts.values())
        frequency = {n: (c / total if total else None) for n, c in class_counts.items()}
        weights = {n: (total / (len(class_names) * c) if c else None) for n, c in class_counts.items()}
        without = [sample_id_from_file_name(images_by_id[i]["file_name"]) for i, c in per_image.items() if c == 0]
        entry.update({
            "annotations": total,
            "instances_per_image": {
                "min": int(min(counts)) if counts else None,
                "median": float(np.median(counts)) if counts else None,
                "mean": float(np.mean(counts)) if counts else None,
                "max": int(max(counts)) if counts else None,
                "histogram": _histogram(counts),
            },
            "class_counts": class_counts,
            "class_frequency": frequency,
            "class_weights": weights,
            "area_fraction_quantiles": {
                name: ({f"q{int(q * 100):02d}": float(v) for q, v in zip(AREA_QUANTILES, np.quantile(f, AREA_QUANTILES))}
                       if f else None)
                for name, f in fractions.items()
            },
            "images_without_annotations": {"count": len(without), "examples": sorted(without)[:MAX_EXAMPLES]},
        })
        splits[split] = entry
    problem_dict = problems.as_dict()
    return {
        "dataset": str(dataset.root),
        "class_names": class_names,
        "splits": splits,
        "problems": problem_dict,
        "problem_count": int(sum(p["count"] for p in problem_dict.values())),
    }

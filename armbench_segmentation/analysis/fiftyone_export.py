"""An export of a run that FiftyOne imports: the images, GT and predicted masks, every
per-sample field and the map.

FiftyOne is not a dependency (and its database does not start on offline machines); the
export is plain files its importers read, plus a loader script::

    OUT/ground_truth.json   COCO detection dataset: every sample of the run (ids 1..N in the
                            table's order; file_name relative to the dataset's images/) with
                            the labeled splits' GT annotations (polygons / RLE, by name)
    OUT/predictions.json    COCO with the same images and the model's predictions (RLE at
                            original resolution, score)
    OUT/fields.json         per-sample fields, column-oriented ({field: [value per sample]},
                            null = missing): file_name + every column of samples.parquet
                            (metrics, unc_*, meta_*, cluster, map_x, map_y), FiftyOne-safe names
    OUT/fields.parquet      the same table as Parquet (FiftyOne itself does not install pyarrow)
    OUT/export.json         the images folder, the run key, counts, the field renames
    OUT/load_fiftyone.py    ``load(OUT)``: ``fo.Dataset.from_dir(COCODetectionDataset)`` for GT,
                            ``merge_dir`` for predictions, ``set_values(..., key_field="filepath")``
                            for the fields, ``fiftyone.brain.compute_visualization(points=...)``
                            for the map; ``--check`` runs only FiftyOne's COCO importer classes
                            (no database) and prints what they read
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from armbench_segmentation.codecs import atomic_path, atomic_write_text, category_ids_by_name, json_default
from armbench_segmentation.errors import ArmbenchError
from armbench_segmentation.splits import LABELED_SPLITS

logger = logging.getLogger(__name__)

#: sample fields FiftyOne defines itself; our columns of these names get an ``armbench_`` prefix
RESERVED_FIELDS = frozenset({"id", "_id", "filepath", "tags", "metadata", "created_at", "last_modified_at",
                             "ground_truth", "predictions", "media_type", "dataset_id"})
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_]")

LOADER = '''"""Load an armbench-segmentation FiftyOne export (written by ``armbench export-fiftyone``).

    python load_fiftyone.py EXPORT_DIR [--images DIR] [--name NAME]   # a FiftyOne dataset + the App
    python load_fiftyone.py EXPORT_DIR --check                         # FiftyOne's importers only, no DB

In Python: ``from load_fiftyone import load; ds = load("EXPORT_DIR")``.
"""

import argparse
import json
import os
from pathlib import Path


def _paths(export_dir, images_dir=None):
    export_dir = Path(export_dir)
    manifest = json.loads((export_dir / "export.json").read_text(encoding="utf-8"))
    images = str(images_dir or manifest["images_dir"])
    return export_dir, manifest, images


def load(export_dir, images_dir=None, name=None, map_key="armbench_map"):
    """A FiftyOne dataset: ground_truth and predictions (instance masks), every per-sample
    field of the run, and the run's map as the visualization ``map_key``."""
    import fiftyone as fo
    import fiftyone.brain as fob
    import numpy as np

    export_dir, manifest, images = _paths(export_dir, images_dir)
    ds = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=images,
                             labels_path=str(export_dir / "ground_truth.json"), label_types=["segmentations"],
                             label_field="ground_truth", name=name)
    ds.merge_dir(dataset_type=fo.types.COCODetectionDataset, data_path=images,
                 labels_path=str(export_dir / "predictions.json"), label_types=["segmentations"],
                 label_field="predictions")
    fields = _fields(export_dir)
    paths = [os.path.abspath(os.path.join(images, f)) for f in fields["file_name"]]
    for column, values in fields.items():
        ds.set_values(column, dict(zip(paths, values)), key_field="filepath")
    row = {p: i for i, p in enumerate(paths)}
    xy = np.array([[np.nan if x is None else x, np.nan if y is None else y]
                   for x, y in zip(fields["map_x"], fields["map_y"])], np.float64)
    order = [row[os.path.abspath(p)] for p in ds.values("filepath")]
    fob.compute_visualization(ds, points=xy[order], brain_key=map_key)
    return ds


def _fields(export_dir):
    """{field: [value per sample]} (null = missing), aligned with fields["file_name"]."""
    return json.loads((Path(export_dir) / "fields.json").read_text(encoding="utf-8"))


def check(export_dir, images_dir=None):
    """Read the export with FiftyOne's COCO importer classes only (no database): counts."""
    import fiftyone.utils.coco as fouc

    export_dir, manifest, images = _paths(export_dir, images_dir)
    out = {}
    for kind in ("ground_truth", "predictions"):
        importer = fouc.COCODetectionDatasetImporter(data_path=images, labels_path=str(export_dir / f"{kind}.json"),
                                                     label_types=["segmentations"])
        n_samples = n_objects = n_masks = n_pixels = 0
        names, labels = set(), set()
        with importer:
            for image_path, metadata, label in importer:
                n_samples += 1
                names.add(os.path.relpath(image_path, images))
                dets = (label or {}).get("segmentations") if isinstance(label, dict) else label
                for det in (dets.detections if dets is not None else []):
                    n_objects += 1
                    n_masks += det.mask is not None and bool(det.mask.any())
                    n_pixels += int(det.mask.sum()) if det.mask is not None else 0
                    labels.add(det.label)
        out[kind] = {"samples": n_samples, "objects": n_objects, "masks": n_masks, "mask_pixels": n_pixels,
                     "labels": sorted(labels)}
        out[kind + "_files"] = sorted(names)
    fields = _fields(export_dir)
    files = set(out["ground_truth_files"])
    out["fields"] = {"rows": len(fields["file_name"]), "columns": list(fields),
                     "matched": sum(f in files for f in fields["file_name"])}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir")
    parser.add_argument("--images", default=None, help="the dataset's images folder (default: as exported)")
    parser.add_argument("--name", default=None, help="FiftyOne dataset name")
    parser.add_argument("--check", action="store_true", help="only run FiftyOne's importers and print counts")
    args = parser.parse_args()
    if args.check:
        result = check(args.export_dir, args.images)
        print(json.dumps({k: v for k, v in result.items() if not k.endswith("_files")}))
    else:
        import fiftyone as fo

        dataset = load(args.export_dir, args.images, args.name)
        print(dataset)
        fo.launch_app(dataset).wait()
'''


def _json_value(v: Any) -> Any:
    """A table cell as a JSON value: NaN / NA / inf -> None, numpy scalars -> Python."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if np.isfinite(v) else None
    try:
        import pandas as pd

        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


def _rle_area(segmentation: dict) -> float:
    from pycocotools import mask as mask_utils

    counts = segmentation["counts"]
    return float(mask_utils.area({"size": list(segmentation["size"]),
                                  "counts": counts.encode("ascii") if isinstance(counts, str) else counts}))


def field_name(column: str) -> str:
    """A FiftyOne-safe sample field name: characters other than letters, digits and ``_``
    become ``_``; no leading ``_`` or digit; reserved names get an ``armbench_`` prefix."""
    name = _BAD_CHARS.sub("_", str(column)).lstrip("_") or "field"
    if name[0].isdigit() or name in RESERVED_FIELDS:
        name = f"armbench_{name}"
    return name


def export_fiftyone(run: Any, out_dir: str | Path) -> dict[str, Any]:
    """Write the FiftyOne export of an opened run (``explore.run.ExploreRun``) into ``out_dir``.

    Returns:
        counts and paths: ``samples``, ``gt_annotations``, ``predictions``, ``files``.
    Raises:
        ArmbenchError: the run's dataset cannot be opened (its images and GT are needed).
    """
    dataset = run.dataset
    if dataset is None:
        raise ArmbenchError(f"the dataset of run {run.run_dir} cannot be opened (the log above says why); the export "
                            "needs its images and COCO files - make the dataset folder available again")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = run.frame
    class_names = list(run.settings.data.class_names)
    categories = None
    for split in LABELED_SPLITS:
        try:
            categories = [dict(c) for c in dataset.coco(split).dataset.get("categories", []) if "id" in c]
            break
        except ArmbenchError:
            continue
    categories = categories or [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    by_class, missing = category_ids_by_name(categories, class_names)
    if missing:
        logger.warning("FiftyOne export: no category named %s; those predictions are left out",
                       ", ".join(map(repr, missing)))
    class_to_cat = {i: ids[-1] for i, ids in by_class.items()}

    images, gt_anns, pred_anns, kept_rows = [], [], [], []
    for pos, (split, sid) in enumerate(zip(frame["split"], frame["sample_id"])):
        try:
            sample = run.dataset_sample(split, sid)
        except ArmbenchError as exc:
            logger.warning("FiftyOne export: %s; left out", exc)
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": sample.file_name, "width": sample.width, "height": sample.height})
        kept_rows.append(pos)
        if split in LABELED_SPLITS:
            for ann in dataset.annotations(sample):
                gt_anns.append({**{k: v for k, v in ann.items() if k in ("segmentation", "bbox", "area", "iscrowd",
                                                                         "category_id")},
                                "id": len(gt_anns) + 1, "image_id": image_id})
        for pred in run.store.sample_predictions(split, sid) or []:
            cat = class_to_cat.get(int(pred.get("class_index", -1)))
            if cat is None:
                continue
            pred_anns.append({"id": len(pred_anns) + 1, "image_id": image_id, "category_id": cat,
                              "segmentation": pred["segmentation"], "bbox": [float(v) for v in pred["bbox"]],
                              "area": _rle_area(pred["segmentation"]), "iscrowd": 0,
                              "score": float(pred.get("score") or 0.0)})
    info = {"description": "armbench-segmentation run export for FiftyOne", "run_key": run.run_key}
    files = {"ground_truth": out / "ground_truth.json", "predictions": out / "predictions.json",
             "fields": out / "fields.json", "fields_parquet": out / "fields.parquet", "manifest": out / "export.json",
             "loader": out / "load_fiftyone.py"}
    for key, anns in (("ground_truth", gt_anns), ("predictions", pred_anns)):
        doc = {"info": info, "licenses": [], "images": images, "annotations": anns, "categories": categories}
        atomic_write_text(files[key], json.dumps(doc, default=json_default))
    table = frame.iloc[kept_rows].reset_index(drop=True)
    renames = {c: field_name(c) for c in table.columns if field_name(c) != c and c != "file_name"}
    table = table.rename(columns=renames)
    table["file_name"] = [im["file_name"] for im in images]
    for col in ("map_x", "map_y"):
        if col not in table.columns:
            table[col] = np.nan
    from armbench_segmentation.analysis.exports import _parquet_safe

    with atomic_path(files["fields_parquet"]) as tmp:
        _parquet_safe(table).to_parquet(tmp, index=False)
    columns = {c: [_json_value(v) for v in table[c].tolist()] for c in table.columns}
    atomic_write_text(files["fields"], json.dumps(columns, default=json_default, allow_nan=False))
    manifest = {"images_dir": str(Path(dataset.root, "images").resolve()), "run_key": run.run_key,
                "samples": len(images), "gt_annotations": len(gt_anns), "predictions": len(pred_anns),
                "field_renames": renames, "map": "map_x, map_y (the run's population map)"}
    atomic_write_text(files["manifest"], json.dumps(manifest, indent=1) + "\n")
    atomic_write_text(files["loader"], LOADER)
    return {"samples": len(images), "gt_annotations": len(gt_anns), "predictions": len(pred_anns), "files": files}

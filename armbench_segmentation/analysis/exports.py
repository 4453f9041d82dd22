"""Exports for other tools: the per-sample table (CSV + Parquet), COCO results per split,
the failed samples, and the run's provenance.

Everything is read from the results store (or a frame built from it), never from a
half-finished in-memory state. Files written (all under ``out_dir``)::

    samples.csv, samples.parquet       one row per sample (EXPORT_FIRST_COLUMNS first)
    predictions_<split>.json           COCO results: [{image_id, category_id, segmentation
                                       (RLE, original resolution), bbox, score}, ...];
                                       load with ``COCO(<split gt>).loadRes(path)``
    errors.csv                         samples that could not be processed, with the reason
    run.json                           provenance: run key, model sha256, settings, dataset files

Every CSV the project writes goes through :func:`write_csv`: text cells that a spreadsheet
would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return)
get a leading ``'`` (OWASP's CSV-injection rule); numeric cells are written as numbers.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import pandas as pd

from armbench_segmentation.codecs import atomic_path, atomic_write_text, category_ids_by_name, json_default
from armbench_segmentation.splits import SPLITS

logger = logging.getLogger(__name__)

EXPORT_FIRST_COLUMNS = (
    "sample_id", "split", "file_name", "loss", "over_segmented_count", "under_segmented_count",
    "tp", "fp", "fn", "map_x", "map_y", "cluster",
)


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def neutralise_cell(value: Any) -> Any:
    """A string cell starting like a spreadsheet formula, prefixed with ``'``; anything
    else (numbers, None, other strings, a plain number written as text like "-0.5")
    unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with every string cell neutralised (see :func:`neutralise_cell`);
    numeric columns are left as they are. Column names are neutralised too."""
    out = frame.copy()
    for col in out.columns:
        dtype = out[col].dtype
        if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype) \
                or pd.api.types.is_datetime64_any_dtype(dtype):
            continue
        out[col] = out[col].astype(object).map(neutralise_cell)
    out.columns = [neutralise_cell(c) if isinstance(c, str) else c for c in out.columns]
    return out


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as CSV (no index) atomically (``codecs.atomic_path``: a temporary file
    next to it, then renamed), with formula-like text cells neutralised. The one CSV writer
    of the project.

    Rows end in CRLF (RFC 4180): the csv writer then quotes every cell holding a carriage
    return or a newline, so such a cell cannot split a row."""
    path = Path(path)
    with atomic_path(path) as tmp:
        csv_safe(frame).to_csv(tmp, index=False, lineterminator="\r\n")
    return path


def order_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """EXPORT_FIRST_COLUMNS first (missing ones added as None, with a warning), then the rest."""
    frame = frame.copy()
    missing = [c for c in EXPORT_FIRST_COLUMNS if c not in frame.columns]
    if missing and len(frame):
        logger.warning("export: columns %s are missing from the results; written empty", missing)
    for c in missing:
        frame[c] = None
    rest = [c for c in frame.columns if c not in EXPORT_FIRST_COLUMNS]
    return frame[list(EXPORT_FIRST_COLUMNS) + rest]


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding mixed Python types (e.g. str and float) -> strings, so pyarrow
    can type them; None stays null."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype != object:
            continue
        kinds = {type(v) for v in out[col] if v is not None and not (isinstance(v, float) and pd.isna(v))}
        if len(kinds) > 1 and not kinds <= {int, float, bool}:
            out[col] = out[col].map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    return out


def _write_csv_and_parquet(table: pd.DataFrame, out_dir: Path, name: str) -> tuple[Path, Path]:
    """``<name>.csv`` (``write_csv``) and ``<name>.parquet`` of the same table, each atomic."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = out_dir / f"{name}.csv", out_dir / f"{name}.parquet"
    write_csv(table, csv_path)
    with atomic_path(parquet_path) as tmp:
        _parquet_safe(table).to_parquet(tmp, index=False)
    return csv_path, parquet_path


def write_table(frame: pd.DataFrame, out_dir: Path, name: str = "samples") -> tuple[Path, Path]:
    """Write the per-sample table as ``<name>.csv`` and ``<name>.parquet``; returns both paths."""
    return _write_csv_and_parquet(order_columns(frame), out_dir, name)


def class_to_category_ids(dataset: Any, split: str, class_names: Sequence[str]) -> dict[int, int]:
    """Model class index -> the split file's COCO category id, matched by name
    (``codecs.category_ids_by_name``; of several categories with the name, the last). A class
    without a category is left out with a warning (its predictions are not exported)."""
    by_class, missing = category_ids_by_name(dataset.coco(split).dataset.get("categories", []), class_names)
    if missing:
        logger.warning("COCO export %s: %s has no category named %s", split, dataset.split_path(split).name,
                       ", ".join(map(repr, missing)))
    return {i: ids[-1] for i, ids in by_class.items()}


def coco_results(records: Iterable[tuple[str, int | None, str | None, list[dict]]], class_to_cat: dict[int, int],
                 sample_ids: set[str] | None = None, counts: dict[str, int] | None = None) -> Iterator[dict]:
    """Store predictions -> COCO results entries (see module docstring), one at a time.

    Predictions of a class without a category in the split file are left out and counted
    in ``counts["dropped"]`` (the caller warns with the count).
    """
    counts = counts if counts is not None else {}
    counts.setdefault("dropped", 0)
    counts.setdefault("written", 0)
    for sample_id, image_id, _file_name, preds in records:
        if sample_ids is not None and sample_id not in sample_ids:
            continue
        for p in preds:
            cat = class_to_cat.get(int(p["class_index"]))
            if cat is None:
                counts["dropped"] += 1
                continue
            entry = {"image_id": int(image_id), "category_id": cat, "bbox": [float(v) for v in p["bbox"]],
                     "score": float(p["score"]) if p.get("score") is not None else 1.0}
            if "segmentation" in p:
                entry["segmentation"] = p["segmentation"]
            counts["written"] += 1
            yield entry


def write_coco_predictions(store: Any, dataset: Any, out_dir: Path, class_names: Sequence[str],
                           splits: Sequence[str] = SPLITS,
                           frame: pd.DataFrame | None = None) -> dict[str, Path]:
    """``predictions_<split>.json`` per split (COCO results, original resolution), streamed
    from the store to the file (memory stays flat for any number of images).

    Args:
        frame: when given, only its samples are exported (the current selection).
    Returns:
        {split: path}. A split without samples gets an empty list (``COCO.loadRes`` cannot
        load an empty list; there is nothing to evaluate then).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in splits:
        ids = None
        if frame is not None:
            ids = set(frame.loc[frame["split"] == split, "sample_id"].astype(str))
        counts: dict[str, int] = {}
        entries = coco_results(store.predictions(split), class_to_category_ids(dataset, split, class_names), ids, counts)
        path = out_dir / f"predictions_{split}.json"
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write("[")
            for i, entry in enumerate(entries):
                f.write(("," if i else "") + json.dumps(entry, separators=(",", ":")))
            f.write("]")
        if counts["dropped"]:
            logger.warning("COCO export %s: %d predictions of classes without a category in %s were left out",
                           split, counts["dropped"], dataset.split_path(split).name)
        paths[split] = path
    return paths


def instances_frame(store: Any, keys: Iterable[tuple[str, str]] | None = None) -> pd.DataFrame:
    """One row per GT instance and per prediction of every finished sample, from the stored
    facts (``SampleEvaluation.instance_rows`` plus the engine's ``visible_fraction`` and
    ``box_overlaps``), in split and sample order; columns: ``split, sample_id`` then
    ``analysis.columns.INSTANCE_COLUMNS``. ``keys``: only these (split, sample_id) samples
    (the current selection, as in samples.csv); default every finished one."""
    from armbench_segmentation.analysis.columns import INSTANCE_COLUMN_DEFS, INSTANCE_COLUMNS

    wanted = None if keys is None else set(keys)
    rows = []
    for split, sample_id, facts in store.facts():
        if wanted is not None and (split, sample_id) not in wanted:
            continue
        for inst in (facts or {}).get("instances", []):
            rows.append({"split": split, "sample_id": sample_id, **inst})
    columns = ["split", "sample_id", *INSTANCE_COLUMNS]
    frame = pd.DataFrame(rows, columns=columns)
    for col in ("index", "matched_index", "annotation_id", "area", "box_overlaps"):
        frame[col] = frame[col].astype("Int64")
    for col in (c for c, d in INSTANCE_COLUMN_DEFS.items() if d.range == "bool"):  # the error flags
        frame[col] = frame[col].astype("boolean")
    return frame


def write_instances(store: Any, out_dir: Path, keys: Iterable[tuple[str, str]] | None = None) -> tuple[Path, Path]:
    """``instances.csv`` and ``instances.parquet`` (see :func:`instances_frame`)."""
    return _write_csv_and_parquet(instances_frame(store, keys), out_dir, "instances")


def write_errors(store: Any, out_dir: Path) -> Path:
    path = Path(out_dir) / "errors.csv"
    return write_csv(store.errors(), path)


def write_run_info(store: Any, out_dir: Path, extra: dict | None = None) -> Path:
    """``run.json``: the run key and its provenance (model, settings, dataset files)."""
    info = {"run_key": store.run_key, **store.run_info(), "counts": store.counts(), **(extra or {})}
    path = Path(out_dir) / "run.json"
    atomic_write_text(path, json.dumps(info, indent=2, default=json_default, sort_keys=True))
    return path

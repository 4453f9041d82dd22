"""One run folder, read for the explorer: the table, the columns, one sample's stored facts
and its images drawn from them.

What is read (all written by ``armbench analyze``)::

    run.json          the run key (which run of the store), the settings (dataset, classes)
    results.sqlite    facts (involved instances per error kind, instance rows, hard region),
                      predictions at original resolution (analysis/store.py)
    samples.parquet   one row per sample with map_x, map_y, cluster
    clusters.csv      the clusters' insights (optional)

Nothing here evaluates a sample: the instance list is the stored ``facts["instances"]``,
the highlighted instances of an error kind are ``facts["involved"][kind]``, and the images
are the dataset's image with the stored predictions and the dataset's GT drawn on it by
``visualize`` (the same functions the galleries use). The page never sees an absolute
path: file names are the COCO ``file_name`` (relative to the dataset's ``images/``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from armbench_segmentation.errors import ArmbenchError, SampleError
from armbench_segmentation.splits import LABELED_SPLITS, SPLITS

logger = logging.getLogger(__name__)

STORE_NAME = "results.sqlite"
TABLE_NAME = "samples.parquet"
#: image side limits of the image endpoint (pixels, the long side)
MIN_SIDE, MAX_SIDE, DEFAULT_SIDE = 64, 2048, 1024
#: categorical columns with more distinct values than this are not offered for colouring
MAX_CATEGORIES = 64
#: columns never offered as map colours (identity, coordinates)
NOT_COLOURS = {"sample_id", "file_name", "image_id", "map_x", "map_y"}
LAYERS = ("gt", "pred", "heat")


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    kind: str  # "numeric" | "categorical"
    definition: str


def _definition(column: str) -> str:
    from armbench_segmentation.analysis.columns import describe

    d = describe(column)
    if d is None:
        return ""
    arrow = {"worse": "higher is worse", "better": "higher is better", "": ""}
    extra = "; ".join(x for x in (d.range, arrow[d.direction]) if x)
    return d.definition + (f" ({extra})" if extra else "")


def _json_scalar(v: Any) -> Any:
    """pandas/numpy cell -> JSON scalar (NaN/NA -> None)."""
    if v is None:
        return None
    try:
        import pandas as pd

        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


class ExploreRun:
    """A run folder opened for reading (see the module docstring).

    Raises:
        ArmbenchError: one line naming the folder, what is missing and the fix.
    """

    def __init__(self, run_dir: str | Path, cache_images: int = 8):
        import pandas as pd

        from armbench_segmentation.analysis.store import ResultsStore

        self.run_dir = Path(run_dir).expanduser()
        hint = f"give the --out folder of a finished 'armbench analyze' (e.g. armbench analyze --synthetic --out {self.run_dir})"
        if not self.run_dir.is_dir():
            raise ArmbenchError(f"run folder {self.run_dir} does not exist or is not a folder; {hint}")
        for name in (STORE_NAME, TABLE_NAME, "run.json"):
            if not (self.run_dir / name).is_file():
                raise ArmbenchError(f"run folder {self.run_dir} has no {name}; {hint}")
        try:
            self.info = json.loads((self.run_dir / "run.json").read_text(encoding="utf-8"))
            self.run_key = str(self.info["run_key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArmbenchError(f"{self.run_dir / 'run.json'} is unreadable or has no run_key ({exc}); "
                                f"run armbench analyze on that folder again") from None
        self.store = ResultsStore(self.run_dir / STORE_NAME)
        if self.store.moved_to is not None:  # the store's own rule: a damaged file is renamed, never deleted
            self.store.close()
            raise ArmbenchError(f"{self.run_dir / STORE_NAME} is damaged (moved aside to {self.store.moved_to.name}); "
                                f"run armbench analyze on that folder again")
        if self.run_key not in self.store.runs():
            self.store.close()
            raise ArmbenchError(f"{self.run_dir / STORE_NAME} holds no run {self.run_key} (named by run.json); "
                                f"run armbench analyze on that folder again")
        self.store.run_key = self.run_key  # read only: start_run would write
        try:
            frame = pd.read_parquet(self.run_dir / TABLE_NAME)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise ArmbenchError(f"{self.run_dir / TABLE_NAME} is unreadable ({type(exc).__name__}: {exc}); "
                                f"run armbench analyze on that folder again") from None
        for col in ("split", "sample_id"):
            if col not in frame.columns:
                raise ArmbenchError(f"{self.run_dir / TABLE_NAME} has no {col} column; run armbench analyze again")
        self.frame = frame.reset_index(drop=True)
        self.frame["split"] = self.frame["split"].astype(str)
        self.frame["sample_id"] = self.frame["sample_id"].astype(str)
        self.index: dict[tuple[str, str], int] = {k: i for i, k in enumerate(zip(self.frame["split"],
                                                                                  self.frame["sample_id"]))}
        self.settings = self._settings()
        self.columns = self._columns()
        self._dataset: Any = None
        self._dataset_error: str | None = None
        self._samples: dict[tuple[str, str], Any] | None = None
        self._lock = threading.RLock()
        self._frames: OrderedDict[tuple, Any] = OrderedDict()
        self._cache_images = cache_images

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ settings, dataset
    def _settings(self) -> Any:
        from armbench_segmentation.config import Settings

        stored = self.info.get("settings") or {}
        flat = {f"{section}.{k}": v for section, values in stored.items() if isinstance(values, dict)
                for k, v in values.items()}
        try:
            return Settings().replace(flat)
        except ArmbenchError as exc:
            logger.warning("run.json settings are not usable (%s); using the packaged defaults", exc)
            return Settings()

    @property
    def dataset(self) -> Any:
        """The run's dataset, opened on first use; None when unavailable (``dataset_error`` says why)."""
        with self._lock:
            if self._dataset is None and self._dataset_error is None:
                from armbench_segmentation.data.coco import ArmbenchDataset

                try:
                    self._dataset = ArmbenchDataset(self.settings.data.path, self.settings.data)
                except ArmbenchError as exc:  # the page gets no path: the reason is logged here
                    self._dataset_error = ("the run's dataset cannot be opened (the serve command's log says why); "
                                           "images are unavailable, the stored results are shown")
                    logger.warning("images unavailable: %s", exc)
            return self._dataset

    @property
    def dataset_error(self) -> str | None:
        _ = self.dataset
        return self._dataset_error

    def page_text(self, text: str) -> str:
        """A message for the page: the dataset's and the run's absolute folders removed (paths
        become relative to them, e.g. ``images/x.jpg``)."""
        roots = {str(self.run_dir), str(self.run_dir.resolve()), str(self.settings.data.path)}
        if self._dataset is not None:
            roots |= {str(self._dataset.root), str(Path(self._dataset.root).resolve())}
        for root in sorted((r for r in roots if r and r not in (".", "/")), key=len, reverse=True):
            text = text.replace(root.rstrip("/") + "/", "").replace(root, ".")
        return text

    def dataset_sample(self, split: str, sample_id: str) -> Any:
        """The dataset's Sample for a stored sample; SampleError when the dataset lacks it."""
        ds = self.dataset
        if ds is None:
            raise SampleError(sample_id, self._dataset_error or "dataset unavailable")
        with self._lock:
            if self._samples is None:
                self._samples = {}
                for sp in SPLITS:
                    try:
                        for s in ds.all_samples(sp):
                            self._samples[(s.split, s.sample_id)] = s
                    except ArmbenchError as exc:
                        logger.warning("split %s of the dataset is unavailable: %s", sp, exc)
        sample = self._samples.get((split, sample_id))
        if sample is None:
            raise SampleError(sample_id, f"not in the {split} split of the run's dataset any more; images unavailable")
        return sample

    # ------------------------------------------------------------------ table and columns
    def _columns(self) -> dict[str, ColumnInfo]:
        import pandas as pd

        out: dict[str, ColumnInfo] = {}
        for c in self.frame.columns:
            c = str(c)
            if c in NOT_COLOURS:
                continue
            s = self.frame[c]
            if c in ("cluster", "split") or pd.api.types.is_bool_dtype(s) or (
                    not pd.api.types.is_numeric_dtype(s) and s.nunique(dropna=True) <= MAX_CATEGORIES):
                if s.notna().any():
                    out[c] = ColumnInfo(c, "categorical", _definition(c))
            elif pd.api.types.is_numeric_dtype(s) and s.notna().any():
                out[c] = ColumnInfo(c, "numeric", _definition(c))
        return out

    def has(self, split: str, sample_id: str) -> bool:
        return (split, sample_id) in self.index

    def points(self) -> dict[str, Any]:
        """The map's base payload: ids, splits, clusters, coordinates (aligned lists)."""
        import pandas as pd

        f = self.frame
        splits = [s for s in SPLITS if s in set(f["split"])] + sorted(set(f["split"]) - set(SPLITS))
        code = {s: i for i, s in enumerate(splits)}
        xy = {c: (pd.to_numeric(f[c], errors="coerce").to_numpy(np.float64, na_value=np.nan) if c in f.columns
                  else np.zeros(len(f))) for c in ("map_x", "map_y")}
        clusters = (pd.to_numeric(f["cluster"], errors="coerce").fillna(-1).astype(int).tolist()
                    if "cluster" in f.columns else [0] * len(f))
        return {
            "ids": f["sample_id"].tolist(), "split": [code[s] for s in f["split"]], "splits": splits,
            "x": _rounded(xy["map_x"], 6), "y": _rounded(xy["map_y"], 6), "cluster": clusters,
            "clusters": sorted(set(clusters)),
        }

    def column(self, name: str) -> dict[str, Any]:
        """One column for the map: numeric ``values`` or categorical ``codes`` + ``categories``."""
        import pandas as pd

        info = self.columns.get(name)
        if info is None:
            raise KeyError(name)
        s = self.frame[name]
        if info.kind == "numeric":
            out = {"name": name, "kind": "numeric", "definition": info.definition,
                   "values": _rounded(pd.to_numeric(s, errors="coerce").to_numpy(np.float64, na_value=np.nan))}
        else:
            text = s.map(lambda v: None if _json_scalar(v) is None else str(_json_scalar(v)))
            if name == "cluster":
                cats = [str(c) for c in sorted({int(v) for v in pd.to_numeric(s, errors="coerce").dropna()})]
            elif name == "split":
                cats = [c for c in SPLITS if c in set(text.dropna())] + sorted(set(text.dropna()) - set(SPLITS))
            else:
                cats = sorted(set(text.dropna()))
            code = {c: i for i, c in enumerate(cats)}
            out = {"name": name, "kind": "categorical", "definition": info.definition, "categories": cats,
                   "codes": [code.get(v, -1) if v is not None else -1 for v in text]}
        return out

    def clusters(self) -> list[dict[str, Any]]:
        """clusters.csv rows (cluster, size, mean_loss, over_rate, under_rate, insight)."""
        import pandas as pd

        path = self.run_dir / "clusters.csv"
        if not path.is_file():
            return []
        try:
            table = pd.read_csv(path, keep_default_na=True)
        except Exception as exc:  # a damaged optional file: the map still works
            logger.warning("%s is unreadable (%s); no cluster insights", path, exc)
            return []
        keep = [c for c in ("cluster", "size", "mean_loss", "over_rate", "under_rate", "insight") if c in table]
        return [{k: _json_scalar(v) for k, v in row.items()} for row in table[keep].to_dict("records")]

    def meta_model(self) -> str:
        """The model's file name (never its absolute path)."""
        return Path(str(self.info.get("model_path") or "")).name

    def meta(self) -> dict[str, Any]:
        """What the page shows about the run: no absolute path (model by file name)."""
        counts = self.frame["split"].value_counts().to_dict()
        model = self.meta_model()
        return {
            "run_key": self.run_key, "model": model, "model_sha256": self.info.get("model_sha256"),
            "package_version": self.info.get("package_version"), "n_samples": len(self.frame),
            "counts": {k: int(v) for k, v in counts.items()},
            "columns": [{"name": c.name, "kind": c.kind, "definition": c.definition} for c in self.columns.values()],
            "default_color": "loss" if "loss" in self.columns else next(iter(self.columns), None),
            "clusters": self.clusters(), "dataset_available": self.dataset_error is None,
            "dataset_note": self.dataset_error, "error_kinds": list(_error_kinds()),
            "table_columns": [c for c in ("loss", "error_rate", "over_segmented_count", "under_segmented_count",
                                          "duplicate_count", "fp", "fn", "f1", "unc_mask_entropy", "cluster")
                              if c in self.frame.columns],
        }

    # ------------------------------------------------------------------ one sample
    def sample(self, split: str, sample_id: str) -> dict[str, Any]:
        """The sample view's data: the row, the stored instance rows, the involved instances
        per error kind with the stored count each one must equal."""
        from armbench_segmentation.metrics.sample_evaluation import COUNT_COLUMNS, COUNTED_SIDE

        i = self.index[(split, sample_id)]
        row = {str(k): _json_scalar(v) for k, v in self.frame.iloc[i].items()}
        facts = self.store.sample_facts(split, sample_id)
        errors = {}
        if facts is not None:
            for kind in _error_kinds():
                ids = facts["involved"].get(kind, {"gt": [], "pred": []})
                column = COUNT_COLUMNS[kind]
                errors[kind] = {"gt": list(ids["gt"]), "pred": list(ids["pred"]), "counted_side": COUNTED_SIDE[kind],
                                "counted": len(ids[COUNTED_SIDE[kind]]), "count_column": column,
                                "stored_count": row.get(column)}
        image_note = None
        try:
            self.dataset_sample(split, sample_id)
        except SampleError as exc:
            image_note = self.page_text(str(exc))
        return {
            "split": split, "sample_id": sample_id, "index": i, "row": row,
            "labeled": split in LABELED_SPLITS,
            "instances": (facts or {}).get("instances", []), "errors": errors,
            "hard_region": (facts or {}).get("hard_region"), "frame": (facts or {}).get("frame"),
            "has_facts": facts is not None, "image_available": image_note is None, "image_note": image_note,
        }

    def _display(self, split: str, sample_id: str, side: int) -> tuple[np.ndarray, Any, Any, Any]:
        """(image, gt, pred, letterbox) in the display frame: the original scaled so its long
        side is ``side`` (never upscaled), no padding. GT rows in the loader's order, checked
        against the stored annotation ids; predictions in the stored (decoder) order."""
        from pycocotools import mask as mask_utils

        from armbench_segmentation.codecs import corner_xywh_to_xyxy
        from armbench_segmentation.data.letterbox import Letterbox
        from armbench_segmentation.structures import Instances

        sample = self.dataset_sample(split, sample_id)
        h, w = sample.hw
        scale = min(1.0, side / max(h, w))
        dh, dw = max(1, round(h * scale)), max(1, round(w * scale))
        key = (split, sample_id, dh, dw)
        with self._lock:
            if key in self._frames:
                self._frames.move_to_end(key)
                return self._frames[key]
        lb = Letterbox.compute(sample.hw, (dh, dw))
        image = lb.apply_image(self.dataset.load_image(sample, max(dh, dw)))
        gt = None
        if split in LABELED_SPLITS:
            gt = self.dataset.ground_truth(sample, lb)
            facts = self.store.sample_facts(split, sample_id) or {}
            stored = [r.get("annotation_id") for r in facts.get("instances", []) if r.get("kind") == "gt"]
            if facts and [int(v) for v in gt.ids] != [int(v) for v in stored if v is not None]:
                raise SampleError(sample_id, "the dataset's annotations differ from the ones the run evaluated "
                                             "(dataset changed since the run); run armbench analyze again")
        records = self.store.sample_predictions(split, sample_id) or []
        size = (lb.out_h, lb.out_w)
        if records:
            masks = np.zeros((len(records), *size), bool)
            for k, r in enumerate(records):  # one original-size mask at a time
                rle = {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode("ascii")}
                masks[k] = lb.masks_to_model(mask_utils.decode(rle).astype(bool)[None])[0]
            boxes = lb.boxes_to_model(corner_xywh_to_xyxy(np.array([r["bbox"] for r in records], np.float64)))
            pred = Instances(boxes=boxes, class_ids=np.array([r["class_index"] for r in records]), image_size=size,
                             masks=masks, scores=np.array([r["score"] for r in records], np.float32))
        else:
            pred = Instances.empty(size, with_scores=True)
        value = (image, gt, pred, lb)
        with self._lock:
            self._frames[key] = value
            while len(self._frames) > self._cache_images:
                self._frames.popitem(last=False)
        return value

    def render(self, split: str, sample_id: str, side: int = DEFAULT_SIDE, layers: tuple[str, ...] = (),
               error_kind: str | None = None) -> bytes:
        """JPEG of the sample at ``side`` (clamped to [MIN_SIDE, MAX_SIDE]) with the chosen
        layers: ``heat`` (the entropy of the stored predictions' scores painted on their
        masks, and the stored hard-region window), then either the instances of one
        ``error_kind`` (exactly ``facts["involved"][kind]``) or ``gt`` / ``pred`` (all).

        Raises:
            SampleError: image unavailable, no stored facts, dataset changed since the run.
            ValueError: unknown layer or error kind.
        """
        import cv2

        from armbench_segmentation.analysis.report import encode_image
        from armbench_segmentation.metrics.uncertainty import entropy_map
        from armbench_segmentation.visualize import draw_comparison, draw_error_instances, heatmap_overlay

        bad = set(layers) - set(LAYERS)
        if bad:
            raise ValueError(f"unknown layers {sorted(bad)}; expected some of {list(LAYERS)}")
        if error_kind is not None and error_kind not in _error_kinds():
            raise ValueError(f"unknown error kind {error_kind!r}; expected one of {list(_error_kinds())}")
        side = clamp_side(side)
        image, gt, pred, lb = self._display(split, sample_id, side)
        names = tuple(self.settings.data.class_names)
        facts = self.store.sample_facts(split, sample_id)
        out = image
        if "heat" in layers:  # the segmentation classes' predictions, as the hard-region window
            from armbench_segmentation.metrics.segmentation import class_indices

            keep = np.isin(pred.class_ids, class_indices(self.settings.metrics.segmentation_classes, names))
            heat = entropy_map(pred[keep])  # (h, w) in [0, 1] bits; 0 where no prediction
            out = np.where((heat > 0)[:, :, None], heatmap_overlay(out, heat, alpha=0.6, vmin=0.0, vmax=1.0), out)
            window = (facts or {}).get("hard_region")
            if window is not None:
                from armbench_segmentation.data.letterbox import Letterbox

                model_lb = Letterbox.compute((lb.orig_h, lb.orig_w), self.settings.data.image_size)
                box = lb.boxes_to_model(model_lb.boxes_to_original(np.array([window], np.float32)))[0]
                x1, y1, x2, y2 = (int(round(float(v))) for v in box)
                out = out.copy()
                cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), (255, 255, 255),
                              max(1, round(max(out.shape[:2]) / 300)))
        if error_kind is not None:
            if facts is None:
                raise SampleError(sample_id, "no stored evaluation facts; run armbench analyze on the folder again")
            if split in LABELED_SPLITS:
                out = draw_error_instances(out, gt, pred, facts["involved"], error_kind, class_names=names)
        else:
            show_gt = gt if "gt" in layers else None
            show_pred = pred if "pred" in layers else None
            if show_gt is not None or show_pred is not None:
                out = draw_comparison(out, show_gt, show_pred, class_names=names)
        return encode_image(out, fmt="jpg", quality=88)


def clamp_side(side: Any) -> int:
    """The image endpoint's long side: an integer clamped to [MIN_SIDE, MAX_SIDE]."""
    try:
        value = int(side)
    except (TypeError, ValueError):
        return DEFAULT_SIDE
    return max(MIN_SIDE, min(MAX_SIDE, value))


def _error_kinds() -> tuple[str, ...]:
    from armbench_segmentation.metrics.sample_evaluation import ERROR_KINDS

    return ERROR_KINDS


def _rounded(values: np.ndarray, digits: int = 5) -> list[float | None]:
    out: list[float | None] = []
    for v in np.asarray(values, np.float64).tolist():
        if not math.isfinite(v):
            out.append(None)
        elif v.is_integer() and abs(v) < 2 ** 53:
            out.append(int(v))
        else:
            out.append(float(f"{v:.{digits}g}"))
    return out

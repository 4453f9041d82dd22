"""The analysis engine: dataset -> per-sample results -> map, clusters, picks -> exports, dashboard.

``run_analysis(settings, out_dir)`` is what ``armbench analyze`` calls. It writes only
into ``out_dir`` (and, with ``synthetic=True``, the synthetic dataset cache):

    results.sqlite                   the results store (resumable; see analysis/store.py)
    samples.csv, samples.parquet     one row per sample (metrics, unc_*, meta_*, map_x/map_y, cluster)
    predictions_<split>.json         COCO results per split (original resolution)
    errors.csv, run.json             failed samples; provenance of the run
    clusters.csv                     one row per cluster with its insight
    label_picks.csv|.coco.json|.provenance.json   images to label next (analysis.selection), with
    label_picks.label_studio.json|.label_config.xml  the model's predictions as pre-annotations
    prune_keep.csv, prune_drop.csv, prune_summary.csv, prune.provenance.json, train_pruned.json
    galleries/over|under/*.jpg       worst over/under-segmented samples
    dashboard.html, assets/          the offline dashboard and, beside it, plotly.js, thumbnails, larger views (analysis.report)

Steps: resolve the dataset (generating the synthetic one if asked) -> open the model ->
select the run in the store (run key) -> stream unfinished samples through the runner ->
read the current selection back FROM THE STORE -> map, clusters, picks, pruning -> exports
-> dashboard. A killed run resumes at the runner step.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from armbench_segmentation.analysis import exports
from armbench_segmentation.analysis.runner import RunSummary, open_run, run_samples, selected_samples
from armbench_segmentation.analysis.store import ResultsStore
from armbench_segmentation.codecs import corner_xywh_to_xyxy
from armbench_segmentation.config import DEFAULT_DATASET_DIR, Settings
from armbench_segmentation.splits import UNLABELED

if TYPE_CHECKING:  # pragma: no cover
    from armbench_segmentation.analysis.report import ErrorView

logger = logging.getLogger(__name__)

STORE_NAME = "results.sqlite"
APP_NAME = "armbench-segmentation"


# ---------------------------------------------------------------------------- cache folders
def cache_root(env: dict[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/armbench-segmentation`` (default ``~/.cache/armbench-segmentation``)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or ""
    root = Path(base).expanduser() if base and Path(base).expanduser().is_absolute() else Path("~/.cache").expanduser()
    return root / APP_NAME


def default_out_dir(dataset_name: str, env: dict[str, str] | None = None) -> Path:
    """Where ``armbench analyze`` writes when no ``--out`` is given (never the working directory)."""
    return cache_root(env) / "runs" / (dataset_name or "dataset")


@dataclass(frozen=True)
class SyntheticSpec:
    """The default synthetic dataset: small enough for a full analysis in minutes on 2 cores."""

    n_train: int = 60
    n_val: int = 60
    n_unlabeled: int = 60
    width: int = 2448
    height: int = 2048
    seed: int = 0

    def folder_name(self) -> str:
        from armbench_segmentation.data.synth import GENERATOR_VERSION

        return (f"synthetic-v{GENERATOR_VERSION}-{self.n_train}-{self.n_val}-{self.n_unlabeled}"
                f"-{self.width}x{self.height}-seed{self.seed}")

    def describe(self) -> str:
        return (f"{self.n_train} train / {self.n_val} val / {self.n_unlabeled} unlabeled images "
                f"at {self.width}x{self.height}")


DEFAULT_SYNTHETIC = SyntheticSpec()


def _has_dataset(folder: Path) -> bool:
    return all((folder / n).exists() for n in ("images", "train.json", "val.json", "test.json"))


def _remove_stale_partials(folder: Path) -> None:
    """Remove ``<folder>.tmp-<pid>`` left by generations that were killed (their pid is gone)."""
    for partial in folder.parent.glob(f"{folder.name}.tmp-*"):
        try:
            pid = int(partial.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            continue


def ensure_synthetic_dataset(spec: SyntheticSpec = DEFAULT_SYNTHETIC, folder: Path | None = None,
                             progress: bool = True) -> Path:
    """The synthetic dataset folder, generated on first use (atomically: a killed generation
    leaves no half dataset behind; the next call starts over)."""
    from armbench_segmentation.data.synth import generate_dataset, is_synthetic_dataset

    folder = Path(folder) if folder is not None else cache_root() / spec.folder_name()
    if is_synthetic_dataset(folder) and _has_dataset(folder):
        logger.info("using the synthetic dataset (%s) at %s", spec.describe(), folder)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info("generating the synthetic dataset once (%s) into %s ...", spec.describe(), folder)
    t0 = time.monotonic()
    try:
        generate_dataset(tmp, spec.n_train, spec.n_val, spec.n_unlabeled, seed=spec.seed, width=spec.width,
                         height=spec.height, progress=progress)
    except BaseException:  # interrupted or failed: no half dataset left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first, or a stale folder is in the way
        if is_synthetic_dataset(folder) and _has_dataset(folder):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
    logger.info("synthetic dataset ready in %.0f s", time.monotonic() - t0)
    return folder


def resolve_dataset(settings: Settings, synthetic: bool, spec: SyntheticSpec = DEFAULT_SYNTHETIC,
                    progress: bool = True) -> tuple[Settings, str]:
    """Settings pointing at the dataset to analyse, and a one-line description of it.

    With ``synthetic`` and no dataset configured (``data.path`` at its default), the default
    synthetic dataset is generated once into the cache; with a configured path that holds
    no dataset yet, it is generated there. Split sizes larger than the synthetic splits are
    capped to them (no "fewer images than requested" warnings).
    """
    path = Path(settings.data.path)
    if not synthetic:
        return settings, f"dataset at {path}"
    if path == DEFAULT_DATASET_DIR or not str(settings.data.path):
        folder = ensure_synthetic_dataset(spec, progress=progress)
        where = f"synthetic dataset ({spec.describe()}, generated once, cached at {folder})"
    elif _has_dataset(path):
        logger.info("--synthetic: %s already holds a dataset; using it as is", path)
        return settings, f"dataset at {path}"
    else:
        folder = ensure_synthetic_dataset(spec, folder=path, progress=progress)
        where = f"synthetic dataset ({spec.describe()}) generated at {folder}"
    sizes = {"train": spec.n_train, "val": spec.n_val, UNLABELED: spec.n_unlabeled}
    overrides: dict[str, Any] = {"data.path": str(folder)}
    for split, n in sizes.items():
        current = settings.data.split_size(split)
        overrides[f"data.{split}_size"] = n if current is None else min(current, n)
    return settings.replace(overrides), where


# ---------------------------------------------------------------------------- insights
@dataclass
class Insights:
    projection: Any = None  # projection.Projection (xy aligned with the frame)
    clusters: Any = None  # clustering.ClusterResult
    picks: Any = None  # selection.LabelingResult
    pruning: Any = None  # selection.PruneResult


def compute_insights(frame: Any, embeddings: np.ndarray, settings: Settings, store: ResultsStore,
                     model_hash: str | None = None) -> tuple[Any, Insights]:
    """Map, clusters, labeling picks and pruning decisions.

    Returns the frame with ``map_x``, ``map_y`` and ``cluster`` added, and the insight
    objects. The map is cached in the store (same embeddings and parameters: no refit).
    """
    from armbench_segmentation.analysis.clustering import cluster
    from armbench_segmentation.analysis.projection import fit_projection
    from armbench_segmentation.analysis.selection import pick_for_labeling, prune

    a = settings.analysis
    seed = int(settings.data.seed)
    out = Insights()
    frame = frame.copy()
    out.projection = fit_projection(frame, embeddings, method=a.projection, seed=seed, cache=store)
    frame["map_x"] = out.projection.xy[:, 0].astype(np.float64)
    frame["map_y"] = out.projection.xy[:, 1].astype(np.float64)
    if len(frame) == 0:
        frame["cluster"] = np.zeros(0, np.int64)
        return frame, out
    out.clusters = cluster(frame, embeddings, method=a.clustering, n_clusters=a.n_clusters, seed=seed)
    frame["cluster"] = out.clusters.labels.astype(np.int64)
    if (frame["split"] == UNLABELED).any() and a.label_budget >= 1:
        out.picks = pick_for_labeling(frame, embeddings, settings, model_hash=model_hash)
    if (frame["split"] == "train").any():
        out.pruning = prune(frame, embeddings, settings, cluster_labels=out.clusters.labels, model_hash=model_hash)
    return frame, out


# ---------------------------------------------------------------------------- images for the dashboard
class SampleViews:
    """Images for the dashboard, drawn from the STORED facts of each sample (which instances
    are involved in which error, the hard-region window), never recomputed.

    ``error_view(sample_id, kind)``: the model-frame image with the GT objects and predictions
    involved in one kind of error (``ErrorView``). ``hard_region_crop(sample_id)``: the
    original-resolution crop of the stored hard-region window. ``thumbnail(sample_id)``: a
    small RGB thumbnail (reduced JPEG decode). All raise SampleError (an ArmbenchError) when
    the image cannot be read or the sample has no stored facts.
    """

    def __init__(self, dataset: Any, store: ResultsStore, settings: Settings, samples: list[Any]):
        self.dataset, self.store, self.settings = dataset, store, settings
        self.samples: dict[str, Any] = {}
        for s in samples:  # sample ids are unique per split; ARMBench splits are disjoint
            self.samples.setdefault(s.sample_id, s)

    def _facts(self, sample: Any) -> dict:
        from armbench_segmentation.errors import SampleError

        facts = self.store.sample_facts(sample.split, sample.sample_id)
        if facts is None:
            raise SampleError(sample.sample_id, "no stored evaluation facts (not finished in this run); rerun "
                                                "armbench analyze on the same --out folder")
        return facts

    def _model_frame_predictions(self, sample: Any, letterbox: Any) -> Any:
        """The stored predictions (original resolution), in decoder order, drawn back in the
        model frame (for display only: which instances are drawn comes from the facts)."""
        from pycocotools import mask as mask_utils

        from armbench_segmentation.structures import Instances

        records = self.store.sample_predictions(sample.split, sample.sample_id) or []
        size = (letterbox.out_h, letterbox.out_w)
        if not records:
            return Instances.empty(size, with_scores=True)
        masks = np.zeros((len(records), *size), bool)
        for i, r in enumerate(records):  # one original-size mask at a time
            rle = {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode("ascii")}
            masks[i] = letterbox.masks_to_model(mask_utils.decode(rle).astype(bool)[None])[0]
        boxes = letterbox.boxes_to_model(corner_xywh_to_xyxy(np.array([r["bbox"] for r in records], np.float64)))
        return Instances(boxes=boxes, class_ids=np.array([r["class_index"] for r in records]), image_size=size,
                         masks=masks, scores=np.array([r["score"] for r in records], np.float32))

    def error_view(self, sample_id: str, kind: str) -> ErrorView:
        from armbench_segmentation.analysis.report import ErrorView  # noqa: F811 (imported here: report loads pandas)
        from armbench_segmentation.metrics.sample_evaluation import COUNTED_SIDE
        from armbench_segmentation.visualize import draw_error_instances

        sample = self.samples[sample_id]
        facts = self._facts(sample)
        loaded = self.dataset.load(sample)
        pred = self._model_frame_predictions(sample, loaded.letterbox)
        involved = facts["involved"]
        image = draw_error_instances(loaded.image, loaded.gt, pred, involved, kind,
                                     class_names=self.settings.data.class_names)
        ids = involved[kind]
        return ErrorView(image, kind, tuple(ids["gt"]), tuple(ids["pred"]), tuple(ids[COUNTED_SIDE[kind]]))

    def hard_region_crop(self, sample_id: str) -> np.ndarray:
        """The original-resolution crop of the sample's stored hard-region window (the
        model-frame window of highest prediction entropy of the segmentation classes, from
        the prototype probabilities that ``unc_mask_entropy`` reads), mapped back through the
        letterbox. (h, w, 3) uint8 RGB; the whole image when there is no window."""
        sample = self.samples[sample_id]
        window = self._facts(sample)["hard_region"]
        image = self.dataset.load_image(sample)  # original resolution (EXIF-oriented)
        if window is None:
            return image
        from armbench_segmentation.data.letterbox import Letterbox

        lb = Letterbox.compute(sample.hw, self.settings.data.image_size)
        box = lb.boxes_to_original(np.array([window], np.float32))[0]
        h, w = image.shape[:2]
        sx, sy = w / lb.orig_w, h / lb.orig_h  # 1.0 unless decoded reduced
        cx1, cy1 = int(np.floor(box[0] * sx)), int(np.floor(box[1] * sy))
        cx2, cy2 = int(np.ceil(box[2] * sx)), int(np.ceil(box[3] * sy))
        if cx2 <= cx1 or cy2 <= cy1:  # window entirely in the letterbox padding
            return image
        return np.ascontiguousarray(image[cy1:cy2, cx1:cx2])

    def thumbnail(self, sample_id: str) -> np.ndarray:
        from armbench_segmentation.visualize import thumbnail

        from armbench_segmentation.analysis.report import THUMB_SIDE

        return thumbnail(self.dataset.load_image(self.samples[sample_id], target_size=THUMB_SIDE), THUMB_SIDE)


# ---------------------------------------------------------------------------- the engine
@dataclass
class AnalysisResult:
    out_dir: Path
    dataset: str
    store_path: Path
    summary: RunSummary
    n_samples: int
    files: dict[str, Path] = field(default_factory=dict)
    dashboard: Path | None = None
    insights: Insights | None = None


def run_analysis(settings: Settings, out_dir: str | Path, synthetic: bool = False, *, resume: bool = True,
                 progress: bool = True, max_samples: int | None = None,
                 synthetic_spec: SyntheticSpec = DEFAULT_SYNTHETIC, report: bool = True,
                 process_workers: int | None = None, crops: bool = True, engine: str = "local",
                 ray_options: Any = None) -> AnalysisResult:
    """Run the whole local analysis and write its outputs into ``out_dir``.

    Args:
        settings: the run's settings (dataset, model, metrics, analysis parameters).
        out_dir: output folder (created); holds the resumable store, so running again with
            the same folder resumes a killed run.
        synthetic: analyse the synthetic dataset (generated once into the cache) when no
            dataset is configured.
        resume: False discards the stored samples of this run first (``--no-resume``).
        max_samples: process at most this many new samples, then build the outputs from what
            is stored (partial runs).
        report: write the HTML dashboard.
        process_workers: processes computing per-sample metrics (None: automatic, 0 on
            machines with <= 4 cores; see ``runner.default_process_workers``).
        engine: ``local`` (this machine, ``runner.run_samples``) or ``ray`` (a Ray cluster,
            ``ray_engine.run_samples_ray`` with ``ray_options``, a ``ray_engine.RayOptions``);
            same results, same store, either resumes the other.
    Raises:
        DatasetError / ModelError / ConfigError with a message saying how to fix it.
    """
    from armbench_segmentation.data.coco import ArmbenchDataset
    from armbench_segmentation.model.onnx_model import SegmentationModel

    out_dir = Path(out_dir).expanduser()
    settings, where = resolve_dataset(settings, synthetic, synthetic_spec, progress)
    dataset = ArmbenchDataset(settings.data.path, settings.data)
    model = SegmentationModel(settings.model.path, settings.model, settings.data.class_names)
    if not model.has_embedding:
        logger.warning("the model %s has no 'embedding' output: the map uses pooled mask prototypes instead "
                       "(coarser); export the model with an embedding output for a better map", model.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(out_dir / STORE_NAME)
    try:
        open_run(store, dataset, model, settings, resume=resume)
        if engine == "ray":
            from armbench_segmentation.analysis.ray_engine import RayOptions, run_samples_ray

            summary = run_samples_ray(dataset, model, store, settings, options=ray_options or RayOptions(),
                                      max_samples=max_samples, progress=progress)
        elif engine == "local":
            summary = run_samples(dataset, model, store, settings, max_samples=max_samples, progress=progress,
                                  process_workers=process_workers)
        else:
            raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
        samples = selected_samples(dataset)
        frame = store.frame(keys=[(s.split, s.sample_id) for s in samples])
        embeddings = store.embeddings(frame) if len(frame) else np.zeros((0, 0), np.float32)
        frame, insights = compute_insights(frame, embeddings, settings, store, model_hash=model.sha256)
        result = AnalysisResult(out_dir=out_dir, dataset=where, store_path=store.path, summary=summary,
                                n_samples=len(frame), insights=insights)
        views = SampleViews(dataset, store, settings, samples)
        result.files.update(write_outputs(out_dir, frame, insights, store, dataset, settings, where,
                                          crop_provider=views.hard_region_crop if crops else None))
        if report:
            result.dashboard = write_dashboard(out_dir, frame, insights, views, store, settings)
            result.files["dashboard"] = result.dashboard
        return result
    finally:
        store.close()


def write_outputs(out_dir: Path, frame: Any, insights: Insights, store: ResultsStore, dataset: Any,
                  settings: Settings, where: str, crop_provider: Any = None) -> dict[str, Path]:
    """Tables, COCO predictions, errors, provenance, labeling picks (with ``crop_provider``:
    crops of each pick's hardest region under ``crops/``) and pruning lists."""
    from armbench_segmentation.analysis import selection

    files: dict[str, Path] = {}
    files["samples_csv"], files["samples_parquet"] = exports.write_table(frame, out_dir)
    files["instances_csv"], files["instances_parquet"] = exports.write_instances(
        store, out_dir, keys=zip(frame["split"], frame["sample_id"]))
    for split, path in exports.write_coco_predictions(store, dataset, out_dir, settings.data.class_names,
                                                      frame=frame).items():
        files[f"predictions_{split}"] = path
    files["errors"] = exports.write_errors(store, out_dir)
    files["run"] = exports.write_run_info(store, out_dir, {"dataset": where})
    if insights.clusters is not None:
        path = out_dir / "clusters.csv"
        files["clusters"] = exports.write_csv(insights.clusters.table(), path)
    if insights.picks is not None:
        categories = dataset.coco(UNLABELED).dataset.get("categories") or None
        for name, path in selection.write_label_picks(out_dir, insights.picks, frame, categories=categories,
                                                     crop_provider=crop_provider, store=store,
                                                     dataset=dataset).items():
            files[f"label_picks_{name}"] = path
    if insights.pruning is not None:
        for name, path in selection.write_prune_lists(out_dir, insights.pruning).items():
            files[f"prune_{name}"] = path
        pruned = out_dir / "train_pruned.json"
        selection.write_pruned_coco(dataset.split_path("train"), pruned, insights.pruning.keep_ids)
        files["train_pruned"] = pruned
    return files


def write_dashboard(out_dir: Path, frame: Any, insights: Insights, views: SampleViews, store: ResultsStore,
                    settings: Settings) -> Path:
    """Galleries of the worst over/under segmentation and the offline HTML dashboard, whose
    larger views show the sample's GT and its STORED predictions as two toggled layers drawn
    by ``visualize.draw_comparison`` (model frame, the frame of the galleries)."""
    from armbench_segmentation.analysis.report import (
        GALLERY_KINDS, SampleLayers, build_gallery, layer_from_drawing, write_report,
    )
    from armbench_segmentation.visualize import draw_comparison

    names = settings.data.class_names

    def layers(sample_id: str) -> SampleLayers:
        sample = views.samples[sample_id]
        loaded = views.dataset.load(sample)
        pred = views._model_frame_predictions(sample, loaded.letterbox)
        hw = loaded.image.shape[:2]
        return SampleLayers(loaded.image, layer_from_drawing(lambda im: draw_comparison(im, loaded.gt, None), hw),
                            layer_from_drawing(lambda im: draw_comparison(im, None, pred, class_names=names), hw))

    n = int(settings.analysis.gallery_size)
    galleries = [build_gallery(frame, kind, views.error_view, n=n, out_dir=out_dir) for kind in GALLERY_KINDS]
    provenance = {"run_key": store.run_key, **store.run_info()}
    return write_report(out_dir, frame, insights.projection, clusters=insights.clusters, label_picks=insights.picks,
                        prune_result=insights.pruning, galleries=galleries, thumbnails=views.thumbnail,
                        layers=layers, provenance=provenance, seed=int(settings.data.seed))

"""The setup the engine benchmarks share: settings, dataset, model and the timed subset.

``bench_analysis.py`` and ``bench_scaling.py`` both time the runner on the first
``samples`` images of one dataset (the synthetic ARMBench-size totes by default, generated
once into the cache) with the shipped model or ``--model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TimedSamples:
    settings: Any  # armbench_segmentation.config.Settings, data.path set
    dataset: Any  # the full ArmbenchDataset
    model: Any  # SegmentationModel
    samples: list  # the timed samples, in the runner's order
    subset: Any  # the dataset restricted to ``samples`` (what the runner is given)
    description: str  # where the data came from, for the benchmark's first line


class _Subset:
    """The same dataset restricted to the timed samples."""

    def __init__(self, dataset: Any, samples: list):
        self._dataset, self._keep = dataset, {(s.split, s.sample_id) for s in samples}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)

    def samples(self, split: str) -> list:
        return [s for s in self._dataset.samples(split) if (s.split, s.sample_id) in self._keep]


def timed_samples(model_path: Path | None, dataset_path: Path | None, n_per_split: int, n_samples: int,
                  overrides: dict | None = None, config: Path | None = None) -> TimedSamples:
    """Settings from ``config`` plus ``overrides`` (every split 'all', CPU unless overridden),
    the dataset (``dataset_path`` or the cached synthetic one of ``n_per_split`` images per
    split), the model, and the first ``n_samples`` samples. SystemExit with the fix when the
    model file is missing."""
    from armbench_segmentation.analysis.engine import SyntheticSpec, ensure_synthetic_dataset
    from armbench_segmentation.analysis.runner import selected_samples
    from armbench_segmentation.config import load_settings
    from armbench_segmentation.data.coco import ArmbenchDataset
    from armbench_segmentation.model.onnx_model import SegmentationModel

    values = {"model.path": str(model_path) if model_path else None, "data.train_size": "all",
              "data.val_size": "all", "data.unlabeled_size": "all", "model.device": "cpu", **(overrides or {})}
    settings = load_settings(config, overrides=values, env={})
    if not Path(settings.model.path).is_file():
        raise SystemExit(f"model {settings.model.path} not found; pass --model PATH")
    if dataset_path is None:
        spec = SyntheticSpec(n_train=n_per_split, n_val=n_per_split, n_unlabeled=n_per_split)
        root = ensure_synthetic_dataset(spec, progress=False)
        description = f"synthetic {spec.describe()} ({root})"
    else:
        root, description = dataset_path, str(dataset_path)
    settings = settings.replace({"data.path": str(root)})
    dataset = ArmbenchDataset(root, settings.data)
    model = SegmentationModel(settings.model.path, settings.model, settings.data.class_names)
    samples = selected_samples(dataset)[:n_samples]
    return TimedSamples(settings, dataset, model, samples, _Subset(dataset, samples), description)

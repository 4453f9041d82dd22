"""A real run folder for the explorer tests: the analysis engine (the real pipeline, the tiny
ONNX model of tests/analysis/test_runner.py) over the tiny dataset of tests/conftest.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def make_tiny_run(base: Path, rename: dict[str, str] | None = None) -> Path:
    """Analyse the tiny dataset into ``base/out`` and return that folder. ``rename``: image
    file name -> new file name (hostile names; a '/' makes a sub-folder)."""
    from armbench_segmentation.analysis.engine import run_analysis
    from armbench_segmentation.config import load_settings

    conftest = _load("_explore_conftest", TESTS / "conftest.py")
    runner_helpers = _load("_explore_test_runner", TESTS / "analysis" / "test_runner.py")
    ds = conftest.build_tiny_dataset(base / "armbench")
    if rename:
        ds.rename_images(rename)
    model = runner_helpers.build_model(base / "m.onnx")
    cfg = base / "config.yaml"
    cfg.write_text("data:\n  image_size: 64\n  train_size: all\n  val_size: all\n  unlabeled_size: all\n"
                   "model:\n  device: cpu\n  num_threads: 1\nanalysis:\n  n_clusters: 2\n  label_budget: 3\n")
    out = base / "out"
    # the engine itself (what `armbench analyze` calls), without the static dashboard: serve does not read it
    settings = load_settings(config_path=cfg, overrides={"data.path": str(ds.root), "model.path": str(model)}, env={})
    run_analysis(settings, out, progress=False, report=False, crops=False)
    run = json.loads((out / "run.json").read_text())
    assert sum(c.get("error", 0) for c in run["counts"].values()) == 0, run["counts"]
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("explore-run"))

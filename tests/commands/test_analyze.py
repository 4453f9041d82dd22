"""``armbench analyze``: the whole engine through the CLI.

Real components throughout: ARMBench-layout datasets (the tiny fixture, or synthetic totes
at 612x512 from the generator), the real COCO loader, ONNX Runtime, metrics and store.
The model is a tiny YOLOv5-seg-shaped ONNX graph built in tests/analysis/test_runner.py
(outputs depend on the image), except for the e2e test, which runs the shipped model and
is skipped when models/armbench-yolov5s-seg.onnx is absent.

The kill test starts the CLI in a subprocess, SIGKILLs it once some samples are stored,
runs it again and compares with an uninterrupted run: identical rows, embeddings and
predictions for every sample, and no finished sample written twice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from armbench_segmentation.analysis.store import ResultsStore

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = ROOT / "models" / "armbench-yolov5s-seg.onnx"


def _runner_helpers():
    """build_model / snapshot from tests/analysis/test_runner.py (no tests/__init__.py)."""
    spec = importlib.util.spec_from_file_location("_analysis_test_runner", ROOT / "tests" / "analysis" / "test_runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _runner_helpers()


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMBENCH_")}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    return env


def _config(tmp_path: Path, image_size: int = 64) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"data:\n  image_size: {image_size}\n  train_size: all\n  val_size: all\n  unlabeled_size: all\n"
                    "model:\n  device: cpu\n  num_threads: 1\nanalysis:\n  n_clusters: 2\n  label_budget: 2\n")
    return path


def _main(*argv: str) -> int:
    from armbench_segmentation import cli

    return cli.main(["analyze", "--no-progress", *argv])


# ---------------------------------------------------------------------------- in-process CLI
def test_analyze_writes_every_output(tiny_dataset, tmp_path, isolated, capsys):
    model = helpers.build_model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    assert _main("--dataset", str(tiny_dataset.root), "--model", str(model), "--config", str(_config(tmp_path)),
                 "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert f"dashboard: {out / 'dashboard.html'}" in printed
    assert "8 analysed (8 computed now" in printed
    for name in ("results.sqlite", "samples.csv", "samples.parquet", "predictions_train.json", "predictions_val.json",
                 "predictions_unlabeled.json", "errors.csv", "run.json", "clusters.csv", "label_picks.csv",
                 "label_picks.coco.json", "prune_keep.csv", "train_pruned.json", "dashboard.html"):
        assert (out / name).is_file(), name
    table = pd.read_parquet(out / "samples.parquet")
    assert len(table) == 8 and table["cluster"].notna().all() and table["map_x"].notna().all()
    picks = pd.read_csv(out / "label_picks.csv")
    assert len(picks) == 2
    # one crop of the hardest region per pick, cut from the original-resolution image
    crops = sorted((out / "crops").glob("*.jpg"))
    assert [c.name.split("_", 1)[1].rsplit("_", 1)[0] for c in crops] == [str(s) for s in picks["sample_id"]]
    import cv2

    for c in crops:
        crop = cv2.imread(str(c))
        assert crop is not None and crop.ndim == 3 and min(crop.shape[:2]) > 0
    assert list(isolated.iterdir()) == []  # nothing written into the working directory

    # same command again: everything resumed, nothing computed
    assert _main("--dataset", str(tiny_dataset.root), "--model", str(model), "--config", str(_config(tmp_path)),
                 "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "(0 computed now" in printed and "8 from earlier runs" in printed


def test_no_resume_and_flags(tiny_dataset, tmp_path, isolated, capsys):
    model = helpers.build_model(tmp_path / "m.onnx")
    args = ["--dataset", str(tiny_dataset.root), "--model", str(model), "--config", str(_config(tmp_path)),
            "--out", str(tmp_path / "out"), "--projection", "pca", "--budget", "1", "--keep-fraction", "0.5"]
    assert _main(*args) == 0
    capsys.readouterr()
    assert _main(*args, "--no-resume") == 0
    assert "8 analysed (8 computed now" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "out" / "label_picks.csv")) == 1
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["settings"]["analysis"]["prune_keep_fraction"] == 0.5


def test_default_out_is_in_the_cache_not_the_working_directory(tiny_dataset, tmp_path, isolated, capsys):
    model = helpers.build_model(tmp_path / "m.onnx")
    assert _main("--dataset", str(tiny_dataset.root), "--model", str(model), "--config", str(_config(tmp_path))) == 0
    expected = tmp_path / "cache" / "armbench-segmentation" / "runs" / tiny_dataset.root.name
    assert f"output:  {expected}" in capsys.readouterr().out
    assert (expected / "dashboard.html").is_file()
    assert list(isolated.iterdir()) == []


def test_missing_dataset_says_how_to_fix(tmp_path, isolated, capsys):
    model = helpers.build_model(tmp_path / "m.onnx")
    assert _main("--model", str(model), "--out", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "armbench analyze: error:" in err and "--synthetic" in err and "--dataset" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--budget", "-1"], "--budget"), (["--keep-fraction", "0"], "--keep-fraction"),
    (["--keep-fraction", "1.5"], "--keep-fraction"), (["--batch-size", "0"], "--batch-size"),
    (["--workers", "-1"], "--workers")])
def test_bad_flags(argv, message, isolated, capsys):
    assert _main(*argv) == 1
    assert message in capsys.readouterr().err


def test_synthetic_dataset_generated_once_into_the_cache(tmp_path, isolated):
    from armbench_segmentation.analysis.engine import SyntheticSpec, resolve_dataset
    from armbench_segmentation.config import load_settings

    spec = SyntheticSpec(n_train=2, n_val=1, n_unlabeled=1, width=612, height=512)
    stale = tmp_path / "cache" / "armbench-segmentation" / f"{spec.folder_name()}.tmp-999999999"
    (stale / "images").mkdir(parents=True)  # left by a generation that was killed
    settings, where = resolve_dataset(load_settings(env={}), synthetic=True, spec=spec, progress=False)
    folder = Path(settings.data.path)
    assert folder.parent == tmp_path / "cache" / "armbench-segmentation"
    assert folder.name.startswith("synthetic-") and "2-1-1-612x512" in folder.name
    assert "synthetic dataset" in where and str(folder) in where
    assert (settings.data.train_size, settings.data.val_size, settings.data.unlabeled_size) == (2, 1, 1)
    stamp = (folder / "train.json").stat().st_mtime_ns
    again, _ = resolve_dataset(load_settings(env={}), synthetic=True, spec=spec, progress=False)
    assert Path(again.data.path) == folder and (folder / "train.json").stat().st_mtime_ns == stamp
    assert not list(folder.parent.glob("*.tmp-*"))


# ---------------------------------------------------------------------------- a real kill
@pytest.fixture(scope="module")
def synth_dataset(tmp_path_factory):
    from armbench_segmentation.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth") / "totes"
    generate_dataset(root, 6, 6, 6, seed=3, width=612, height=512, workers=1, progress=False)
    return root


def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "armbench_segmentation.cli", "analyze", "--no-progress", *args],
                            cwd=env["HOME"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stored(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM samples WHERE status='ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _computed(stdout: str) -> int:
    match = re.search(r"\((\d+) computed now", stdout)
    assert match, stdout
    return int(match.group(1))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_then_rerun_loses_nothing_and_recomputes_nothing(synth_dataset, tmp_path):
    env = _clean_env(tmp_path)
    Path(env["HOME"]).mkdir(parents=True)
    # 640-px input and a 3x3 conv of width 128 make inference take ~40 ms on one idle core, so the
    # 18 samples outlast the writer's first commit (0.5 s): time to kill mid-run (width 48 ran the
    # whole set inside one commit window on an idle machine)
    model = helpers.build_model(tmp_path / "slow.onnx", size=640, work_channels=128)
    base = ["--dataset", str(synth_dataset), "--model", str(model), "--config", str(_config(tmp_path, 640))]
    total = 18

    reference = _cli(base + ["--out", str(tmp_path / "reference")], env)
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    assert _computed(out) == total

    killed_dir = tmp_path / "killed"
    proc = _cli(base + ["--out", str(killed_dir)], env)
    deadline = time.monotonic() + 240
    try:
        while _stored(killed_dir / "results.sqlite") < 1:
            assert proc.poll() is None, "the run ended before any sample was committed: " + proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    finished_before = _stored(killed_dir / "results.sqlite")
    assert 0 < finished_before < total, "the kill did not land mid-run"

    rerun = _cli(base + ["--out", str(killed_dir)], env)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert _computed(out) == total - finished_before  # only what was missing
    assert f"{finished_before} from earlier runs" in out

    with ResultsStore(tmp_path / "reference" / "results.sqlite") as ref_store, \
            ResultsStore(killed_dir / "results.sqlite") as store:
        ref_store.start_run(ref_store.runs()[0])
        store.start_run(store.runs()[0])
        assert store.run_key == ref_store.run_key
        assert set(store.write_counts().values()) == {1}  # no finished sample was computed twice
        assert len(store.finished()) == total
        assert helpers.snapshot(store) == helpers.snapshot(ref_store)
    ref_table = pd.read_csv(tmp_path / "reference" / "samples.csv")
    table = pd.read_csv(killed_dir / "samples.csv")
    pd.testing.assert_frame_equal(table, ref_table)


# ---------------------------------------------------------------------------- shipped model (e2e)
@pytest.mark.e2e
@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason=f"shipped model {SHIPPED_MODEL} is absent")
def test_shipped_model_end_to_end(synth_dataset, tmp_path, isolated, capsys):
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    cfg = tmp_path / "config.yaml"
    cfg.write_text("data:\n  train_size: 3\n  val_size: 3\n  unlabeled_size: 3\nmodel:\n  device: cpu\n"
                   "analysis:\n  n_clusters: 2\n  label_budget: 2\n")
    assert _main("--dataset", str(synth_dataset), "--model", str(SHIPPED_MODEL), "--config", str(cfg),
                 "--out", str(out)) == 0
    assert "9 analysed (9 computed now" in capsys.readouterr().out
    table = pd.read_parquet(out / "samples.parquet")
    labeled = table[table["split"] != "unlabeled"]
    assert (labeled["loss"] == labeled["yolo_loss_total"]).all() and labeled["error_rate"].between(0, 1).all()
    gt = COCO(str(synth_dataset / "val.json"))
    results = json.loads((out / "predictions_val.json").read_text())
    if results:
        gt.loadRes(str(out / "predictions_val.json"))
    # the page (tables, map data) with plotly.js and the images beside it in assets/
    assert (out / "dashboard.html").stat().st_size > 10_000 and (out / "assets" / "plotly.min.js").stat().st_size > 1e6
    assert len(list((out / "assets" / "dashboard" / "views").glob("*_gt.png"))) == 9


def test_dashboard_images_come_from_the_store(tiny_dataset, tmp_path, isolated):
    from armbench_segmentation.analysis.engine import SampleViews, run_analysis
    from armbench_segmentation.analysis.runner import selected_samples
    from armbench_segmentation.data.coco import ArmbenchDataset

    settings = helpers.make_settings(tiny_dataset.root, helpers.build_model(tmp_path / "m.onnx"))
    result = run_analysis(settings, tmp_path / "out", progress=False, report=False)
    assert result.dashboard is None and result.n_samples == 8
    dataset = ArmbenchDataset(settings.data.path, settings.data)
    with ResultsStore(result.store_path) as store:
        store.start_run(store.runs()[0])
        views = SampleViews(dataset, store, settings, selected_samples(dataset))
        for sid in ("val_a", "test_a"):
            for kind in ("over_segmented", "under_segmenting", "missed", "false_positive"):
                view = views.error_view(sid, kind)
                assert view.image.shape == (64, 64, 3) and view.image.dtype.name == "uint8"
                facts = store.sample_facts(views.samples[sid].split, sid)
                assert list(view.pred_ids) == facts["involved"][kind]["pred"]
        crop = views.hard_region_crop("val_a")
        assert crop.ndim == 3 and crop.shape[2] == 3
        assert max(views.thumbnail("train_a").shape[:2]) <= 96
        # predictions rebuilt from the stored RLEs match the stored row
        loaded = dataset.load(views.samples["val_a"])
        pred = views._model_frame_predictions(views.samples["val_a"], loaded.letterbox)
        row = store.frame(keys=[("val", "val_a")]).iloc[0]
        assert len(pred) == row["n_pred"]

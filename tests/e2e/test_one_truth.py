"""One sample, one truth: the Tensorleap face and the engine agree, and every view draws
exactly what the tables count. Real runs: the shipped model, a synthetic dataset over the
three splits, ``armbench analyze`` and ``leap_test.py --dump`` in their own processes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = ROOT / "models" / "armbench-yolov5s-seg.onnx"
SPLIT_SIZES = (8, 8, 8)  # train, val, unlabeled: 24 samples

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason=f"shipped model {SHIPPED_MODEL} is absent")]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMBENCH_")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), TL_DISABLE_ANALYTICS="1", MPLBACKEND="Agg")
    home.mkdir(parents=True, exist_ok=True)
    return env


@pytest.fixture(scope="module")
def both_faces(tmp_path_factory):
    """(dataset, analyze run folder, parity dump) on the same data, model and default settings."""
    from armbench_segmentation.data.synth import generate_dataset

    base = tmp_path_factory.mktemp("one_truth")
    data = base / "totes"
    generate_dataset(data, *SPLIT_SIZES, seed=11, width=612, height=512, workers=1, progress=False)
    env = _env(base / "home")
    sizes = ["--train-size", "all", "--val-size", "all", "--unlabeled-size", "all"]
    run = base / "run"
    analyze = subprocess.run([sys.executable, "-m", "armbench_segmentation.cli", "analyze", "--no-progress",
                              "--dataset", str(data), "--model", str(SHIPPED_MODEL), "--out", str(run), *sizes],
                             env=env, cwd=base, capture_output=True, text=True, timeout=900)
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    dump = base / "dump.json"
    leap = subprocess.run([sys.executable, str(ROOT / "leap_test.py"), "--dataset", str(data), "--model",
                           str(SHIPPED_MODEL), "--samples", "all", "--dump", str(dump)],
                          env={**env, "ARMBENCH_TRAIN_SIZE": "all", "ARMBENCH_VAL_SIZE": "all",
                               "ARMBENCH_UNLABELED_SIZE": "all"},
                          cwd=base, capture_output=True, text=True, timeout=900)
    assert leap.returncode == 0, leap.stdout[-4000:] + leap.stderr[-2000:]
    return data, run, json.loads(dump.read_text())


def test_the_two_faces_give_the_same_numbers(both_faces):
    import leap_test

    _, run, dump = both_faces
    splits = [entry["split"] for entry in dump["samples"].values()]
    assert {s: splits.count(s) for s in set(splits)} == dict(zip(("train", "val", "unlabeled"), SPLIT_SIZES))
    n_samples, n_values, problems = leap_test.compare_dump(dump, run / "samples.csv")
    assert problems == []
    assert n_samples == sum(SPLIT_SIZES) and n_values > 40 * n_samples
    labeled = next(e for e in dump["samples"].values() if e["split"] == "val")["values"]
    for name in ("yolov5_seg_loss", "matching.tp", "matching.ap", "segmentation_errors.over_segmented_count",
                 "uncertainty.mask_entropy", "sample.n_objects"):
        assert name in labeled, name
    unlabeled = next(e for e in dump["samples"].values() if e["split"] == "unlabeled")["values"]
    assert "uncertainty.mask_entropy" in unlabeled and "matching.tp" not in unlabeled


def test_every_column_of_the_tables_is_defined(both_faces):
    from armbench_segmentation.analysis.columns import INSTANCE_COLUMNS, describe

    _, run, _ = both_faces
    columns = pd.read_csv(run / "samples.csv", nrows=1).columns
    assert [c for c in columns if describe(c) is None] == []
    assert tuple(pd.read_csv(run / "instances.csv", nrows=1).columns) == ("split", "sample_id", *INSTANCE_COLUMNS)


def test_the_comparison_finds_a_changed_value(both_faces):
    import leap_test

    _, run, dump = both_faces
    for name, delta in (("matching.tp", 1), ("yolov5_seg_loss", 1e-4)):
        changed = copy.deepcopy(dump)
        entry = next(e for e in changed["samples"].values() if e["split"] == "train")
        entry["values"][name] += delta
        _, _, problems = leap_test.compare_dump(changed, run / "samples.csv")
        assert len(problems) == 1 and name in problems[0]


def test_sample_counts_are_the_aggregation_of_the_instance_table(both_faces):
    _, run, _ = both_faces
    samples = pd.read_parquet(run / "samples.parquet").set_index(["split", "sample_id"])
    instances = pd.read_parquet(run / "instances.parquet")
    assert len(pd.read_csv(run / "instances.csv")) == len(instances)
    gt, pred = instances[instances["kind"] == "gt"], instances[instances["kind"] == "pred"]
    key = ["split", "sample_id"]
    assert (pred.groupby(key).size().reindex(samples.index, fill_value=0) == samples["n_pred"]).all()
    labeled = samples[samples.index.get_level_values("split") != "unlabeled"]
    assert gt["split"].ne("unlabeled").all()  # no GT rows for the unlabeled split
    expected = {
        "tp": gt.assign(v=gt["matched_index"].notna()).groupby(key)["v"].sum(),
        "fn": gt.groupby(key)["missed"].sum(),
        "over_segmented_count": gt.groupby(key)["over_segmented"].sum(),
        "under_segmented_count": pred.groupby(key)["under_segmenting"].sum(),
        "duplicate_count": pred.groupby(key)["duplicate"].sum(),
        "fp": pred.groupby(key)["false_positive"].sum(),
        "meta_n_instances": gt.groupby(key).size(),
    }
    for column, counts in expected.items():
        got = counts.reindex(labeled.index, fill_value=0).astype(int)
        pd.testing.assert_series_equal(got, labeled[column].astype(int), check_names=False, obj=column)
    assert labeled["over_segmented_count"].sum() + labeled["under_segmented_count"].sum() > 0  # errors exist
    matched = gt[gt["matched_index"].notna()]
    assert (matched["iou"] >= 0.5).all() and (matched["best_iou"] >= matched["iou"] - 1e-12).all()
    unlabeled_pred = pred[pred["split"] == "unlabeled"]
    assert unlabeled_pred["false_positive"].isna().all() and unlabeled_pred["error_kind"].isna().all()


def test_every_gallery_tile_draws_what_it_counts(both_faces):
    from armbench_segmentation.analysis.engine import SampleViews
    from armbench_segmentation.analysis.report import GALLERY_KINDS, build_gallery
    from armbench_segmentation.analysis.runner import selected_samples
    from armbench_segmentation.analysis.store import ResultsStore
    from armbench_segmentation.config import load_settings
    from armbench_segmentation.data.coco import ArmbenchDataset
    from armbench_segmentation.metrics.sample_evaluation import COUNTED_SIDE

    data, run, _ = both_faces
    settings = load_settings(overrides={"data.path": str(data), "model.path": str(SHIPPED_MODEL),
                                        "data.train_size": "all", "data.val_size": "all",
                                        "data.unlabeled_size": "all"}, env={})
    samples = pd.read_csv(run / "samples.csv")
    instances = pd.read_parquet(run / "instances.parquet")
    dataset = ArmbenchDataset(settings.data.path, settings.data)
    tiles = 0
    with ResultsStore(run / "results.sqlite") as store:
        store.start_run(store.runs()[0])
        views = SampleViews(dataset, store, settings, selected_samples(dataset))
        for kind, (error_kind, column, _) in GALLERY_KINDS.items():
            gallery = build_gallery(samples, kind, views.error_view, n=24)
            side = COUNTED_SIDE[error_kind]
            for item in gallery.items:
                tiles += 1
                row = samples[samples["sample_id"] == item.sample_id].iloc[0]
                mine = instances[(instances["sample_id"] == item.sample_id) & (instances["kind"] == side)]
                flagged = sorted(mine.loc[mine[error_kind].astype(bool), "index"].astype(int))
                caption_count = int(item.caption.split(": ")[1].split(" ")[0])
                assert caption_count == item.count == len(item.drawn_counted) == int(row[column]) == len(flagged)
                assert sorted(item.drawn_counted) == flagged
    assert tiles > 0

"""Exports: per-sample table (CSV + Parquet, read back with pandas) and COCO results per
split (loaded with pycocotools against the split's ground-truth file)."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from armbench_segmentation.analysis import exports
from armbench_segmentation.analysis.runner import run_samples

from test_runner import build_model, make_settings, open_all  # noqa: E402  (sibling test module)


@pytest.fixture
def analysed(tiny_dataset, tmp_path):
    """A finished run over the tiny dataset (one image corrupt), with map/cluster columns."""
    (tiny_dataset.root / "images" / "val_portrait.jpg").write_bytes(b"garbage")
    settings = make_settings(tiny_dataset.root, build_model(tmp_path / "m.onnx"))
    dataset, model, store = open_all(settings, tmp_path / "r.sqlite")
    run_samples(dataset, model, store, settings, progress=False)
    frame = store.frame()
    frame["map_x"] = np.arange(len(frame), dtype=float)
    frame["map_y"] = -np.arange(len(frame), dtype=float)
    frame["cluster"] = np.arange(len(frame)) % 2
    yield tiny_dataset, settings, dataset, store, frame
    store.close()


def test_table_round_trips_through_csv_and_parquet(analysed, tmp_path):
    tiny, settings, dataset, store, frame = analysed
    csv_path, pq_path = exports.write_table(frame, tmp_path / "out")
    for table in (pd.read_csv(csv_path), pd.read_parquet(pq_path)):
        assert list(table.columns[: len(exports.EXPORT_FIRST_COLUMNS)]) == list(exports.EXPORT_FIRST_COLUMNS)
        assert len(table) == len(frame) == 7  # 8 images, one corrupt
        assert table["sample_id"].astype(str).tolist() == frame["sample_id"].tolist()
        assert any(c.startswith("meta_") for c in table.columns) and any(c.startswith("unc_") for c in table.columns)
        for col in ("precision", "recall", "f1", "mean_iou", "ap", "yolo_loss_total"):
            assert col in table.columns
        unlabeled = table["split"] == "unlabeled"
        assert table.loc[unlabeled, "loss"].isna().all() and table.loc[~unlabeled, "loss"].notna().all()
        assert table.loc[~unlabeled, "tp"].notna().all()
        np.testing.assert_allclose(table["map_x"], frame["map_x"])
    parquet = pd.read_parquet(pq_path)
    assert str(parquet["tp"].dtype) == "Int64"  # integer counts stay integers, missing stays missing
    assert pd.api.types.is_float_dtype(parquet["loss"])
    assert "nan" not in csv_path.read_text().lower().replace("nan_", "")


def test_missing_export_columns_are_added_empty(caplog):
    frame = pd.DataFrame({"sample_id": ["a"], "split": ["train"], "extra": [1]})
    with caplog.at_level(logging.WARNING):
        out = exports.order_columns(frame)
    assert list(out.columns) == list(exports.EXPORT_FIRST_COLUMNS) + ["extra"]
    assert out["cluster"].isna().all() and "cluster" in caplog.text


def _load_res(gt_path, results_path):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        return gt, gt.loadRes(str(results_path))


@pytest.mark.parametrize("split, gt_file", [("train", "train.json"), ("val", "val.json"), ("unlabeled", "test.json")])
def test_coco_predictions_load_with_pycocotools(analysed, tmp_path, split, gt_file):
    tiny, settings, dataset, store, frame = analysed
    paths = exports.write_coco_predictions(store, dataset, tmp_path / "out", settings.data.class_names, frame=frame)
    gt, dt = _load_res(tiny.root / gt_file, paths[split])
    results = json.loads(paths[split].read_text())
    expected_images = {int(i) for i in frame.loc[frame["split"] == split, "image_id"]}
    assert {r["image_id"] for r in results} == expected_images
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(names[r["category_id"]])
    for row in frame[frame["split"] == split].itertuples():
        # category ids are the split file's own, mapped by name (train.json: Tote=3, Object=7)
        assert sorted(by_image[row.image_id]) == sorted(["Object"] * row.n_pred_object + ["Tote"] * row.n_pred_tote)
    for ann in dt.dataset["annotations"]:
        img = gt.imgs[ann["image_id"]]
        assert ann["segmentation"]["size"] == [img["height"], img["width"]]  # original resolution
        assert mask_utils.area(ann["segmentation"]) > 0
    if split == "val":  # (train.json holds a deliberately degenerate 2-point polygon COCOeval cannot rasterize)
        ev = COCOeval(gt, dt, "segm")
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        assert -1 <= ev.stats[0] <= 1


def test_errors_and_run_info(analysed, tmp_path):
    tiny, settings, dataset, store, frame = analysed
    errors = pd.read_csv(exports.write_errors(store, tmp_path))
    assert errors["sample_id"].tolist() == ["val_portrait"]
    assert errors["file_name"].tolist() == ["val_portrait.jpg"]
    info = json.loads(exports.write_run_info(store, tmp_path).read_text())
    assert info["run_key"] == store.run_key
    assert set(info["dataset_files"]) == {"train.json", "val.json", "test.json"}
    assert info["counts"]["val"] == {"ok": 1, "error": 1}


def test_predictions_restricted_to_frame(analysed, tmp_path):
    tiny, settings, dataset, store, frame = analysed
    only = frame[frame["sample_id"] == "train_a"]
    paths = exports.write_coco_predictions(store, dataset, tmp_path, settings.data.class_names, splits=("train",),
                                           frame=only)
    assert {r["image_id"] for r in json.loads(paths["train"].read_text())} == {1}

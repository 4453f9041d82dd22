"""process_sample and the compact (original-resolution RLE) predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from armbench_segmentation.analysis.pipeline import (
    RawSample,
    compact_predictions,
    fallback_embedding,
    mask_to_original_rle,
    process_sample,
    split_raw,
)
from armbench_segmentation.data.letterbox import Letterbox
from armbench_segmentation.metrics.sample_evaluation import labeled_column_names
from armbench_segmentation.structures import Instances

from test_runner import build_model, make_settings  # noqa: E402  (sibling test module, same folder)


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


@pytest.mark.parametrize("orig_hw", [(2048, 2448), (512, 612), (160, 200), (200, 120), (1000, 333), (7, 640), (640, 640)])
def test_rle_matches_letterbox_masks_to_original(orig_hw):
    lb = Letterbox.compute(orig_hw, 640)
    rng = np.random.default_rng(sum(orig_hw))
    for trial in range(6):
        mask = np.zeros((640, 640), bool)
        y, x = rng.integers(0, 600, 2)
        mask[y: y + rng.integers(1, 200), x: x + rng.integers(1, 300)] = True
        if trial % 2:
            mask &= rng.random((640, 640)) > 0.3  # ragged, many runs per column
        if trial == 4:
            mask[:] = False
        if trial == 5:
            mask[:] = True  # spills into the padding: cropped like masks_to_original does
        expected = lb.masks_to_original(mask[None])[0]
        rle = mask_to_original_rle(mask, lb)
        assert rle["size"] == list(orig_hw)
        np.testing.assert_array_equal(_decode(rle), expected)


def test_compact_predictions_records():
    lb = Letterbox.compute((160, 200), 64)
    masks = np.zeros((2, 64, 64), bool)
    masks[0, 20:30, 10:20] = True
    pred = Instances(boxes=np.array([[10, 20, 20, 30], [0, 0, 0, 0]], np.float32), class_ids=np.array([0, 1]),
                     image_size=(64, 64), masks=masks, scores=np.array([0.9, 0.3], np.float32))
    recs = compact_predictions(pred, lb)
    assert [r["class_index"] for r in recs] == [0, 1]
    assert recs[0]["score"] == pytest.approx(0.9)
    x, y, w, h = recs[0]["bbox"]
    np.testing.assert_allclose([x, y, x + w, y + h], lb.boxes_to_original(pred.boxes[:1])[0], atol=0.01)
    assert _decode(recs[0]["segmentation"]).sum() == lb.masks_to_original(masks[:1]).sum()
    assert _decode(recs[1]["segmentation"]).sum() == 0
    assert compact_predictions(Instances.empty((64, 64), with_scores=True), lb) == []


def test_fallback_embedding_shape():
    protos = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    emb = fallback_embedding(protos)
    assert emb.shape == (4,) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, [5.5, 17.5, 11, 23])


# ---------------------------------------------------------------------------- process_sample
@pytest.fixture
def env(tiny_dataset, tmp_path):
    from armbench_segmentation.data.coco import ArmbenchDataset
    from armbench_segmentation.model.onnx_model import SegmentationModel

    settings = make_settings(tiny_dataset.root, build_model(tmp_path / "m.onnx"))
    dataset = ArmbenchDataset(settings.data.path, settings.data)
    model = SegmentationModel(settings.model.path, settings.model, settings.data.class_names)
    return settings, dataset, model


def _result(env, split, index=0):
    settings, dataset, model = env
    sample = dataset.samples(split)[index]
    loaded = dataset.load(sample)
    raw = split_raw(model.run(model.to_input(loaded.image[None])))[0]
    return process_sample(loaded, raw, model, settings, dataset.annotations(sample)), sample


def _no_nan(row):
    return all(not (isinstance(v, float) and math.isnan(v)) for v in row.values())


def test_labeled_row_has_every_metric(env):
    result, sample = _result(env, "val")
    row = result.row
    for col in ("split", "sample_id", "file_name", "over_segmented_count", "under_segmented_count", "tp", "fp", "fn",
                "precision", "recall", "f1", "mean_iou", "ap", "loss", "error_rate", "yolo_loss_total", "n_pred"):
        assert col in row, col
    assert row["sample_id"] == sample.sample_id and row["split"] == "val"
    assert row["loss"] == row["yolo_loss_total"] > 0  # the model's loss, as on the platform
    assert row["error_rate"] == pytest.approx((row["fp"] + row["fn"]) / (2 * row["tp"] + row["fp"] + row["fn"]))
    assert row["tp"] + row["fn"] >= 1  # val images have ground truth
    assert row["n_pred"] == len(result.predictions)
    assert result.embedding.dtype == np.float32 and result.embedding.shape == (8,)
    assert _no_nan(row)
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in row.values())


def test_unlabeled_row_has_none_metrics_and_same_columns(env):
    labeled, _ = _result(env, "val")
    unlabeled, _ = _result(env, "unlabeled")
    assert set(unlabeled.row) == set(labeled.row)
    for col in labeled_column_names() + ("over_segmented_count", "under_segmented_count"):
        assert unlabeled.row[col] is None, col
    assert unlabeled.row["n_pred"] >= 1 and _no_nan(unlabeled.row)


def test_rows_are_deterministic(env):
    a, _ = _result(env, "train", 0)
    b, _ = _result(env, "train", 0)
    assert a.row == b.row
    np.testing.assert_array_equal(a.embedding, b.embedding)


def test_split_raw_views():
    class Raw:
        detections = np.zeros((2, 5, 39), np.float32)
        protos = np.zeros((2, 32, 4, 4), np.float32)
        embedding = None

    parts = split_raw(Raw())
    assert len(parts) == 2 and isinstance(parts[0], RawSample) and parts[0].embedding is None
    assert parts[1].detections.shape == (5, 39)


def test_metadata_uses_the_configured_small_area_fraction(env):
    # Every object is "small" under a threshold of 100% of the image and none under 0%:
    # the row must follow settings.metrics.small_area_fraction, not the metadata default.
    settings, dataset, model = env
    counts = {}
    for fraction in (0.0, 1.0):
        tuned = settings.replace({"metrics.small_area_fraction": fraction})
        result, _ = _result((tuned, dataset, model), "val")
        counts[fraction] = (result.row["meta_small_object_count"], result.row["meta_n_objects"])
    assert counts[0.0][0] == 0
    assert counts[1.0][0] == counts[1.0][1] > 0

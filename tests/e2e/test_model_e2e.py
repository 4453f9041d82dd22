"""The shipped model end to end on held-out synthetic totes: real detections, real masks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from armbench_segmentation.config import DEFAULT_MODEL_PATH, DataConfig, ModelConfig
from armbench_segmentation.model.decode import decode, masks_to_original_rle, to_original
from armbench_segmentation.model.onnx_model import SegmentationModel

MODEL_PATH = Path(os.environ.get("ARMBENCH_MODEL") or DEFAULT_MODEL_PATH)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not MODEL_PATH.is_file(),
                       reason=f"model {MODEL_PATH} absent (the shipped models/armbench-yolov5s-seg.onnx, or ARMBENCH_MODEL)"),
]
NAMES = ("Object", "Tote")
SEED = 987_654  # not a training seed: held-out images


@pytest.fixture(scope="module")
def synth_val(tmp_path_factory):
    from armbench_segmentation.data.coco import ArmbenchDataset
    from armbench_segmentation.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth_e2e")
    generate_dataset(root, 0, 3, 0, seed=SEED, width=816, height=683, workers=1, progress=False)
    return ArmbenchDataset(root, DataConfig(path=root, val_size=None, train_size=None, unlabeled_size=None))


@pytest.fixture(scope="module")
def model():
    return SegmentationModel(MODEL_PATH, ModelConfig(device="auto", num_threads=2), NAMES)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def test_shipped_model_segments_objects(synth_val, model):
    assert model.num_classes == 2 and model.num_mask_coeffs == 32
    size = model.input_hw[0] if model.input_hw else synth_val.config.image_size
    matched, total, n_pred = 0, 0, 0
    for sample in synth_val.samples("val"):
        loaded = synth_val.load(sample)
        assert loaded.image.shape[:2] == (size, size)
        raw = model.run(model.to_input(loaded.image[None]))
        if model.has_embedding:
            assert raw.embedding.shape[0] == 1 and np.isfinite(raw.embedding).all()
        pred = decode(raw.detections[0], raw.protos[0], (size, size), ModelConfig())
        n_pred += len(pred)
        gt_obj, pr_obj = loaded.gt.of_class(0), pred.of_class(0)
        total += len(gt_obj)
        if len(gt_obj) and len(pr_obj):
            matched += int((_iou_matrix(gt_obj.masks, pr_obj.masks).max(axis=1) > 0.5).sum())
        # original resolution: boxes inside the image, RLE round trip equals the dense path
        orig = to_original(pred, loaded.letterbox)
        assert orig.image_size == sample.hw
        assert (orig.boxes[:, [0, 2]] <= sample.width).all() and (orig.boxes[:, [1, 3]] <= sample.height).all()
        if len(pred):
            from pycocotools import mask as mask_utils

            rle = masks_to_original_rle(pred.masks[:1], loaded.letterbox)[0]
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), orig.masks[0])
    assert n_pred > 0, "the shipped model detected nothing on synthetic totes"
    recall = matched / max(total, 1)
    assert recall > 0.5, f"only {matched} of {total} GT objects have a predicted Object mask with IoU > 0.5"


def test_predict_command_with_shipped_model(synth_val, tmp_path):
    import argparse
    import json

    from pycocotools.coco import COCO

    from armbench_segmentation.commands import predict

    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    out = tmp_path / "preds.json"
    args = parser.parse_args(["--dataset", str(synth_val.root), "--model", str(MODEL_PATH), "--out", str(out),
                              "--val-size", "all", "--split", "val"])
    assert predict.run(args) == 0
    results = json.loads(out.read_text())
    assert results and {r["category_id"] for r in results} <= {1, 2}
    dt = COCO(str(synth_val.root / "val.json")).loadRes(str(out))
    assert len(dt.getAnnIds()) == len(results)

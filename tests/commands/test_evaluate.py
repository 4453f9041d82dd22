"""``armbench evaluate`` on the tiny fixture dataset: known answers, COCOeval agreement,
bad predictions files."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from armbench_segmentation.commands import evaluate
from armbench_segmentation.errors import ArmbenchError

H, W = 160, 200  # val_a


def rle(x1, y1, x2, y2, h=H, w=W) -> dict:
    m = np.zeros((h, w), np.uint8)
    m[y1:y2, x1:x2] = 1
    r = mask_utils.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": r["counts"].decode("ascii")}


def det(image_id, cat, box, score, h=H, w=W) -> dict:
    x1, y1, x2, y2 = box
    return {"image_id": image_id, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1],
            "segmentation": rle(*box, h=h, w=w), "score": score}


# val.json: Tote=1, Object=2; val_a (id 10): 201 Tote, 202 Object [40,40]-[80,80],
# 203 Object [100,60]-[140,100]; val_portrait (id 11, 200x120): 211 Tote, 212 Object
PREDS = [
    det(10, 1, (10, 10, 190, 150), 0.95),  # the tote, exact
    det(10, 2, (40, 40, 80, 80), 0.9),  # object 202, exact: TP
    det(10, 2, (100, 60, 113, 100), 0.8),  # object 203 in three strips (IoU ~0.33 each): FP,
    det(10, 2, (113, 60, 127, 100), 0.7),  # and one over-segmented object
    det(10, 2, (127, 60, 140, 100), 0.6),
    det(11, 1, (5, 5, 115, 195), 0.9, h=200, w=120),  # object 212 missed: FN
]


@pytest.fixture
def env(tiny_dataset, tmp_path, monkeypatch):
    for var in ("ARMBENCH_DATASET", "ARMBENCH_MODEL", "ARMBENCH_CONFIG", "ARMBENCH_VAL_SIZE", "ARMBENCH_TRAIN_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tiny_dataset


def run(tiny, *argv):
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return evaluate.run(parser.parse_args(["--dataset", str(tiny.root), *argv]))


def write(tmp_path, payload, name="preds.json"):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def cocoeval_object_ap(val_json, preds, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(val_json))
        e = COCOeval(gt, gt.loadRes(json.loads(json.dumps(preds))), iou_type)
        e.params.catIds = [2]
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats[0], e.stats[1]


def test_json_report_known_answers_and_cocoeval(env, tmp_path, capsys):
    path = write(tmp_path, PREDS)
    assert run(env, "--split", "val", "--val-size", "all", "--predictions", str(path), "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["tp"], out["fp"], out["fn"]) == (1, 3, 2)
    assert out["over_segmented_instances"] == 1 and out["over_segmented_images"] == 1
    assert out["under_segmented_instances"] == 0 and out["under_segmented_images"] == 0
    assert out["segm"]["Tote"]["AP"] == pytest.approx(1.0)
    for iou_type in ("segm", "bbox"):
        ap, ap50 = cocoeval_object_ap(env.root / "val.json", PREDS, iou_type)
        assert out[iou_type]["Object"]["AP"] == pytest.approx(ap, abs=1e-3)
        assert out[iou_type]["Object"]["AP50"] == pytest.approx(ap50, abs=1e-3)
    assert set(out["segm"]["Object"]) >= {"AP", "AP50", "AP75"}


def test_table_report(env, tmp_path, capsys):
    path = write(tmp_path, PREDS)
    assert run(env, "--split", "val", "--val-size", "all", "--predictions", str(path)) == 0
    text = capsys.readouterr().out
    assert "segm AP" in text and "box AP50" in text and "Object" in text and "Tote" in text
    assert "TP 1  FP 3  FN 2" in text
    assert "over-segmented objects: 1 in 1 images" in text


def test_empty_predictions_on_train_with_crowd_and_degenerate_annotations(env, tmp_path, capsys):
    path = write(tmp_path, [])
    assert run(env, "--split", "train", "--train-size", "all", "--predictions", str(path), "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["segm"]["Object"]["AP"] == 0.0 and out["tp"] == 0
    assert out["fn"] >= 5 and out["num_images"] == 3


def test_without_predictions_uses_predict_split(env, tmp_path, monkeypatch, capsys):
    from armbench_segmentation.analysis import predict

    monkeypatch.delattr(predict, "predict_split", raising=False)
    with pytest.raises(ArmbenchError, match="armbench predict"):
        run(env, "--split", "val")
    calls = []
    monkeypatch.setattr(predict, "predict_split", lambda settings, split: calls.append(split) or PREDS, raising=False)
    assert run(env, "--split", "val", "--val-size", "all", "--json") == 0
    assert calls == ["val"] and json.loads(capsys.readouterr().out)["tp"] == 1


@pytest.mark.parametrize(
    "payload, message",
    [
        ("{not json", "not valid JSON"),
        ({"annotations": []}, "must be a JSON list"),
        ([PREDS[0], {"image_id": 10, "category_id": 2, "score": 0.5}], r"entry 1 lacks \['segmentation'\]"),
        ([{**PREDS[1], "image_id": 999}], "entry 0: image_id 999"),
        ([{**PREDS[1], "category_id": 7}], "entry 0: category_id 7"),
        ([{**PREDS[1], "segmentation": {"size": [H, W], "counts": "!!"}}], "entry 0: segmentation RLE cannot be decoded"),
        ([{**PREDS[1], "segmentation": rle(0, 0, 5, 5, h=80, w=100)}], "original image resolution"),
    ],
)
def test_bad_predictions_files(env, tmp_path, payload, message):
    path = write(tmp_path, payload)
    with pytest.raises(ArmbenchError, match=message):
        run(env, "--split", "val", "--val-size", "all", "--predictions", str(path))


def test_missing_file_and_predictions_for_other_images(env, tmp_path):
    with pytest.raises(ArmbenchError, match="does not exist"):
        run(env, "--predictions", str(tmp_path / "nope.json"))
    from armbench_segmentation.config import load_settings
    from armbench_segmentation.data.coco import ArmbenchDataset

    settings = load_settings(overrides={"data.path": str(env.root), "data.val_size": 1}, env={})
    selected = ArmbenchDataset(env.root, settings.data).samples("val")[0].image_id
    inside = [p for p in PREDS if p["image_id"] == selected]
    outside = [p for p in PREDS if p["image_id"] != selected]
    with pytest.raises(ArmbenchError, match="none of the"):
        run(env, "--split", "val", "--val-size", "1", "--predictions", str(write(tmp_path, outside)))
    assert run(env, "--split", "val", "--val-size", "1", "--predictions", str(write(tmp_path, PREDS)), "--json") == 0
    assert run(env, "--split", "val", "--val-size", "1", "--predictions", str(write(tmp_path, inside))) == 0


# ---------------------------------------------------------------------------- end to end (shipped model)
def _shipped_model():
    import os
    from pathlib import Path

    from armbench_segmentation.config import DEFAULT_MODEL_PATH

    return Path(os.environ.get("ARMBENCH_MODEL") or DEFAULT_MODEL_PATH)


@pytest.mark.e2e
@pytest.mark.skipif(not _shipped_model().is_file(),
                    reason=f"model {_shipped_model()} absent (the shipped models/armbench-yolov5s-seg.onnx, or ARMBENCH_MODEL)")
def test_evaluate_without_predictions_runs_the_shipped_model(tmp_path, monkeypatch, capsys):
    from armbench_segmentation.data.synth import generate_dataset

    for var in ("ARMBENCH_DATASET", "ARMBENCH_MODEL", "ARMBENCH_CONFIG", "ARMBENCH_DEVICE", "ARMBENCH_VAL_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    model = _shipped_model().resolve()
    root = tmp_path / "synth"
    generate_dataset(root, 0, 2, 0, seed=424_242, width=612, height=512, workers=1, progress=False)  # held-out seed
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  device: cpu\n  num_threads: 2\n")
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    args = parser.parse_args(["--dataset", str(root), "--model", str(model), "--config", str(config),
                              "--split", "val", "--val-size", "all", "--json"])
    assert evaluate.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] == 2 and out["num_predictions"] > 0
    for iou_type in ("segm", "bbox"):
        obj = out[iou_type]["Object"]
        for key in ("AP", "AP50", "AP75"):
            assert obj[key] is not None and 0.0 <= obj[key] <= 1.0, (iou_type, key, obj[key])
        assert obj["AP50"] > 0.2, f"{iou_type} Object AP50 {obj['AP50']}: the model found almost nothing"
    for key in ("over_segmented_instances", "over_segmented_images", "under_segmented_instances",
                "under_segmented_images"):
        assert isinstance(out[key], int) and out[key] >= 0, key
    assert out["tp"] + out["fn"] > 0

"""Tensorleap integration.

* Adapter known answers (no model): the GT encoders on the tiny hand-made dataset, and the
  loss/metrics/visualizers on model outputs crafted from the ground truth (a perfect
  prediction set, then one prediction swallowing two objects).
* leap.yaml glob semantics (leap-cli's doublestar rules).
* End to end (``e2e``, the shipped model): ``leap_test`` passes as ``poetry run test`` would
  run it, writes no ``~/.tensorleap``, and fails loudly, naming the function, when a
  registered function is broken on purpose in a copy of the entry file.
"""

from __future__ import annotations

import os

os.environ.setdefault("TL_DISABLE_ANALYTICS", "1")  # before code_loader is imported (via leap_binder)

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from armbench_segmentation.config import DEFAULT_MODEL_PATH

ROOT = Path(__file__).resolve().parents[1]
MODEL_PATH = Path(os.environ.get("ARMBENCH_MODEL") or DEFAULT_MODEL_PATH)
S = 640  # data.image_size
H = S // 4  # prototype resolution


# ---------------------------------------------------------------------------- fixtures
def _clear(lb) -> None:
    for fn in (lb._settings, lb._dataset, lb._samples_by_id, lb._load, lb._segmentation_keys, lb._readable,
               lb._sample_metadata, lb._gt_instance_rows, lb._gt_rows):
        fn.cache_clear()
    lb._memo = lb._Memo()


@pytest.fixture
def binder(tiny_dataset, monkeypatch, tmp_path):
    """leap_binder pointed at the tiny dataset, with fresh caches and no user config."""
    import armbench_segmentation.config as config

    monkeypatch.setenv("ARMBENCH_DATASET", str(tiny_dataset.root))
    for var in ("ARMBENCH_CONFIG", "ARMBENCH_MODEL", "TL_DISABLE_ENGINE_FLOAT16_SIMULATION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(config, "USER_CONFIG_PATH", tmp_path / "no-user-config.yaml")
    import leap_binder

    _clear(leap_binder)
    yield leap_binder
    _clear(leap_binder)


def _responses(lb) -> dict:
    out = {r.data["split"]: r for r in lb.preprocess()}
    out["unlabeled"] = lb.preprocess_unlabeled()
    return out


def _crafted_outputs(lb, boxes_row: np.ndarray, masks_row: np.ndarray, merge: tuple[int, int] | None = None):
    """ONNX-like outputs predicting the encoded GT exactly: one detection per instance whose
    mask coefficient picks a prototype that is +20 on the instance's mask and -20 elsewhere.
    With ``merge=(i, j)``, instances i and j are replaced by one prediction covering both."""
    n_anchors = 3 * ((S // 8) ** 2 + (S // 16) ** 2 + (S // 32) ** 2)
    from armbench_segmentation.codecs import unpack_mask_bits

    det = np.zeros((n_anchors, 5 + 2 + 32), np.float32)
    protos = np.full((32, H, H), -20.0, np.float32)
    small = unpack_mask_bits(masks_row, S)[:, ::4, ::4]  # (K, H, H): the encoded masks at prototype pixels
    valid = np.flatnonzero(boxes_row[:, 5] > 0.5)
    groups = [[int(i)] for i in valid]
    if merge is not None:
        groups = [g for g in groups if g[0] not in merge] + [list(merge)]
    for k, members in enumerate(groups):
        x1, y1 = boxes_row[members, 0].min(), boxes_row[members, 1].min()
        x2, y2 = boxes_row[members, 2].max(), boxes_row[members, 3].max()
        det[k * 7, :5] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.95]
        det[k * 7, 5 + int(boxes_row[members[0], 4])] = 0.95
        det[k * 7, 7 + k] = 1.0
        protos[k][small[members].max(axis=0)] = 20.0
    return det[None], protos[None]


# ---------------------------------------------------------------------------- encoders
def test_preprocess_ids_are_file_stems(binder, tiny_dataset):
    responses = _responses(binder)
    assert sorted(binder.image_ids(responses["train"])) == ["train_a", "train_b", "train_c"]
    assert sorted(binder.image_ids(responses["val"])) == ["val_a", "val_portrait"]
    assert sorted(responses["unlabeled"].sample_ids) == ["test_a", "test_b", "test_c"]
    assert responses["train"].sample_id_type is str


def test_gt_encoders_pad_to_the_data_maximum(binder):
    responses = _responses(binder)
    train = responses["train"]
    assert binder.max_instances() == 6  # train_a: tote + 5 objects, the most on one train/val image
    loaded = binder._loaded("train_a", train)
    boxes, masks = binder.gt_boxes("train_a", train), binder.gt_masks("train_a", train)
    assert boxes.shape == (6, 6) and masks.shape == (6, S, S // 8)  # model-frame masks, 8 pixels per value
    assert boxes.dtype == masks.dtype == np.float32
    n = len(loaded.gt)
    assert boxes[:, 5].sum() == n == 6
    np.testing.assert_allclose(boxes[:n, :4], loaded.gt.boxes)
    np.testing.assert_array_equal(boxes[:n, 4], loaded.gt.class_ids)
    from armbench_segmentation.codecs import unpack_mask_bits

    np.testing.assert_array_equal(unpack_mask_bits(masks[:n], S), loaded.gt.masks)  # the engine's very pixels
    np.testing.assert_array_equal(masks, masks.astype(np.float16))  # exact through float16 storage

    empty_boxes, empty_masks = binder.gt_boxes("train_b", train), binder.gt_masks("train_b", train)
    assert empty_boxes.shape == (6, 6) and not empty_boxes.any() and not empty_masks.any()  # no GT: all padding

    unlabeled = responses["unlabeled"]
    for enc in (binder.gt_boxes, binder.gt_masks):
        out = enc("test_a", unlabeled)
        assert out.dtype == np.float32 and out.size == 0

    image = binder.input_image("val_portrait", responses["val"])
    assert image.shape == (3, S, S) and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1


def test_configured_cap_cuts_with_a_warning(binder, monkeypatch, tmp_path, caplog):
    cfg = tmp_path / "cap.yaml"
    cfg.write_text("data:\n  max_instances: 2\n")
    monkeypatch.setenv("ARMBENCH_CONFIG", str(cfg))
    _clear(binder)
    train = _responses(binder)["train"]
    with caplog.at_level(logging.WARNING):
        boxes = binder.gt_boxes("train_a", train)
    assert boxes.shape == (2, 6) and boxes[:, 5].sum() == 2
    assert any("keeping the first 2" in r.getMessage() for r in caplog.records)


def test_metadata_is_flat_typed_scalars(binder):
    responses = _responses(binder)
    for split, sid in (("train", "train_a"), ("train", "train_b"), ("unlabeled", "test_a")):
        meta = binder.metadata(sid, responses[split])
        assert len(meta) >= 20
        assert list(meta) == list(binder.METADATA_TYPES)  # every sent field typed, from metadata.METADATA_FIELDS
        for key, value in meta.items():
            assert value is None or isinstance(value, (int, float, str, bool)), key
            assert not (isinstance(value, float) and np.isnan(value)), key
            if value is None:
                assert key in binder.METADATA_TYPES, f"{key} can be None but has no metadata_type"
    assert binder.metadata("test_a", responses["unlabeled"])["n_objects"] is None


# ---------------------------------------------------------------------------- loss, metrics, visualizers
def test_perfect_predictions_known_answers(binder):
    val = _responses(binder)["val"]
    boxes, masks = binder.gt_boxes("val_a", val)[None], binder.gt_masks("val_a", val)[None]
    n = int(boxes[0, :, 5].sum())
    det, protos = _crafted_outputs(binder, boxes[0], masks[0])

    m = binder.matching_metrics(det, protos, boxes, masks)  # decorated: float16 inputs, validation
    assert (m["tp"], m["fp"], m["fn"], m["f1"]) == ([n], [0], [0], [1.0])
    assert m["mean_iou"][0] > 0.95 and m["ap"][0] > 0.9
    seg = binder.segmentation_metrics(det, protos, boxes, masks)
    assert seg["over_segmented"] == [0] and seg["under_segmented"] == [0]
    loss = binder.yolov5_seg_loss_total(det, protos, boxes, masks)
    assert loss.shape == (1,) and np.isfinite(loss).all()
    parts = binder.loss_components(det, protos, boxes, masks)
    assert np.isclose(sum(parts[k][0] for k in ("box", "obj", "cls", "mask")), loss[0], rtol=1e-4)
    cm = binder.confusion_matrix(det, protos, boxes, masks)
    assert len(cm) == 1 and all(e.predicted_probability > 0.5 for e in cm[0] if e.expected_outcome.value == "Positive")

    viz = binder.pred_masks_visualizer(binder.input_image("val_a", val)[None], det, protos)
    assert viz.mask.shape == (S, S) and int(viz.mask.max()) == n == len(viz.labels) - 1
    assert viz.labels[0] == "background" and viz.labels[1].startswith("pred ")  # labels[v] names mask value v


def test_merged_prediction_is_under_segmentation(binder):
    val = _responses(binder)["val"]
    image = binder.input_image("val_a", val)[None]
    boxes, masks = binder.gt_boxes("val_a", val)[None], binder.gt_masks("val_a", val)[None]
    objects = [int(i) for i in np.flatnonzero((boxes[0, :, 5] > 0.5) & (boxes[0, :, 4] == 0))]
    assert len(objects) == 2
    det, protos = _crafted_outputs(binder, boxes[0], masks[0], merge=tuple(objects))

    seg = binder.segmentation_metrics(det, protos, boxes, masks)
    assert seg["under_segmented"] == [1] and seg["under_segmented_count"] == [1]
    assert seg["under_segmented_mean_parts"] == [2.0] and seg["over_segmented"] == [0]
    m = binder.matching_metrics(det, protos, boxes, masks)
    assert m["fn"][0] >= 1 and m["f1"][0] < 1
    under = binder.under_segmentation_visualizer(image, det, protos, boxes, masks)
    over = binder.over_segmentation_visualizer(image, det, protos, boxes, masks)
    plain = binder.image_visualizer(image).data
    assert (under.data != plain).any()  # the merging prediction and its two objects are drawn
    assert (over.data == plain).all()  # nothing over-segmented: nothing drawn


def test_batches_give_one_value_per_sample_and_unlabeled_gives_none(binder):
    responses = _responses(binder)
    val = responses["val"]
    boxes = np.stack([binder.gt_boxes(s, val) for s in ("val_a", "val_a")])
    masks = np.stack([binder.gt_masks(s, val) for s in ("val_a", "val_a")])
    det1, protos1 = _crafted_outputs(binder, boxes[0], masks[0])
    det = np.concatenate([det1, det1])
    protos = np.concatenate([protos1, protos1])
    for fn in (binder.matching_metrics, binder.segmentation_metrics, binder.loss_components):
        assert all(len(v) == 2 for v in fn(det, protos, boxes, masks).values()), fn.__name__
    assert binder.yolov5_seg_loss_total(det, protos, boxes, masks).shape == (2,)
    assert all(len(v) == 2 for v in binder.uncertainty_metrics(det, protos).values())
    emb = binder.embedding_latent_space(np.ones((2, 512), np.float32))
    assert emb.shape == (2, 512)

    no_gt = np.zeros((1, 0), np.float32)
    m = binder.matching_metrics(det1, protos1, no_gt, no_gt)
    assert all(v == [None] for v in m.values())
    assert np.isnan(binder.yolov5_seg_loss_total(det1, protos1, no_gt, no_gt)).all()
    assert binder.confusion_matrix(det1, protos1, no_gt, no_gt) == [[]]


def test_relative_boxes(binder):
    from armbench_segmentation.structures import Instances

    inst = Instances(boxes=[[0, 0, 10, 8], [2, 2, 4, 4]], class_ids=[1, 0], image_size=(8, 10), scores=[0.9, 0.5])
    bbs = binder.bounding_boxes(inst)
    assert (bbs[0].x, bbs[0].y, bbs[0].width, bbs[0].height, bbs[0].label) == (0.5, 0.5, 1.0, 1.0, "Tote")
    assert (bbs[1].x, bbs[1].y, bbs[1].confidence, bbs[1].label) == (0.3, 0.375, 0.5, "Object")


# ---------------------------------------------------------------------------- element instances
def test_element_instances_are_the_gt_rows(binder, tiny_dataset):
    responses = _responses(binder)
    train = responses["train"]
    mapping = train.sample_ids_to_instance_mappings
    assert mapping["train_a"] == [f"train_a_{k}" for k in range(6)] and mapping["train_b"] == []
    # train_c: 4 annotations in the JSON, the degenerate 121 dropped by the loader -> the last id has no object
    assert binder.gt_instance_count("train_c", train) == 4 and binder.gt_instance("train_c", train, 3) is None
    assert binder.gt_instance("train_c", train, 2) is not None
    assert not (responses["unlabeled"].sample_ids_to_instance_mappings or {})  # no GT, no instances

    loaded = binder._loaded("train_a", train)
    scale2 = (S / 200) ** 2  # original 200 x 160 letterboxed to 640: areas scale by 3.2^2
    original_areas = {101: 180 * 140, **tiny_dataset.expected["train_a_object_areas"]}
    overlaps = {101: 0, 102: 1, 103: 0, 104: 0, 105: 0, 106: 1}  # 102 and 106 overlap; one tote
    for k in range(6):
        inst = binder.gt_instance("train_a", train, k)
        assert inst.mask.dtype == np.float32 and inst.mask.shape == (S, S)
        np.testing.assert_array_equal(inst.mask > 0.5, loaded.gt.masks[k])
        meta = inst.instance_metadata
        assert set(meta) == set(binder.INSTANCE_METADATA_TYPES)
        ann = int(loaded.gt.ids[k])
        assert meta["annotation_id"] == ann == 101 + k
        assert meta["class"] == ("Tote" if ann == 101 else "Object") and meta["tote_color"] == "yellow"
        assert meta["area"] == pytest.approx(original_areas[ann] * scale2, rel=0.03)
        assert meta["area_fraction"] == pytest.approx(meta["area"] / S ** 2)
        assert meta["box_overlaps"] == overlaps[ann] and meta["visible_fraction"] is None


def _instance_values(binder, det, protos, boxes, masks) -> dict:
    return {name[len("instance_"):]: getattr(binder, name)(det, protos, boxes, masks)
            for name in binder.INSTANCE_ENGINE_COLUMNS}


def test_instance_metrics_known_answers(binder):
    val = _responses(binder)["val"]
    boxes, masks = binder.gt_boxes("val_a", val)[None], binder.gt_masks("val_a", val)[None]
    n = int(boxes[0, :, 5].sum())
    assert n == 3
    det, protos = _crafted_outputs(binder, boxes[0], masks[0])
    v = _instance_values(binder, det, protos, boxes, masks)  # decorated: float16 inputs, validation
    for name, per_object in v.items():
        assert sorted(per_object) == [0, 1, 2], name
    assert all(v["iou"][k][0] > 0.95 and v["best_iou"][k][0] >= v["iou"][k][0] - 1e-6 for k in range(n))
    assert all(v["score"][k][0] == pytest.approx(0.95 * 0.95, abs=1e-3) for k in range(n))  # obj x cls
    for flag in ("missed", "over_segmented", "in_under_segmenting"):
        assert [v[flag][k][0] for k in range(n)] == [0.0] * n, flag

    objects = [int(i) for i in np.flatnonzero((boxes[0, :, 5] > 0.5) & (boxes[0, :, 4] == 0))]
    det, protos = _crafted_outputs(binder, boxes[0], masks[0], merge=tuple(objects))
    v = _instance_values(binder, det, protos, boxes, masks)
    tote = next(k for k in range(n) if k not in objects)
    assert [v["in_under_segmenting"][k][0] for k in objects] == [1.0, 1.0] and v["in_under_segmenting"][tote][0] == 0
    assert sum(v["missed"][k][0] for k in objects) >= 1  # one merged prediction matches at most one object
    for k in objects:
        missed = v["missed"][k][0] == 1.0
        assert np.isnan(v["iou"][k][0]) == missed and np.isnan(v["score"][k][0]) == missed


def test_instance_metrics_batch_and_unlabeled(binder):
    val = _responses(binder)["val"]
    rows = [(binder.gt_boxes(s, val), binder.gt_masks(s, val)) for s in ("val_a", "val_portrait")]
    outs = [_crafted_outputs(binder, b, m) for b, m in rows]
    k = max(len(b) for b, _ in rows)  # the two samples share K rows (padding)
    boxes, masks = np.stack([b for b, _ in rows]), np.stack([m for _, m in rows])
    det, protos = np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
    v = binder.instance_iou(det, protos, boxes, masks)
    assert sorted(v) == [0, 1, 2] and k >= 3  # val_a has 3 objects, val_portrait 2
    assert all(len(a) == 2 for a in v.values())
    assert np.isnan(v[2][1]) and np.isfinite(v[2][0]) and np.isfinite(v[1][1])
    no_gt = np.zeros((1, 0), np.float32)
    assert binder.instance_missed(outs[0][0], outs[0][1], no_gt, no_gt) == {}


def test_false_positive_instances_are_the_unmatched_predictions(binder):
    val = _responses(binder)["val"]
    boxes, masks = binder.gt_boxes("val_a", val), binder.gt_masks("val_a", val)
    det, protos = _crafted_outputs(binder, boxes, masks)
    extra = int(boxes[:, 5].sum())  # one more prediction, in the letterbox padding (no GT there)
    det[0, extra * 7, :5] = [16, 16, 32, 32, 0.9]
    det[0, extra * 7, 5] = 0.9  # Object
    det[0, extra * 7, 7 + extra] = 1.0
    protos[0, extra, :8, :8] = 20.0
    predictions = {"detections": det[0], "prototypes": protos[0], "embedding": np.zeros(512, np.float32)}

    fps = binder.false_positive_instances("val_a", val, predictions)
    assert len(fps) == 1
    (fp,) = fps
    assert fp.mask.shape == (S, S) and fp.mask.dtype == np.float32
    assert fp.mask[32:].sum() == 0 and fp.mask[:, 32:].sum() == 0  # inside its box (cropped)
    assert 0.9 * 32 * 32 <= fp.mask.sum() <= 32 * 32  # the 8x8 prototype cells, upsampled x4
    meta = fp.instance_metadata
    assert set(meta) == set(binder.FP_METADATA_TYPES)
    assert meta["class"] == "Object" and meta["error_kind"] == "false_positive" and meta["area"] == fp.mask.sum()
    assert meta["annotation_id"] is None and meta["box_overlaps"] is None and meta["tote_color"] == "blue"
    assert fp.instance_metrics["instance_score"] == pytest.approx(0.81, abs=1e-4)  # obj x cls
    assert fp.instance_metrics["instance_best_iou"] == 0.0 and np.isnan(fp.instance_metrics["instance_iou"])
    assert set(fp.instance_metrics) == set(binder.INSTANCE_ENGINE_COLUMNS)
    assert binder.false_positive_instances("test_a", _responses(binder)["unlabeled"], predictions) == []
    m = binder.matching_metrics(det, protos, boxes[None], masks[None])
    assert m["fp"] == [1] and m["tp"] == [extra]
    assert binder.gt_boxes_empty("val_a", val).shape == boxes.shape and not binder.gt_boxes_empty("val_a", val).any()
    assert binder.gt_masks_empty("val_a", val).shape == masks.shape


FRESH_REGISTRATIONS = r"""
import json, os
os.environ["TL_DISABLE_ANALYTICS"] = "1"
import leap_binder
from code_loader import leap_binder as binder
def plain(d):
    if isinstance(d, dict):
        return {k: getattr(v, "name", v) for k, v in d.items()}
    return getattr(d, "name", d)
sc = binder.setup_container
print(json.dumps({
    "metrics": {h.metric_handler_data.name: [plain(h.metric_handler_data.direction),
                plain(h.metric_handler_data.compute_insights)] for h in sc.metrics
                if getattr(h.function, "__module__", None) == "leap_binder"},
    "instance_metrics": {h.metric_handler_data.name: [plain(h.metric_handler_data.direction),
                         h.metric_handler_data.compute_insights] for h in sc.instance_metrics}}))
"""


def test_metric_registration_follows_the_column_table():
    """Registered as the platform reads them (a fresh import: code-loader overwrites the last
    registered metric's direction on every call): every key of a dict metric with a column is a
    quality measure with the column's direction, or descriptive with compute_insights False and
    no direction."""
    import json

    from armbench_segmentation.analysis.columns import INSTANCE_COLUMN_DEFS, describe

    env = {**os.environ, "TL_DISABLE_ANALYTICS": "1"}
    out = subprocess.run([sys.executable, "-c", FRESH_REGISTRATIONS], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    reg = json.loads(out.stdout.strip().splitlines()[-1])
    import leap_binder

    arrow = {"worse": "Downward", "better": "Upward"}
    keys = {"yolov5_seg_loss_parts": leap_binder.LOSS_COMPONENTS, "matching": leap_binder.MATCHING_KEYS,
            "segmentation_errors": leap_binder.segmentation_column_names(), "uncertainty": leap_binder.UNCERTAINTY_KEYS}
    assert set(keys) | {"confusion_matrix"} == set(reg["metrics"])
    descriptive = []
    for name, metric_keys in keys.items():
        direction, insights = reg["metrics"][name]
        for key in metric_keys:
            column = describe(leap_binder.ENGINE_COLUMNS[name] + key)
            assert column is not None, (name, key)
            if column.direction:
                assert direction[key] == arrow[column.direction] and insights.get(key, True) is True, (name, key)
            else:
                descriptive.append(f"{name}.{key}")
                assert key not in direction and insights[key] is False, (name, key)
    assert {"segmentation_errors.num_gt", "segmentation_errors.num_pred", "uncertainty.num_detections"} <= set(
        descriptive)
    for name, (direction, insights) in reg["instance_metrics"].items():
        column = INSTANCE_COLUMN_DEFS["score" if name == "instance_score"
                                      else leap_binder.INSTANCE_ENGINE_COLUMNS[name]]
        assert insights is (False if not column.direction else None), name
        if column.direction:
            assert direction == arrow[column.direction], name
    assert reg["instance_metrics"]["instance_score"][1] is False
    assert reg["instance_metrics"]["instance_iou"][0] == "Upward"
    assert reg["instance_metrics"]["instance_missed"][0] == "Downward"


CHECK_DATASET = r"""
import json, os, sys
from code_loader import LeapLoader
r = LeapLoader(sys.argv[1], "leap_binder.py").check_dataset()
print(json.dumps({"is_valid": bool(r.is_valid), "error": r.general_error, "payloads": [p.name for p in r.payloads],
                  "failed": [p.name for p in r.payloads if not p.is_passed],
                  "has_element_instances": bool(r.setup and r.setup.has_element_instances)}))
"""


def test_check_dataset_is_valid_with_the_element_instances(tiny_dataset, tmp_path):
    """What the platform runs first, in a fresh interpreter (no model needed: mapping mode)."""
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMBENCH_")}
    env.update(TL_DISABLE_ANALYTICS="1", ARMBENCH_DATASET=str(tiny_dataset.root), HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", CHECK_DATASET, str(ROOT)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["is_valid"] and result["failed"] == [] and result["error"] is None, result
    assert result["has_element_instances"]
    import leap_binder

    instance_payloads = {p[len("builtin_instance_extra_metadata_"):] for p in result["payloads"]
                         if p.startswith("builtin_instance_extra_metadata_")}
    assert instance_payloads == set(leap_binder.FP_METADATA_TYPES)  # GT keys + the false positives' error_kind
    assert {"builtin_instance_metadata_is_instance", "builtin_instance_metadata_is_false_positive",
            "false_positives"} <= set(result["payloads"])
    assert not (tmp_path / ".tensorleap").exists()


# ---------------------------------------------------------------------------- leap.yaml
@pytest.mark.parametrize("pattern, path, expected", [
    ("armbench_segmentation/**/*.py", "armbench_segmentation/config.py", True),
    ("armbench_segmentation/**/*.py", "armbench_segmentation/metrics/loss.py", True),
    ("armbench_segmentation/*.py", "armbench_segmentation/metrics/loss.py", False),
    ("models/**", "models/armbench-yolov5s-seg.onnx", True),
    ("**/__pycache__/**", "armbench_segmentation/__pycache__/config.cpython-311.pyc", True),
    ("*.py", "tools/finetune.py", False),
    ("leap_{binder,test}.py", "leap_test.py", True),
    ("data/[a-c]?.json", "data/b1.json", True),
])
def test_glob_semantics(pattern, path, expected):
    import leap_bundle

    assert leap_bundle.glob_match(pattern, path) is expected


def test_leap_yaml_bundles_the_entry_imports_and_nothing_heavy():
    import leap_bundle

    config = leap_bundle.read_leap_yaml()
    include, exclude = config["include"], config["exclude"]
    needed = [p.relative_to(ROOT).as_posix() for p in leap_bundle.import_closure(ROOT / config["entryFile"], ROOT)]
    assert "armbench_segmentation/metrics/loss.py" in needed and "armbench_segmentation/visualize.py" in needed
    for path in needed + ["tensorleap_requirements.txt", "armbench_segmentation/default_config.yaml"]:
        assert leap_bundle.bundled(path, include, exclude), path
    for path in ("models/armbench-yolov5s-seg.onnx", "armbench_segmentation/dataset/images/X.jpg", "tests/conftest.py",
                 "tools/finetune.py", ".venv/lib/python3.11/site-packages/numpy/__init__.py", "leap_test.py",
                 "leap_bundle.py", "armbench_segmentation/analysis/pipeline.py", "armbench_segmentation/analysis/new.py",
                 "armbench_segmentation/explore/app.py", "armbench_segmentation/training/model.py",
                 "armbench_segmentation/data/synth.py", "armbench_segmentation/cli.py", "requirements.txt",
                 "pyproject.toml", "poetry.lock"):
        assert not leap_bundle.bundled(path, include, exclude), path
    failures, lines = leap_bundle.check_leap_yaml(config, [])  # what leap_test.py's step reports
    n = len(set(needed) | {config["entryFile"], *leap_bundle.REQUIRED_FILES})
    assert failures == [] and lines[0] == (f"{n} files needed by {config['entryFile']} ({len(needed)} by the import "
                                           "graph, 0 imported at run time): all bundled")
    assert "armbench_segmentation/analysis/columns.py" in needed  # the column table: metric directions
    broken = {**config, "pythonVersion": "3.11", "include": config["include"] + ["requirements.txt"]}
    failures, _ = leap_bundle.check_leap_yaml(broken, [])
    assert any("pythonVersion is '3.11'" in f and "py311" in f for f in failures), failures
    assert any("requirements files ['requirements.txt', 'tensorleap_requirements.txt']" in f for f in failures)


# ---------------------------------------------------------------------------- end to end
needs_model = pytest.mark.skipif(
    not MODEL_PATH.is_file(),
    reason=f"model {MODEL_PATH} absent (the shipped models/armbench-yolov5s-seg.onnx, or ARMBENCH_MODEL)")


@pytest.fixture(scope="module")
def synth_cache(tmp_path_factory):
    """One synthetic dataset cache for every leap_test run of this module."""
    return tmp_path_factory.mktemp("xdg-cache")


def _run_leap_test(home: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ARMBENCH_DATASET", "ARMBENCH_CONFIG", "TL_DISABLE_ANALYTICS", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(cache), ARMBENCH_MODEL=str(MODEL_PATH.resolve()))
    code = "import sys, leap_test; sys.exit(leap_test.main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.e2e
@needs_model
def test_leap_test_passes_without_telemetry(tmp_path, synth_cache):
    home = tmp_path / "home"
    home.mkdir()
    proc = _run_leap_test(home, synth_cache)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "PASSED" in proc.stdout
    assert not (home / ".tensorleap").exists(), "code_loader telemetry wrote ~/.tensorleap"


BREAKS = {
    # one value too many: code_loader's own local check does not catch this
    "matching_metrics": (
        '    return _columns([None if ev is None else ev.columns() for ev in evs], list(MATCHING_KEYS))\n',
        '    columns = _columns([None if ev is None else ev.columns() for ev in evs], list(MATCHING_KEYS))\n'
        '    return {k: v + [0.0] for k, v in columns.items()}\n',
        "one value per sample",
    ),
    # raises inside the function
    "uncertainty_metrics": (
        '    evs = _per_sample(_evaluation, detections, prototypes)\n',
        '    raise RuntimeError("broken on purpose")\n',
        "broken on purpose",
    ),
}


@pytest.mark.e2e
@needs_model
@pytest.mark.parametrize("function", sorted(BREAKS))
def test_leap_test_fails_loudly_on_a_broken_function(function, tmp_path, synth_cache):
    old, new, symptom = BREAKS[function]
    source = (ROOT / "leap_binder.py").read_text(encoding="utf-8")
    assert source.count(old) == 1, f"the text to break in {function} changed; update BREAKS"
    broken = tmp_path / "entry" / "leap_binder.py"
    broken.parent.mkdir()
    broken.write_text(source.replace(old, new), encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()

    proc = _run_leap_test(home, synth_cache, "--entry", str(broken), "--samples", "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-6000:]
    assert "FAILED" in proc.stdout
    failures = proc.stdout[proc.stdout.rfind("failure(s):"):]
    assert f"leap_binder.{function}" in failures, failures[-3000:]
    assert symptom in failures, failures[-3000:]

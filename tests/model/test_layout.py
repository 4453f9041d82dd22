"""Head-layout detection (model/layout.py) and SegmentationModel on YOLOv8-layout exports."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from armbench_segmentation.config import ModelConfig
from armbench_segmentation.errors import ModelError
from armbench_segmentation.model.layout import HeadLayout, LayoutError, detect_layout
from armbench_segmentation.model.onnx_model import SegmentationModel

V5, V8 = HeadLayout.YOLOV5, HeadLayout.YOLOV8
NAMES = ("Object", "Tote")
CPU_CFG = ModelConfig(device="cpu", num_threads=1)
ULTRA = {"author": "Ultralytics", "task": "segment", "end2end": "False", "names": "{0: 'Object', 1: 'Tote'}"}


@pytest.mark.parametrize("shape, nm, metadata, n_names, expected", [
    ((1, 25200, 39), 32, {}, None, (V5, 2)),  # yolov5s-seg at 640
    ((1, 38, 8400), 32, {}, None, (V8, 2)),  # yolov8n-seg at 640 (was "predicts 8363 classes")
    ((1, 116, 8400), 32, {}, None, (V8, 80)),  # COCO yolov8/yolo11-seg
    ((1, 25200, 117), 32, {}, None, (V5, 80)),  # COCO yolov5s-seg
    ((1, 38, 8400), 32, ULTRA, 2, (V8, 2)),
    ((None, None, 39), 32, {}, None, (V5, 2)),  # yolov5 dynamic export, anchors symbolic
    ((None, 38, None), 32, {}, None, (V8, 2)),  # ultralytics dynamic export, anchors symbolic
    ((1, 64, 39), 32, {}, None, (V5, 2)),  # tiny: both fit, the anchor axis is the longer one
    ((1, 64, 39), 32, {}, 28, (V8, 28)),  # ... unless the metadata's class count says otherwise
    ((1, 64, 39), 32, {"author": "Ultralytics"}, 28, (V8, 28)),
    ((1, 64, 39), 32, {"task": "segment", "stride": "32"}, None, (V5, 2)),  # 'task' alone is not Ultralytics
    ((1, 64, 39), 32, {}, 5, (V5, 2)),  # a names count that fits nothing is not used (warned about later)
])
def test_detect_layout(shape, nm, metadata, n_names, expected):
    assert detect_layout(shape, nm, metadata, n_names) == expected


@pytest.mark.parametrize("shape, nm, metadata, message", [
    ((1, 36, 36), 32, {}, "fits neither"),
    ((1, 39, 39), 32, {}, "fits both and cannot be told apart"),
    ((1, 25200, 39), 32, {"author": "Ultralytics"}, "YOLOv8/YOLO11 was expected"),  # 25164 classes on 39 anchors
    ((1, 64, 39), 32, {"author": "Ultralytics"}, "YOLOv8/YOLO11 was expected"),
    ((1, 300, 38), 32, {"author": "Ultralytics", "task": "segment", "end2end": "True"}, "end-to-end"),
    ((1, 6, 8400), 32, {"author": "Ultralytics", "task": "detect"}, "'detect' model"),
    ((1, None, None), 32, {}, "fits neither"),
])
def test_detect_layout_refusals_name_what_was_found_and_what_is_accepted(shape, nm, metadata, message):
    with pytest.raises(LayoutError) as err:
        detect_layout(shape, nm, metadata)
    msg = str(err.value)
    assert message in msg
    assert "YOLOv5-seg: output0 (N, A, 5 + nc + nm)" in msg and "YOLOv8/YOLO11-seg" in msg
    if "task" not in metadata:
        assert str(tuple(shape)) in msg and f"{nm} prototype channels" in msg


def test_head_layout_from_value():
    assert HeadLayout.from_value("YOLOv8") is V8 and HeadLayout.from_value(V5) is V5
    with pytest.raises(ValueError, match=r"\['yolov5', 'yolov8'\]"):
        HeadLayout.from_value("yolox")


# ---------------------------------------------------------------------------- SegmentationModel
def _batch(n, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return SegmentationModel.to_input(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("static", [False, True])
def test_yolov8_export_is_read_channel_first(tiny_model, static):
    m = SegmentationModel(tiny_model(layout="yolov8", static=static), CPU_CFG, NAMES)
    assert (m.layout, m.num_classes, m.num_mask_coeffs) == (V8, 2, 32)
    out = m.run(_batch(2))
    assert out.layout is V8 and out.detections.shape == (2, 38, 64) and out.protos.shape == (2, 32, 16, 16)
    v5 = SegmentationModel(tiny_model(static=static), CPU_CFG, NAMES)
    assert v5.layout is V5 and v5.run(_batch(1)).layout is V5


def test_yolov8_symbolic_anchor_axis_needs_no_probe(tiny_model):
    m = SegmentationModel(tiny_model(layout="yolov8", symbolic_width=True, nc=3), CPU_CFG, None)
    assert (m.layout, m.num_classes) == (V8, 3)


def test_yolov8_class_count_mismatch_names_the_count(tiny_model):
    with pytest.raises(ModelError, match="predicts 3 classes but 2 class names"):
        SegmentationModel(tiny_model(layout="yolov8", nc=3), CPU_CFG, NAMES)


def test_yolov8_ultralytics_metadata(tiny_model, caplog):
    with caplog.at_level(logging.WARNING):
        m = SegmentationModel(tiny_model(layout="yolov8", metadata=ULTRA), CPU_CFG, NAMES)
    assert m.layout is V8 and m.model_class_names == NAMES and caplog.records == []
    with pytest.raises(ModelError) as err:
        SegmentationModel(tiny_model(layout="yolov8", metadata={**ULTRA, "end2end": "True"}), CPU_CFG, NAMES)
    assert "end-to-end" in str(err.value) and "tiny" in str(err.value) and "--model" in str(err.value)


def test_yolov8_permuted_names_remap_the_class_channels(tiny_model):
    reference = SegmentationModel(tiny_model(layout="yolov8"), CPU_CFG, NAMES)
    swapped = SegmentationModel(tiny_model(layout="yolov8", metadata={"names": "{0: 'Tote', 1: 'Object'}"}), CPU_CFG, NAMES)
    assert swapped.class_permutation == (1, 0)
    batch = _batch(2)
    ref, got = reference.run(batch).detections, swapped.run(batch).detections
    expected = ref.copy()
    expected[:, [4, 5]] = ref[:, [5, 4]]  # class channels 4 and 5 of (N, 4+nc+nm, A)
    np.testing.assert_array_equal(got, expected)


def test_neither_layout_is_refused_with_the_shapes(tiny_model):
    # 5 + nc + nm columns with nc = 0 in v5, read as v8 -> 64 channels with A = 37: neither fits
    with pytest.raises(ModelError) as err:
        SegmentationModel(tiny_model(nc=0), CPU_CFG, NAMES)
    msg = str(err.value)
    assert "found output0 (None, None, 37) with output1 of 32 prototype channels: it fits neither" in msg
    assert "Accepted: YOLOv5-seg" in msg and "YOLOv8/YOLO11-seg" in msg


# ---------------------------------------------------------------------------- the loss for a YOLOv8 head
def test_evaluate_sample_yolov8_has_no_yolov5_loss_but_every_other_metric(caplog, monkeypatch):
    """Same anchors in both layouts (yolov5 rows with objectness 1): the metrics agree, the
    YOLOv5-seg loss exists only for yolov5; yolov8 gets None columns and ONE warning."""
    from armbench_segmentation.config import Settings
    from armbench_segmentation.metrics import sample_evaluation
    from armbench_segmentation.structures import Instances

    monkeypatch.setattr(sample_evaluation, "_loss_warned", False)
    size, nm = 64, 32
    rng = np.random.default_rng(0)
    gt_masks = np.zeros((2, size, size), bool)
    gt_masks[0, 8:24, 8:24] = True
    gt_masks[1, 36:60, 30:58] = True
    gt = Instances(boxes=[[8, 8, 24, 24], [30, 36, 58, 60]], class_ids=[0, 0], image_size=(size, size), masks=gt_masks)
    anchors = 3 * ((size // 8) ** 2 + (size // 16) ** 2 + (size // 32) ** 2)  # yolov5's anchor grid at 64 px
    v5 = np.zeros((anchors, 5 + 2 + nm), np.float32)
    v5[:, :4] = [32, 32, 4, 4]
    v5[:, 4] = 1.0
    v5[:2, :4] = [[16, 16, 16, 16], [44, 48, 28, 24]]  # two confident detections on the GT boxes
    v5[:2, 5] = [0.9, 0.8]
    v5[:2, 7] = 1.0
    protos = np.zeros((nm, size // 4, size // 4), np.float32)
    protos[0] = 5.0
    protos[1:] = rng.normal(size=(nm - 1, size // 4, size // 4)) * 0.01
    v8 = np.ascontiguousarray(np.concatenate([v5[:, :4], v5[:, 5:]], axis=1).T)  # (4+nc+nm, A)
    settings = Settings()
    with caplog.at_level(logging.WARNING):
        e5 = sample_evaluation.evaluate_sample(v5, protos, gt, settings, (size, size))
        e8 = sample_evaluation.evaluate_sample(v8, protos, gt, settings, (size, size), layout="yolov8")
        sample_evaluation.evaluate_sample(v8, protos, gt, settings, (size, size), layout=HeadLayout.YOLOV8)
    c5, c8 = e5.columns(), e8.columns()
    assert np.isfinite(c5["loss"]) and c5["loss"] > 0 and e5.losses is not None
    assert e8.losses is None and c8["loss"] is None and all(c8[f"yolo_loss_{p}"] is None for p in ("box", "obj", "cls", "mask"))
    assert (c8["tp"], c8["fp"], c8["fn"]) == (c5["tp"], c5["fp"], c5["fn"]) == (2, 0, 0)
    assert c8["error_rate"] == c5["error_rate"] == 0.0
    assert c8["ap"] > 0.8 and c5["ap"] > 0.8  # (not equal: each layout assembles masks its own way)
    warnings = [r for r in caplog.records if "loss not computed" in r.getMessage()]
    assert len(warnings) == 1 and "yolov8" in warnings[0].getMessage() and "objectness" in warnings[0].getMessage()


def test_hostile_metadata_is_quoted_and_cut_in_messages():
    hostile = "\x1b[31mdetect\n" + "x" * 500
    with pytest.raises(LayoutError) as err:
        detect_layout((1, 38, 8400), 32, {"author": "Ultralytics", "task": hostile})
    msg = str(err.value)
    assert "\x1b" not in msg and "\n" not in msg and "x" * 100 not in msg
    # an unreadable end2end value is not taken as true
    assert detect_layout((1, 38, 8400), 32, {"author": "Ultralytics", "end2end": "True\n" + "y" * 500}) == (V8, 2)

"""The YOLOv8/YOLO11-seg decode against ultralytics' own post-processing, and hand-made cases.

``tests/fixtures/decode_golden_yolov8.npz`` is written by ``tools/make_decode_fixtures_v8.py``
in the tools venv: random-weight YOLOv8n-seg and YOLO11n-seg (nc=2) built from ultralytics'
yaml, exported to ONNX, post-processed by ``ultralytics.utils.nms.non_max_suppression`` +
``ops.process_mask(upsample=True)`` as its SegmentationPredictor does. No torch here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from armbench_segmentation.config import ModelConfig
from armbench_segmentation.data.letterbox import Letterbox
from armbench_segmentation.model.decode import decode, decode_batch, masks_from_protos
from armbench_segmentation.model.layout import HeadLayout
from armbench_segmentation.model.onnx_model import RawOutputs

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "decode_golden_yolov8.npz"


def _golden():
    if not GOLDEN.is_file():
        pytest.skip(f"{GOLDEN} missing: run tools/make_decode_fixtures_v8.py in the tools venv")
    data = np.load(GOLDEN)  # no pickles: plain arrays and unicode strings
    return data, json.loads(str(data["meta"]))


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def test_decode_reproduces_ultralytics_golden():
    from pycocotools import mask as mask_utils

    data, meta = _golden()
    size = meta["input_size"]
    cfg = ModelConfig(conf_threshold=meta["conf_threshold"], iou_threshold=meta["iou_threshold"],
                      max_detections=meta["max_detections"], mask_threshold=meta["mask_threshold"])
    kept, candidates, pixels_off = 0, 0, 0
    for case in meta["cases"]:
        det = data[f"{case}_det"].astype(np.float32)  # (4 + nc + nm, K)
        pred = decode(det, data[f"{case}_protos"].astype(np.float32), (size, size), cfg, layout="yolov8")
        boxes = data[f"{case}_boxes"]
        assert len(pred) == len(boxes), f"{case}: {len(pred)} detections, ultralytics kept {len(boxes)}"
        np.testing.assert_allclose(pred.boxes, boxes, atol=1e-3, rtol=0)
        np.testing.assert_allclose(pred.scores, data[f"{case}_scores"], atol=1e-6, rtol=0)
        np.testing.assert_array_equal(pred.class_ids, data[f"{case}_classes"])
        for i, counts in enumerate(data[f"{case}_masks"]):
            gold = mask_utils.decode({"size": [size, size], "counts": str(counts)}).astype(bool)
            assert _mask_iou(gold, pred.masks[i]) >= 0.999, f"{case} instance {i}"
            pixels_off += int((gold != pred.masks[i]).sum())
        lb = Letterbox.compute(tuple(data[f"{case}_orig_hw"]), size)
        np.testing.assert_allclose(lb.boxes_to_original(pred.boxes), data[f"{case}_boxes_orig"], atol=1e-3, rtol=0)
        # masks are cropped at input resolution: nothing outside the (ceil-rounded) box
        for box, mask in zip(pred.boxes, pred.masks):
            x1, y1, x2, y2 = np.ceil(box).clip(0, size).astype(int)
            inside = np.zeros_like(mask)
            inside[y1:y2, x1:x2] = True
            assert not (mask & ~inside).any()
        kept += len(pred)
        candidates += int((det[4 : 4 + meta["nc"]].max(axis=0) > cfg.conf_threshold).sum())
    assert kept >= 10 and candidates > 2 * kept, (kept, candidates)  # NMS had overlapping boxes to remove
    assert pixels_off <= 20, pixels_off  # float rounding of bilinear logits at the 0 level, not a method difference


def test_golden_covers_both_classes_and_both_models():
    data, meta = _golden()
    assert {c.split("_")[0] for c in meta["cases"]} == {"yolov8", "yolo11"}
    classes = np.concatenate([data[f"{c}_classes"] for c in meta["cases"]])
    assert set(classes.tolist()) == {0, 1}


# ---------------------------------------------------------------------------- hand-made cases
NM = 4


def _v8(rows: list[tuple[float, ...]], nc: int = 2) -> np.ndarray:
    """Anchors as rows (cx, cy, w, h, class scores..., coeffs...) -> channel-first (4+nc+nm, A)."""
    a = np.zeros((len(rows), 4 + nc + NM), np.float32)
    for i, r in enumerate(rows):
        a[i, : len(r)] = r
    return np.ascontiguousarray(a.T)


def _protos(value: float = 4.0, hw: int = 16) -> np.ndarray:
    p = np.zeros((NM, hw, hw), np.float32)
    p[0] = value  # coefficient 0 = 1 -> logit `value` everywhere
    return p


CFG = ModelConfig(conf_threshold=0.25, iou_threshold=0.5, max_detections=300, mask_threshold=0.5)


def test_v8_best_class_score_no_objectness_and_class_aware_nms():
    det = _v8([
        (20, 20, 16, 16, 0.9, 0.1, 1),  # class 0, kept
        (21, 20, 16, 16, 0.8, 0.0, 1),  # same class, IoU ~0.88: suppressed
        (21, 20, 16, 16, 0.0, 0.7, 1),  # other class, same place: kept (class-aware)
        (50, 50, 10, 10, 0.2, 0.24, 1),  # best score 0.24 <= conf: dropped
        (48, 12, 8, 8, 0.3, 0.6, 1),  # class 1 with 0.6
    ])
    pred = decode(det, _protos(), (64, 64), CFG, layout=HeadLayout.YOLOV8)
    np.testing.assert_allclose(pred.scores, [0.9, 0.7, 0.6])
    np.testing.assert_array_equal(pred.class_ids, [0, 1, 1])
    np.testing.assert_allclose(pred.boxes[0], [12, 12, 28, 28])
    # as exported: coefficients are not scaled by any score (yolov5 multiplies by objectness)
    np.testing.assert_allclose(pred.extras["coeffs"][:, 0], [1, 1, 1])


def test_v8_mask_is_upsampled_logit_cropped_at_input_resolution():
    # a box with fractional edges: ultralytics keeps input column c when x1 <= c < x2
    det = _v8([(20.0, 30.0, 13.0, 9.0, 0.9, 0.0, 1)])  # x 13.5..26.5, y 25.5..34.5
    pred = decode(det, _protos(), (64, 64), CFG, layout="yolov8")
    expected = np.zeros((64, 64), bool)
    expected[26:35, 14:27] = True
    np.testing.assert_array_equal(pred.masks[0], expected)
    # proto_probs: sigmoid at prototype resolution, cropped there (as for yolov5)
    probs = pred.extras["proto_probs"][0]
    assert probs.shape == (16, 16) and np.isclose(probs.max(), 1 / (1 + np.exp(-4.0)))
    assert (probs[:6].sum(), probs[9:].sum()) == (0, 0)


def test_v8_mask_threshold_is_applied_to_the_logit():
    # logit 0.5 everywhere -> sigmoid 0.62: in at threshold 0.5 and 0.6, out at 0.7
    det = _v8([(32, 32, 20, 20, 0.9, 0.0, 1)])
    for thr, filled in ((0.5, True), (0.6, True), (0.7, False)):
        masks, _ = masks_from_protos(np.array([[1, 0, 0, 0]], np.float32), _protos(0.5), np.array([[22, 22, 42, 42]], np.float32),
                                     (64, 64), thr, layout="yolov8")
        assert masks[0].any() == filled
    # through decode, an empty mask drops the detection (ultralytics' SegmentationPredictor)
    pred = decode(det, _protos(-3.0), (64, 64), CFG, layout="yolov8")
    assert len(pred) == 0 and pred.masks.shape == (0, 64, 64) and pred.extras["proto_probs"].shape == (0, 16, 16)


def test_v8_local_upsampling_equals_a_global_resize():
    import cv2

    rng = np.random.default_rng(3)
    protos = rng.normal(size=(NM, 16, 16)).astype(np.float32)
    coeffs = rng.normal(size=(6, NM)).astype(np.float32)
    boxes = np.array([[0, 0, 64, 64], [3.2, 5.7, 30.1, 44.9], [40, 1, 63.5, 20], [-5, -5, 10, 12],
                      [60, 60, 80, 90], [17.5, 17.5, 18.2, 40]], np.float32)
    masks, _ = masks_from_protos(coeffs, protos, boxes, (64, 64), 0.5, layout="yolov8")
    cols, rows = np.arange(64)[None, :], np.arange(64)[:, None]
    for k in range(len(coeffs)):
        logits = cv2.resize((coeffs[k] @ protos.reshape(NM, -1)).reshape(16, 16), (64, 64), interpolation=cv2.INTER_LINEAR)
        x1, y1, x2, y2 = boxes[k]
        ref = (logits > 0) & (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
        np.testing.assert_array_equal(masks[k], ref, err_msg=f"box {k}")


def test_v8_non_integer_prototype_scale():
    det = _v8([(30, 20, 20, 10, 0.9, 0.0, 1)])
    pred = decode(det, _protos(hw=15), (60, 64), CFG, layout="yolov8")  # 64/15 is not an integer
    expected = np.zeros((60, 64), bool)
    expected[15:25, 20:40] = True
    np.testing.assert_array_equal(pred.masks[0], expected)


def test_layouts_read_the_same_anchor_the_same_way():
    """A yolov5 row (obj=1) and its yolov8 column give identical instances."""
    rows = [(20, 20, 16, 16, 0.9, 0.1), (22, 21, 16, 16, 0.8, 0.3), (40, 40, 12, 20, 0.2, 0.7)]
    rng = np.random.default_rng(0)
    coeffs = rng.normal(size=(3, NM)).astype(np.float32)
    v8 = _v8([r + tuple(c) for r, c in zip(rows, coeffs)])
    v5 = np.concatenate([v8[:4].T, np.ones((3, 1), np.float32), v8[4:].T], axis=1)  # (A, 5+nc+nm)
    protos = rng.normal(size=(NM, 16, 16)).astype(np.float32)
    a = decode(v5, protos, (64, 64), CFG, layout="yolov5")
    b = decode(v8, protos, (64, 64), CFG, layout="yolov8")
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_allclose(a.extras["proto_probs"], b.extras["proto_probs"], rtol=0, atol=1e-6)
    # (the masks differ by design: yolov5 crops then upsamples, ultralytics upsamples then crops)


@pytest.mark.parametrize("layout, shape, message", [
    ("yolov8", (5, 10), "leaves no class"),
    ("yolov5", (10, 5), "leaves no class"),
    ("yolov9", (38, 10), "unknown head layout"),
])
def test_decode_rejects_what_does_not_fit(layout, shape, message):
    with pytest.raises(ValueError, match=message):
        decode(np.zeros(shape, np.float32), np.zeros((NM, 16, 16), np.float32), (64, 64), CFG, layout=layout)


def test_decode_batch_follows_the_raw_outputs_layout():
    det = _v8([(20, 20, 16, 16, 0.9, 0.1, 1)])
    raw = RawOutputs(np.stack([det, det]), np.stack([_protos(), _protos()]), None, HeadLayout.YOLOV8)
    preds = decode_batch(raw, (64, 64), CFG)
    assert [len(p) for p in preds] == [1, 1] and preds[0].scores[0] == np.float32(0.9)

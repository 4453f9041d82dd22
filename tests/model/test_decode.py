import logging

import cv2
import numpy as np
import pytest

from armbench_segmentation.config import ModelConfig
from armbench_segmentation.data.letterbox import Letterbox
from armbench_segmentation.model.decode import decode, decode_batch, masks_from_protos, masks_to_original_rle, nms, to_original
from armbench_segmentation.model.onnx_model import RawOutputs

NM = 4
CFG = ModelConfig(conf_threshold=0.25, iou_threshold=0.45, max_detections=300)


def _row(box_xyxy, obj, cls_probs, coeffs=None):
    x1, y1, x2, y2 = box_xyxy
    coeffs = np.zeros(NM) if coeffs is None else coeffs
    return np.concatenate([[(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, obj], cls_probs, coeffs]).astype(np.float32)


def _protos(h=16, w=16):
    p = np.zeros((NM, h, w), np.float32)
    p[0] = 10.0  # coeffs e0 -> sigmoid(10) ~ 1 everywhere
    return p


def _dets(rows, n_background=20):
    bg = np.zeros((n_background, 5 + 2 + NM), np.float32)  # objectness 0: never candidates
    return np.concatenate([np.stack(rows), bg])


def test_same_box_two_classes_both_kept():
    rows = [_row((8, 8, 24, 40), 0.9, [0.9, 0.1]), _row((8, 8, 24, 40), 0.8, [0.2, 0.8])]
    pred = decode(_dets(rows), _protos(), (64, 64), CFG)
    assert len(pred) == 2
    assert sorted(pred.class_ids.tolist()) == [0, 1]
    np.testing.assert_allclose(pred.scores, [0.81, 0.64], rtol=1e-6)


def test_overlapping_same_class_suppressed_and_threshold_is_strict():
    rows = [
        _row((8, 8, 24, 40), 0.9, [0.9, 0.1]),
        _row((9, 8, 25, 40), 0.8, [0.9, 0.1]),  # IoU ~0.88 with the first: suppressed
        _row((40, 40, 60, 60), 0.7, [0.9, 0.1]),  # far away: kept
        _row((8, 8, 24, 40), 0.5, [0.4, 0.3]),  # conf 0.2 < 0.25: filtered
        _row((8, 8, 24, 40), 0.2, [1.0, 0.0]),  # objectness below threshold: filtered
    ]
    pred = decode(_dets(rows), _protos(), (64, 64), CFG)
    assert len(pred) == 2
    np.testing.assert_allclose(pred.boxes, [[8, 8, 24, 40], [40, 40, 60, 60]])
    np.testing.assert_allclose(pred.scores, [0.81, 0.63], rtol=1e-6)
    # IoU exactly at threshold keeps the box (suppression is IoU > threshold)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)  # IoU 0.5
    assert nms(boxes, np.array([0.9, 0.8], np.float32), 0.5).tolist() == [0, 1]
    assert nms(boxes, np.array([0.9, 0.8], np.float32), 0.49).tolist() == [0]


def test_nms_matches_bruteforce_greedy():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 100, (300, 2)).astype(np.float32)
    wh = rng.uniform(5, 40, (300, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.random(300).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    keep, dead = [], np.zeros(300, bool)
    for a, i in enumerate(order):
        if dead[i]:
            continue
        keep.append(i)
        for j in order[a + 1 :]:
            iw = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            ih = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = iw * ih
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) > 0.45:
                dead[j] = True
    assert nms(boxes, scores, 0.45).tolist() == keep


def test_max_detections_cap_warns_with_counts(caplog):
    rows = [_row((4 * i, 0, 4 * i + 3, 3), 0.9, [0.9, 0.0]) for i in range(10)]
    with caplog.at_level(logging.WARNING):
        pred = decode(_dets(rows), _protos(), (64, 64), ModelConfig(max_detections=4))
    assert len(pred) == 4
    msgs = [r.getMessage() for r in caplog.records]
    assert any("10 detections" in m and "4" in m and "max_detections" in m for m in msgs)


def test_empty_output_is_correctly_shaped():
    pred = decode(_dets([_row((8, 8, 24, 40), 0.1, [0.9, 0.1])]), _protos(), (64, 48), CFG)
    assert len(pred) == 0 and pred.masks.shape == (0, 64, 48) and pred.scores.shape == (0,)
    assert pred.extras["coeffs"].shape == (0, NM) and pred.extras["proto_probs"].shape == (0, 16, 16)
    orig = to_original(pred, Letterbox.compute((100, 75), (64, 48)))
    assert orig.masks.shape == (0, 100, 75) and orig.image_size == (100, 75)


def test_mask_is_cropped_to_box_and_extras():
    rows = [_row((8, 8, 24, 40), 0.9, [0.9, 0.1], coeffs=np.eye(NM)[0])]
    pred = decode(_dets(rows), _protos(), (64, 64), CFG)
    expected = np.zeros((64, 64), bool)
    expected[8:40, 8:24] = True
    expected[[8, 8, 39, 39], [8, 23, 8, 23]] = False  # bilinear corners: 0.625 * 0.625 < 0.5
    np.testing.assert_array_equal(pred.masks[0], expected)
    probs = pred.extras["proto_probs"][0]
    assert probs.shape == (16, 16) and probs.dtype == np.float32
    assert probs[2:10, 2:6].min() > 0.99 and probs.sum() == pytest.approx(probs[2:10, 2:6].sum())
    np.testing.assert_allclose(pred.extras["coeffs"][0], 0.9 * np.eye(NM)[0])  # yolov5 scales them by objectness


def _reference_masks(coeffs, protos, boxes, hw, thr=0.5):
    """Straight transcription of yolov5 process_mask(upsample=True) on full frames."""
    nm, mh, mw = protos.shape
    ih, iw = hw
    probs = 1 / (1 + np.exp(-(coeffs @ protos.reshape(nm, -1)))).reshape(-1, mh, mw)
    db = boxes.copy()
    db[:, [0, 2]] *= mw / iw
    db[:, [1, 3]] *= mh / ih
    r = np.arange(mw, dtype=np.float32)[None, None, :]
    c = np.arange(mh, dtype=np.float32)[None, :, None]
    x1, y1, x2, y2 = (db[:, k, None, None] for k in range(4))
    probs = probs * ((r >= x1) & (r < x2) & (c >= y1) & (c < y2))
    return np.stack([cv2.resize(p.astype(np.float32), (iw, ih), interpolation=cv2.INTER_LINEAR) > thr for p in probs])


@pytest.mark.parametrize("hw", [(64, 64), (96, 64), (60, 44)])
def test_local_mask_upsampling_equals_full_frame(hw):
    rng = np.random.default_rng(1)
    mh, mw = (hw[0] + 3) // 4, (hw[1] + 3) // 4
    protos = rng.normal(size=(NM, mh, mw)).astype(np.float32)
    coeffs = rng.normal(size=(12, NM)).astype(np.float32)
    xy = rng.uniform(-10, hw[1], (12, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 40, (12, 2)).astype(np.float32)], 1)
    masks, probs = masks_from_protos(coeffs, protos, boxes, hw)
    ref = _reference_masks(coeffs, protos, boxes, hw)
    assert (masks != ref).sum() <= 2  # float32 summation order only
    assert probs.shape == (12, mh, mw)


def test_decode_batch_and_to_original():
    rows = [_row((8, 8, 24, 40), 0.9, [0.9, 0.1], coeffs=np.eye(NM)[0])]
    det = _dets(rows)
    raw = RawOutputs(np.stack([det, det]), np.stack([_protos(), _protos()]), None)
    preds = decode_batch(raw, (64, 64), CFG)
    assert len(preds) == 2 and all(len(p) == 1 for p in preds)
    lb = Letterbox.compute((16, 32), 64)  # 2x upscale, pad_y = 16
    orig = to_original(preds[0], lb)
    assert orig.image_size == (16, 32)
    np.testing.assert_allclose(orig.boxes, [[4, 0, 12, 12]])  # y1 clipped to the image
    expected = np.zeros((16, 32), bool)
    expected[:12, 4:12] = True
    np.testing.assert_array_equal(orig.masks[0], expected)
    rle = masks_to_original_rle(preds[0].masks, lb)
    from pycocotools import mask as mask_utils

    np.testing.assert_array_equal(mask_utils.decode(rle[0]).astype(bool), orig.masks[0])
    with pytest.raises(ValueError, match="letterbox"):
        to_original(preds[0], Letterbox.compute((16, 32), 128))


def test_masks_to_original_rle_matches_full_resize():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(2)
    for orig_hw, out in [((683, 816), 64), ((37, 100), 64), ((64, 64), 64), ((20, 20), 64), ((100, 7), 64)]:
        lb = Letterbox.compute(orig_hw, out)
        masks = rng.random((12, out, out)) > 0.7
        masks[1] = False
        masks[2] = True
        for k in range(3, 12):  # small blobs, some touching the top/bottom/left/right edges
            y0, x0 = rng.integers(-5, out - 2, 2)
            blob = np.zeros((out, out), bool)
            blob[max(y0, 0) : y0 + rng.integers(2, 20), max(x0, 0) : x0 + rng.integers(2, 20)] = True
            masks[k] = blob & (rng.random((out, out)) > 0.3)
        rles = masks_to_original_rle(masks, lb)
        full = lb.masks_to_original(masks)
        for rle, ref in zip(rles, full):
            assert rle["size"] == list(orig_hw) and isinstance(rle["counts"], str)
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), ref)


# ---------------------------------------------------------------------------- golden (yolov5's own code)
GOLDEN = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "decode_golden.npz"


def _golden():
    if not GOLDEN.is_file():
        pytest.skip(f"{GOLDEN} missing: run tools/make_decode_fixtures.py in the tools venv")
    import json

    data = np.load(GOLDEN)  # no pickles: plain arrays and unicode strings
    return data, json.loads(str(data["meta"]))


def test_decode_reproduces_yolov5_golden():
    from pycocotools import mask as mask_utils

    data, meta = _golden()
    size = meta["input_size"]
    cfg = ModelConfig(conf_threshold=meta["conf_threshold"], iou_threshold=meta["iou_threshold"],
                      max_detections=meta["max_detections"], mask_threshold=meta["mask_threshold"])
    total = 0
    for k in range(meta["images"]):
        pred = decode(data[f"img{k}_det"].astype(np.float32), data[f"img{k}_protos"].astype(np.float32), (size, size), cfg)
        boxes = data[f"img{k}_boxes"]
        assert len(pred) == len(boxes), f"image {k}: {len(pred)} detections, yolov5 kept {len(boxes)}"
        np.testing.assert_allclose(pred.boxes, boxes, atol=1e-3, rtol=0)
        np.testing.assert_allclose(pred.scores, data[f"img{k}_scores"], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(pred.class_ids, data[f"img{k}_classes"])
        for i, counts in enumerate(data[f"img{k}_masks"]):
            gold = mask_utils.decode({"size": [size, size], "counts": str(counts)}).astype(bool)
            union = (gold | pred.masks[i]).sum()
            iou = 1.0 if union == 0 else (gold & pred.masks[i]).sum() / union
            assert iou >= 0.99, f"image {k} instance {i}: mask IoU {iou:.4f}"
        lb = Letterbox.compute(tuple(data[f"img{k}_orig_hw"]), size)
        np.testing.assert_allclose(to_original(pred[:0], lb).boxes.shape, (0, 4))
        np.testing.assert_allclose(lb.boxes_to_original(pred.boxes), data[f"img{k}_boxes_orig"], atol=1e-3, rtol=0)
        total += len(pred)
    assert total > 0

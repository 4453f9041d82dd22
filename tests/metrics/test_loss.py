"""YOLOv5-seg loss from ONNX outputs (metrics/loss.py) against yolov5's own ComputeLoss.

Goldens: tests/fixtures/loss_golden.npz, made by tools/make_loss_fixtures.py (torch + yolov5
7.0.14 in tools/.venv); no torch is needed here.

About the "saturated128" case: its head biases were pushed so that, in float32, the
exported objectness of P3 anchor 0 is exactly 1.0 (logit ~25+) and the Tote class score is
exactly 0.0 everywhere (logit ~-150). The export keeps only the sigmoided values, so the
true logits cannot be recovered: the numpy loss clips p to [2**-150, 1 - 2**-25] (logits
~[-103.97, 17.33]) and its obj and cls are LOWER than yolov5's training loss of the same
weights (27% and 30% here). Those two components are instead checked against
``ref_export``: yolov5's ComputeLoss fed with raw tensors rebuilt from the same sigmoided
export (same clipping). box and mask use no recovered logit and match the golden.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from armbench_segmentation.metrics import loss as loss_mod
from armbench_segmentation.metrics.loss import (
    P_CLIP,
    probability_to_logit,
    yolov5_seg_loss,
)
from armbench_segmentation.structures import Instances

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "loss_golden.npz"
COMPONENTS = ("box", "obj", "cls", "mask", "total")
RTOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


def _case(g, name):
    hw = tuple(int(v) for v in g[f"{name}_input_hw"])
    n = len(g[f"{name}_boxes"])
    masks = np.unpackbits(g[f"{name}_masks"], count=n * hw[0] * hw[1]).reshape(n, *hw).astype(bool)
    gt = Instances(g[f"{name}_boxes"], g[f"{name}_class_ids"], hw, masks=masks)
    return g[f"{name}_detections"], g[f"{name}_protos"].astype(np.float32), gt, hw


def _assert_close(got: dict, expected: np.ndarray, components=COMPONENTS):
    exp = dict(zip(COMPONENTS, expected.tolist()))
    for c in components:
        assert got[c] == pytest.approx(exp[c], rel=RTOL, abs=1e-12), f"{c}: {got[c]} vs yolov5 {exp[c]}"


UNSATURATED = ["sq256", "rect192x128"]


def test_fixture_layout(golden):
    assert tuple(golden["components"]) == COMPONENTS
    assert set(golden["cases"]) == {"sq256", "rect192x128", "saturated128"}
    np.testing.assert_array_equal(golden["anchors"].reshape(3, 6), np.array(loss_mod.DEFAULT_ANCHORS, np.float32))


@pytest.mark.parametrize("name", UNSATURATED)
def test_matches_yolov5_compute_loss(golden, name):
    det, protos, gt, hw = _case(golden, name)
    _assert_close(yolov5_seg_loss(det, protos, gt, hw), golden[f"{name}_golden"])


@pytest.mark.parametrize("name", UNSATURATED)
def test_matches_yolov5_with_other_hyperparameters(golden, name):
    """Focal loss, pos weights, label smoothing, anchor_t 3 and other gains."""
    det, protos, gt, hw = _case(golden, name)
    hyp = json.loads(str(golden["hyp_variant"]))
    assert hyp["fl_gamma"] > 0 and hyp["label_smoothing"] > 0
    _assert_close(yolov5_seg_loss(det, protos, gt, hw, hyp=hyp), golden[f"{name}_golden_hyp"])


@pytest.mark.parametrize("name", list(UNSATURATED) + ["saturated128"])
def test_matches_reference_from_export(golden, name):
    det, protos, gt, hw = _case(golden, name)
    _assert_close(yolov5_seg_loss(det, protos, gt, hw), golden[f"{name}_ref_export"])


@pytest.mark.parametrize("name", UNSATURATED)
def test_no_gt_matches_yolov5(golden, name):
    det, protos, gt, hw = _case(golden, name)
    got = yolov5_seg_loss(det, protos, Instances.empty(hw), hw)
    _assert_close(got, golden[f"{name}_golden_empty"])
    assert got["box"] == got["cls"] == got["mask"] == 0.0
    assert got["obj"] > 0 and got["total"] == got["obj"]


def test_saturated_export(golden):
    det, protos, gt, hw = _case(golden, "saturated128")
    assert (det[:, 4] == 1.0).sum() > 0 and (det[:, 6] == 0.0).all()  # the fixture really saturates
    got = yolov5_seg_loss(det, protos, gt, hw)
    assert all(math.isfinite(v) for v in got.values())
    gold = dict(zip(COMPONENTS, golden["saturated128_golden"].tolist()))
    _assert_close(got, golden["saturated128_golden"], components=("box", "mask"))
    # obj/cls: information lost in float32 -> clipped logits -> lower bounds of the true loss
    assert got["obj"] < gold["obj"] and got["cls"] < gold["cls"]
    hyp = json.loads(str(golden["hyp_variant"]))
    _assert_close(yolov5_seg_loss(det, protos, gt, hw, hyp=hyp), golden["saturated128_golden_hyp"], ("box", "mask"))


def test_batch_axis_accepted(golden):
    det, protos, gt, hw = _case(golden, "rect192x128")
    assert yolov5_seg_loss(det[None], protos[None], gt, hw) == yolov5_seg_loss(det, protos, gt, hw)


# ---------------------------------------------------------------- hand-checkable synthetic cases
def _grid_centres(hw, strides=(8, 16, 32), na=3):
    """(A, 2) cell centres in pixels, in export row order."""
    out = []
    for s in strides:
        ny, nx = hw[0] // s, hw[1] // s
        yv, xv = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        c = np.stack([xv, yv], -1).reshape(-1, 2) * s + s / 2
        out.append(np.tile(c, (na, 1)))
    return np.concatenate(out).astype(np.float32)


def _synthetic(hw, box, p_obj=0.01, p_cls=(0.9, 0.1), shift=0.0, nm=4):
    """Every anchor predicts ``box`` (xyxy) shifted right by ``shift`` px; protos put +8 logits
    inside the (shifted) box and -8 outside; GT is the unshifted box, class 0."""
    h, w = hw
    centres = _grid_centres(hw)
    det = np.zeros((len(centres), 5 + 2 + nm), np.float32)
    x1, y1, x2, y2 = box
    det[:, 0] = (x1 + x2) / 2 + shift
    det[:, 1] = (y1 + y2) / 2
    det[:, 2] = x2 - x1
    det[:, 3] = y2 - y1
    det[:, 4] = p_obj
    det[:, 5:7] = p_cls
    det[:, 7] = 1.0  # coefficient of proto 0
    protos = np.full((nm, h // 4, w // 4), -8.0, np.float32)
    protos[1:] = 0.0
    sx = int(round(shift / 4))
    protos[0, y1 // 4 : y2 // 4, x1 // 4 + sx : x2 // 4 + sx] = 8.0
    masks = np.zeros((1, h, w), bool)
    masks[0, y1:y2, x1:x2] = True
    gt = Instances(np.array([box], np.float32), np.array([0]), hw, masks=masks)
    return det, protos, gt


def test_no_gt_hand_value():
    hw = (64, 64)
    det, protos, _ = _synthetic(hw, (16, 16, 48, 40), p_obj=0.01)
    got = yolov5_seg_loss(det, protos, Instances.empty(hw), hw)
    # every cell: -log(1 - 0.01); layers balanced 4 + 1 + 0.4; obj gain (64/640)**2
    expected_obj = -math.log1p(-0.01) * (4.0 + 1.0 + 0.4) * (64 / 640) ** 2
    assert got == pytest.approx({"box": 0.0, "obj": expected_obj, "cls": 0.0, "mask": 0.0, "total": expected_obj})


def test_exact_prediction_has_lower_loss_than_shifted():
    hw = (128, 128)
    box = (32, 40, 88, 96)
    good = yolov5_seg_loss(*_synthetic(hw, box), hw)
    bad = yolov5_seg_loss(*_synthetic(hw, box, shift=16.0), hw)
    assert good["box"] < 1e-6  # predicted box == GT box: CIoU 1
    assert good["box"] < bad["box"] and good["mask"] < bad["mask"] and good["total"] < bad["total"]
    # mask logits +-8 agree with the GT everywhere in the box: BCE = log1p(exp(-8)) per pixel, normalised by area
    assert good["mask"] == pytest.approx(0.05 * 3 * math.log1p(math.exp(-8.0)), rel=1e-3)
    # a correct class score lowers cls
    wrong = yolov5_seg_loss(*_synthetic(hw, box, p_cls=(0.1, 0.9)), hw)
    assert good["cls"] < wrong["cls"]


def test_saturated_probabilities_stay_finite():
    hw = (64, 64)
    box = (8, 8, 40, 56)
    det, protos, gt = _synthetic(hw, box)
    det[::2, 4] = 1.0
    det[1::2, 4] = 0.0
    det[:, 5] = 0.0  # GT class scored exactly 0
    det[:, 6] = 1.0  # other class exactly 1
    det[::3, 2:4] = 0.0  # exported w, h underflowed
    got = yolov5_seg_loss(det, protos, gt, hw)
    assert all(math.isfinite(v) for v in got.values())
    # saturated values behave exactly as the clip bounds
    det64 = det.astype(np.float64)
    for col in (4, 5, 6):
        det64[:, col] = np.where(det[:, col] == 1.0, P_CLIP[1], np.where(det[:, col] == 0.0, P_CLIP[0], det[:, col]))
    assert yolov5_seg_loss(det64, protos, gt, hw) == pytest.approx(got, rel=1e-12)


def test_probability_to_logit():
    x = probability_to_logit(np.array([0.0, 0.5, 1.0, 1 / (1 + math.e)], np.float32))
    assert x[1] == 0.0 and x[3] == pytest.approx(-1.0, abs=1e-7)
    assert x[2] == pytest.approx(25 * math.log(2), abs=1e-6)  # ~17.33
    assert x[0] == pytest.approx(-150 * math.log(2), abs=1e-6)  # ~-103.97
    assert np.isfinite(x).all()


def test_mask_crop_boxes_that_differ_between_layers():
    """Slow path of _mask_loss (a GT whose crop box differs by a pixel between its matches,
    possible through float32 rounding) against a per-match brute force of yolov5's formula."""
    rng = np.random.default_rng(0)
    nm, mh, mw = 4, 16, 20
    proto = rng.normal(0, 2, (nm, mh, mw)).astype(np.float32)
    gt_masks = rng.random((2, mh * 4, mw * 4)) > 0.5
    gt = Instances(np.array([[8, 8, 40, 40], [0, 0, 80, 64]], np.float32), np.array([0, 1]), (mh * 4, mw * 4), gt_masks)
    coeffs = rng.normal(0, 1, (3, nm))
    bounds = np.array([[2, 10, 3, 11], [2, 11, 2, 11], [0, 16, 0, 20]])  # r0, r1, c0, c1
    marea = np.array([0.2, 0.21, 1.0])
    parts = [(0, np.array([0]), coeffs[:1], bounds[:1], marea[:1]), (1, np.array([0, 1]), coeffs[1:], bounds[1:], marea[1:])]
    got = loss_mod._mask_loss(parts, proto, gt, (mh, mw), nl=3)

    down = gt_masks[:, ::4, ::4].astype(np.float64)  # F.interpolate(nearest) for a ratio of 4
    per = []
    for (r0, r1, c0, c1), c, t, a in zip(bounds, coeffs, [0, 0, 1], marea):
        x = np.tensordot(c, proto.astype(np.float64), 1)
        bce = np.logaddexp(0, x) - down[t] * x
        crop = np.zeros((mh, mw))
        crop[r0:r1, c0:c1] = 1
        per.append((bce * crop).mean() / a)
    assert got == pytest.approx(per[0] + (per[1] + per[2]) / 2, rel=1e-5)


def test_input_validation():
    hw = (64, 64)
    det, protos, gt = _synthetic(hw, (8, 8, 40, 56))
    with pytest.raises(ValueError, match="rows"):
        yolov5_seg_loss(det[:-3], protos, gt, hw)
    with pytest.raises(ValueError, match="multiples"):
        yolov5_seg_loss(det, protos, gt, (60, 64))
    with pytest.raises(ValueError, match="frame"):
        yolov5_seg_loss(det, protos, Instances.empty((32, 32)), hw)
    with pytest.raises(ValueError, match="masks"):
        yolov5_seg_loss(det, protos, Instances(gt.boxes, gt.class_ids, hw), hw)
    with pytest.raises(ValueError, match="class ids"):
        yolov5_seg_loss(det, protos, Instances(gt.boxes, [5], hw, masks=gt.masks), hw)
    with pytest.raises(ValueError, match="columns"):
        yolov5_seg_loss(det[:, :9], protos, gt, hw)
    bad = det.copy()
    bad[0, 4] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        yolov5_seg_loss(bad, protos, gt, hw)

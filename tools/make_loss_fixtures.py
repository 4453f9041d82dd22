"""Golden fixtures for ``armbench_segmentation.metrics.loss.yolov5_seg_loss``.

Command (tools virtualenv, see tools/setup_venv.sh; ~30 s on 1 CPU core):

    tools/.venv/bin/python tools/make_loss_fixtures.py            # writes tests/fixtures/loss_golden.npz
    tools/.venv/bin/python tools/make_loss_fixtures.py --check    # also prints numpy-vs-golden agreement

What it does:
* builds ``yolov5.models.yolo.SegmentationModel(yolov5s-seg.yaml, nc=2)`` with a fixed seed
  (random init: enough for a loss test; BatchNorm statistics calibrated on random images so
  that protos and mask logits are O(1), see ``calibrate_batchnorm``), in eval mode (BatchNorm running statistics, so the
  two forwards below see the same network);
* per case, runs the SAME forward twice: with the Segment head in training mode (raw head
  tensors, what ``ComputeLoss`` consumes) and in export mode (``Detect.export = True``:
  ``(cat(z), protos)``, exactly what ``export.py`` puts into the ONNX graph);
* golden = ``yolov5.utils.segment.loss.ComputeLoss(model, overlap=False)`` on
  (raw preds, targets, full-resolution GT masks) for a batch of 1, with ``model.hyp`` =
  ``hyp.scratch-low.yaml`` scaled as ``segment/train.py`` does
  (box*3/nl, cls*nc/80*3/nl, obj*(imgsz/640)**2*3/nl, imgsz = max(H, W));
* ``ref_export`` = the same ``ComputeLoss`` fed with raw tensors REBUILT from the export
  outputs (inverse decode in float64, probabilities clipped like the numpy code): the
  reference for components whose export probabilities are saturated in float32;
* a "saturated" case whose head biases are pushed so that float32 sigmoid returns exactly
  1.0 (objectness) and 0.0 (class Tote): there golden obj/cls cannot be recovered from the
  export, by construction.

Cases: 256x256 (tote, large, tiny, border, two objects sharing a cell, medium), 192x128
(portrait), 128x128 saturated. Stored per case ``{name}_...``: detections (A, 5+nc+nm)
float32, protos (nm, h, w) float16 (values the golden used; cast to float32), input_hw, boxes (N, 4) float32 xyxy, class_ids (N,),
masks packed with np.packbits (N*H*W bits), golden / ref_export (5,) float64 in the order
``COMPONENTS``, golden_empty (same inputs, no GT), golden_hyp (a non-default hyp, stored in
``hyp_variant`` as JSON).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
import yolov5  # noqa: E402
from yolov5.models.yolo import SegmentationModel  # noqa: E402
from yolov5.utils.segment.loss import ComputeLoss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("box", "obj", "cls", "mask", "total")
P_CLIP = (2.0**-150, 1.0 - 2.0**-25)  # same convention as metrics/loss.py
HYP_VARIANT = {
    "box": 0.08, "cls": 0.4, "obj": 1.3, "cls_pw": 2.0, "obj_pw": 0.7,
    "anchor_t": 3.0, "fl_gamma": 1.5, "label_smoothing": 0.1,
}  # fmt: skip


def polygon_mask(hw, points) -> np.ndarray:
    m = np.zeros(hw, np.uint8)
    cv2.fillPoly(m, [np.asarray(points, np.int32).reshape(-1, 1, 2)], 1)
    return m.astype(bool)


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # integer pixel edges, like masks_to_boxes


def make_gt(hw, objects):
    """objects: [(class_id, polygon points)] -> boxes (N,4) float32, class_ids (N,), masks (N,H,W)."""
    masks = np.stack([polygon_mask(hw, pts) for _, pts in objects]) if objects else np.zeros((0, *hw), bool)
    boxes = np.array([tight_box(m) for m in masks], np.float32).reshape(-1, 4)
    class_ids = np.array([c for c, _ in objects], np.int64)
    return boxes, class_ids, masks


def rect(x1, y1, x2, y2):  # polygon covering pixels [x1, x2) x [y1, y2)
    return [(x1, y1), (x2 - 1, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)]


CASES = {
    "sq256": (
        (256, 256),
        [
            (1, [(8, 12), (247, 8), (251, 243), (12, 249)]),  # tote-sized (class Tote)
            (0, [(40, 60), (150, 48), (170, 140), (60, 170), (30, 120)]),  # large object
            (0, rect(200, 100, 206, 105)),  # tiny, 6x5 px
            (0, rect(0, 180, 36, 240)),  # touching the left border, box edges on multiples of 4
            (0, rect(120, 196, 140, 216)),  # two objects with centres in the same P3 cell
            (0, rect(122, 198, 139, 215)),
            (0, [(180, 20), (236, 28), (230, 80), (176, 72)]),  # medium, slanted
        ],
    ),
    "rect192x128": (
        (192, 128),  # portrait: H != W
        [
            (1, rect(4, 4, 124, 188)),  # tote
            (0, rect(16, 16, 96, 80)),  # box edges on multiples of 4/8/16 (crop knife edges)
            (0, [(90, 150), (127, 140), (127, 191), (100, 191)]),  # bottom-right corner
            (0, rect(60, 100, 68, 104)),  # tiny
        ],
    ),
    "saturated128": (
        (128, 128),
        [
            (1, rect(2, 3, 126, 125)),  # tote: its class-1 score is exported as exactly 0.0
            (0, rect(30, 40, 70, 90)),
            (0, rect(90, 20, 101, 29)),
        ],
    ),
}


def scaled_hyp(base: dict, nl: int, nc: int, imgsz: int) -> dict:
    h = copy.deepcopy(base)  # segment/train.py
    h["box"] *= 3 / nl
    h["cls"] *= nc / 80 * 3 / nl
    h["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    return h


def targets_of(boxes: np.ndarray, class_ids: np.ndarray, hw) -> torch.Tensor:
    h, w = hw
    wh = np.array([w, h], np.float32)
    xywhn = np.concatenate([((boxes[:, :2] + boxes[:, 2:]) / np.float32(2)) / wh, (boxes[:, 2:] - boxes[:, :2]) / wh], 1)
    t = np.zeros((len(boxes), 6), np.float32)
    t[:, 1] = class_ids
    t[:, 2:] = xywhn
    return torch.from_numpy(t)


def compute_loss(model, base_hyp, preds, boxes, class_ids, masks, hw, dtype=torch.float32) -> np.ndarray:
    head = model.model[-1]
    model.hyp = scaled_hyp(base_hyp, head.nl, head.nc, max(hw))
    loss_fn = ComputeLoss(model, overlap=False)
    targets = targets_of(boxes, class_ids, hw)
    m = torch.from_numpy(masks.astype(np.float32)).to(dtype)
    total, items = loss_fn(preds, targets, masks=m)
    lbox, lseg, lobj, lcls = (float(v) for v in items)
    return np.array([lbox, lobj, lcls, lseg, float(total)], np.float64)


def calibrate_batchnorm(model, rng) -> None:
    """Set BatchNorm running statistics from a few random images (cumulative average).

    A freshly initialised network with BN running stats (0, 1) shrinks activations layer
    after layer: its protos are ~1e-7, so every mask logit is ~0 and the mask loss would
    not depend on the GT masks at all. Calibrated BN keeps activations O(1), which makes
    mask logits O(1-10) and the fixtures sensitive to every part of the loss.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(rng.random((4, 3, 256, 256), dtype=np.float32)))
    model.eval()


def forward_both(model, x):
    head = model.model[-1]
    with torch.no_grad():
        head.training, head.export = True, False
        raw, proto = model(x)
        head.training, head.export = False, True
        det, proto2 = model(x)
    head.export = False
    assert torch.equal(proto, proto2)
    # Protos rounded to float16 values (stored as float16: half the fixture size). Golden and
    # reference losses are computed on these same rounded protos, so the comparison stays exact.
    proto = proto.half().float()
    return [r.clone() for r in raw], proto, det[0].numpy().astype(np.float32), proto[0].numpy().astype(np.float16)


def raw_from_export(det: np.ndarray, head, hw):
    """Inverse of the export decode (float64): the raw head tensors the export came from."""
    h, w = hw
    na, no = head.na, head.no
    out, base = [], 0
    d = torch.from_numpy(det.astype(np.float64))
    for i, s in enumerate(head.stride.tolist()):
        ny, nx = h // int(s), w // int(s)
        y = d[base : base + na * ny * nx].view(1, na, ny, nx, no)
        base += na * ny * nx
        yv, xv = torch.meshgrid(torch.arange(ny, dtype=torch.float64), torch.arange(nx, dtype=torch.float64), indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5
        anchor_grid = (head.anchors[i].double() * s).view(1, na, 1, 1, 2)
        sxy = (y[..., 0:2] / s - grid) / 2
        swh = torch.sqrt(y[..., 2:4] / anchor_grid) / 2
        conf = y[..., 4 : 5 + head.nc].clamp(*P_CLIP)
        raw = torch.cat((torch.logit(sxy), torch.logit(swh), torch.logit(conf), y[..., 5 + head.nc :]), 4)
        out.append(raw)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/loss_golden.npz")
    ap.add_argument("--check", action="store_true", help="compare armbench_segmentation's numpy loss to the goldens")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    pkg = Path(yolov5.__file__).parent
    base_hyp = yaml.safe_load((pkg / "data/hyps/hyp.scratch-low.yaml").read_text())
    model = SegmentationModel(str(pkg / "models/segment/yolov5s-seg.yaml"), ch=3, nc=2).eval()
    head = model.model[-1]
    rng = np.random.default_rng(0)
    calibrate_batchnorm(model, rng)

    store: dict[str, np.ndarray] = {
        "components": np.array(COMPONENTS),
        "cases": np.array(list(CASES)),
        "anchors": np.array(yaml.safe_load((pkg / "models/segment/yolov5s-seg.yaml").read_text())["anchors"], np.float32),
        "hyp_variant": np.array(json.dumps(HYP_VARIANT)),
    }
    for name, (hw, objects) in CASES.items():
        net = model
        if name.startswith("saturated"):
            net = copy.deepcopy(model)
            h2 = net.model[-1]
            with torch.no_grad():
                for i, conv in enumerate(h2.m):
                    b = conv.bias.view(h2.na, -1)
                    b[:, 6] = -150.0  # class Tote: sigmoid underflows to exactly 0.0 in float32
                    if i == 0:
                        b[0, 4] += 30.0  # P3 anchor 0 objectness: sigmoid == 1.0 exactly
        x = torch.from_numpy(rng.random((1, 3, *hw), dtype=np.float32))
        raw, proto, det, proto_np = forward_both(net, x)
        boxes, class_ids, masks = make_gt(hw, objects)
        golden = compute_loss(net, base_hyp, (raw, proto), boxes, class_ids, masks, hw)
        empty = compute_loss(net, base_hyp, (raw, proto), boxes[:0], class_ids[:0], masks[:0], hw)
        hyp_v = compute_loss(net, {**base_hyp, **HYP_VARIANT}, (raw, proto), boxes, class_ids, masks, hw)
        raw_x = raw_from_export(det, net.model[-1], hw)
        ref = compute_loss(
            net, base_hyp, (raw_x, proto.double()), boxes, class_ids, masks, hw, dtype=torch.float64
        )
        store.update({
            f"{name}_detections": det,
            f"{name}_protos": proto_np,
            f"{name}_input_hw": np.array(hw, np.int64),
            f"{name}_boxes": boxes,
            f"{name}_class_ids": class_ids,
            f"{name}_masks": np.packbits(masks.reshape(-1)),
            f"{name}_golden": golden,
            f"{name}_golden_empty": empty,
            f"{name}_golden_hyp": hyp_v,
            f"{name}_ref_export": ref,
        })  # fmt: skip
        sat = int((det[:, 4] == 1.0).sum()), int((det[:, 5:7] == 0.0).sum())
        print(f"{name}: A={len(det)} N={len(boxes)} golden={dict(zip(COMPONENTS, golden.round(6)))} "
              f"ref_export={ref.round(6).tolist()} saturated obj==1: {sat[0]}, cls==0: {sat[1]}")  # fmt: skip

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **store)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")

    if args.check:
        sys.path.insert(0, str(ROOT))
        from armbench_segmentation.metrics.loss import yolov5_seg_loss
        from armbench_segmentation.structures import Instances

        for name, (hw, _) in CASES.items():
            n = len(store[f"{name}_boxes"])
            masks = np.unpackbits(store[f"{name}_masks"], count=n * hw[0] * hw[1]).reshape(n, *hw).astype(bool)
            gt = Instances(store[f"{name}_boxes"], store[f"{name}_class_ids"], hw, masks=masks)
            det, pr = store[f"{name}_detections"], store[f"{name}_protos"].astype(np.float32)
            for key, g, kw in (
                ("golden", store[f"{name}_golden"], {}),
                ("ref_export", store[f"{name}_ref_export"], {}),
                ("golden_hyp", store[f"{name}_golden_hyp"], {"hyp": HYP_VARIANT}),
            ):
                got = yolov5_seg_loss(det, pr, gt, hw, **kw)
                rel = {c: abs(got[c] - gv) / max(abs(gv), 1e-12) for c, gv in zip(COMPONENTS, g)}
                print(f"  {name} vs {key}: max rel err " + ", ".join(f"{c}={v:.2e}" for c, v in rel.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

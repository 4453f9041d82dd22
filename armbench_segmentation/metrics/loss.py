"""The loss of one sample: the YOLOv5-seg training loss, recomputed from ONNX outputs.
(The bounded ``1 - F1`` companion is ``metrics.matching.error_rate``.)

``yolov5_seg_loss`` reproduces ``yolov5.utils.segment.loss.ComputeLoss(model, overlap=False)``
(yolov5 7.0) for a batch of one, with the hyperparameters scaled the way
``segment/train.py`` scales them before attaching them to the model:

    box *= 3 / nl;  cls *= nc / 80 * 3 / nl;  obj *= (imgsz / 640) ** 2 * 3 / nl

and ``total = (box + obj + cls + mask) * batch_size`` (batch size 1 here).

It takes what the ONNX export produces, not the training-mode raw head tensors, and
inverts the export decode:

* export: ``xy = (sigmoid(t_xy) * 2 + grid - 0.5) * stride`` and
  ``wh = (sigmoid(t_wh) * 2) ** 2 * anchor * stride`` (pixels); the loss needs
  ``pxy = sigmoid(t_xy) * 2 - 0.5 = xy / stride - cell`` and
  ``pwh = (sigmoid(t_wh) * 2) ** 2 * anchor = wh / stride`` (grid units): both are
  recovered without taking a logit, to float32 rounding of the exported pixels.
* objectness and class scores are exported sigmoided; the loss needs their logits
  (``BCEWithLogits``). They are recovered as ``log(p) - log1p(-p)`` in float64.

Precision of the logit recovery: for ``p < 0.5`` float32 keeps ~7 significant digits of
``p`` and the logit is exact to ~1e-7. For ``p`` close to 1 only ``1 - p`` matters and it
is quantized in steps of 2**-24 (6e-8): the logit's absolute error grows like
``6e-8 / (1 - p)`` (1e-3 at logit 10). In float32, ``p == 1.0`` for logits above ~16.6-17.3
and ``p == 0.0`` below ~-103.9 (ONNX Runtime's sigmoid saturates earlier, near +-18 on
CPU): the true logit is then unknown. Saturated probabilities are clipped to
``[2**-150, 1 - 2**-25]`` (logits ~[-103.97, 17.33]), so the result stays finite and
every BCE term computed from a saturated score is a LOWER BOUND of the training loss
(the BCE is monotone in the logit beyond the saturation point): ``obj``/``cls`` can then
be below what the training loss of the same weights would be. ``box`` and ``mask`` never
use a recovered logit (mask coefficients and protos are exported raw).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..frames import sample_masks
from ..structures import Instances, unbatch

__all__ = [
    "DEFAULT_ANCHORS",
    "DEFAULT_STRIDES",
    "HYP_SCRATCH_LOW",
    "P_CLIP",
    "probability_to_logit",
    "yolov5_seg_loss",
]

#: YOLOv5s-seg anchors in pixels, per output layer (``models/segment/yolov5s-seg.yaml``).
DEFAULT_ANCHORS: tuple[tuple[int, ...], ...] = (
    (10, 13, 16, 30, 33, 23),  # P3/8
    (30, 61, 62, 45, 59, 119),  # P4/16
    (116, 90, 156, 198, 373, 326),  # P5/32
)
DEFAULT_STRIDES: tuple[int, ...] = (8, 16, 32)

#: Loss-related entries of ``data/hyps/hyp.scratch-low.yaml``, UNSCALED (as in the yaml).
HYP_SCRATCH_LOW: dict[str, float] = {
    "box": 0.05,
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "anchor_t": 4.0,
    "fl_gamma": 0.0,
    "label_smoothing": 0.0,
}

#: Clip range of exported probabilities before taking logits (see module docstring).
P_CLIP: tuple[float, float] = (2.0**-150, 1.0 - 2.0**-25)

_G = np.float32(0.5)  # yolov5's neighbour-cell bias
_OFFSETS = (np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], np.float32) * _G).astype(np.float32)
_MIN_WH = 1e-9  # grid units; keeps CIoU finite when an exported w or h underflowed to 0
_CIOU_EPS = 1e-7


def probability_to_logit(p: np.ndarray) -> np.ndarray:
    """Logits of (float32) sigmoided probabilities, float64, finite.

    ``p`` is clipped to ``P_CLIP`` first: ``p == 1.0`` maps to ~17.33 and ``p == 0.0``
    to ~-103.97, the logits at which float32 sigmoid starts to round to 1 / 0.
    """
    p64 = _clip_prob(p)
    return np.log(p64) - np.log1p(-p64)


def _clip_prob(p: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(np.asarray(p, dtype=np.float64), P_CLIP[0]), P_CLIP[1])


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _bce_prob(p: np.ndarray, y: np.ndarray, pos_weight: float = 1.0, gamma: float = 0.0) -> np.ndarray:
    """Elementwise ``nn.BCEWithLogitsLoss(pos_weight)`` of the logits of sigmoided ``p``
    (wrapped in yolov5's FocalLoss if gamma > 0), float64.

    With ``x = logit(p)``: ``softplus(-x) = -log(p)`` and ``softplus(x) = -log1p(-p)``, so
    the loss is computed from ``p`` directly (clipped to ``P_CLIP``, as ``probability_to_logit``).
    """
    p = _clip_prob(p)
    loss = -(pos_weight * y * np.log(p) + (1.0 - y) * np.log1p(-p))
    if gamma > 0:  # yolov5.utils.loss.FocalLoss, alpha=0.25
        prob = p
        p_t = y * prob + (1.0 - y) * (1.0 - prob)
        alpha_factor = y * 0.25 + (1.0 - y) * 0.75
        loss = loss * alpha_factor * (1.0 - p_t) ** gamma
    return loss


def _ciou_xywh(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """``yolov5.utils.metrics.bbox_iou(b1, b2, xywh=True, CIoU=True)`` for paired boxes (n, 4)."""
    eps = _CIOU_EPS
    x1, y1, w1, h1 = b1.T
    x2, y2, w2, h2 = b2.T
    b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = np.maximum(np.minimum(b1x2, b2x2) - np.maximum(b1x1, b2x1), 0) * np.maximum(
        np.minimum(b1y2, b2y2) - np.maximum(b1y1, b2y1), 0
    )
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = np.maximum(b1x2, b2x2) - np.minimum(b1x1, b2x1)
    ch = np.maximum(b1y2, b2y2) - np.minimum(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
    v = (4 / math.pi**2) * (np.arctan(w2 / h2) - np.arctan(w1 / h1)) ** 2
    alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)




def _resolve_hyp(hyp: Mapping[str, float] | None) -> dict[str, float]:
    h = dict(HYP_SCRATCH_LOW)
    if hyp is not None:
        h.update({k: float(v) for k, v in hyp.items() if k in HYP_SCRATCH_LOW})
    return h


def yolov5_seg_loss(
    detections: np.ndarray,
    protos: np.ndarray,
    gt: Instances,
    input_hw: tuple[int, int],
    hyp: Mapping[str, float] | None = None,
    *,
    anchors: Sequence[Sequence[float]] = DEFAULT_ANCHORS,
    strides: Sequence[int] = DEFAULT_STRIDES,
    train_size: int | None = None,
) -> dict[str, float]:
    """YOLOv5-seg training loss of one sample, from the ONNX export outputs.

    Equals ``ComputeLoss(model, overlap=False)(preds, targets, masks)`` of yolov5 7.0 for a
    batch of one, with ``model.hyp`` scaled as ``segment/train.py`` does (see module doc).

    Args:
        detections: (A, 5 + nc + nm) float32 export output ``output0`` (a leading batch
            axis of 1 is accepted): xywh in input pixels, sigmoided obj and class scores,
            raw mask coefficients; rows ordered layer by layer (strides 8, 16, 32), then
            anchor, row, column.
        protos: (nm, h, w) float32 export output ``output1`` (batch axis of 1 accepted).
        gt: ground truth in the model-input frame: boxes xyxy pixels, class_ids,
            masks (N, H, W) bool at input resolution (required when N > 0).
        input_hw: (H, W) of the letterboxed model input; multiples of the largest stride.
        hyp: UNSCALED loss hyperparameters overriding ``HYP_SCRATCH_LOW`` (keys box, cls,
            obj, cls_pw, obj_pw, anchor_t, fl_gamma, label_smoothing; other keys of a full
            hyp yaml are ignored).
        anchors: per layer, ``na`` (w, h) pairs in pixels, flattened (yaml layout).
        strides: stride of each layer.
        train_size: the ``imgsz`` used to scale ``obj``; defaults to ``max(input_hw)``.

    Returns:
        ``{"box", "obj", "cls", "mask", "total"}`` floats (already multiplied by their
        gains; ``total`` is their sum times the batch size 1).

    Saturated float32 probabilities are clipped before taking logits (module doc): the
    result stays finite and ``obj``/``cls`` are then lower bounds of the training loss.
    """
    det = unbatch(detections, 2, "detections")
    proto = unbatch(protos, 3, "protos")
    h_in, w_in = (int(v) for v in input_hw)
    nm, mask_h, mask_w = proto.shape
    no = det.shape[1]
    nc = no - 5 - nm
    if nc < 1:
        raise ValueError(
            f"detections have {no} columns but protos have {nm} mask coefficients: expected 5 + nc + {nm} columns with nc >= 1"
        )
    nl = len(anchors)
    if len(strides) != nl:
        raise ValueError(f"got {nl} anchor layers but {len(strides)} strides; pass one stride per anchor layer")
    anchors_px = [np.asarray(a, np.float32).reshape(-1, 2) for a in anchors]
    na = len(anchors_px[0])
    if any(len(a) != na for a in anchors_px):
        raise ValueError(f"every layer needs the same number of anchors, got {[len(a) for a in anchors_px]}")
    smax = max(int(s) for s in strides)
    if h_in % smax or w_in % smax:
        raise ValueError(f"input_hw {(h_in, w_in)} must be multiples of the largest stride {smax} (letterboxed model input)")
    grids = [(h_in // int(s), w_in // int(s)) for s in strides]
    expected = na * sum(ny * nx for ny, nx in grids)
    if det.shape[0] != expected:
        raise ValueError(
            f"detections have {det.shape[0]} rows; an input of {h_in}x{w_in} with strides {tuple(strides)} and "
            f"{na} anchors gives {expected}. Pass the input size the model was run at"
        )
    if not isinstance(gt, Instances):
        raise TypeError(f"gt must be an Instances, got {type(gt).__name__}")
    if tuple(gt.image_size) != (h_in, w_in):
        raise ValueError(f"gt is in a {gt.image_size} frame but input_hw is {(h_in, w_in)}; pass GT in the model-input frame")
    nt = len(gt)
    if nt and gt.masks is None:
        raise ValueError("gt has no masks; the YOLOv5-seg loss needs (N, H, W) GT masks")
    if nt and (gt.class_ids.min() < 0 or gt.class_ids.max() >= nc):
        raise ValueError(f"gt class ids must be in [0, {nc}), got {np.unique(gt.class_ids).tolist()}")

    h = _resolve_hyp(hyp)
    imgsz = float(train_size) if train_size is not None else float(max(h_in, w_in))
    gain_box = h["box"] * 3 / nl
    gain_cls = h["cls"] * nc / 80 * 3 / nl
    gain_obj = h["obj"] * (imgsz / 640) ** 2 * 3 / nl
    balance = {3: [4.0, 1.0, 0.4]}.get(nl, [4.0, 1.0, 0.25, 0.06, 0.02])
    cp, cn = 1.0 - 0.5 * h["label_smoothing"], 0.5 * h["label_smoothing"]
    gamma = h["fl_gamma"]
    anchor_t = np.float32(h["anchor_t"])

    # Targets exactly as yolov5's dataloader gives them: normalized xywh, float32.
    boxes = gt.boxes  # (N, 4) float32
    wh_img = np.array([w_in, h_in], np.float32)
    txywh = np.concatenate(
        [((boxes[:, :2] + boxes[:, 2:]) / np.float32(2)) / wh_img, (boxes[:, 2:] - boxes[:, :2]) / wh_img], axis=1
    ).astype(np.float32)  # (N, 4)

    lbox = lobj = lcls = 0.0
    mask_parts = []  # per layer: (layer, target ids, coeffs (n, nm), crop bounds (n, 4) int, marea (n,))
    base = 0
    for i, ((ny, nx), stride) in enumerate(zip(grids, strides)):
        stride_f = np.float32(stride)
        anchor_i = anchors_px[i] / stride_f  # (na, 2) grid units, float32 like Detect.anchors
        n_cells = na * ny * nx
        block = det[base : base + n_cells]  # (na*ny*nx, no)
        gain = np.array([nx, ny, nx, ny], np.float32)
        tobj = np.zeros(n_cells, np.float64)

        n = 0
        if nt:
            t = txywh * gain  # (N, 4) grid units
            with np.errstate(divide="ignore", invalid="ignore"):
                r = t[None, :, 2:4] / anchor_i[:, None]  # (na, N, 2)
                ok = np.maximum(r, np.float32(1) / r).max(2) < anchor_t  # (na, N)
            a_idx, t_idx = np.nonzero(ok)  # anchor-major, as t[j] in yolov5
            gxy = t[t_idx, 0:2]  # (M, 2)
            gxi = gain[0:2] - gxy
            jk = (np.mod(gxy, np.float32(1)) < _G) & (gxy > 1)  # (M, 2)
            lm = (np.mod(gxi, np.float32(1)) < _G) & (gxi > 1)
            sel = np.stack([np.ones(len(gxy), bool), jk[:, 0], jk[:, 1], lm[:, 0], lm[:, 1]])  # (5, M)
            k_idx, m_idx = np.nonzero(sel)  # offset-major, as t.repeat((5, 1, 1))[j]
            a = a_idx[m_idx]
            tid = t_idx[m_idx]
            gxy = gxy[m_idx]
            gwh = t[tid, 2:4]
            gij = (gxy - _OFFSETS[k_idx]).astype(np.int64)  # .long() truncates toward zero
            np.minimum(np.maximum(gij, 0), [nx - 1, ny - 1], out=gij)  # yolov5 clamps in place: tbox sees it
            tbox = np.concatenate([gxy - gij.astype(np.float32), gwh], axis=1).astype(np.float64)  # (n, 4)
            n = len(a)

        if n:
            local = (a * ny + gij[:, 1]) * nx + gij[:, 0]  # (n,) index into the layer block
            rows = block[local].astype(np.float64)  # (n, no)
            pxy = rows[:, 0:2] / float(stride) - gij  # = sigmoid * 2 - 0.5
            pwh = np.maximum(rows[:, 2:4] / float(stride), _MIN_WH)  # = (sigmoid * 2) ** 2 * anchor
            ciou = _ciou_xywh(np.concatenate([pxy, pwh], axis=1), tbox)  # (n,)
            lbox += float(np.mean(1.0 - ciou))
            tobj[local] = np.maximum(ciou, 0).astype(np.float32)  # duplicates: last write wins, as in torch

            if nc > 1:
                tcls = np.full((n, nc), cn)
                tcls[np.arange(n), gt.class_ids[tid]] = cp
                lcls += float(np.mean(_bce_prob(rows[:, 5 : 5 + nc], tcls, h["cls_pw"], gamma)))

            # Mask crop boxes at proto resolution, float32 like yolov5 (xywhn round-trips the grid gain).
            xywhn = np.concatenate([gxy, gwh], axis=1) / gain  # (n, 4) float32
            mxywh = xywhn * np.array([mask_w, mask_h, mask_w, mask_h], np.float32)
            half = mxywh[:, 2:4] / np.float32(2)
            x1y1, x2y2 = mxywh[:, 0:2] - half, mxywh[:, 0:2] + half
            # crop_mask keeps pixel r where r >= x1 and r < x2 (integer r): [ceil(x1), ceil(x2))
            limit = np.array([mask_w, mask_h], np.float32)
            lo = np.minimum(np.maximum(np.ceil(x1y1), 0), limit).astype(np.int64)  # (n, 2) first col, row
            hi = np.minimum(np.maximum(np.ceil(x2y2), 0), limit).astype(np.int64)  # (n, 2) end col, row
            r0, r1, c0, c1 = lo[:, 1], hi[:, 1], lo[:, 0], hi[:, 0]
            marea = xywhn[:, 2].astype(np.float64) * xywhn[:, 3]
            coeffs = rows[:, 5 + nc :]
            mask_parts.append((i, tid, coeffs, np.stack([r0, r1, c0, c1], axis=1), marea))

        if gamma > 0:
            obj_loss = _bce_prob(block[:, 4], tobj, h["obj_pw"], gamma)
        else:  # target 0 almost everywhere: -log1p(-p); the full BCE only at assigned cells
            pobj = _clip_prob(block[:, 4])  # (na*ny*nx,)
            obj_loss = -np.log1p(-pobj)
            if n:
                pos = np.unique(local)
                obj_loss[pos] = _bce_prob(pobj[pos], tobj[pos], h["obj_pw"])
        lobj += float(np.mean(obj_loss)) * balance[i]
        base += n_cells

    lseg = _mask_loss(mask_parts, proto, gt, (mask_h, mask_w), nl)

    out = {
        "box": lbox * gain_box,
        "obj": lobj * gain_obj,
        "cls": lcls * gain_cls,
        "mask": lseg * gain_box,  # yolov5: lseg *= hyp['box'] / bs
    }
    out["total"] = (out["box"] + out["obj"] + out["cls"] + out["mask"]) * 1  # * batch size
    if not all(math.isfinite(v) for v in out.values()):
        raise ValueError(f"loss is not finite ({out}); the detections or protos contain NaN or inf")
    return out


def _mask_loss(mask_parts: list, proto: np.ndarray, gt: Instances, mask_hw: tuple[int, int], nl: int) -> float:
    """Sum over layers of the mean per-match cropped BCE / box area (``single_mask_loss``).

    One dense matmul per GT instance covers all its matches in every layer (they share the
    GT mask and, up to float32 rounding, the crop box); the crop of each match is applied
    with row/column masks inside the union window.
    """
    if not mask_parts:
        return 0.0
    mask_h, mask_w = mask_hw
    small = sample_masks(gt.masks, (mask_h, mask_w))  # (N, mask_h, mask_w) GT pixels F.interpolate(nearest) reads; a view
    layer = np.concatenate([np.full(len(p[1]), p[0]) for p in mask_parts])
    tid = np.concatenate([p[1] for p in mask_parts])
    coeffs = np.concatenate([p[2] for p in mask_parts])  # (n, nm)
    bounds = np.concatenate([p[3] for p in mask_parts])  # (n, 4) r0, r1, c0, c1
    marea = np.concatenate([p[4] for p in mask_parts])
    nm = proto.shape[0]
    proto32 = np.asarray(proto, np.float32)
    coeffs32 = coeffs.astype(np.float32)
    per_match = np.zeros(len(tid), np.float64)  # cropped BCE summed over pixels
    order = np.argsort(tid, kind="stable")
    uniq, starts = np.unique(tid[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    for t, s, e in zip(uniq, starts, ends):  # one iteration per GT instance (all its matches)
        sel = order[s:e]
        b = bounds[sel]  # (k, 4)
        r0, r1, c0, c1 = b[:, 0].min(), b[:, 1].max(), b[:, 2].min(), b[:, 3].max()
        if r1 <= r0 or c1 <= c0:
            continue
        hh, ww = r1 - r0, c1 - c0
        window = proto32[:, r0:r1, c0:c1].reshape(nm, hh * ww)  # (nm, hh*ww)
        # float32 like yolov5 (and ~10x faster exp/log1p than float64); sums in float64
        x = coeffs32[sel] @ window  # (k, hh*ww) mask logits
        y = small[t, r0:r1, c0:c1].reshape(-1)  # (hh*ww,) bool GT at proto resolution
        # BCE with logits = softplus(x) - y * x, in place (the values of _softplus(x) - x * y exactly)
        bce = np.abs(x)
        np.negative(bce, out=bce)
        np.exp(bce, out=bce)
        np.log1p(bce, out=bce)  # log1p(exp(-|x|))
        bce += np.maximum(x, 0.0)  # softplus(x)
        np.subtract(bce, x, out=bce, where=y)  # - y * x with y in {0, 1}
        if (b == b[0]).all():  # all matches share the crop box: the common case
            per_match[sel] = bce.sum(axis=1, dtype=np.float64)
            continue
        bce = bce.reshape(len(sel), hh, ww)
        rows_ok = (np.arange(r0, r1)[None] >= b[:, :1]) & (np.arange(r0, r1)[None] < b[:, 1:2])  # (k, hh)
        cols_ok = (np.arange(c0, c1)[None] >= b[:, 2:3]) & (np.arange(c0, c1)[None] < b[:, 3:4])  # (k, ww)
        per_row = np.where(cols_ok[:, None, :], bce, 0.0).sum(axis=2, dtype=np.float64)  # (k, hh)
        per_match[sel] = np.where(rows_ok, per_row, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_match = per_match / (mask_h * mask_w) / marea
    total = 0.0
    for i in range(nl):
        in_layer = layer == i
        if in_layer.any():
            total += float(np.mean(per_match[in_layer]))
    return total

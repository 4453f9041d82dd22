"""YOLO segmentation post-processing in numpy, reproducing each head's own package.

Two head layouts (``model.layout``): only the head parsing and the mask assembly differ,
the candidate selection (best class, class-aware NMS through a class offset, at most
``max_detections``) is one piece of code.

* ``yolov5``: ``yolov5.utils.general.non_max_suppression(..., nm=32)`` (score = objectness x
  class score; like yolov5, the mask coefficients are multiplied by objectness too) followed
  by ``yolov5.utils.segment.general.process_mask(..., upsample=True)`` (the default of
  ``segment/predict.py``): ``sigmoid(coeffs @ protos)`` cropped to the box at prototype
  resolution, bilinearly upsampled (``align_corners=False``) to the input size and
  thresholded. ``tests/fixtures/decode_golden.npz`` (made by ``tools/make_decode_fixtures.py``
  with yolov5 itself) pins the equivalence.
* ``yolov8`` (YOLOv8/YOLO11-seg): ``ultralytics.utils.nms.non_max_suppression`` (no
  objectness; score = best class score) followed by ``ultralytics.utils.ops.process_mask(...,
  upsample=True)`` as its ``SegmentationPredictor`` calls it: the logits ``coeffs @ protos``
  upsampled, thresholded at 0, cropped at input resolution; detections left with an empty
  mask are dropped, as the predictor does. ``tests/fixtures/decode_golden_yolov8.npz`` (made
  by ``tools/make_decode_fixtures_v8.py`` with ultralytics itself) pins the equivalence.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from armbench_segmentation.codecs import center_xywh_to_xyxy, mask_to_original_rle
from armbench_segmentation.config import ModelConfig
from armbench_segmentation.data.letterbox import Letterbox
from armbench_segmentation.model.layout import HeadLayout
from armbench_segmentation.structures import Instances

log = logging.getLogger(__name__)

MAX_WH = 7680  # yolov5's class offset for class-aware NMS (pixels)
MAX_NMS = 30000  # yolov5: at most this many boxes enter NMS


# ---------------------------------------------------------------------------- NMS
def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS with torchvision's semantics (float32 IoU, suppress when IoU > threshold).

    Args:
        boxes: (K, 4) float32 xyxy.
        scores: (K,) float32.
    Returns:
        (M,) int64 indices of kept boxes, by decreasing score.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[order, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    thr = float(iou_threshold)
    keep: list[int] = []
    rest = np.arange(len(order))
    # one iteration per *kept* box, each vectorized over the remaining candidates
    while rest.size:
        i, rest = rest[0], rest[1:]
        keep.append(i)
        if not rest.size:
            break
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), np.float32(0))
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), np.float32(0))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        rest = rest[~(iou.astype(np.float64) > thr)]  # NaN (0/0) keeps, as in torchvision
    return order[np.asarray(keep, dtype=np.int64)]


def _candidates_yolov5(detections: np.ndarray, nc: int, conf_thr: float) -> tuple[np.ndarray, ...]:
    """yolov5 head parsing: (A, 5 + nc + nm) rows -> candidates above ``conf_thr``.

    Returns xywh (K, 4), conf (K,) = obj * best class score, best class j (K,) int64 and the
    mask coefficients (K, nm). yolov5 multiplies every column from 5 on by objectness
    (``x[:, 5:] *= x[:, 4:5]``), mask coefficients included, and builds masks from those
    scaled coefficients: so do we.
    """
    x = detections[detections[:, 4] > conf_thr]  # (K, 5+nc+nm) objectness candidates
    cls_scores = x[:, 5 : 5 + nc] * x[:, 4:5]  # (K, nc) conf = obj * cls
    j = np.argmax(cls_scores, axis=1) if len(x) else np.zeros(0, np.int64)
    conf = cls_scores[np.arange(len(x)), j]
    good = conf > conf_thr
    x, j, conf = x[good], j[good], conf[good]
    return x[:, :4], conf, j.astype(np.int64), x[:, 5 + nc :] * x[:, 4:5]


def _candidates_yolov8(detections: np.ndarray, nc: int, conf_thr: float) -> tuple[np.ndarray, ...]:
    """Ultralytics head parsing (YOLOv8/YOLO11-seg): (4 + nc + nm, A) channels -> candidates.

    As ``ultralytics.utils.nms.non_max_suppression`` (best class only): a candidate's best
    class score must exceed ``conf_thr``; the mask coefficients are used as exported.
    """
    cls = detections[4 : 4 + nc]  # (nc, A)
    keep = np.flatnonzero(cls.max(axis=0) > conf_thr) if nc else np.zeros(0, np.int64)
    x = np.ascontiguousarray(detections[:, keep].T)  # (K, 4+nc+nm): only the candidates are transposed
    j = np.argmax(x[:, 4 : 4 + nc], axis=1) if len(x) else np.zeros(0, np.int64)
    conf = x[np.arange(len(x)), 4 + j]
    return x[:, :4], conf, j.astype(np.int64), x[:, 4 + nc :]


_HEADS = {HeadLayout.YOLOV5: _candidates_yolov5, HeadLayout.YOLOV8: _candidates_yolov8}


def _select(xywh: np.ndarray, conf: np.ndarray, j: np.ndarray, coeffs: np.ndarray, config: ModelConfig
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidates -> best MAX_NMS by score, class-aware NMS, cap. Returns boxes, scores, classes, coeffs."""
    if len(conf) > MAX_NMS:
        log.warning("decode: %d candidates above conf_threshold=%.3g, only the best %d enter NMS", len(conf),
                    float(config.conf_threshold), MAX_NMS)
    order = np.argsort(-conf, kind="stable")[:MAX_NMS]
    xywh, conf, j, coeffs = xywh[order], conf[order], j[order], coeffs[order]
    boxes = center_xywh_to_xyxy(xywh)  # (K, 4) float32
    offset = (j.astype(np.float32) * np.float32(MAX_WH))[:, None]
    keep = nms(boxes + offset, conf, config.iou_threshold)
    cap = int(config.max_detections)
    if len(keep) > cap:
        log.warning("decode: %d detections after NMS, keeping the %d best (model.max_detections); "
                    "raise model.max_detections to keep more", len(keep), cap)
        keep = keep[:cap]
    return boxes[keep], conf[keep], j[keep], coeffs[keep]


# ---------------------------------------------------------------------------- masks
def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.negative(x)
    np.exp(out, out=out)
    out += np.float32(1)
    np.reciprocal(out, out=out)
    return out


def _crop_ranges(boxes: np.ndarray, mh: int, mw: int, ih: int, iw: int) -> np.ndarray:
    """(N, 4) int64 [r0, r1, c0, c1): pixels of an (mh, mw) grid kept by yolov5's and
    ultralytics' ``crop_mask`` (column c kept when x1 * mw / iw <= c < x2 * mw / iw); the
    prototype grid for yolov5, the input grid itself (mh, mw = ih, iw) for ultralytics."""
    db = boxes.astype(np.float32, copy=True)
    db[:, [0, 2]] *= np.float32(mw / iw)
    db[:, [1, 3]] *= np.float32(mh / ih)
    c = np.ceil(db)  # integer k satisfies k >= v  <=>  k >= ceil(v);  k < v  <=>  k < ceil(v)
    c0 = np.clip(c[:, 0], 0, mw)
    c1 = np.clip(c[:, 2], 0, mw)
    r0 = np.clip(c[:, 1], 0, mh)
    r1 = np.clip(c[:, 3], 0, mh)
    return np.stack([r0, np.maximum(r1, r0), c0, np.maximum(c1, c0)], axis=1).astype(np.int64)


def masks_from_protos(coeffs: np.ndarray, protos: np.ndarray, boxes: np.ndarray, input_hw: tuple[int, int],
                      mask_threshold: float = 0.5, layout: HeadLayout | str = HeadLayout.YOLOV5
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Instance masks the way the layout's own package assembles them.

    * ``yolov5``: yolov5 ``process_mask(..., upsample=True)``: ``sigmoid(coeffs @ protos)``
      cropped to the box at prototype resolution, bilinearly upsampled, ``> mask_threshold``.
    * ``yolov8``: ultralytics ``process_mask(..., upsample=True)``: the logits
      ``coeffs @ protos`` bilinearly upsampled, ``> logit(mask_threshold)`` (0 for 0.5), then
      cropped to the box at input resolution.

    Bilinear is ``align_corners=False`` (torch's ``F.interpolate`` = ``cv2.INTER_LINEAR``).

    Args:
        coeffs: (N, nm) float32 mask coefficients.
        protos: (nm, h, w) float32 prototypes.
        boxes: (N, 4) float32 xyxy in input pixels.
        input_hw: (H, W) model input size.
    Returns:
        masks (N, H, W) bool and proto_probs (N, h, w) float32 (sigmoid, zero outside the box
        at prototype resolution; the same for both layouts).
    """
    layout = HeadLayout.from_value(layout)
    nm, mh, mw = protos.shape
    ih, iw = (int(v) for v in input_hw)
    n = len(coeffs)
    probs = np.zeros((n, mh, mw), np.float32)
    masks = np.zeros((n, ih, iw), bool)
    if n == 0:
        return masks, probs
    ranges = _crop_ranges(boxes, mh, mw, ih, iw)
    full = _crop_ranges(boxes, ih, iw, ih, iw) if layout is HeadLayout.YOLOV8 else None  # input-pixel crop
    flat = protos.reshape(nm, mh * mw)  # (nm, h*w)
    sy, sx = ih // mh, iw // mw
    integer_scale = sy * mh == ih and sx * mw == iw
    thr = np.float32(mask_threshold)
    with np.errstate(divide="ignore"):
        thr_logit = np.float32(np.log(np.float64(mask_threshold)) - np.log1p(-np.float64(mask_threshold)))
    for k in range(n):  # kept detections only (<= max_detections); work is limited to the box
        r0, r1, c0, c1 = ranges[k]
        if layout is HeadLayout.YOLOV5:
            if r1 <= r0 or c1 <= c0:
                continue
            probs[k, r0:r1, c0:c1] = _sigmoid(_logits(coeffs[k], flat, mw, r0, r1)[:, c0:c1])
            if integer_scale:
                # one zero row/column of margin makes the local bilinear resize equal the global one
                e0, e1, f0, f1 = max(r0 - 1, 0), min(r1 + 1, mh), max(c0 - 1, 0), min(c1 + 1, mw)
                up = cv2.resize(probs[k, e0:e1, f0:f1], ((f1 - f0) * sx, (e1 - e0) * sy), interpolation=cv2.INTER_LINEAR)
                masks[k, e0 * sy : e1 * sy, f0 * sx : f1 * sx] = up > thr
            else:
                masks[k] = cv2.resize(probs[k], (iw, ih), interpolation=cv2.INTER_LINEAR) > thr
            continue
        y0, y1, x0, x1 = full[k]  # input pixels kept by ultralytics' crop_mask (x1 <= col < x2)
        if integer_scale:
            # the prototype window under the crop plus one cell of margin: bilinear output pixels
            # of the crop then read the same source cells as in the global resize. It holds the
            # prototype-resolution crop too (r0 >= e0, r1 <= e1), so one matmul serves both.
            e0, e1 = max(y0 // sy - 1, 0), min(-(-y1 // sy) + 1, mh)
            f0, f1 = max(x0 // sx - 1, 0), min(-(-x1 // sx) + 1, mw)
            if e1 <= e0 or f1 <= f0:
                continue
            window = np.ascontiguousarray(_logits(coeffs[k], flat, mw, e0, e1)[:, f0:f1])
            if r1 > r0 and c1 > c0:
                probs[k, r0:r1, c0:c1] = _sigmoid(window[r0 - e0 : r1 - e0, c0 - f0 : c1 - f0])
            if y1 > y0 and x1 > x0:
                up = cv2.resize(window, ((f1 - f0) * sx, (e1 - e0) * sy), interpolation=cv2.INTER_LINEAR)
                masks[k, y0:y1, x0:x1] = up[y0 - e0 * sy : y1 - e0 * sy, x0 - f0 * sx : x1 - f0 * sx] > thr_logit
        else:
            logits = _logits(coeffs[k], flat, mw, 0, mh)
            if r1 > r0 and c1 > c0:
                probs[k, r0:r1, c0:c1] = _sigmoid(logits[r0:r1, c0:c1])
            if y1 > y0 and x1 > x0:
                up = cv2.resize(logits, (iw, ih), interpolation=cv2.INTER_LINEAR)
                masks[k, y0:y1, x0:x1] = up[y0:y1, x0:x1] > thr_logit
    return masks, probs


def _logits(coeffs: np.ndarray, flat: np.ndarray, mw: int, r0: int, r1: int) -> np.ndarray:
    """(r1 - r0, w) float32 mask logits ``coeffs @ protos`` of prototype rows r0..r1."""
    rows = flat[:, r0 * mw : r1 * mw]  # (nm, hb*w) view: whole rows keep it a strided view, no copy
    return (coeffs @ rows).reshape(r1 - r0, mw)


# ---------------------------------------------------------------------------- public API
def decode(detections: np.ndarray, protos: np.ndarray, input_hw: tuple[int, int], config: ModelConfig,
           layout: HeadLayout | str = HeadLayout.YOLOV5) -> Instances:
    """Raw outputs of one image -> model-frame predictions.

    Args:
        detections: the ``output0`` row of one image, float32: (A, 5 + nc + nm) for the
            ``yolov5`` layout, (4 + nc + nm, A) for ``yolov8`` (see ``model.layout``).
        protos: (nm, h, w) float32 (``output1`` row of one image).
        input_hw: (H, W) of the model input.
        config: thresholds (conf_threshold, iou_threshold, max_detections, mask_threshold).
        layout: the export's head layout (``SegmentationModel.layout``, ``RawOutputs.layout``).
    Returns:
        Instances in the (H, W) input frame with scores; masks (N, H, W) bool;
        extras["coeffs"] (N, nm) float32: the coefficients the masks are made from (yolov5:
        raw coefficients times objectness, as yolov5 does; yolov8: as exported);
        extras["proto_probs"] (N, h, w) float32: sigmoid(coeffs @ protos), zero outside the box.
        With ``yolov8`` detections whose mask is empty are dropped after the cap, as
        ultralytics' segment predictor does; yolov5's predictor keeps them.
    """
    layout = HeadLayout.from_value(layout)
    detections = np.asarray(detections, dtype=np.float32)
    protos = np.asarray(protos, dtype=np.float32)
    shape = "(A, 5+nc+nm)" if layout is HeadLayout.YOLOV5 else "(4+nc+nm, A)"
    if detections.ndim != 2 or protos.ndim != 3:
        raise ValueError(f"decode takes one image: detections {shape} ({layout.value} layout) and protos (nm, h, w), "
                         f"got {detections.shape} and {protos.shape}")
    nm, mh, mw = protos.shape
    channels = detections.shape[1] if layout is HeadLayout.YOLOV5 else detections.shape[0]
    nc = channels - layout.box_channels - nm
    if nc < 1:
        raise ValueError(f"detections {detections.shape} read as {shape} ({layout.value} layout) have {channels} "
                         f"channels; with {nm} mask coefficients that leaves no class")
    ih, iw = (int(v) for v in input_hw)
    candidates = _HEADS[layout](detections, nc, float(config.conf_threshold))
    boxes, scores, classes, coeffs = _select(*candidates, config)
    masks, probs = masks_from_protos(coeffs, protos, boxes, (ih, iw), config.mask_threshold, layout)
    if layout is HeadLayout.YOLOV8:
        filled = masks.any(axis=(1, 2))
        if not filled.all():
            boxes, scores, classes, coeffs, masks, probs = (a[filled] for a in (boxes, scores, classes, coeffs, masks, probs))
    return Instances(boxes=boxes, class_ids=classes, image_size=(ih, iw), masks=masks, scores=scores,
                     extras={"coeffs": np.ascontiguousarray(coeffs, dtype=np.float32), "proto_probs": probs})


def decode_batch(raw, input_hw: tuple[int, int], config: ModelConfig) -> list[Instances]:
    """``decode`` for every image of a ``RawOutputs`` batch (in its ``layout``)."""
    layout = getattr(raw, "layout", HeadLayout.YOLOV5)
    return [decode(raw.detections[i], raw.protos[i], input_hw, config, layout) for i in range(len(raw.detections))]


def _check_frame(pred: Instances, letterbox: Letterbox) -> None:
    if tuple(pred.image_size) != (letterbox.out_h, letterbox.out_w):
        raise ValueError(f"predictions are in a {pred.image_size} frame but the letterbox maps from "
                         f"{(letterbox.out_h, letterbox.out_w)}; pass the letterbox of this image")


def to_original(pred: Instances, letterbox: Letterbox) -> Instances:
    """Model-frame predictions -> original resolution (boxes clipped; masks nearest-resized).

    Memory: N * orig_h * orig_w bytes of masks. For many instances on big originals use
    ``masks_to_original_rle`` which handles one instance at a time.
    """
    _check_frame(pred, letterbox)
    masks = None if pred.masks is None else letterbox.masks_to_original(pred.masks)
    return Instances(boxes=letterbox.boxes_to_original(pred.boxes), class_ids=pred.class_ids,
                     image_size=(letterbox.orig_h, letterbox.orig_w), masks=masks, scores=pred.scores,
                     ids=pred.ids, extras=pred.extras)


def masks_to_original_rle(masks: np.ndarray, letterbox: Letterbox) -> list[dict]:
    """Model-frame masks -> COCO RLEs at original resolution, one instance at a time
    (``codecs.mask_to_original_rle``: the pixels of ``Letterbox.masks_to_original`` without a
    full-size array per instance).

    Args:
        masks: (N, out_h, out_w) bool.
    Returns:
        N dicts ``{"size": [H, W], "counts": str}`` (compressed COCO RLE, JSON-ready).
    """
    return [mask_to_original_rle(m, letterbox) for m in np.asarray(masks, dtype=bool)]

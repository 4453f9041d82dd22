"""Drawing on numpy RGB images: masks, boxes, GT-vs-prediction comparisons, heatmaps.

Pure numpy/OpenCV on ``(H, W, 3) uint8`` RGB arrays (no platform types), so the local
report and the Tensorleap binder can share it. Inputs are never modified: every function
returns a new image.

Comparison style (``draw_comparison``): ground truth as solid bright-green outlines;
predictions as translucent filled masks in per-instance palette colours (no green in the
palette), with dashed boxes of the same colour and the score written at the box corner.
"""

from __future__ import annotations

import logging
from typing import Sequence

import cv2
import numpy as np

from armbench_segmentation.structures import Instances

log = logging.getLogger(__name__)

GT_COLOR = (0, 255, 0)  # ground-truth outlines
TEXT_COLOR = (255, 255, 255)

# distinct, saturated, no pure green (kept for ground truth)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (255, 225, 25), (240, 50, 230),
    (70, 240, 240), (128, 0, 0), (0, 0, 128), (170, 110, 40), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (128, 128, 0), (255, 215, 180), (100, 100, 100), (255, 120, 120), (60, 60, 255),
)


def instance_color(i: int) -> tuple[int, int, int]:
    """RGB colour of instance ``i`` from a fixed palette (cycles after ``len(PALETTE)``)."""
    return PALETTE[int(i) % len(PALETTE)]


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    return image


def _colors(n: int, colors: Sequence | None) -> list[tuple[int, int, int]]:
    if colors is None:
        return [instance_color(i) for i in range(n)]
    colors = [tuple(int(v) for v in c) for c in colors]
    if len(colors) != n:
        raise ValueError(f"got {len(colors)} colours for {n} instances")
    return colors


def _line_width(image: np.ndarray) -> int:
    return max(1, int(round(max(image.shape[:2]) / 400)))


def overlay_masks(image: np.ndarray, masks: np.ndarray, colors: Sequence | None = None, alpha: float = 0.5) -> np.ndarray:
    """Blend instance masks onto the image; later masks are drawn over earlier ones.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: (N, H, W) bool.
        colors: N RGB triples (default ``instance_color(i)``).
        alpha: mask opacity in [0, 1].
    Returns:
        (H, W, 3) uint8, a new image.
    """
    image = _check_image(image)
    masks = np.asarray(masks, dtype=bool).reshape(-1, *image.shape[:2]) if np.size(masks) else np.zeros((0, *image.shape[:2]), bool)
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = image.copy()
    for mask, color in zip(masks, _colors(len(masks), colors)):
        if not mask.any():
            continue
        px = out[mask].astype(np.float32)  # (P, 3)
        out[mask] = np.clip(px * (1 - alpha) + np.asarray(color, np.float32) * alpha + 0.5, 0, 255).astype(np.uint8)
    return out


def _put_label(out: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    """Text on a filled background of ``color``, above (x, y) when there is room, else below."""
    h, w = out.shape[:2]
    scale = max(0.3, min(h, w) / 900)
    thick = 1
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    y0 = y - th - base - 2 if y - th - base - 2 >= 0 else y
    x0 = int(np.clip(x, 0, max(0, w - tw - 2)))
    y0 = int(np.clip(y0, 0, max(0, h - th - base - 2)))
    cv2.rectangle(out, (x0, y0), (x0 + tw + 2, y0 + th + base + 2), color, -1)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    cv2.putText(out, text, (x0 + 1, y0 + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 0) if luminance > 150 else TEXT_COLOR, thick, cv2.LINE_AA)


def _box_pixels(box, h: int, w: int) -> tuple[int, int, int, int] | None:
    """Continuous xyxy -> inclusive integer pixel rectangle clipped to the image, or None."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not np.all(np.isfinite([x1, y1, x2, y2])):
        return None
    x1, y1 = int(np.floor(x1)), int(np.floor(y1))
    x2, y2 = int(np.ceil(x2)) - 1, int(np.ceil(y2)) - 1
    x1, x2 = max(x1, 0), min(x2, w - 1)
    y1, y2 = max(y1, 0), min(y2, h - 1)
    if x2 < x1 or y2 < y1:
        return None
    return x1, y1, x2, y2


def draw_boxes(image: np.ndarray, boxes: np.ndarray, labels: Sequence[str] | None = None,
               colors: Sequence | None = None, dashed: bool = False) -> np.ndarray:
    """Draw xyxy boxes (the pixels on the box border), with optional text labels.

    Args:
        image: (H, W, 3) uint8 RGB.
        boxes: (N, 4) xyxy in the image's pixel frame.
        labels: N strings (or None).
        colors: N RGB triples (default ``instance_color(i)``).
        dashed: dashed instead of solid lines.
    """
    image = _check_image(image)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"got {len(labels)} labels for {len(boxes)} boxes")
    out = image.copy()
    h, w = out.shape[:2]
    lw = _line_width(out)
    for i, (box, color) in enumerate(zip(boxes, _colors(len(boxes), colors))):
        rect = _box_pixels(box, h, w)
        if rect is None:
            continue
        x1, y1, x2, y2 = rect
        if dashed:
            _dashed_rect(out, x1, y1, x2, y2, color, lw, dash=max(3, 3 * lw))
        else:
            cv2.rectangle(out, (x1, y1), (x2, y2), color, lw)
        if labels is not None and labels[i]:
            _put_label(out, str(labels[i]), x1, y1, color)
    return out


def _dashed_rect(out: np.ndarray, x1: int, y1: int, x2: int, y2: int, color, lw: int, dash: int) -> None:
    """Dashed rectangle border: pixels whose position along the edge falls in an 'on' dash."""
    c = np.asarray(color, np.uint8)
    xs = np.arange(x1, x2 + 1)
    ys = np.arange(y1, y2 + 1)
    on_x = xs[((xs - x1) // dash) % 2 == 0]
    on_y = ys[((ys - y1) // dash) % 2 == 0]
    h, w = out.shape[:2]
    for t in range(lw):
        for y in (y1 + t, y2 - t):
            if 0 <= y < h:
                out[y, on_x] = c
        for x in (x1 + t, x2 - t):
            if 0 <= x < w:
                out[on_y, x] = c


def _outline(out: np.ndarray, mask: np.ndarray, color, thickness: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    if contours:
        cv2.drawContours(out, contours, -1, color, thickness)


def _subset(inst: Instances, ids) -> Instances:
    if ids is None:
        return inst
    ids = np.asarray(list(ids), dtype=np.int64)
    return inst[np.isin(inst.ids, ids)]


def draw_comparison(image: np.ndarray, gt: Instances | None, pred: Instances | None,
                    gt_ids: Sequence[int] | None = None, pred_ids: Sequence[int] | None = None,
                    class_names: Sequence[str] | None = None, alpha: float = 0.45) -> np.ndarray:
    """Ground truth vs predictions on one image (same frame as the instances).

    Ground truth: solid green outlines of the masks (boxes when there are no masks).
    Predictions: translucent filled masks in palette colours, dashed boxes of the same
    colour, ``score`` (and class name when ``class_names`` is given) at the box corner.

    Args:
        image: (H, W, 3) uint8 RGB in the frame of ``gt``/``pred``.
        gt, pred: Instances or None.
        gt_ids, pred_ids: draw only the instances with these ``ids`` (e.g. the ground-truth
            object and the predictions of an over-segmentation); None = all.
    """
    image = _check_image(image)
    hw = image.shape[:2]
    for name, inst in (("gt", gt), ("pred", pred)):
        if inst is not None and tuple(inst.image_size) != hw:
            raise ValueError(f"{name} instances are in a {inst.image_size} frame, the image is {hw}; "
                             f"map them first (decode.to_original / Letterbox)")
    out = image.copy()
    lw = _line_width(out)
    if pred is not None:
        pred = _subset(pred, pred_ids)
        colors = [instance_color(int(i)) for i in pred.ids]
        if pred.masks is not None:
            out = overlay_masks(out, pred.masks, colors, alpha)
        labels = []
        for k in range(len(pred)):
            parts = []
            if class_names is not None:
                parts.append(str(class_names[int(pred.class_ids[k])]))
            if pred.scores is not None:
                parts.append(f"{float(pred.scores[k]):.2f}")
            labels.append(" ".join(parts))
        out = draw_boxes(out, pred.boxes, labels, colors, dashed=True)
    if gt is not None:
        gt = _subset(gt, gt_ids)
        for k in range(len(gt)):
            if gt.masks is not None:
                _outline(out, gt.masks[k], GT_COLOR, lw + 1)
            else:
                rect = _box_pixels(gt.boxes[k], *hw)
                if rect is not None:
                    cv2.rectangle(out, rect[:2], rect[2:], GT_COLOR, lw + 1)
    return out


def draw_error_instances(image: np.ndarray, gt: Instances | None, pred: Instances, involved: dict, kind: str,
                         class_names: Sequence[str] | None = None, alpha: float = 0.45) -> np.ndarray:
    """``draw_comparison`` of exactly the instances involved in one kind of error.

    Args:
        image: (H, W, 3) uint8 RGB in the frame of ``gt``/``pred``.
        gt, pred: the evaluated instances in the evaluation's order (GT rows as the loader
            gives them, predictions as the decoder gives them), or the same instances drawn
            in another frame in that order.
        involved: ``SampleEvaluation.involved()`` or the stored ``facts["involved"]``:
            kind -> ``{"gt": [positions], "pred": [positions]}``.
        kind: one of ``metrics.sample_evaluation.ERROR_KINDS`` (e.g. ``"over_segmented"``:
            each split GT object and the predictions inside it).
    Returns:
        (H, W, 3) uint8; the plain image when there is no such error.
    Raises:
        ValueError: an unknown kind, or positions outside the instances given.
    """
    if kind not in involved:
        raise ValueError(f"unknown error kind {kind!r}; expected one of {sorted(involved)}")
    gt_pos = np.asarray(involved[kind]["gt"], np.int64)
    pred_pos = np.asarray(involved[kind]["pred"], np.int64)
    for name, inst, pos in (("gt", gt, gt_pos), ("pred", pred, pred_pos)):
        n = 0 if inst is None else len(inst)
        if len(pos) and (pos.min() < 0 or pos.max() >= n):
            raise ValueError(f"{kind}: {name} positions {pos.tolist()} do not fit the {n} {name} instances given; "
                             f"draw with the instances the evaluation saw")
    return draw_comparison(image, None if gt is None else gt[gt_pos], pred[pred_pos], class_names=class_names,
                           alpha=alpha)


def label_map(masks: np.ndarray, max_labels: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Instance masks -> one (H, W) uint8 label image: 0 = background, ``j + 1`` on instance
    ``kept[j]``. Larger instances are painted first, so small ones stay visible on top.

    Args:
        masks: (N, H, W) bool.
        max_labels: at most this many instances get a value (<= 255 for uint8); beyond it
            the smallest are left out, with a warning giving the counts.
    Returns:
        ``(label_map (H, W) uint8, kept (K,) int64)``: ``kept`` are the instance indices
        with a value, ascending (``arange(N)`` when nothing is left out).
    """
    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    if not 1 <= max_labels <= 255:
        raise ValueError(f"max_labels must be in [1, 255] (uint8 values beside background 0), got {max_labels}")
    n, h, w = masks.shape
    out = np.zeros((h, w), np.uint8)
    areas = masks.reshape(n, h * w).sum(axis=1)  # (N,)
    kept = np.arange(n, dtype=np.int64)
    if n > max_labels:
        log.warning("label map: %d instances, showing the %d largest (values are uint8)", n, max_labels)
        kept = np.sort(np.argsort(-areas, kind="stable")[:max_labels])
    for j in np.argsort(-areas[kept], kind="stable"):  # largest first
        out[masks[kept[j]]] = j + 1
    return out, kept


def instance_labels(inst: Instances, class_names: Sequence[str], prefix: str = "") -> list[str]:
    """One text per instance: ``"{prefix}{class} #{row}"`` plus ``" {score:.2f}"`` for predictions
    (e.g. ``"pred Object #0 0.93"``, ``"gt Tote #3"``)."""
    out = []
    for k in range(len(inst)):
        text = f"{prefix}{class_names[int(inst.class_ids[k])]} #{k}"
        if inst.scores is not None:
            text += f" {float(inst.scores[k]):.2f}"
        out.append(text)
    return out


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, vmin: float | None = None,
                    vmax: float | None = None, colormap: int = cv2.COLORMAP_TURBO) -> np.ndarray:
    """Blend a scalar map onto the image with a colour map.

    Args:
        image: (H, W, 3) uint8 RGB.
        heat: (h, w) float; resized (bilinear) to the image when its size differs.
            Normalised to [vmin, vmax] (default its finite min/max); NaN counts as vmin.
    """
    image = _check_image(image)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"expected an (H, W) heat map, got shape {heat.shape}")
    finite = np.isfinite(heat)
    lo = float(heat[finite].min()) if vmin is None and finite.any() else float(vmin or 0.0)
    hi = float(heat[finite].max()) if vmax is None and finite.any() else float(1.0 if vmax is None else vmax)
    heat = np.where(finite, heat, lo)
    if heat.shape != image.shape[:2]:
        heat = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    span = hi - lo
    norm = np.clip(np.divide(heat - lo, span, out=np.zeros_like(heat), where=span > 0), 0, 1)
    colored = cv2.applyColorMap((norm * 255 + 0.5).astype(np.uint8), colormap)[:, :, ::-1]  # BGR -> RGB
    blended = image.astype(np.float32) * (1 - alpha) + colored.astype(np.float32) * alpha
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def thumbnail(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (area interpolation) so the longer side is at most ``max_side``; never upscales."""
    image = np.asarray(image)
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image.copy()
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

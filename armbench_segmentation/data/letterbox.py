"""Letterbox: resize keeping aspect ratio and pad to the model size, and its exact inverse.

The transform is stored as data (a small frozen record) so every consumer can map boxes,
masks and polygons between the original image and the model input without guessing.
Coordinates are continuous: pixel ``(x, y)`` covers ``[x, x + 1)``, so a point maps by
``x_model = x_orig * scale_x + pad_x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114  # YOLOv5's gray padding


@dataclass(frozen=True)
class Letterbox:
    """Original image (orig_h, orig_w) -> model input (out_h, out_w).

    The image is resized to (new_h, new_w) = round(orig * r) with r = min(out/orig),
    then padded with ``pad_x`` columns on the left and ``pad_y`` rows on the top.
    ``scale_x = new_w / orig_w`` and ``scale_y = new_h / orig_h`` (they differ from r
    by the rounding only, which keeps the inverse exact).
    """

    orig_h: int
    orig_w: int
    out_h: int
    out_w: int
    new_h: int
    new_w: int
    pad_x: int
    pad_y: int

    @property
    def scale_x(self) -> float:
        return self.new_w / self.orig_w

    @property
    def scale_y(self) -> float:
        return self.new_h / self.orig_h

    @classmethod
    def compute(cls, orig_hw: tuple[int, int], out_hw: tuple[int, int] | int = 640) -> "Letterbox":
        if isinstance(out_hw, int):
            out_hw = (out_hw, out_hw)
        orig_h, orig_w = (int(v) for v in orig_hw)
        out_h, out_w = (int(v) for v in out_hw)
        if min(orig_h, orig_w, out_h, out_w) <= 0:
            raise ValueError(f"letterbox sizes must be positive, got orig {orig_hw} and out {out_hw}")
        r = min(out_h / orig_h, out_w / orig_w)
        new_w = min(out_w, max(1, int(round(orig_w * r))))
        new_h = min(out_h, max(1, int(round(orig_h * r))))
        pad_x = int(round((out_w - new_w) / 2 - 0.1))
        pad_y = int(round((out_h - new_h) / 2 - 0.1))
        return cls(orig_h, orig_w, out_h, out_w, new_h, new_w, max(pad_x, 0), max(pad_y, 0))

    # ------------------------------------------------------------------ images
    def apply_image(self, image: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Letterbox an image of the original size *or any size with the same aspect*
        (e.g. a reduced-resolution JPEG decode).

        Args:
            image: (h, w, C) uint8.
        Returns:
            (out_h, out_w, C) uint8 with gray padding.
        """
        if image.ndim != 3:
            raise ValueError(f"expected an (H, W, C) image, got shape {image.shape}")
        if image.shape[:2] != (self.new_h, self.new_w):
            if image.shape[0] > self.new_h:  # downscale: INTER_AREA avoids aliasing
                interpolation = cv2.INTER_AREA if interpolation == cv2.INTER_LINEAR else interpolation
            image = cv2.resize(image, (self.new_w, self.new_h), interpolation=interpolation)
        out = np.full((self.out_h, self.out_w, image.shape[2]), PAD_VALUE, dtype=image.dtype)
        out[self.pad_y : self.pad_y + self.new_h, self.pad_x : self.pad_x + self.new_w] = image
        return out

    # ------------------------------------------------------------------ points and boxes
    def points_to_model(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) original-pixel coordinates -> model-input coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        out = np.empty_like(xy)
        out[..., 0] = xy[..., 0] * self.scale_x + self.pad_x
        out[..., 1] = xy[..., 1] * self.scale_y + self.pad_y
        return out

    def points_to_original(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) model-input coordinates -> original-pixel coordinates (exact inverse)."""
        xy = np.asarray(xy, dtype=np.float64)
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] - self.pad_x) / self.scale_x
        out[..., 1] = (xy[..., 1] - self.pad_y) / self.scale_y
        return out

    def boxes_to_model(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) xyxy original -> (N, 4) float32 xyxy model."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return self.points_to_model(boxes.reshape(-1, 2, 2)).reshape(-1, 4).astype(np.float32)

    def boxes_to_original(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        """(N, 4) xyxy model -> (N, 4) float32 xyxy original, clipped to the image."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = self.points_to_original(boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        if clip:
            out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.orig_w)
            out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.orig_h)
        return out.astype(np.float32)

    def polygon_to_model(self, polygon: list[float] | np.ndarray) -> np.ndarray:
        """COCO polygon ``[x1, y1, x2, y2, ...]`` (original) -> flat float64 array (model)."""
        pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        return self.points_to_model(pts).reshape(-1)

    # ------------------------------------------------------------------ masks
    def masks_to_original(self, masks: np.ndarray) -> np.ndarray:
        """(N, out_h, out_w) bool model-frame masks -> (N, orig_h, orig_w) bool.

        Crops the padding, then nearest-neighbour resizes to the original size.
        Memory is N * orig_h * orig_w bytes: call per instance for big originals.
        """
        masks = np.asarray(masks, dtype=bool)
        n = len(masks)
        out = np.zeros((n, self.orig_h, self.orig_w), dtype=bool)
        crop = masks[:, self.pad_y : self.pad_y + self.new_h, self.pad_x : self.pad_x + self.new_w]
        for i in range(n):  # cv2.resize handles at most 512 channels; one call per mask is cheap
            out[i] = cv2.resize(crop[i].view(np.uint8), (self.orig_w, self.orig_h), interpolation=cv2.INTER_NEAREST) > 0
        return out

    def masks_to_model(self, masks: np.ndarray) -> np.ndarray:
        """(N, orig_h, orig_w) bool original-frame masks -> (N, out_h, out_w) bool (nearest)."""
        masks = np.asarray(masks, dtype=bool)
        n = len(masks)
        out = np.zeros((n, self.out_h, self.out_w), dtype=bool)
        for i in range(n):
            small = cv2.resize(masks[i].view(np.uint8), (self.new_w, self.new_h), interpolation=cv2.INTER_NEAREST)
            out[i, self.pad_y : self.pad_y + self.new_h, self.pad_x : self.pad_x + self.new_w] = small > 0
        return out

    def content_box(self) -> tuple[int, int, int, int]:
        """The un-padded image region in model coordinates, xyxy."""
        return self.pad_x, self.pad_y, self.pad_x + self.new_w, self.pad_y + self.new_h

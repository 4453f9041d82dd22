"""The typed per-image container that crosses every boundary: ``Instances``.

Ground truth and predictions use the same container. Arrays are parallel: row ``i`` of
``boxes``, ``class_ids``, ``masks`` and ``scores`` describe the same instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Instances:
    """Instances of one image, all in the coordinate frame of ``image_size``.

    Attributes:
        boxes: (N, 4) float32, ``x1, y1, x2, y2`` in pixels (continuous coordinates:
            pixel ``(x, y)`` covers ``[x, x + 1) x [y, y + 1)``).
        class_ids: (N,) int64, contiguous model class indices (order of
            ``settings.data.class_names``; Object=0, Tote=1 by default).
        image_size: ``(H, W)`` of the frame the boxes and masks live in.
        masks: (N, H, W) bool or None when masks were not computed.
        scores: (N,) float32 confidences for predictions, None for ground truth.
        ids: (N,) int64 stable ids (COCO annotation ids for GT, detection index for
            predictions). Defaults to ``arange(N)``.
        extras: per-instance extra arrays of length N (e.g. ``"coeffs"`` (N, 32)).
    """

    boxes: np.ndarray
    class_ids: np.ndarray
    image_size: tuple[int, int]
    masks: np.ndarray | None = None
    scores: np.ndarray | None = None
    ids: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        if len(class_ids) != n:
            raise ValueError(f"class_ids has {len(class_ids)} entries, boxes has {n}; they must be parallel")
        h, w = (int(v) for v in self.image_size)
        object.__setattr__(self, "image_size", (h, w))
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "class_ids", class_ids)
        if self.masks is not None:
            masks = np.asarray(self.masks)
            if masks.size == 0:
                masks = np.zeros((n, h, w), dtype=bool)
            if masks.dtype != bool:
                masks = masks.astype(bool)
            if masks.shape != (n, h, w):
                raise ValueError(f"masks must have shape {(n, h, w)} (N, H, W), got {masks.shape}")
            object.__setattr__(self, "masks", masks)
        if self.scores is not None:
            scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
            if len(scores) != n:
                raise ValueError(f"scores has {len(scores)} entries, boxes has {n}")
            object.__setattr__(self, "scores", scores)
        ids = np.arange(n, dtype=np.int64) if self.ids is None else np.asarray(self.ids, dtype=np.int64).reshape(-1)
        if len(ids) != n:
            raise ValueError(f"ids has {len(ids)} entries, boxes has {n}")
        object.__setattr__(self, "ids", ids)
        extras = {}
        for key, value in self.extras.items():
            value = np.asarray(value)
            if len(value) != n:
                raise ValueError(f"extras[{key!r}] has {len(value)} rows, boxes has {n}")
            extras[key] = value
        object.__setattr__(self, "extras", extras)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def empty(cls, image_size: tuple[int, int], with_masks: bool = True, with_scores: bool = False) -> "Instances":
        """No instances, correctly shaped: boxes (0, 4), masks (0, H, W)."""
        h, w = image_size
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            class_ids=np.zeros((0,), np.int64),
            image_size=(h, w),
            masks=np.zeros((0, h, w), bool) if with_masks else None,
            scores=np.zeros((0,), np.float32) if with_scores else None,
        )

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def is_prediction(self) -> bool:
        return self.scores is not None

    def __getitem__(self, index) -> "Instances":
        """Select rows with an int, slice, boolean mask or index array; returns a new Instances."""
        if isinstance(index, (int, np.integer)):
            index = np.array([index])
        elif isinstance(index, slice):
            index = np.arange(len(self))[index]
        index = np.asarray(index)
        if index.dtype == bool and len(index) != len(self):
            raise ValueError(f"boolean index has length {len(index)}, expected {len(self)}")
        return Instances(
            boxes=self.boxes[index],
            class_ids=self.class_ids[index],
            image_size=self.image_size,
            masks=None if self.masks is None else self.masks[index],
            scores=None if self.scores is None else self.scores[index],
            ids=self.ids[index],
            extras={k: v[index] for k, v in self.extras.items()},
        )

    def of_class(self, class_id: int) -> "Instances":
        return self[self.class_ids == class_id]

    def mask_areas(self) -> np.ndarray:
        """(N,) int64 pixel count of each mask."""
        if self.masks is None:
            raise ValueError("these Instances have no masks")
        # one SIMD count per mask: ~8x cheaper than a (N, H*W) sum over bools
        return np.fromiter((np.count_nonzero(m) for m in self.masks), np.int64, count=len(self))

    def box_areas(self) -> np.ndarray:
        """(N,) float32 box areas in pixels."""
        wh = np.clip(self.boxes[:, 2:] - self.boxes[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        kind = "predictions" if self.is_prediction else "ground truth"
        return f"Instances({len(self)} {kind}, image_size={self.image_size}, masks={self.masks is not None})"


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes of boolean masks.

    Args:
        masks: (N, H, W) bool.
    Returns:
        (N, 4) float32; an empty mask gives a zero box.
    """
    masks = np.asarray(masks, dtype=bool)
    n = len(masks)
    out = np.zeros((n, 4), np.float32)
    if n == 0:
        return out
    rows = masks.any(axis=2)  # (N, H)
    cols = masks.any(axis=1)  # (N, W)
    has = rows.any(axis=1)
    h, w = masks.shape[1:]
    y1 = np.argmax(rows, axis=1)
    y2 = h - np.argmax(rows[:, ::-1], axis=1)
    x1 = np.argmax(cols, axis=1)
    x2 = w - np.argmax(cols[:, ::-1], axis=1)
    out[:] = np.stack([x1, y1, x2, y2], axis=1)
    out[~has] = 0
    return out


def unbatch(array, ndim: int, name: str = "array") -> np.ndarray:
    """One sample's array: drops a leading batch axis of 1 when present.

    Args:
        array: (ndim)-D, or (1, ...) with ndim + 1 dimensions.
        ndim: the number of dimensions of one sample.
        name: used in the error message.
    Raises:
        ValueError: any other shape (e.g. a batch of several samples).
    """
    array = np.asarray(array)
    if array.ndim == ndim + 1 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions (or a leading batch of 1), got shape {array.shape}")
    return array


def python_scalar(value):
    """A value for a result row: numpy scalars -> Python scalars; NaN/inf -> None (never
    NaN in user-facing output); bools, ints, strings and None pass through."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value

"""Which segmentation head an ONNX export has: YOLOv5-seg or YOLOv8/YOLO11-seg.

Both exports have the same two outputs, detections (``output0``) and mask prototypes
(``output1``, ``(N, nm, H/4, W/4)``); they differ in the detection tensor only:

========== ======================= ==========================================================
layout     ``output0``             per anchor
========== ======================= ==========================================================
yolov5     ``(N, A, 5 + nc + nm)`` cx, cy, w, h (input pixels), objectness, nc class scores
                                   (sigmoided), nm raw mask coefficients; score = obj x cls
yolov8     ``(N, 4 + nc + nm, A)`` cx, cy, w, h (input pixels), nc class scores (sigmoided,
                                   no objectness), nm raw mask coefficients: channel first,
                                   anchor free (YOLOv8-seg, YOLO11-seg and every other
                                   Ultralytics ``-seg`` export made with ``end2end=False``)
========== ======================= ==========================================================

``detect_layout`` tells them apart from the shapes, helped by the ONNX metadata when present:
the class count of ``names`` (both exporters write it), ``task`` (must be ``segment`` when
present), and Ultralytics' own keys (``author: Ultralytics`` means the yolov8 layout;
``end2end: True``, an NMS-free export, is refused; yolov5's exporter writes only ``stride``
and ``names``).
"""

from __future__ import annotations

import ast
import enum
from collections.abc import Mapping, Sequence

__all__ = ["HeadLayout", "LayoutError", "ACCEPTED", "detect_layout", "layout_widths"]

ACCEPTED = ("YOLOv5-seg: output0 (N, A, 5 + nc + nm), output1 (N, nm, H/4, W/4); "
            "YOLOv8/YOLO11-seg (Ultralytics, end2end=False): output0 (N, 4 + nc + nm, A), output1 (N, nm, H/4, W/4)")


class HeadLayout(str, enum.Enum):
    """The detection-tensor layout of an export (see the module docstring)."""

    YOLOV5 = "yolov5"
    YOLOV8 = "yolov8"

    @classmethod
    def from_value(cls, value: "HeadLayout | str") -> "HeadLayout":
        """A ``HeadLayout`` or its string value (``"yolov5"``, ``"yolov8"``)."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ValueError(f"unknown head layout {value!r}; expected one of {[m.value for m in cls]}") from None

    @property
    def box_channels(self) -> int:
        """Channels before the class scores: 5 (xywh + objectness) or 4 (xywh)."""
        return 5 if self is HeadLayout.YOLOV5 else 4


class LayoutError(ValueError):
    """The outputs match no accepted layout; the message says what was found."""


def layout_widths(layout: HeadLayout, det_shape: Sequence[int]) -> tuple[int, int]:
    """(anchors, channels) of a (N, ., .) detection shape read in ``layout``."""
    _, d1, d2 = det_shape
    return (d1, d2) if layout is HeadLayout.YOLOV5 else (d2, d1)


def _ultralytics(metadata: Mapping[str, str]) -> bool:
    """Written by Ultralytics' exporter (``author``; ``task`` alone is not: other exporters,
    this project's ``tools/export_onnx.py`` among them, write it too)."""
    return metadata.get("author", "").strip() == "Ultralytics"


def detect_layout(det_shape: Sequence[int], nm: int, metadata: Mapping[str, str] | None = None,
                  n_names: int | None = None) -> tuple[HeadLayout, int]:
    """The head layout and class count of a detection output.

    Args:
        det_shape: (N, d1, d2) shape of the detection output; a symbolic (dynamic) axis is
            None and is read as the anchor axis (the one that grows with the input size).
        nm: mask coefficients (the prototype output's channel count).
        metadata: the ONNX custom metadata map (may be empty).
        n_names: the number of class names in the metadata, None when it has none.
    Returns:
        ``(layout, nc)``.
    Raises:
        LayoutError: no layout fits (the message gives the shapes and what is accepted), or
            the metadata says the export is not a plain segmentation head (another task,
            an end-to-end NMS-free export).

    Rule: a layout fits when it leaves at least one class. With ``names`` in the metadata only
    layouts whose class count equals the number of names are kept (unless none is, then the
    count is not used). Ultralytics' metadata means ``yolov8``. Unless the names' count
    confirmed it, a layout must read the longer axis as the anchors (A is thousands at usual
    input sizes, channels tens; a symbolic axis counts as the longer).
    """
    metadata = dict(metadata or {})
    found = f"found output0 {tuple(det_shape)} with output1 of {nm} prototype channels"
    task = metadata.get("task", "").strip()
    if task and task != "segment":
        raise LayoutError(f"an Ultralytics {task[:40]!r} model (ONNX metadata 'task'), not a segmentation one; {found}. "
                          f"Accepted: {ACCEPTED}")
    if _truthy(metadata.get("end2end")):
        raise LayoutError(f"an end-to-end (NMS-free) Ultralytics export (ONNX metadata end2end={metadata['end2end'][:40]!r}); "
                          f"{found}. Re-export with end2end=False (output0 (N, 4 + nc + nm, A)). Accepted: {ACCEPTED}")
    if len(det_shape) != 3 or any(d is not None and (not isinstance(d, int) or d < 1) for d in det_shape[1:]):
        raise LayoutError(f"{found}: output0 must be a 3-D tensor. Accepted: {ACCEPTED}")
    fits = {}
    for layout in HeadLayout:
        anchors, channels = layout_widths(layout, det_shape)
        if channels is None:
            continue
        nc = channels - layout.box_channels - nm
        if nc >= 1:
            fits[layout] = (nc, anchors, channels)
    if n_names is not None and any(v[0] == n_names for v in fits.values()):
        fits = {k: v for k, v in fits.items() if v[0] == n_names}
        confirmed = True
    else:
        confirmed = False
    if _ultralytics(metadata):
        fits = {k: v for k, v in fits.items() if k is HeadLayout.YOLOV8}
    if not confirmed:  # without the names' count the anchor axis must be the longer one
        plausible = {k: v for k, v in fits.items() if v[1] is None or v[1] > v[2]}
        if len(fits) > 1 and not plausible:
            raise LayoutError(f"{found}: it fits both and cannot be told apart (as many anchors as channels); "
                              f"add the class names to the ONNX metadata ('names'). Accepted: {ACCEPTED}")
        fits = plausible
    if len(fits) != 1:
        why = "it fits neither" if not fits else "it fits both and cannot be told apart"
        hint = " (ONNX metadata says Ultralytics, so YOLOv8/YOLO11 was expected)" if _ultralytics(metadata) else ""
        raise LayoutError(f"{found}{hint}: {why}. Accepted: {ACCEPTED}")
    (layout, (nc, _, _)), = fits.items()
    return layout, nc


def _truthy(value: str | None) -> bool:
    if value is None:
        return False
    try:
        return bool(ast.literal_eval(value.strip()))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value.strip().lower() in ("true", "yes", "1")

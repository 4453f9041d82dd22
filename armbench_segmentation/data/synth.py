"""ARMBench-like synthetic tote images with exact COCO instance annotations.

The real ARMBench mix-object-tote data is not public, so tests, demos and the analysis
pipeline run on images made here. They are meant to provoke the same error modes as the
real totes: heavy occlusion (visible regions split in several pieces), touching identical
items side by side (under-segmentation), two-tone packaging and printed labels
(over-segmentation), thin items, shiny pouches, deformable clothing, dense totes.

How an image is made (``render_tote``):

1. Tote geometry (outline quad, rim, walls, floor) and a z-ordered list of items, each
   with an amodal shape mask in its own bounding-box patch.
2. Visibility, top item first: visible = shape minus what the items above cover; 8-connected
   fragments below ``MIN_FRAGMENT_FRACTION`` of the image are dropped, then items whose
   visible fraction is below ``MIN_VISIBLE_FRACTION``. Dropped items are never painted and
   their pixels fall through to what lies below, so image, label map and annotations agree.
3. Visible regions become COCO polygons that rasterize *exactly* (pycocotools samples
   pixel centres) to the region: outlines follow pixel edges, regions with holes are cut
   into hole-free pieces.
4. Pixels are painted from the final label map: background, tote, then every item in
   z-order (drop shadow onto what is below, then its texture on its own pixels), then
   sensor grain.

``generate_dataset`` writes the ARMBench mix-object-tote layout (``images/<ID>.jpg``,
``train.json``, ``val.json``, ``test.json``) with one deterministic seed per image, so the
output does not depend on the number of worker processes.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from armbench_segmentation.codecs import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

GENERATOR_NAME = "armbench_segmentation.data.synth"
GENERATOR_VERSION = 1
MARKER_FILE = ".armbench-synth.json"
"""Small file in the dataset root that marks a folder written by ``generate_dataset``."""

MIN_FRAGMENT_FRACTION = 0.001
"""Visible fragments smaller than this fraction of the image area are dropped."""
MIN_VISIBLE_FRACTION = 0.08
"""Items whose visible area is below this fraction of their full area are dropped."""
MIN_SIZE = 64
"""Smallest accepted image width/height."""
MIN_OBJECTS = 3
"""A tote shows at least this many annotated objects (the pile is re-drawn otherwise)."""

CATEGORIES = [
    {"id": 1, "name": "Tote", "supercategory": "container"},
    {"id": 2, "name": "Object", "supercategory": "item"},
]
_CATEGORY_IDS = {"Tote": 1, "Object": 2}
SPLITS = ("train", "val", "test")
OBJECT_KINDS = ("box", "pouch", "bottle", "book", "deformable", "thin", "twotone")
_KIND_PROBS = np.array([0.25, 0.15, 0.12, 0.11, 0.14, 0.11, 0.12])
_ID_ALPHABET = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))

SCENARIOS = ("dense-small",)
"""Rare sub-populations ``generate_dataset(scenario=...)`` can mix in (for active-learning studies):

``dense-small``: dense clutter of small items, 45-70 objects at 0.45x the usual size (a
normal tote holds mostly 5-15, at most 45). Many tiny, touching, occluded pieces: hard for
a model trained on ordinary totes, and, as a share of a split, easy to under-represent.
The images of a split that get the scenario are exactly ``round(fraction * n)`` of them,
chosen by a seeded permutation of the split; their COCO image entries carry
``"scenario": "dense-small"``. Without a scenario the output is unchanged.
"""
DENSE_COUNT = (45, 71)
DENSE_SIZE = 0.45


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class SynthInstance:
    """One annotated instance of a synthetic tote image."""

    label: int
    """Its value in ``SynthImage.label_map``."""
    category: str
    """``"Tote"`` or ``"Object"``."""
    kind: str
    """``"tote"`` or one of ``OBJECT_KINDS``."""
    polygons: list[list[float]]
    """COCO polygons ``[x1, y1, x2, y2, ...]`` of the visible region (several when occlusion
    splits it). For the tote: its outline."""
    visible_fraction: float
    """Visible area / full (amodal) area; 1.0 for the tote."""
    group: int | None
    """Id shared by identical items placed side by side (touching twins), else None."""


@dataclass(frozen=True)
class SynthImage:
    """A rendered tote: pixels, pixel owners and instances."""

    image: np.ndarray
    """(H, W, 3) uint8 RGB."""
    label_map: np.ndarray
    """(H, W) int32: 0 = outside the tote, k > 0 = owner instance ``k``; the tote's own
    label (1) marks the tote pixels not covered by objects."""
    instances: list[SynthInstance]
    """In z-order, tote first."""


# --------------------------------------------------------------------------- polygons


def _edge_contours(mask: np.ndarray) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Contours of ``mask`` along pixel edges, in doubled coordinates.

    (h, w) uint8 mask -> every boundary point of the (2h+1, 2w+1) grid whose even indices
    are pixel edges and odd indices pixel centres; divide by two for COCO coordinates.
    Points with one odd coordinate are the midpoints of boundary pixel edges. RETR_CCOMP
    hierarchy (holes have a parent).
    """
    h, w = mask.shape
    grid = np.zeros((2 * h + 1, 2 * w + 1), np.uint8)
    grid[1::2, 1::2] = mask
    grid = cv2.dilate(grid, np.ones((3, 3), np.uint8))
    contours, hierarchy = cv2.findContours(grid, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    return list(contours), hierarchy


_SIMPLIFY_EPS = 0.5
"""Douglas-Peucker tolerance in doubled coordinates (0.25 px) for the edge-midpoint path."""


def _piece_polygons(piece: np.ndarray, contours: list[np.ndarray]) -> list[np.ndarray]:
    """Polygons (doubled coordinates, (n, 2) int) of a hole-free piece, rasterizing exactly to it.

    First choice: the path through the midpoints of the boundary pixel edges, simplified
    with a 0.25 px tolerance (about 3x fewer vertices); it keeps every pixel centre on
    the right side with a margin, and the result is checked with pycocotools. Fallback:
    the pixel-edge staircase itself, exact by construction.
    """
    simplified = []
    for contour in contours:
        pts = contour[:, 0, :]
        mid = pts[(pts[:, 0] + pts[:, 1]) % 2 == 1]
        poly = cv2.approxPolyDP(mid.reshape(-1, 1, 2), _SIMPLIFY_EPS, True)[:, 0, :]
        simplified.append(poly if len(poly) >= 3 else mid)
    h, w = piece.shape
    if all(len(p) >= 3 for p in simplified):
        check = polygons_to_mask([(p / 2.0).ravel().tolist() for p in simplified], h, w)
        if np.array_equal(check, piece.view(bool)):
            return simplified
    return [cv2.approxPolyDP(c, 0, True)[:, 0, :] for c in contours]


def mask_to_polygons(mask: np.ndarray, x0: int = 0, y0: int = 0) -> list[list[float]]:
    """COCO polygons whose pycocotools raster is exactly ``mask``.

    ``mask``: (h, w) bool/uint8 patch whose top-left pixel is image pixel (x0, y0).
    pycocotools keeps a pixel when its centre (x + 0.5, y + 0.5) is inside a polygon, so
    outlines are drawn between the centres of mask and non-mask pixels: along pixel edges,
    simplified where that stays exact (verified). Regions with holes cannot be one COCO
    polygon (polygons are unioned): they are cut at a column through the hole into
    hole-free pieces. Coordinates are integers or halves. Returns [] for an empty mask.
    """
    work = [(np.ascontiguousarray(mask, dtype=np.uint8), 0)]
    polygons: list[list[float]] = []
    while work:
        piece, xoff = work.pop()
        if piece.shape[1] == 0 or not piece.any():
            continue
        contours, hierarchy = _edge_contours(piece)
        if hierarchy is None:
            continue
        holes = [i for i, h in enumerate(hierarchy[0]) if h[3] != -1]
        if holes:
            # Cut at the first column of a hole: the hole opens onto the cut in the right
            # piece; whatever holes remain are handled on the next round.
            cut = int(contours[holes[0]][:, 0, 0].min()) // 2
            cut = min(max(cut, 1), piece.shape[1] - 1)
            work.append((piece[:, :cut], xoff))
            work.append((piece[:, cut:], xoff + cut))
            continue
        for poly in _piece_polygons(piece, contours):
            if len(poly) < 3:
                continue
            pts = poly.astype(np.float64) / 2.0
            pts[:, 0] += x0 + xoff
            pts[:, 1] += y0
            polygons.append(pts.ravel().tolist())  # integers or halves: exact in 2 decimals
    return polygons


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """(height, width) bool raster of COCO polygons, exactly as pycocotools computes it."""
    polys = [p for p in polygons if len(p) >= 6]
    if not polys:
        return np.zeros((height, width), bool)
    rles = mask_utils.frPyObjects(polys, height, width)
    return np.ascontiguousarray(mask_utils.decode(mask_utils.merge(rles)), dtype=bool)  # decode is column-major


def _polygon_bbox(polygons: list[list[float]]) -> list[float]:
    xs = np.concatenate([np.asarray(p[0::2]) for p in polygons])
    ys = np.concatenate([np.asarray(p[1::2]) for p in polygons])
    x0, y0 = float(xs.min()), float(ys.min())
    return [round(x0, 2), round(y0, 2), round(float(xs.max()) - x0, 2), round(float(ys.max()) - y0, 2)]


# --------------------------------------------------------------------------- texture helpers


def _lowfreq(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """(h, w) float32 smooth noise, roughly zero mean, unit-ish amplitude, feature size ``cell`` px."""
    gh = max(2, int(math.ceil(h / max(cell, 1.0))) + 2)
    gw = max(2, int(math.ceil(w / max(cell, 1.0))) + 2)
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(grid, (max(w, 1), max(h, 1)), interpolation=cv2.INTER_CUBIC)


def _random_color(rng: np.random.Generator, sat: tuple[float, float] = (0.4, 0.95),
                  val: tuple[float, float] = (0.35, 0.95)) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.float32)
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return rgb.astype(np.float32)


def _fill(h: int, w: int, color: np.ndarray) -> np.ndarray:
    out = np.empty((h, w, 3), np.float32)
    out[:] = color
    return out


def _text_block(canvas: np.ndarray, rng: np.random.Generator, x0: float, y0: float, x1: float, y1: float,
                ink: tuple[float, float, float] = (25.0, 25.0, 30.0)) -> None:
    """Rows of dark dashes that read as printed text, inside [x0, x1) x [y0, y1)."""
    h = y1 - y0
    w = x1 - x0
    if h < 4 or w < 6:
        return
    line_h = max(1.0, rng.uniform(0.06, 0.14) * h)
    y = y0 + line_h
    thick = max(1, int(round(line_h * rng.uniform(0.35, 0.6))))
    while y < y1 - line_h * 0.3:
        x = x0 + rng.uniform(0, 0.1) * w
        end = x0 + w * rng.uniform(0.5, 1.0)
        while x < end:
            word = rng.uniform(0.04, 0.2) * w
            cv2.line(canvas, (int(x), int(y)), (int(min(x + word, end)), int(y)), ink, thick)
            x += word + rng.uniform(0.02, 0.05) * w
        y += line_h * rng.uniform(1.4, 2.0)


def _label(canvas: np.ndarray, rng: np.random.Generator, x0: float, y0: float, x1: float, y1: float) -> None:
    """A white printed shipping label with text and a barcode."""
    paper = np.array([rng.uniform(232, 250)] * 3, np.float32) - np.array([0, 0, rng.uniform(0, 8)], np.float32)
    cv2.rectangle(canvas, (int(x0), int(y0)), (int(x1), int(y1)), paper.tolist(), -1)
    h = y1 - y0
    _text_block(canvas, rng, x0 + 0.06 * (x1 - x0), y0 + 0.05 * h, x1 - 0.06 * (x1 - x0), y0 + 0.55 * h)
    # barcode
    bx0, bx1 = x0 + 0.1 * (x1 - x0), x1 - 0.1 * (x1 - x0)
    by0, by1 = y0 + 0.62 * h, y1 - 0.08 * h
    x = bx0
    while x < bx1 and by1 - by0 > 2:
        bar = rng.uniform(0.004, 0.02) * (x1 - x0) + 0.6
        cv2.rectangle(canvas, (int(x), int(by0)), (int(x + bar), int(by1)), (20, 20, 20), -1)
        x += bar + rng.uniform(0.005, 0.02) * (x1 - x0) + 0.6


def _edge_ramp(h: int, w: int, width: float) -> np.ndarray:
    """(h, w) float32: 0 at the border rising to 1 at ``width`` px inside (separable)."""
    width = max(width, 1.0)
    ry = np.minimum(np.arange(h, dtype=np.float32) + 0.5, h - np.arange(h, dtype=np.float32) - 0.5) / width
    rx = np.minimum(np.arange(w, dtype=np.float32) + 0.5, w - np.arange(w, dtype=np.float32) - 0.5) / width
    return np.minimum(np.clip(ry, 0, 1)[:, None], np.clip(rx, 0, 1)[None, :])


def _highlights(rng: np.random.Generator, h: int, w: int, count: int, alpha: np.ndarray | None = None) -> np.ndarray:
    """(h, w) float32 in [0, 1]: soft elongated specular highlights."""
    layer = np.zeros((h, w), np.float32)
    for _ in range(count):
        c = (int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h))
        axes = (max(1, int(rng.uniform(0.05, 0.3) * w)), max(1, int(rng.uniform(0.01, 0.06) * h)))
        cv2.ellipse(layer, c, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(0.5, 1.0)), -1)
    sigma = max(0.8, 0.01 * min(h, w))
    layer = cv2.GaussianBlur(layer, (0, 0), sigma)
    if alpha is not None:
        layer *= alpha
    return layer


# --------------------------------------------------------------------------- item templates


@dataclass
class _Template:
    """An item drawn in its own frame: ``alpha`` (ch, cw) float32 and a texture painter."""

    kind: str
    alpha: np.ndarray
    paint: Callable[[], np.ndarray]
    """-> (ch, cw, 3) float32 RGB (called only for items that end up visible)."""
    direct: bool = False
    """True when the canvas is already in image orientation (no rotation applied)."""


def _rounded_rect_alpha(h: int, w: int, radius: float) -> np.ndarray:
    alpha = np.zeros((h, w), np.float32)
    r = int(max(0, min(radius, h / 2 - 1, w / 2 - 1)))
    if r <= 0:
        alpha[:] = 1
        return alpha
    cv2.rectangle(alpha, (r, 0), (w - 1 - r, h - 1), 1.0, -1)
    cv2.rectangle(alpha, (0, r), (w - 1, h - 1 - r), 1.0, -1)
    for cx, cy in ((r, r), (w - 1 - r, r), (r, h - 1 - r), (w - 1 - r, h - 1 - r)):
        cv2.circle(alpha, (cx, cy), r, 1.0, -1)
    return alpha


def _blob_alpha(rng: np.random.Generator, h: int, w: int, wobble: float) -> np.ndarray:
    """Irregular closed blob filling most of (h, w)."""
    n = 96
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 6):
        r += wobble / k * rng.uniform(0.3, 1.0) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r /= r.max()
    pts = np.stack([w / 2 + (w / 2 - 1) * r * np.cos(t), h / 2 + (h / 2 - 1) * r * np.sin(t)], 1)
    alpha = np.zeros((h, w), np.float32)
    cv2.fillPoly(alpha, [np.round(pts * 4).astype(np.int32)], 1.0, lineType=cv2.LINE_8, shift=2)
    return alpha


def _template_box(rng: np.random.Generator, size: float, two_tone: bool = False) -> _Template:
    long_side = size * rng.uniform(0.22, 0.5)
    w = max(4, int(long_side))
    h = max(4, int(long_side * rng.uniform(0.45, 0.95)))
    alpha = np.ones((h, w), np.float32)
    tex_seed = int(rng.integers(2**62))
    style = rng.choice(["cardboard", "white", "retail"], p=[0.55, 0.15, 0.30])

    def paint() -> np.ndarray:
        r = np.random.default_rng(tex_seed)
        if style == "cardboard":
            base = np.array([r.uniform(150, 185), r.uniform(112, 140), r.uniform(70, 95)], np.float32)
        elif style == "white":
            base = np.full(3, r.uniform(205, 235), np.float32)
        else:
            base = _random_color(r)
        canvas = _fill(h, w, base)
        if two_tone:
            _two_tone(canvas, r)
        elif style == "retail":
            # printed artwork blocks
            for _ in range(int(r.integers(1, 4))):
                c = _random_color(r)
                x0, y0 = r.uniform(0, 0.7) * w, r.uniform(0, 0.7) * h
                cv2.rectangle(canvas, (int(x0), int(y0)), (int(x0 + r.uniform(0.15, 0.5) * w), int(y0 + r.uniform(0.15, 0.5) * h)), c.tolist(), -1)
            _text_block(canvas, r, 0.1 * w, 0.1 * h, 0.9 * w, 0.4 * h, ink=tuple(float(v) for v in _random_color(r, val=(0.05, 0.3))))
        if style == "cardboard" and r.random() < 0.6:
            # packing tape along the long axis
            tw = r.uniform(0.12, 0.22) * h
            cy = h / 2 + r.uniform(-0.1, 0.1) * h
            tape = base * r.uniform(0.85, 1.15) + r.uniform(5, 25)
            cv2.rectangle(canvas, (0, int(cy - tw / 2)), (w, int(cy + tw / 2)), np.clip(tape, 0, 255).tolist(), -1)
        if not two_tone and r.random() < 0.65:
            lw, lh = r.uniform(0.3, 0.5) * w, r.uniform(0.3, 0.55) * h
            lx, ly = r.uniform(0.05, 0.95) * (w - lw), r.uniform(0.05, 0.95) * (h - lh)
            _label(canvas, r, lx, ly, lx + lw, ly + lh)
        # fibres, lighting, bevelled edges
        fib = cv2.resize(r.standard_normal((max(2, h // 2), max(2, w // 16)), dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        shade = 1.0 + 0.05 * _lowfreq(r, h, w, max(h, w) / 3) + 0.02 * fib
        shade *= 0.8 + 0.2 * _edge_ramp(h, w, 0.03 * max(h, w) + 1)
        return canvas * shade[..., None]

    return _Template("twotone" if two_tone else "box", alpha, paint)


def _two_tone(canvas: np.ndarray, r: np.random.Generator) -> None:
    """Split the canvas into two strongly different parts (printed half, blister, big label)."""
    h, w = canvas.shape[:2]
    variant = r.choice(["halves", "diagonal", "blister", "biglabel"])
    c1 = _random_color(r, val=(0.55, 0.95))
    c2 = _random_color(r, val=(0.08, 0.4))
    if r.random() < 0.5:
        c1, c2 = c2, c1
    canvas[:] = c1
    if variant == "halves":
        cut = int(r.uniform(0.35, 0.65) * w)
        canvas[:, cut:] = c2
    elif variant == "diagonal":
        pts = np.array([[0, 0], [int(r.uniform(0.3, 0.9) * w), 0], [int(r.uniform(0.1, 0.7) * w), h], [0, h]], np.int32)
        canvas[:] = c2
        cv2.fillPoly(canvas, [pts], c1.tolist())
    elif variant == "blister":
        canvas[:] = np.array([r.uniform(200, 240)] * 3, np.float32) * np.array([1.0, 0.97, 0.9], np.float32)
        bubble = np.zeros((h, w), np.float32)
        cv2.ellipse(bubble, (w // 2, h // 2), (max(1, int(w * 0.32)), max(1, int(h * 0.36))), 0, 0, 360, 1.0, -1)
        canvas[bubble > 0] = c2
        canvas += 70.0 * _highlights(r, h, w, 3, bubble)[..., None]
    else:
        lw = int(r.uniform(0.45, 0.6) * w)
        canvas[:, :lw] = np.array([245, 245, 240], np.float32)
        _text_block(canvas, r, 0.05 * w, 0.1 * h, lw - 0.05 * w, 0.9 * h)
    _text_block(canvas, r, 0.55 * w, 0.15 * h, 0.95 * w, 0.5 * h, ink=tuple(float(v) for v in (255 - c2) * 0.8))


def _template_pouch(rng: np.random.Generator, size: float) -> _Template:
    w = max(4, int(size * rng.uniform(0.25, 0.5)))
    h = max(4, int(w * rng.uniform(0.5, 0.85)))
    # pillow outline: a superellipse with slightly wavy sides
    power = rng.uniform(3.0, 7.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = np.abs((xx + 0.5) / w * 2 - 1)
    v = np.abs((yy + 0.5) / h * 2 - 1)
    wave = 1.0 + 0.03 * np.sin(xx / max(w, 1) * rng.uniform(6, 14) + rng.uniform(0, 6.3))
    alpha = ((u**power + (v * wave) ** power) <= 1.0).astype(np.float32)
    tex_seed = int(rng.integers(2**62))

    def paint() -> np.ndarray:
        r = np.random.default_rng(tex_seed)
        metallic = r.random() < 0.35
        base = np.full(3, r.uniform(150, 200), np.float32) if metallic else _random_color(r, val=(0.4, 0.9))
        canvas = _fill(h, w, base)
        if r.random() < 0.7:
            c = _random_color(r)
            cv2.ellipse(canvas, (w // 2, h // 2), (max(1, int(w * r.uniform(0.15, 0.3))), max(1, int(h * r.uniform(0.15, 0.3)))), 0, 0, 360, c.tolist(), -1)
        _text_block(canvas, r, 0.15 * w, 0.6 * h, 0.85 * w, 0.9 * h, ink=(240, 240, 240) if base.mean() < 110 else (20, 20, 20))
        # crimped seals at both ends
        seal = max(1, int(0.06 * w))
        for x in range(0, seal, max(1, seal // 4)):
            canvas[:, x] *= 0.8
            canvas[:, w - 1 - x] *= 0.8
        wrinkles = _lowfreq(r, h, w, min(h, w) / 5)
        shade = 1.0 + (0.22 if metallic else 0.12) * wrinkles
        canvas *= shade[..., None]
        spec = _highlights(r, h, w, int(r.integers(3, 8)))
        canvas += (150.0 if metallic else 110.0) * spec[..., None]
        return canvas

    return _Template("pouch", alpha, paint)


def _template_bottle(rng: np.random.Generator, size: float) -> _Template:
    tex_seed = int(rng.integers(2**62))
    if rng.random() < 0.3:  # seen from above: disc with a cap
        d = max(6, int(size * rng.uniform(0.12, 0.2)))
        alpha = np.zeros((d, d), np.float32)
        cv2.circle(alpha, (d // 2, d // 2), d // 2, 1.0, -1)

        def paint_top() -> np.ndarray:
            r = np.random.default_rng(tex_seed)
            base = _random_color(r, val=(0.3, 0.95))
            canvas = _fill(d, d, base)
            yy, xx = np.mgrid[0:d, 0:d].astype(np.float32)
            rr = np.hypot(xx - d / 2, yy - d / 2) / (d / 2)
            canvas *= (1.05 - 0.35 * rr**2)[..., None]
            cap = _random_color(r)
            cv2.circle(canvas, (d // 2, d // 2), max(1, int(d * r.uniform(0.18, 0.3))), cap.tolist(), -1)
            canvas += 120.0 * _highlights(r, d, d, 2)[..., None]
            return canvas

        return _Template("bottle", alpha, paint_top)

    length = max(8, int(size * rng.uniform(0.25, 0.5)))
    diam = max(4, int(length * rng.uniform(0.22, 0.38)))
    neck = int(length * rng.uniform(0.12, 0.2))
    alpha = _rounded_rect_alpha(diam, length - neck, diam * 0.3)
    alpha = np.concatenate([np.zeros((diam, neck), np.float32), alpha], axis=1)
    nh = max(1, int(diam * rng.uniform(0.35, 0.55)))
    cv2.rectangle(alpha, (0, (diam - nh) // 2), (neck + 2, (diam + nh) // 2), 1.0, -1)

    def paint() -> np.ndarray:
        r = np.random.default_rng(tex_seed)
        base = _random_color(r, sat=(0.1, 0.9), val=(0.3, 0.95))
        canvas = _fill(diam, length, base)
        cap = _random_color(r)
        canvas[:, : neck + 1] = cap
        lx0, lx1 = int(length * r.uniform(0.3, 0.45)), int(length * r.uniform(0.75, 0.9))
        label = _random_color(r, val=(0.6, 1.0)) if r.random() < 0.7 else np.full(3, 240, np.float32)
        canvas[:, lx0:lx1] = label
        _text_block(canvas, r, lx0 + 2, 0.15 * diam, lx1 - 2, 0.85 * diam)
        y = (np.arange(diam, dtype=np.float32) + 0.5) / diam
        profile = 0.5 + 0.55 * np.sin(np.pi * y)
        canvas *= profile[:, None, None]
        stripe = np.exp(-(((y - r.uniform(0.22, 0.38)) / 0.06) ** 2))
        canvas += 110.0 * stripe[:, None, None]
        return canvas

    return _Template("bottle", alpha, paint)


def _template_book(rng: np.random.Generator, size: float) -> _Template:
    h = max(4, int(size * rng.uniform(0.25, 0.45)))
    w = max(4, int(h * rng.uniform(0.6, 0.8)))
    alpha = np.ones((h, w), np.float32)
    tex_seed = int(rng.integers(2**62))

    def paint() -> np.ndarray:
        r = np.random.default_rng(tex_seed)
        base = _random_color(r, val=(0.2, 0.9))
        canvas = _fill(h, w, base)
        # picture and title
        if r.random() < 0.7:
            px0, py0 = int(r.uniform(0.05, 0.2) * w), int(r.uniform(0.3, 0.45) * h)
            px1, py1 = int(r.uniform(0.8, 0.95) * w), int(r.uniform(0.75, 0.9) * h)
            pic = 128 + 80 * np.stack([_lowfreq(r, py1 - py0, px1 - px0, max(4, (px1 - px0) / 4)) for _ in range(3)], -1)
            canvas[py0:py1, px0:px1] = pic
        ink = (250.0, 250.0, 245.0) if base.mean() < 120 else (15.0, 15.0, 20.0)
        _text_block(canvas, r, 0.1 * w, 0.05 * h, 0.9 * w, 0.28 * h, ink=ink)
        spine = max(1, int(0.04 * w))
        canvas[:, :spine] *= 0.75
        shade = 1.0 + 0.04 * _lowfreq(r, h, w, max(h, w) / 2)
        canvas *= shade[..., None]
        if r.random() < 0.4:  # glossy cover
            canvas += 70.0 * _highlights(r, h, w, 1)[..., None]
        return canvas

    return _Template("book", alpha, paint)


def _template_deformable(rng: np.random.Generator, size: float) -> _Template:
    w = max(6, int(size * rng.uniform(0.25, 0.5)))
    h = max(6, int(w * rng.uniform(0.55, 1.0)))
    alpha = _blob_alpha(rng, h, w, rng.uniform(0.15, 0.4))
    tex_seed = int(rng.integers(2**62))

    def paint() -> np.ndarray:
        r = np.random.default_rng(tex_seed)
        base = _random_color(r, sat=(0.2, 0.9), val=(0.25, 0.95))
        canvas = _fill(h, w, base)
        pattern = r.choice(["solid", "stripes", "plaid"], p=[0.4, 0.35, 0.25])
        if pattern != "solid":
            other = _random_color(r)
            period = r.uniform(0.03, 0.1) * max(h, w) + 2
            ang = r.uniform(0, np.pi)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            s = (np.cos(ang) * xx + np.sin(ang) * yy) / period
            m = (s - np.floor(s)) < 0.4
            if pattern == "plaid":
                s2 = (-np.sin(ang) * xx + np.cos(ang) * yy) / period
                m ^= (s2 - np.floor(s2)) < 0.35
            canvas[m] = other
        folds = _lowfreq(r, h, w, min(h, w) / 4)
        canvas *= (1.0 + 0.18 * folds)[..., None]
        # knit/fabric grain
        canvas *= (1.0 + 0.04 * r.standard_normal((h, w), dtype=np.float32))[..., None]
        return canvas

    return _Template("deformable", alpha, paint)


def _template_thin(rng: np.random.Generator, size: float) -> _Template:
    tex_seed = int(rng.integers(2**62))
    if rng.random() < 0.5:  # cable: a curved thick line drawn directly in image orientation
        length = size * rng.uniform(0.35, 0.7)
        thick = max(2, int(round(size * rng.uniform(0.007, 0.025))))
        ang = rng.uniform(0, np.pi)
        p0 = np.array([0.0, 0.0])
        p2 = np.array([np.cos(ang), np.sin(ang)]) * length
        p1 = (p0 + p2) / 2 + np.array([-np.sin(ang), np.cos(ang)]) * length * rng.uniform(-0.4, 0.4)
        t = np.linspace(0, 1, 40)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        pts -= pts.min(0) - thick
        w = int(pts[:, 0].max() + thick + 1)
        h = int(pts[:, 1].max() + thick + 1)
        alpha = np.zeros((h, w), np.float32)
        ipts = np.round(pts * 4).astype(np.int32)
        cv2.polylines(alpha, [ipts], False, 1.0, thick, cv2.LINE_8, shift=2)

        def paint_cable() -> np.ndarray:
            r = np.random.default_rng(tex_seed)
            base = np.full(3, r.choice([25.0, 60.0, 225.0]), np.float32) if r.random() < 0.7 else _random_color(r)
            canvas = _fill(h, w, base * 0.8)
            core = np.zeros((h, w), np.float32)
            cv2.polylines(core, [ipts], False, 1.0, max(1, thick // 2), cv2.LINE_8, shift=2)
            canvas += (base * 0.35 + 30.0) * core[..., None]
            return canvas

        return _Template("thin", alpha, paint_cable, direct=True)

    length = max(8, int(size * rng.uniform(0.2, 0.4)))
    width = max(2, int(round(size * rng.uniform(0.015, 0.035))))
    alpha = _rounded_rect_alpha(width, length, width * 0.5)

    def paint_pen() -> np.ndarray:
        r = np.random.default_rng(tex_seed)
        base = _random_color(r, val=(0.2, 0.95))
        canvas = _fill(width, length, base)
        canvas[:, : int(length * r.uniform(0.15, 0.3))] = _random_color(r)
        y = (np.arange(width, dtype=np.float32) + 0.5) / width
        canvas *= (0.55 + 0.5 * np.sin(np.pi * y))[:, None, None]
        canvas += 90.0 * np.exp(-(((y - 0.3) / 0.12) ** 2))[:, None, None]
        return canvas

    return _Template("thin", alpha, paint_pen)


def _make_template(rng: np.random.Generator, kind: str, size: float) -> _Template:
    if kind == "box":
        return _template_box(rng, size)
    if kind == "twotone":
        return _template_box(rng, size, two_tone=True)
    if kind == "pouch":
        return _template_pouch(rng, size)
    if kind == "bottle":
        return _template_bottle(rng, size)
    if kind == "book":
        return _template_book(rng, size)
    if kind == "deformable":
        return _template_deformable(rng, size)
    if kind == "thin":
        return _template_thin(rng, size)
    raise ValueError(f"unknown item kind {kind!r}; expected one of {OBJECT_KINDS}")


@dataclass
class _Placed:
    """A template placed in the image: patch origin, shape mask, warp to the patch."""

    template: _Template
    x0: int
    y0: int
    mask: np.ndarray  # (h, w) bool, clipped to the tote opening
    matrix: np.ndarray | None  # (2, 3) canvas -> patch affine; None for direct templates
    group: int | None
    crop: tuple[int, int] = (0, 0)
    """(row, col) of this patch inside the unclipped warped patch."""
    shared: dict[str, Any] = field(default_factory=dict)
    """Shared by twins (same template, same warp): unclipped patch ``size`` and cached ``tex``."""

    def texture(self) -> np.ndarray:
        """(h, w, 3) uint8 RGB texture in patch coordinates (warped once, shared by twins)."""
        if "tex" not in self.shared:
            canvas = np.clip(self.template.paint(), 0, 255).astype(np.uint8)
            if self.matrix is None:
                tex = canvas
            else:
                h, w = self.shared["size"]
                tex = cv2.warpAffine(canvas, self.matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            self.shared["tex"] = tex
        tex = self.shared["tex"]
        oy, ox = self.crop
        return tex[oy : oy + self.mask.shape[0], ox : ox + self.mask.shape[1]]


def _warp_template(template: _Template, cx: float, cy: float, angle_deg: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Rotate the template about its centre and put the centre at (cx, cy).

    Returns (alpha mask (h, w) bool, canvas->patch matrix (2, 3), x0, y0) of the unclipped patch.
    """
    ch, cw = template.alpha.shape
    if template.direct:
        x0 = int(round(cx - cw / 2))
        y0 = int(round(cy - ch / 2))
        return template.alpha > 0.5, None, x0, y0
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    corners = np.array([[-cw / 2, -ch / 2], [cw / 2, -ch / 2], [cw / 2, ch / 2], [-cw / 2, ch / 2]])
    rot = corners @ np.array([[ca, sa], [-sa, ca]])
    x0 = int(math.floor(cx + rot[:, 0].min())) - 1
    y0 = int(math.floor(cy + rot[:, 1].min())) - 1
    x1 = int(math.ceil(cx + rot[:, 0].max())) + 1
    y1 = int(math.ceil(cy + rot[:, 1].max())) + 1
    # canvas point p -> R (p - c_canvas) + (cx - x0, cy - y0)
    m = np.array([[ca, -sa, 0.0], [sa, ca, 0.0]])
    m[:, 2] = np.array([cx - x0, cy - y0]) - m[:, :2] @ np.array([cw / 2, ch / 2])
    alpha = cv2.warpAffine(template.alpha, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return alpha > 0.5, m, x0, y0


# --------------------------------------------------------------------------- tote


@dataclass
class _Tote:
    color: str  # "yellow" | "blue"
    outline: np.ndarray  # (4, 2) float
    inner: np.ndarray  # (4, 2) inner edge of the rim
    floor: np.ndarray  # (4, 2)


def _make_tote(rng: np.random.Generator, width: int, height: int) -> _Tote:
    color = "yellow" if rng.random() < 0.5 else "blue"
    cx = width / 2 + rng.uniform(-0.025, 0.025) * width
    cy = height / 2 + rng.uniform(-0.025, 0.025) * height
    hw = rng.uniform(0.43, 0.475) * width
    hh = rng.uniform(0.43, 0.475) * height
    a = math.radians(rng.uniform(-2.0, 2.0))
    ca, sa = math.cos(a), math.sin(a)
    base = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
    base += rng.uniform(-0.008, 0.008, (4, 2)) * np.array([width, height])
    outline = base @ np.array([[ca, sa], [-sa, ca]]) + np.array([cx, cy])
    outline[:, 0] = np.clip(outline[:, 0], 1, width - 1)
    outline[:, 1] = np.clip(outline[:, 1], 1, height - 1)
    centre = outline.mean(0)
    rim = rng.uniform(0.025, 0.04) * min(width, height)
    # inset every corner along its diagonal so the rim is about ``rim`` px wide
    inner = np.empty_like(outline)
    for i in range(4):
        d = centre - outline[i]
        inner[i] = outline[i] + d / np.linalg.norm(d) * rim * math.sqrt(2)
    # perspective: the floor is a smaller quad, off-centre (walls of different widths)
    fcentre = centre + rng.uniform(-0.03, 0.03, 2) * np.array([width, height])
    scale = rng.uniform(0.8, 0.88)
    floor = fcentre + (inner - centre) * scale
    return _Tote(color, outline, inner, floor)


def _quad_point(quad: np.ndarray, u: float, v: float) -> np.ndarray:
    """Bilinear point of a quad (corners tl, tr, br, bl) at (u, v) in [0, 1]^2."""
    top = quad[0] + (quad[1] - quad[0]) * u
    bottom = quad[3] + (quad[2] - quad[3]) * u
    return top + (bottom - top) * v


def _fill_quad(img: np.ndarray, quad: np.ndarray, value: int) -> None:
    cv2.fillPoly(img, [np.round(quad * 16).astype(np.int32)], value, lineType=cv2.LINE_8, shift=4)


def _render_tote_and_background(rng: np.random.Generator, tote: _Tote, tote_mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: conveyor background, rim with lip, shaded ribbed walls, floor.

    Sharp structure comes from a region-code map coloured through a LUT; smooth lighting
    (vignette, wall depth, dirt) from a 1/8-resolution field; all full-frame work is in
    uint8 OpenCV calls.
    """
    height, width = tote_mask.shape
    s = min(width, height)
    # region codes: 0 background, 1 rim, 2..5 walls, 6 floor, 7..10 ribs on wall i, 11 rim lip
    region = np.zeros((height, width), np.uint8)
    _fill_quad(region, tote.outline, 1)
    for i in range(4):
        j = (i + 1) % 4
        wall = np.array([tote.inner[i], tote.inner[j], tote.floor[j], tote.floor[i]])
        _fill_quad(region, wall, 2 + i)
    n_ribs = int(rng.integers(6, 14))
    thick = max(1, int(0.004 * s))
    for i in range(4):
        j = (i + 1) % 4
        for t in np.linspace(0.08, 0.92, n_ribs):
            a = tote.inner[i] + (tote.inner[j] - tote.inner[i]) * t
            b = tote.floor[i] + (tote.floor[j] - tote.floor[i]) * t
            cv2.line(region, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), 7 + i, thick)
    _fill_quad(region, tote.floor, 6)
    cv2.polylines(region, [np.round(tote.inner * 16).astype(np.int32)], True, 11, max(1, int(0.003 * s)), cv2.LINE_8, shift=4)
    np.multiply(region, tote_mask.view(np.uint8), out=region)

    if tote.color == "yellow":
        base = np.array([rng.uniform(215, 240), rng.uniform(170, 200), rng.uniform(20, 60)], np.float32)
    else:
        base = np.array([rng.uniform(25, 50), rng.uniform(75, 105), rng.uniform(150, 185)], np.float32)
    light = rng.uniform(0, 2 * np.pi)
    lut = np.zeros((256, 3), np.float32)
    bg = rng.uniform(45, 95)
    lut[0] = np.array([bg, bg, bg * rng.uniform(0.95, 1.08)], np.float32)
    lut[1] = base * rng.uniform(1.02, 1.12)
    for i in range(4):  # wall normals point up, right, down, left in image terms
        facing = math.cos(light - (i * np.pi / 2 + np.pi / 2))
        lut[2 + i] = base * (0.78 + 0.14 * facing)
        lut[7 + i] = lut[2 + i] * 0.86
    lut[6] = base * rng.uniform(0.88, 0.96)
    lut[11] = lut[1] * 1.12
    lut_u8 = np.clip(lut, 0, 255).astype(np.uint8).reshape(256, 1, 3)
    img = cv2.LUT(cv2.merge([region, region, region]), lut_u8)  # (H, W, 3) uint8

    # smooth lighting at 1/8 resolution: vignette, darker towards the floor edge, dirt
    sh, sw = max(2, height // 8), max(2, width // 8)
    small_floor = np.zeros((sh, sw), np.uint8)
    _fill_quad(small_floor, tote.floor / 8.0, 1)
    depth = cv2.distanceTransform(1 - small_floor, cv2.DIST_L2, 3)
    wall_w = max(1.0, float(np.linalg.norm(tote.inner - tote.floor, axis=1).mean()) / 8.0)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    vign = 1.0 - 0.36 * ((xx / sw - 0.5) ** 2 + (yy / sh - 0.5) ** 2)
    shade = vign * (0.9 + 0.1 * np.clip(depth / wall_w, 0, 1)) * (1.0 + 0.05 * _lowfreq(rng, sh, sw, sw / 6))
    shade_u8 = np.clip(shade * 128.0, 0, 255).astype(np.uint8)
    shade_u8 = cv2.resize(shade_u8, (width, height), interpolation=cv2.INTER_LINEAR)
    # conveyor belt ridges outside the tote
    belt = (128.0 * (1.0 + 0.08 * np.sin(np.arange(height, dtype=np.float32) * (2 * np.pi / rng.uniform(8, 30))))).astype(np.uint8)
    outside = region == 0
    belt_full = np.broadcast_to(belt[:, None], (height, width))
    factor = np.where(outside, belt_full, np.uint8(128))
    shade_u8 = cv2.multiply(shade_u8, factor, scale=1.0 / 128)
    return cv2.multiply(img, cv2.merge([shade_u8, shade_u8, shade_u8]), scale=1.0 / 128)


# --------------------------------------------------------------------------- items


def _sample_count(rng: np.random.Generator) -> int:
    """Heavy-tailed objects-per-tote: mostly 5-15, sometimes 30-45, at least 3."""
    if rng.random() < 0.12:
        return int(rng.integers(28, 46))
    return int(np.clip(round(rng.lognormal(math.log(9.0), 0.42)), 3, 25))


def _place_items(rng: np.random.Generator, tote: _Tote, opening: np.ndarray, dense: bool = False) -> list[_Placed]:
    """Sample templates and positions, bottom of the pile first (``dense``: the dense-small scenario)."""
    height, width = opening.shape
    n = int(rng.integers(*DENSE_COUNT)) if dense else _sample_count(rng)
    fw = float(np.linalg.norm(tote.floor[1] - tote.floor[0]))
    fh = float(np.linalg.norm(tote.floor[3] - tote.floor[0]))
    size = min(fw, fh) * float(np.clip((14.0 / n) ** 0.4, 0.55, 1.3)) * 1.15
    if dense:
        size *= DENSE_SIZE
    tote_angle = math.degrees(math.atan2(tote.floor[1, 1] - tote.floor[0, 1], tote.floor[1, 0] - tote.floor[0, 0]))

    # twin groups: 2-4 identical items side by side, high in the pile
    groups: list[int] = []
    if rng.random() < 0.45:
        groups.append(int(rng.integers(2, 5)))
        if n > 25 and rng.random() < 0.5:
            groups.append(int(rng.integers(2, 4)))
    singles = max(1, n - sum(groups))
    slots: list[int | None] = [None] * singles  # None = single item, k = group index
    for g in range(len(groups)):
        slots.insert(int(rng.integers(len(slots) // 2, len(slots) + 1)), g)

    placed: list[_Placed] = []
    uv: list[tuple[float, float]] = []
    for slot in slots:
        if slot is None:
            kind = str(rng.choice(OBJECT_KINDS, p=_KIND_PROBS))
        else:
            kind = str(rng.choice(["box", "book", "bottle", "pouch", "twotone"], p=[0.35, 0.2, 0.2, 0.1, 0.15]))
        template = _make_template(rng, kind, size * (0.8 if slot is not None else 1.0))
        if slot is not None:  # twins: well inside the tote so the copies are not cut by the rim
            u, v = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)
        elif uv and rng.random() < 0.45:  # pile onto an earlier item
            u0, v0 = uv[int(rng.integers(len(uv)))]
            u, v = float(np.clip(u0 + rng.normal(0, 0.15), -0.05, 1.05)), float(np.clip(v0 + rng.normal(0, 0.15), -0.05, 1.05))
        else:
            u, v = rng.uniform(-0.05, 1.05), rng.uniform(-0.05, 1.05)
        uv.append((u, v))
        centre = _quad_point(tote.floor, u, v)
        if rng.random() < 0.45:
            angle = tote_angle + rng.choice([0.0, 90.0]) + rng.normal(0, 4)
        else:
            angle = rng.uniform(0, 180)
        copies = 1 if slot is None else groups[slot]
        group = None if slot is None else len(placed) + 1  # unique, deterministic id
        mask, matrix, x0, y0 = _warp_template(template, float(centre[0]), float(centre[1]), angle)
        offsets = [(0, 0)]
        if copies > 1:
            ch, cw = template.alpha.shape
            a = math.radians(angle)
            along = rng.random() < 0.3
            gap = int(rng.integers(0, 3))
            if along:
                step = (cw + gap) * np.array([math.cos(a), math.sin(a)])
            else:
                step = (ch + gap) * np.array([-math.sin(a), math.cos(a)])
            offsets = [(int(round(k * step[0])), int(round(k * step[1]))) for k in range(copies)]
            shift = np.mean(offsets, 0)  # centre the row on the sampled centre
            offsets = [(ox - int(round(shift[0])), oy - int(round(shift[1]))) for ox, oy in offsets]
        shared: dict[str, Any] = {"size": mask.shape}
        for ox, oy in offsets:
            px0, py0 = x0 + ox, y0 + oy
            cx0, cy0 = max(px0, 0), max(py0, 0)
            cx1, cy1 = min(px0 + mask.shape[1], width), min(py0 + mask.shape[0], height)
            if cx1 <= cx0 or cy1 <= cy0:
                continue
            m = mask[cy0 - py0 : cy1 - py0, cx0 - px0 : cx1 - px0] & opening[cy0:cy1, cx0:cx1]
            if not m.any():
                continue
            placed.append(_Placed(template, cx0, cy0, m, matrix, group if copies > 1 else None, (cy0 - py0, cx0 - px0), shared))
    return placed


def _shadow(img: np.ndarray, item: _Placed, offset: tuple[float, float], blur: float, strength: float) -> None:
    """Darken ``img`` under a blurred, shifted copy of the item's shape (in place)."""
    height, width = img.shape[:2]
    h, w = item.mask.shape
    pad = int(abs(offset[0]) + abs(offset[1]) + 3 * blur) + 2
    ex0, ey0 = max(item.x0 - pad, 0), max(item.y0 - pad, 0)
    ex1, ey1 = min(item.x0 + w + pad, width), min(item.y0 + h + pad, height)
    f = 4
    sw, sh = max(1, (ex1 - ex0) // f), max(1, (ey1 - ey0) // f)
    small = np.zeros((sh, sw), np.float32)
    mw, mh = max(1, w // f), max(1, h // f)
    msmall = cv2.resize(item.mask.astype(np.float32), (mw, mh), interpolation=cv2.INTER_AREA)
    sx = int(round((item.x0 - ex0 + offset[0]) / f))
    sy = int(round((item.y0 - ey0 + offset[1]) / f))
    xa, ya = max(sx, 0), max(sy, 0)
    xb, yb = min(sx + mw, sw), min(sy + mh, sh)
    if xb <= xa or yb <= ya:
        return
    small[ya:yb, xa:xb] = msmall[ya - sy : yb - sy, xa - sx : xb - sx]
    small = cv2.GaussianBlur(small, (0, 0), max(blur / f, 0.5))
    keep = np.clip((1.0 - strength * small) * 255.0, 0, 255).astype(np.uint8)
    keep = cv2.resize(keep, (ex1 - ex0, ey1 - ey0), interpolation=cv2.INTER_LINEAR)
    patch = img[ey0:ey1, ex0:ex1]
    cv2.multiply(patch, cv2.merge([keep, keep, keep]), dst=patch, scale=1.0 / 255)


# --------------------------------------------------------------------------- render


def _visible_items(items: list[_Placed], width: int, height: int) -> list[tuple[_Placed, np.ndarray, list[list[float]], float]]:
    """Decide visibility top of the pile first; returns (item, visible mask, polygons, fraction) bottom-up.

    Fragments under ``MIN_FRAGMENT_FRACTION`` of the image are removed from an item's
    region; items whose remaining visible fraction is under ``MIN_VISIBLE_FRACTION`` are
    dropped entirely. Removed pixels stay uncovered, so items below (or the tote) own them.
    """
    min_fragment = MIN_FRAGMENT_FRACTION * width * height
    covered = np.zeros((height, width), bool)
    kept: list[tuple[_Placed, np.ndarray, list[list[float]], float]] = []
    for item in reversed(items):
        h, w = item.mask.shape
        full_area = int(np.count_nonzero(item.mask))
        view = covered[item.y0 : item.y0 + h, item.x0 : item.x0 + w]
        vis = item.mask & ~view
        if full_area == 0 or np.count_nonzero(vis) < min_fragment:
            continue
        _, comp, stats, _ = cv2.connectedComponentsWithStats(vis.view(np.uint8), connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] < min_fragment
        small[0] = True  # background label
        if small[1:].any():
            vis = ~small[comp]
        vis_area = int(np.count_nonzero(vis))
        fraction = vis_area / full_area
        if vis_area == 0 or fraction < MIN_VISIBLE_FRACTION:
            continue
        polygons = mask_to_polygons(vis, item.x0, item.y0)
        view |= vis
        kept.append((item, vis, polygons, fraction))
    kept.reverse()
    return kept


def render_tote(seed: int | np.random.SeedSequence, width: int = 2448, height: int = 2048,
                scenario: str | None = None) -> SynthImage:
    """Render one synthetic ARMBench-like tote (``scenario``: None or one of :data:`SCENARIOS`).

    ``seed``: int >= 0 or a SeedSequence; the same seed and size give identical output.
    Returns a ``SynthImage`` whose Object polygons rasterize exactly (pycocotools) to
    ``label_map == label``; the tote's polygon is its outline.
    """
    width, height = _check_size(width, height)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer, np.random.SeedSequence)):
        raise ValueError(f"seed must be a non-negative int or a numpy SeedSequence, got {type(seed).__name__}")
    if isinstance(seed, (int, np.integer)) and seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)

    tote = _make_tote(rng, width, height)
    tote_poly = [round(float(v), 2) for v in tote.outline.ravel()]
    tote_mask = polygons_to_mask([tote_poly], height, width)
    opening = np.zeros((height, width), np.uint8)
    _fill_quad(opening, tote.inner, 1)
    opening = opening.view(bool) & tote_mask

    # a pile whose visible objects are too few (all hidden or cut by the rim) is re-drawn
    for _attempt in range(5):
        kept = _visible_items(_place_items(rng, tote, opening, dense=scenario == "dense-small"), width, height)
        if len(kept) >= MIN_OBJECTS:
            break

    label_map = tote_mask.astype(np.int32)
    instances = [SynthInstance(1, "Tote", "tote", [tote_poly], 1.0, None)]
    for k, (item, vis, polygons, fraction) in enumerate(kept, start=2):
        h, w = vis.shape
        np.copyto(label_map[item.y0 : item.y0 + h, item.x0 : item.x0 + w], np.int32(k), where=vis)
        instances.append(SynthInstance(k, "Object", item.template.kind, polygons, round(fraction, 4), item.group))

    # paint: tote, then every kept item bottom-up (shadow onto what is below, then itself)
    image = _render_tote_and_background(rng, tote, tote_mask)
    s = min(width, height)
    light = rng.uniform(0, 2 * np.pi)
    for item, vis, _, _ in kept:
        lift = rng.uniform(0.004, 0.012) * s
        _shadow(image, item, (lift * math.cos(light), lift * math.sin(light)), 0.008 * s, float(rng.uniform(0.25, 0.45)))
        h, w = vis.shape
        patch = image[item.y0 : item.y0 + h, item.x0 : item.x0 + w]
        np.copyto(patch, item.texture(), where=vis[..., None])

    _add_grain(rng, image)
    return SynthImage(image=image, label_map=label_map, instances=instances)


@functools.lru_cache(maxsize=1)
def _grain_tile() -> tuple[np.ndarray, np.ndarray]:
    """Fixed (509, 631) Gaussian sensor-noise tile split into positive/negative uint8 parts."""
    g = np.random.default_rng(20230316).standard_normal((509, 631)).astype(np.float32) * 2.5
    g = np.clip(np.round(g), -12, 12)
    return np.maximum(g, 0).astype(np.uint8), np.maximum(-g, 0).astype(np.uint8)


def _add_grain(rng: np.random.Generator, image: np.ndarray) -> None:
    """Add luminance sensor grain in place (a tiled noise field at a random offset)."""
    height, width = image.shape[:2]
    pos, neg = _grain_tile()
    th, tw = pos.shape
    oy, ox = int(rng.integers(th)), int(rng.integers(tw))
    reps = (-(-(height + oy) // th), -(-(width + ox) // tw))
    for part, op in ((pos, cv2.add), (neg, cv2.subtract)):
        field_ = np.tile(part, reps)[oy : oy + height, ox : ox + width]
        op(image, cv2.merge([field_, field_, field_]), dst=image)


def _check_size(width: Any, height: Any) -> tuple[int, int]:
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < MIN_SIZE:
            raise ValueError(f"{name} must be an int >= {MIN_SIZE} pixels, got {v!r}")
    return int(width), int(height)


# --------------------------------------------------------------------------- dataset


def image_ids(seed: int, count: int) -> list[str]:
    """``count`` unique ARMBench-like ids (10 uppercase alphanumerics), deterministic from ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1D5]))
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        chars = rng.integers(0, len(_ID_ALPHABET), (max(count - len(ids), 1), 10))
        for row in chars:
            s = "".join(_ID_ALPHABET[row])
            if s not in seen:
                seen.add(s)
                ids.append(s)
                if len(ids) == count:
                    break
    return ids


def _annotations_for(synth: SynthImage) -> list[dict[str, Any]]:
    """COCO annotation dicts (without ids) for one rendered tote."""
    height, width = synth.label_map.shape
    pixels = np.bincount(synth.label_map.ravel(), minlength=max(i.label for i in synth.instances) + 1)
    out = []
    for inst in synth.instances:
        if inst.category == "Tote":
            area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(inst.polygons, height, width))))
        else:
            area = float(pixels[inst.label])
        out.append(
            {
                "category_id": _CATEGORY_IDS[inst.category],
                "segmentation": inst.polygons,
                "bbox": _polygon_bbox(inst.polygons),
                "area": area,
                "iscrowd": 0,
                "attributes": {"kind": inst.kind, "visible_fraction": inst.visible_fraction, "group": inst.group},
            }
        )
    return out


def _scenario_images(counts: dict[str, int], seed: int, scenario: str | None,
                     fraction: float | dict[str, float]) -> set[int]:
    """Global image indices (train, then val, then test) rendered with ``scenario``."""
    if scenario is None:
        return set()
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {list(SCENARIOS)} or None, got {scenario!r}")
    fractions = fraction if isinstance(fraction, dict) else {split: fraction for split in SPLITS}
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"scenario_fraction names unknown splits {sorted(unknown)}; use {list(SPLITS)}")
    chosen: set[int] = set()
    start = 0
    for k, split in enumerate(SPLITS):
        f = float(fractions.get(split, 0.0))
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"scenario_fraction for {split} must be in [0, 1], got {f}")
        n = counts[split]
        pick = np.random.default_rng([int(seed), 0x5CE, k]).permutation(n)[: int(round(f * n))]
        chosen.update(start + int(i) for i in pick)
        start += n
    return chosen


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _render_job(job: tuple) -> tuple[int, list[dict[str, Any]]]:
    """Render image ``index``, write its JPEG, return its annotations."""
    index, seed_seq, image_id, image_dir, width, height, scenario = job
    synth = render_tote(seed_seq, width, height, scenario)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(synth.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for image {image_id}")
    atomic_write_bytes(Path(image_dir) / f"{image_id}.jpg", buf.tobytes())
    return index, _annotations_for(synth)


def _write_json_atomic(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, separators=(",", ":")))


def _read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == GENERATOR_NAME else None


def is_synthetic_dataset(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a dataset (possibly interrupted) written by ``generate_dataset``."""
    return _read_marker(Path(folder)) is not None


def generate_dataset(
    out_dir: str | os.PathLike,
    n_train: int,
    n_val: int,
    n_unlabeled: int,
    seed: int = 0,
    width: int = 2448,
    height: int = 2048,
    workers: int | None = None,
    progress: bool = True,
    scenario: str | None = None,
    scenario_fraction: float | dict[str, float] = 0.0,
) -> dict:
    """Write a synthetic dataset in the ARMBench mix-object-tote layout.

    ``scenario`` (one of :data:`SCENARIOS`) mixes a rare sub-population into the splits:
    ``scenario_fraction`` of each split's images (one float for all, or per split
    ``{"train": 0.0, "val": 0.5, "test": 0.2}``) are rendered that way; see :data:`SCENARIOS`.

    ``out_dir/images/<ID>.jpg`` plus COCO ``train.json``, ``val.json`` and ``test.json``
    (the "unlabeled" split, annotated like the real test.json). Image ``i`` (train, then
    val, then test) is rendered from ``SeedSequence(seed).spawn(...)[i]``, so the files are
    identical for any ``workers``. Files of the same name are overwritten; images that an
    earlier run wrote into the same folder and this run does not are removed (a hidden
    ``.armbench-synth.json`` marker lists them); nothing else is deleted. With
    ``workers > 1`` images are rendered in "spawn" worker processes: scripts must call
    this under ``if __name__ == "__main__":``.

    Returns a summary dict: ``out_dir``, ``seed``, ``width``, ``height``, ``workers``,
    ``splits`` ({split: {"images", "annotations"}} for train/val/test), ``images``,
    ``annotations``, ``instances_per_image`` (min/median/max, tote included; None when
    no images), ``seconds``, ``images_per_second``.
    """
    counts = {"train": n_train, "val": n_val, "test": n_unlabeled}
    scenario_images = _scenario_images(counts, seed, scenario, scenario_fraction)
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"image count for split {name!r} must be an int >= 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    width, height = _check_size(width, height)
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an int >= 1 or None, got {workers!r}")
    total = int(sum(counts.values()))
    start = time.perf_counter()

    out = Path(out_dir)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    ids = image_ids(seed, total)
    names = [f"{i}.jpg" for i in ids]
    # Images an earlier run of this generator wrote here and this run will not rewrite are
    # removed; files it did not write (listed in its marker) are never touched.
    previous = _read_marker(out)
    if previous is not None:
        keep = set(names)
        for name in previous.get("files", []):
            if isinstance(name, str) and name not in keep and Path(name).name == name:
                (image_dir / name).unlink(missing_ok=True)
    marker = {"generator": GENERATOR_NAME, "generator_version": GENERATOR_VERSION, "seed": int(seed),
              "width": width, "height": height, "splits": {k: int(v) for k, v in counts.items()},
              "complete": False, "files": names}
    _write_json_atomic(out / MARKER_FILE, marker)
    seeds = np.random.SeedSequence(int(seed)).spawn(total)
    jobs = [(i, seeds[i], ids[i], str(image_dir), width, height, scenario if i in scenario_images else None)
            for i in range(total)]

    results: list[list[dict[str, Any]] | None] = [None] * total
    n_workers = int(min(workers, max(total, 1)))
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="synth", unit="img")
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None
    try:
        if n_workers <= 1:
            for job in jobs:
                index, anns = _render_job(job)
                results[index] = anns
                if bar is not None:
                    bar.update(1)
        else:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(n_workers, initializer=_worker_init) as pool:
                for index, anns in pool.imap_unordered(_render_job, jobs, chunksize=1):
                    results[index] = anns
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    categories = [dict(c) for c in CATEGORIES]
    info_base = {
        "description": "ARMBench-like synthetic mix-object-tote dataset (not real ARMBench data)",
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
    }
    summary_splits = {}
    per_image: list[int] = []
    index = 0
    ann_id = 1
    for split in SPLITS:
        images, annotations = [], []
        for _ in range(counts[split]):
            images.append({"id": index + 1, "file_name": f"{ids[index]}.jpg", "width": width, "height": height})
            if index in scenario_images:
                images[-1]["scenario"] = scenario
            anns = results[index] or []
            per_image.append(len(anns))
            for ann in anns:
                annotations.append({"id": ann_id, "image_id": index + 1, **ann})
                ann_id += 1
            index += 1
        payload = {"info": {**info_base, "split": split}, "images": images, "annotations": annotations, "categories": categories}
        _write_json_atomic(out / f"{split}.json", payload)
        summary_splits[split] = {"images": len(images), "annotations": len(annotations)}

    seconds = time.perf_counter() - start
    summary = {
        "out_dir": str(out),
        "seed": int(seed),
        "width": width,
        "height": height,
        "workers": n_workers,
        "splits": summary_splits,
        "images": total,
        "annotations": ann_id - 1,
        "instances_per_image": {
            "min": int(min(per_image)) if per_image else None,
            "median": float(np.median(per_image)) if per_image else None,
            "max": int(max(per_image)) if per_image else None,
        },
        "seconds": round(seconds, 3),
        "images_per_second": round(total / seconds, 3) if seconds > 0 else None,
    }
    _write_json_atomic(out / MARKER_FILE, {**marker, "complete": True})
    logger.info("synthetic dataset: %d images, %d annotations in %.1f s -> %s", total, ann_id - 1, seconds, out)
    return summary

"""ARMBench (mix-object-tote layout) COCO loading: splits, images and ground truth.

Layout expected under ``root``::

    images/*.jpg   train.json   val.json   test.json

* Categories are mapped to model class indices by *name* (``config.class_names`` order);
  COCO category ids are never used arithmetically.
* Splits: train <- train.json, val <- val.json, unlabeled <- test.json (labels ignored).
  Images are ranked by a seeded hash of their sample id and the first ``n`` are taken,
  so growing ``n`` keeps every earlier pick and the returned order is a stable prefix.
* Ground truth at model resolution is rasterized directly from letterboxed polygons
  (every polygon of an instance); RLE masks (compressed, uncompressed, iscrowd) are
  decoded at the original size and resized with the letterbox.
* Image paths are confined to ``root/images`` (symlinks resolved). An entry whose
  ``file_name`` escapes it (``..``, an absolute path elsewhere, a symlink out of the folder,
  a NUL byte) is skipped while the split is listed, with one warning naming it and the fix;
  it never becomes a sample and takes no part in sample-id assignment.
* Sample ids are image file stems. When several (safe) entries of a split share a stem
  (``a/img1.jpg`` and ``b/img1.jpg``), the one with the lowest image id keeps the plain
  stem and each other one gets ``<stem>~<h>``, ``<h>`` the first 8 hex digits of the
  BLAKE2b hash of its normalized relative path (``b/img1.jpg``; of path + image id when the
  same path is listed twice); a hash that still clashes is lengthened. Ids thus depend on
  the split file's set of entries only, not on their order nor on the selected split
  size, hold only the stem's characters plus ``~`` and hex digits, and are at most 256
  characters (a longer stem is cut and always suffixed).
* Degenerate polygons (fewer than 3 distinct points, zero area, non-finite or
  non-numeric coordinates) are never rasterized: they are ``degenerate_polygon``
  problems (``check_annotation``, ``armbench info``) and dropped with a warning; an
  annotation whose every polygon is degenerate is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from armbench_segmentation.codecs import category_ids_by_name
from armbench_segmentation.config import DataConfig
from armbench_segmentation.data.image import decode_image_scaled, reduced_size
from armbench_segmentation.data.letterbox import Letterbox
from armbench_segmentation.errors import DatasetError, SampleError
from armbench_segmentation.splits import LABELED_SPLITS, SPLITS, UNLABELED
from armbench_segmentation.structures import Instances

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train.json", "val": "val.json", UNLABELED: "test.json"}
IMAGES_DIR = "images"
MAX_LISTED_ENTRIES = 20  # unsafe image entries warned one by one; the rest are counted


@dataclass(frozen=True)
class Sample:
    """One image of a split. ``sample_id`` is unique in its split: the image file stem, with a
    ``~<hash>`` suffix for all but the first of several images sharing a stem (module docstring)."""

    sample_id: str
    split: str
    image_id: int
    file_name: str
    width: int
    height: int

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width


@dataclass(frozen=True, eq=False)
class LoadedSample:
    """A sample ready for the model.

    Attributes:
        sample: the Sample.
        image: (S, S, 3) uint8 RGB letterboxed model input.
        letterbox: the original -> model transform.
        gt: model-frame ground truth with masks (S, S); None for the unlabeled split.
    """

    sample: Sample
    image: np.ndarray
    letterbox: Letterbox
    gt: Instances | None
    #: the raw COCO annotations checked while loading (``ArmbenchDataset.annotations``) and,
    #: aligned with them, each one's ``check_annotation`` problems: ``metadata`` reuses them
    #: instead of validating every polygon a second time. None when not checked (unlabeled).
    annotations: tuple[dict, ...] | None = None
    annotation_problems: tuple[tuple[tuple[str, str], ...], ...] | None = None

    def checked_problems(self, index: int, ann: dict) -> tuple[tuple[str, str], ...] | None:
        """The loader's problems of ``ann`` when it is the very annotation it checked at
        ``index`` (same object), else None (the caller checks it itself)."""
        if self.annotations is None or self.annotation_problems is None or not 0 <= index < len(self.annotations):
            return None
        return self.annotation_problems[index] if self.annotations[index] is ann else None


def dataset_help(root: Path) -> str:
    """How to get a usable dataset: appended to every 'dataset missing' error."""
    return (
        f"Put the ARMBench segmentation 'mix-object-tote' folder (holding images/, train.json, val.json "
        f"and test.json) at {root}, or point to it with --dataset DIR or the ARMBENCH_DATASET environment "
        f"variable (ARMBench is available on request from its authors, see arXiv 2303.16382). "
        f"To run without it, generate the synthetic ARMBench-like dataset with 'armbench synth --out DIR' "
        f"and pass '--dataset DIR', or use 'armbench analyze --synthetic'."
    )


def sample_id_from_file_name(file_name: str) -> str:
    """Image file stem, independent of the OS path separator used in the JSON."""
    return PurePosixPath(str(file_name).replace("\\", "/")).stem


MAX_SAMPLE_ID_LENGTH = 256  # Tensorleap's limit for string sample ids
SAMPLE_ID_SUFFIX_SEP = "~"
_SUFFIX_HEX = (8, 16, 32, 64, 128)  # suffix lengths tried in turn when a suffixed id still clashes


def file_name_key(file_name: str) -> str:
    """The normalized (posix, ``.``/``..`` folded) form of a file name: what the suffix hashes."""
    return posixpath.normpath(str(file_name).replace("\\", "/"))


def _suffixed(stem: str, digest: str, n_hex: int) -> str:
    suffix = SAMPLE_ID_SUFFIX_SEP + digest[:n_hex]
    return stem[: MAX_SAMPLE_ID_LENGTH - len(suffix)] + suffix


def assign_sample_ids(entries: list[tuple[int, str]]) -> list[str]:
    """Unique sample ids for ``(image_id, file_name)`` entries of one split (aligned with them).

    The rule (module docstring): the stem; among entries sharing a stem the lowest
    ``(image_id, normalized path)`` keeps it, the others get ``<stem>~<8 hex of
    blake2b(path)>`` (path + NUL + image id when that path was already taken in the group),
    lengthened to 16, 32, ... hex digits only if the id is still taken. Independent of the
    order of ``entries``; every id has at most ``MAX_SAMPLE_ID_LENGTH`` characters.
    """
    keys = [file_name_key(name) for _, name in entries]
    groups: dict[str, list[int]] = {}
    for i, (_, name) in enumerate(entries):
        groups.setdefault(sample_id_from_file_name(name), []).append(i)
    out: list[str] = [""] * len(entries)
    used: set[str] = set()
    later: list[tuple[str, int, str, str, int]] = []  # (stem, image_id, key, hashed text, index)
    for stem, members in groups.items():
        members.sort(key=lambda i: (entries[i][0], keys[i]))
        taken: set[str] = set()
        for rank, i in enumerate(members):
            if rank == 0 and len(stem) <= MAX_SAMPLE_ID_LENGTH:
                out[i] = stem
                used.add(stem)
            else:  # a later one, or a stem too long to be an id: cut and suffixed
                hashed = keys[i] if keys[i] not in taken else f"{keys[i]}\x00{entries[i][0]}"
                later.append((stem, entries[i][0], keys[i], hashed, i))
            taken.add(keys[i])
    for stem, _, _, hashed, i in sorted(later):
        digest = hashlib.blake2b(hashed.encode("utf-8", "surrogatepass"), digest_size=64).hexdigest()
        for n_hex in _SUFFIX_HEX:
            candidate = _suffixed(stem, digest, n_hex)
            if candidate not in used:
                break
        else:  # pragma: no cover - a 512-bit hash collision (entries must have distinct image ids)
            raise DatasetError(f"cannot derive a unique sample id for {entries[i][1]!r} (image id {entries[i][0]})")
        out[i] = candidate
        used.add(candidate)
    return out


def _rank_key(seed: int, sample_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}\x00{sample_id}".encode("utf-8"), digest_size=8).digest()


def _rle_decode(rle):
    """pycocotools decode without its numpy-2 ``__array__(copy=...)`` DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*__array__.*")
        return mask_utils.decode(rle)


def _rle_counts(counts: bytes | str) -> list[int]:
    """Run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``: 5 bits per
    character, a continuation bit, sign extension, counts after the second delta-coded
    against the count two places before)."""
    data = counts.encode("ascii") if isinstance(counts, str) else counts
    out: list[int] = []
    p, n = 0, len(data)
    while p < n:
        x = k = 0
        while True:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            p += 1
            k += 1
            if not c & 0x20:
                if c & 0x10:
                    x |= -1 << (5 * k)
                break
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _decode_masks(rles: list[dict], h: int, w: int) -> np.ndarray:
    """Compressed RLEs of an (h, w) frame -> (N, h, w) C-contiguous bool masks, the pixels
    ``pycocotools.mask.decode`` gives.

    RLE runs are column-major: only the columns between an instance's first and last
    foreground pixel are filled (one vectorized repeat) and transposed into place, instead
    of decoding and transposing the whole frame for every instance.
    """
    masks = np.zeros((len(rles), h, w), np.uint8)
    for i, rle in enumerate(rles):
        counts = np.asarray(_rle_counts(rle["counts"]), np.int64)  # (m,) runs: 0s, 1s, 0s, ...
        ones = np.flatnonzero(counts[1::2]) * 2 + 1  # non-empty runs of 1s
        if not len(ones):
            continue
        ends = np.cumsum(counts)  # (m,) column-major end of each run
        j0, j1 = int(ones[0]), int(ones[-1])
        start, stop = int(ends[j0] - counts[j0]), int(ends[j1])  # first 1 .. last 1 + 1
        c0, c1 = start // h, (stop - 1) // h + 1  # the columns holding them
        block = np.zeros((c1 - c0) * h, np.uint8)  # (c1 - c0) columns of h pixels
        block[start - c0 * h: stop - c0 * h] = np.repeat(np.arange(j0, j1 + 1, dtype=np.int64) % 2,
                                                         counts[j0: j1 + 1]).astype(np.uint8)
        masks[i, :, c0:c1] = cv2.transpose(block.reshape(c1 - c0, h))  # (h, c1 - c0)
    return masks.view(bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_PLAIN_NUMBER_TYPES = frozenset((int, float))  # what json.load gives for numbers


def _polygon_array(poly: Any) -> np.ndarray | None:
    """A flat ``[x1, y1, x2, y2, ...]`` polygon -> (2K,) float64 when it has >= 3 points, an
    even length and only finite int/float coordinates (not bool), else None.

    Vectorized: one C-level pass over the element types, one conversion, one isfinite.
    Elements of other types (numpy scalars, int/float subclasses) take the per-element
    ``_is_number`` path, so the accepted set is exactly ``all(_is_number(v) for v in poly)``.
    """
    if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
        return None
    if set(map(type, poly)) <= _PLAIN_NUMBER_TYPES:
        try:
            arr = np.array(poly, dtype=np.float64)  # (2K,) exactly float(v) for each v
        except OverflowError:  # an int beyond the float range
            return None
        return arr if np.isfinite(arr).all() else None
    try:
        if not all(_is_number(v) for v in poly):
            return None
    except OverflowError:
        return None
    return np.array([float(v) for v in poly], dtype=np.float64)


def _polygon_arrays(segmentation: Any) -> list[np.ndarray | None]:
    """Per polygon of a COCO list segmentation: ``_polygon_array`` (None = unusable)."""
    if not isinstance(segmentation, (list, tuple)):
        return []
    return [_polygon_array(poly) for poly in segmentation]


_AREA_ROUNDING = 32 * float(np.finfo(np.float64).eps)  # per point: shoelace rounding allowance


def _degenerate_reason(arr: np.ndarray) -> str | None:
    """Why a parsed (2K,) polygon (K >= 3, finite) encloses no area, or None when it does.

    Zero area covers fewer than 3 distinct points and collinear points (pycocotools
    rasterizes both to no pixel). The shoelace sum is taken relative to the first point
    and counts as zero when it is within its own float rounding bound (``K * 32 eps`` times
    the sum of the magnitudes of its terms), so collinear points with rounding count as
    zero too while any real sliver is kept.
    """
    pts = arr.reshape(-1, 2)
    rel = pts - pts[0]  # (K, 2)
    x, y = rel[:, 0], rel[:, 1]
    with np.errstate(over="ignore", invalid="ignore"):
        a, b = x * np.roll(y, -1), y * np.roll(x, -1)  # (K,) shoelace terms
        area = abs(float(np.sum(a - b)))
        bound = float(np.sum(np.abs(a) + np.abs(b)))
    if not area <= _AREA_ROUNDING * len(pts) * bound:  # NaN/inf (absurd coordinates): not provably zero
        return None
    distinct = len(np.unique(pts, axis=0))
    return f"only {distinct} distinct points" if distinct < 3 else "zero area: collinear points or a self-cancelling outline"


def _usable_polygons(segmentation: Any) -> list[np.ndarray]:
    """The polygons of a list segmentation that can be rasterized: parsed (>= 3 points,
    even length, finite numbers) and not degenerate (zero area). (2K,) float64 each."""
    return [arr for arr in _polygon_arrays(segmentation) if arr is not None and _degenerate_reason(arr) is None]


def valid_polygons(segmentation: Any) -> list[list[float]]:
    """Polygons of a COCO list segmentation with >= 3 finite points enclosing a non-zero
    area (others dropped, as the loader drops them).

    Degenerate parts must be removed before pycocotools, which takes a 4-number list
    for a *box*.
    """
    return [arr.tolist() for arr in _usable_polygons(segmentation)]


def rle_from_segmentation(segmentation: dict, sample_id: str = "") -> dict:
    """A COCO RLE dict (compressed string/bytes or uncompressed counts list) -> compressed RLE."""
    size = segmentation.get("size")
    counts = segmentation.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise ValueError(f"RLE 'size' must be [height, width], got {size!r}")
    h, w = size
    if isinstance(counts, list):
        if sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, expected {h}*{w}={h * w}")
        return mask_utils.frPyObjects(segmentation, h, w)
    if isinstance(counts, str):
        return {"size": [h, w], "counts": counts.encode("ascii")}
    if isinstance(counts, bytes):
        return {"size": [h, w], "counts": counts}
    raise ValueError(f"RLE 'counts' must be a list or a string, got {type(counts).__name__}")


def _bbox_xyxy(ann: dict) -> np.ndarray | None:
    bbox = ann.get("bbox")
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox) and bbox[2] > 0 and bbox[3] > 0:
        x, y, w, h = (float(v) for v in bbox)
        return np.array([x, y, x + w, y + h], dtype=np.float64)
    return None


# ---------------------------------------------------------------------- annotation checks
BOUNDS_TOLERANCE = 1.0  # pixels a box/polygon may stick out of the image before it is a problem
_DEGENERATE = "zero area, fewer than 3 distinct points or non-finite/non-numeric coordinates"
PROBLEM_KINDS = {
    "degenerate_polygon": "polygon with < 3 points, odd/non-numeric coordinates or zero area (not rasterized)",
    "no_geometry": "annotation without a usable polygon or RLE",
    "invalid_rle": "RLE with a bad size/counts or a size different from the image",
    "invalid_bbox": "bbox missing, non-numeric or with non-positive width/height",
    "out_of_bounds": "bbox or polygon extends outside the image",
}


def polygon_area(poly: list[float]) -> float:
    """Shoelace area of a flat ``[x1, y1, x2, y2, ...]`` polygon."""
    pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def check_annotation(ann: dict, width: int | None, height: int | None) -> tuple[list[tuple[str, str]], float | None]:
    """Problems of one COCO annotation (kinds in ``PROBLEM_KINDS``) and its area in
    original pixels when measurable (sum of valid polygon areas, or RLE pixel count).

    Cheap: no rasterization of polygons; each polygon is validated with one vectorized pass.
    """
    _, problems, area = _inspect_annotation(ann, width, height)
    return problems, area


def _inspect_annotation(ann: dict, width: int | None, height: int | None
                        ) -> tuple[list[np.ndarray] | None, list[tuple[str, str]], float | None]:
    """``check_annotation`` plus the usable polygons of a list segmentation.

    Returns:
        (polygons, problems, area): ``polygons`` is, for a list segmentation, every polygon
        ``valid_polygons`` keeps (degenerate ones are problems, never rasterized), as (2K,)
        float64 arrays, and None for an RLE or a missing segmentation. Every polygon is
        parsed once for both uses.
    """
    problems: list[tuple[str, str]] = []
    seg = ann.get("segmentation")
    area: float | None = None
    polygons: list[np.ndarray] | None = None
    has_size = _is_number(width) and _is_number(height)
    outside: list[str] = []
    if isinstance(seg, dict):
        try:
            rle = rle_from_segmentation(seg)
            if has_size and list(rle["size"]) != [height, width]:
                raise ValueError(f"RLE size {list(rle['size'])} != image [{height}, {width}]")
            area = float(mask_utils.area(rle))
        except (ValueError, TypeError) as exc:
            problems.append(("invalid_rle", str(exc)))
    elif isinstance(seg, list) and seg:
        total, good = 0.0, 0
        polygons = []
        for i, (poly, arr) in enumerate(zip(seg, _polygon_arrays(seg))):
            reason = ("fewer than 3 points, an odd count or non-numeric/non-finite coordinates" if arr is None
                      else _degenerate_reason(arr))
            poly_area = polygon_area(arr) if arr is not None else 0.0
            if reason is not None:
                n_pts = len(poly) // 2 if isinstance(poly, (list, tuple)) else 0
                problems.append(("degenerate_polygon", f"polygon {i}: {n_pts} points, area {poly_area:g} ({reason})"))
                continue
            polygons.append(arr)
            good += 1
            total += poly_area
            if has_size:
                if (arr.min() < -BOUNDS_TOLERANCE or arr[0::2].max() > width + BOUNDS_TOLERANCE
                        or arr[1::2].max() > height + BOUNDS_TOLERANCE):
                    outside.append(f"polygon {i}")
        if good:
            area = total
        else:
            problems.append(("no_geometry", "no valid polygon"))
    else:
        polygons = _usable_polygons(seg)  # e.g. a tuple: usable, but flagged
        problems.append(("no_geometry", f"segmentation is {type(seg).__name__}"))
    bbox = ann.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox) and bbox[2] > 0 and bbox[3] > 0):
        problems.append(("invalid_bbox", f"bbox {bbox!r}"))
    elif has_size:
        x, y, w, h = bbox
        if x < -BOUNDS_TOLERANCE or y < -BOUNDS_TOLERANCE or x + w > width + BOUNDS_TOLERANCE or y + h > height + BOUNDS_TOLERANCE:
            outside.append(f"bbox {list(bbox)}")
    if outside:  # one problem per annotation
        problems.append(("out_of_bounds", f"{' and '.join(outside)} outside the {width}x{height} image"))
    return polygons, problems, area


class ArmbenchDataset:
    """An ARMBench-layout folder and the splits configured in ``config``."""

    def __init__(self, root: Path, config: DataConfig):
        root = Path(root).expanduser()
        self.config = config
        if root.is_dir() and not (root / IMAGES_DIR).is_dir() and (root / "mix-object-tote" / IMAGES_DIR).is_dir():
            log.info("using %s (the mix-object-tote folder inside %s)", root / "mix-object-tote", root)
            root = root / "mix-object-tote"
        if not root.is_dir():
            raise DatasetError(f"dataset folder {root} does not exist. " + dataset_help(root))
        missing = [name for name in (IMAGES_DIR, *SPLIT_FILES.values()) if not (root / name).exists()]
        if missing:
            raise DatasetError(f"dataset folder {root} is incomplete: missing {', '.join(missing)}. " + dataset_help(root))
        if not (root / IMAGES_DIR).is_dir():
            raise DatasetError(f"{root / IMAGES_DIR} is not a folder. " + dataset_help(root))
        self.root = root
        self._images_dir = (root / IMAGES_DIR).resolve()
        self._coco: dict[str, COCO] = {}
        self._samples: dict[str, list[Sample]] = {}
        self._category_maps: dict[str, dict[int, int]] = {}
        self._plain_files: frozenset[str] | None = None

    def __repr__(self) -> str:  # pragma: no cover
        return f"ArmbenchDataset({str(self.root)!r})"

    # ------------------------------------------------------------------ COCO files
    @staticmethod
    def _check_split(split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")

    def split_path(self, split: str) -> Path:
        self._check_split(split)
        return self.root / SPLIT_FILES[split]

    def coco(self, split: str) -> COCO:
        """The split's COCO file, loaded once (pycocotools index, no stdout chatter)."""
        self._check_split(split)
        if split not in self._coco:
            self._coco[split] = load_coco(self.split_path(split), require_annotations=split in LABELED_SPLITS)
        return self._coco[split]

    def category_map(self, split: str) -> dict[int, int]:
        """COCO category id -> model class index, matched by name.

        Raises:
            DatasetError: a configured class name has no category in the file (the
                message lists the names that exist). Not raised for the unlabeled split,
                whose labels are ignored.
        """
        if split not in self._category_maps:
            self._category_maps[split] = category_map_by_name(
                self.coco(split).dataset.get("categories", []), self.config.class_names,
                source=str(self.split_path(split)), strict=split in LABELED_SPLITS,
            )
        return self._category_maps[split]

    # ------------------------------------------------------------------ samples
    def samples(self, split: str) -> list[Sample]:
        """The split's selected samples, ranked by a seeded hash of the sample id.

        Deterministic for a given seed; ``samples`` with a larger size starts with the
        samples of a smaller size (stable prefix).
        """
        self._check_split(split)
        if split not in self._samples:
            self._samples[split] = self._select(split)
        return list(self._samples[split])

    def all_samples(self, split: str) -> list[Sample]:
        """Every valid image of the split file, in ranked order (ignores the size)."""
        return self._ranked(split)

    def _ranked(self, split: str) -> list[Sample]:
        """Every usable image entry of the split as a Sample, ranked by the seeded hash.

        Entries are checked in this order: a valid id/file_name/width/height, a file name
        confined to the images folder (unsafe ones are skipped, each with a warning, before
        any id is assigned), one entry per image id; then ``assign_sample_ids`` names them.
        """
        coco = self.coco(split)
        images = coco.dataset.get("images", [])
        source = self.split_path(split)
        entries: dict[int, tuple[str, int, int]] = {}  # image id -> (file_name, width, height)
        bad: list[str] = []
        unsafe: list[str] = []
        repeated: list[str] = []
        for img in images:
            if not isinstance(img, dict):
                bad.append(repr(img)[:40])
                continue
            image_id, file_name = img.get("id"), img.get("file_name")
            width, height = img.get("width"), img.get("height")
            if not (isinstance(image_id, int) and not isinstance(image_id, bool) and isinstance(file_name, str)
                    and file_name and isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
                bad.append(f"id={image_id!r} file_name={file_name!r}")
                continue
            try:
                self._confined_path(file_name, listing=True)
            except ValueError as exc:
                unsafe.append(f"image id {image_id} file_name {file_name!r}: {exc}")
                continue
            if image_id in entries:  # keep one entry per id, independent of the file order
                kept = min(entries[image_id], (file_name, width, height), key=lambda e: file_name_key(e[0]))
                other = file_name if kept[0] != file_name else entries[image_id][0]
                repeated.append(f"id {image_id}: kept {kept[0]!r}, skipped {other!r}")
                entries[image_id] = kept
                continue
            entries[image_id] = (file_name, width, height)
        for line in unsafe[:MAX_LISTED_ENTRIES]:
            log.warning("%s: skipped %s; refusing to read it. Fix: put the image under %s and give its "
                        "file_name relative to that folder", source.name, line, self._images_dir)
        if len(unsafe) > MAX_LISTED_ENTRIES:
            log.warning("%s: skipped %d more image entries pointing outside %s (%d in all)",
                        source.name, len(unsafe) - MAX_LISTED_ENTRIES, self._images_dir, len(unsafe))
        if repeated:
            log.warning("%s: %d image ids are listed more than once; one entry kept per id (the first file "
                        "name in sorted order): %s. Fix: give every image entry its own id",
                        source.name, len(repeated), "; ".join(repeated[:5]))
        if bad:
            log.warning("%s: skipped %d of %d image entries lacking a valid id/file_name/width/height, e.g. %s",
                        source, len(bad), len(images), ", ".join(bad[:5]))
        pairs = [(image_id, name) for image_id, (name, _, _) in entries.items()]
        ids = assign_sample_ids(pairs)
        samples = [Sample(sid, split, image_id, name, width, height)
                   for sid, (image_id, (name, width, height)) in zip(ids, entries.items())]
        renamed = [f"{s.file_name!r} -> {s.sample_id!r}" for s in samples if s.sample_id != sample_id_from_file_name(s.file_name)]
        if renamed:
            log.info("%s: %d images share a file stem with another image; their sample ids carry a '%s' suffix "
                     "(e.g. %s)", source.name, len(renamed), SAMPLE_ID_SUFFIX_SEP, ", ".join(sorted(renamed)[:3]))
        seed = int(self.config.seed)
        samples.sort(key=lambda s: (_rank_key(seed, s.sample_id), s.sample_id))
        return samples

    def _select(self, split: str) -> list[Sample]:
        ranked = self._ranked(split)
        size = self.config.split_size(split)
        if size is None:
            return ranked
        if size > len(ranked):
            log.info("%s: %d images requested for split %r, the file has %d; using all of them",
                        self.split_path(split).name, size, split, len(ranked))
        return ranked[:size]

    def max_instances_per_image(self, splits: tuple[str, ...] | list[str] = LABELED_SPLITS) -> int:
        """The largest number of annotations of a configured class on one selected image of
        ``splits`` (the samples ``samples(split)`` returns), from the COCO JSON only (no image
        is decoded, no mask rasterized).

        An upper bound of the instances the loader keeps: annotations it drops later (no
        usable geometry, invalid RLE) are counted. The unlabeled split counts 0 (its labels
        are ignored). 0 when no selected image has an annotation.

        Raises:
            ValueError: an unknown split name.
        """
        if isinstance(splits, str):
            splits = (splits,)
        for split in splits:
            self._check_split(split)
        most = 0
        for split in splits:
            if split not in LABELED_SPLITS:
                continue
            categories = self.category_map(split)
            index = self.coco(split).imgToAnns
            for sample in self.samples(split):
                n = sum(1 for ann in index.get(sample.image_id, []) if ann.get("category_id") in categories)
                most = max(most, n)
        return most

    # ------------------------------------------------------------------ per-sample access
    def annotations(self, sample: Sample) -> list[dict]:
        """Raw COCO annotation dicts of the sample, in file order (all polygons kept).

        Empty for the unlabeled split (its labels are ignored).
        """
        if sample.split not in LABELED_SPLITS:
            return []
        return list(self.coco(sample.split).imgToAnns.get(sample.image_id, []))

    def _confined_path(self, file_name: str, listing: bool = False) -> Path:
        """A COCO ``file_name`` -> the resolved file (symlinks followed) inside ``root/images``.

        Relative names are taken from the images folder (or from the dataset root when they
        start with ``images/`` and only exist there). ``listing``: a name that was a regular
        file right in the folder when it was first scanned is accepted without ``resolve``
        (used only to list a split; every read resolves again).

        Raises:
            ValueError: why the name is refused (NUL byte, or it resolves outside the folder).
        """
        if "\x00" in file_name:
            raise ValueError("the name contains a NUL byte")
        if listing and file_name in self._plain_image_files():  # fast path: a real file right in the folder
            return self._images_dir / file_name
        rel = file_name.replace("\\", "/")
        candidate = (self._images_dir / rel).resolve()
        if not candidate.exists() and rel.startswith(IMAGES_DIR + "/"):  # file_name given relative to root
            alt = (self.root / rel).resolve()
            if alt.exists():
                candidate = alt
        if not candidate.is_relative_to(self._images_dir):
            raise ValueError(f"it resolves to {candidate}, outside the dataset images folder {self._images_dir}")
        return candidate

    def _plain_image_files(self) -> frozenset[str]:
        """Names of the regular files (not symlinks) directly in the images folder, listed once:
        such a name needs no ``resolve`` to be known confined (the folder itself is resolved)."""
        if self._plain_files is None:
            try:
                with os.scandir(self._images_dir) as it:
                    self._plain_files = frozenset(e.name for e in it if e.is_file(follow_symlinks=False))
            except OSError:
                self._plain_files = frozenset()
        return self._plain_files

    def image_path(self, sample: Sample) -> Path:
        """The image file, resolved (symlinks followed) and confined to ``root/images``.

        Listing a split already skips unsafe entries; this check is repeated on every read
        (a Sample built elsewhere, or a symlink changed since).

        Raises:
            SampleError: the file name points outside the images folder.
        """
        try:
            return self._confined_path(sample.file_name)
        except ValueError as exc:
            raise SampleError(sample.sample_id, f"file_name {sample.file_name!r}: {exc}; refusing to read it") from None

    def load_image(self, sample: Sample, target_size: int | None = None) -> np.ndarray:
        """RGB uint8 image; with ``target_size`` (and ``config.reduced_decode``) possibly a
        1/2, 1/4 or 1/8 decode whose long side is still >= target_size.

        Raises:
            SampleError: missing/corrupt file, path outside the dataset, or a decoded size
                that differs from the COCO width/height.
        """
        path = self.image_path(sample)
        decoded = decode_image_scaled(path, target_size if self.config.reduced_decode else None, sample.sample_id)
        if decoded.full_hw != sample.hw or decoded.image.shape[:2] != reduced_size(sample.hw, decoded.factor):
            got_h, got_w = decoded.full_hw
            raise SampleError(
                sample.sample_id,
                f"image {path.name} is {got_w}x{got_h} (width x height, EXIF orientation applied) but "
                f"{SPLIT_FILES[sample.split]} says {sample.width}x{sample.height}; fix the COCO entry or the file",
            )
        return decoded.image

    def ground_truth(self, sample: Sample, letterbox: Letterbox | None = None) -> Instances:
        """Ground truth of a labeled sample.

        Args:
            letterbox: when given, boxes and masks are in its model frame
                ``(out_h, out_w)``; otherwise in the original frame (full-size masks:
                ``N * H * W`` bytes).
        Returns:
            Instances with masks, ``ids`` = COCO annotation ids, ``extras["iscrowd"]``
            (N,) bool. Annotations are in file order.
        Raises:
            ValueError: for the unlabeled split (its labels are ignored).
        """
        if sample.split not in LABELED_SPLITS:
            raise ValueError(f"split {sample.split!r} is unlabeled: its labels are ignored, there is no ground truth")
        return annotations_to_instances(
            self.annotations(sample), self.category_map(sample.split), sample, letterbox, self.config.max_instances,
        )

    def load(self, sample: Sample) -> LoadedSample:
        """Decode (reduced when possible) + letterbox + ground truth at model resolution.

        Each annotation is validated once (``check_annotation``): its problems travel with
        the LoadedSample (for ``metadata``) and its parsed polygons are rasterized.
        """
        letterbox = Letterbox.compute(sample.hw, self.config.image_size)
        image = letterbox.apply_image(self.load_image(sample, self.config.image_size))
        if sample.split not in LABELED_SPLITS:
            return LoadedSample(sample, image, letterbox, None)
        annotations = self.annotations(sample)
        inspected = [_inspect_annotation(ann, sample.width, sample.height) for ann in annotations]
        gt = _annotations_to_instances(annotations, self.category_map(sample.split), sample, letterbox,
                                       self.config.max_instances, [polys for polys, _, _ in inspected])
        return LoadedSample(sample, image, letterbox, gt, tuple(annotations),
                            tuple(tuple(problems) for _, problems, _ in inspected))


# ---------------------------------------------------------------------- module functions
def load_coco(path: Path, require_annotations: bool = True) -> COCO:
    """Read and index a COCO JSON with pycocotools.

    Raises:
        DatasetError: unreadable/invalid JSON or a missing ``images``/``categories`` list.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise DatasetError(f"COCO file {path} not found. " + dataset_help(path.parent)) from None
    except OSError as exc:
        raise DatasetError(f"cannot read COCO file {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"COCO file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"COCO file {path} must hold a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "categories") + (("annotations",) if require_annotations else ()):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"COCO file {path} has no '{key}' list (keys present: {sorted(data)})")
    data.setdefault("annotations", [])
    data["annotations"] = [a for a in data["annotations"] if isinstance(a, dict) and "image_id" in a]
    for i, ann in enumerate(data["annotations"]):
        ann.setdefault("id", -(i + 1))  # pycocotools indexes by id; keep id-less annotations addressable
    data["images"] = [img for img in data["images"] if isinstance(img, dict) and "id" in img]
    data["categories"] = [c for c in data["categories"] if isinstance(c, dict) and "id" in c]
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def category_map_by_name(categories: list[dict], class_names: tuple[str, ...] | list[str], source: str = "COCO file",
                         strict: bool = True) -> dict[int, int]:
    """COCO category id -> index in ``class_names``, matched by name (``codecs.category_ids_by_name``:
    exact, then case-insensitive). Categories with other names are left out.

    Raises:
        DatasetError: (strict) a class name has no category; the message lists those present.
            Not strict: a warning names the missing classes.
    """
    by_class, missing = category_ids_by_name(categories, class_names)
    out = {cid: index for index, ids in by_class.items() for cid in ids}
    if missing and strict:
        present = ", ".join(f"{c.get('name')!r} (id {c['id']})" for c in categories) or "none"
        raise DatasetError(
            f"{source} has no category named {', '.join(map(repr, missing))}; its categories are: {present}. "
            f"Set data.class_names to names that exist (in model class order)."
        )
    if missing:
        log.warning("%s has no category named %s; its annotations of those classes are not used",
                    source, ", ".join(map(repr, missing)))
    return out


def _empty_gt(frame: tuple[int, int]) -> Instances:
    empty = Instances.empty(frame)
    return Instances(empty.boxes, empty.class_ids, frame, masks=empty.masks, extras={"iscrowd": np.zeros(0, bool)})


def annotations_to_instances(
    annotations: list[dict],
    category_map: dict[int, int],
    sample: Sample,
    letterbox: Letterbox | None = None,
    max_instances: int | None = None,
) -> Instances:
    """COCO annotations of one image -> Instances in the model frame (letterbox given) or
    the original frame.

    Polygons are transformed first and rasterized directly in the target frame (every
    polygon of an instance, merged); RLE is decoded at the original size and resized.
    An instance whose mask vanishes in the target frame (sub-pixel object) keeps the
    pixel at its box centre, so every GT instance has a non-empty mask.
    """
    return _annotations_to_instances(annotations, category_map, sample, letterbox, max_instances, None)


def _annotations_to_instances(
    annotations: list[dict],
    category_map: dict[int, int],
    sample: Sample,
    letterbox: Letterbox | None,
    max_instances: int | None,
    polygons: list[list[np.ndarray] | None] | None,
) -> Instances:
    """``annotations_to_instances`` with, optionally, each annotation's usable polygons
    already parsed (``_inspect_annotation``; aligned with ``annotations``)."""
    frame = (letterbox.out_h, letterbox.out_w) if letterbox is not None else sample.hw
    fh, fw = frame
    rles: list[dict] = []
    boxes: list[np.ndarray] = []
    class_ids: list[int] = []
    ids: list[int] = []
    crowd: list[bool] = []
    unknown: dict[Any, int] = {}
    no_geometry: list[Any] = []
    all_degenerate: list[Any] = []  # every polygon degenerate: the annotation is dropped
    partly_degenerate: dict[Any, int] = {}  # annotation id -> degenerate polygons dropped (others kept)
    bad_rle: list[str] = []
    for k, ann in enumerate(annotations):
        cls = category_map.get(ann.get("category_id"))  # type: ignore[arg-type]
        if cls is None:
            unknown[ann.get("category_id")] = unknown.get(ann.get("category_id"), 0) + 1
            continue
        seg = ann.get("segmentation")
        box = _bbox_xyxy(ann)
        if isinstance(seg, dict):
            try:
                rle = rle_from_segmentation(seg, sample.sample_id)
            except ValueError as exc:
                bad_rle.append(f"{ann.get('id')}: {exc}")
                continue
            if tuple(rle["size"]) != sample.hw:
                bad_rle.append(f"{ann.get('id')}: RLE size {list(rle['size'])} != image {list(sample.hw)}")
                continue
            if box is None:
                x, y, w, h = mask_utils.toBbox(rle).tolist()
                box = np.array([x, y, x + w, y + h]) if w > 0 and h > 0 else None
            if letterbox is not None:
                full = _rle_decode(rle).astype(bool)  # (H, W) original size
                small = letterbox.masks_to_model(full[None])[0]  # (S, S)
                rle = mask_utils.encode(np.asfortranarray(small.view(np.uint8)))
        else:
            parsed = polygons[k] if polygons is not None else None
            polys = parsed if parsed is not None else _usable_polygons(seg)  # (2K,) each, degenerate ones dropped
            n_given = len(seg) if isinstance(seg, (list, tuple)) else 0
            if not polys:
                (all_degenerate if n_given else no_geometry).append(ann.get("id"))
                continue
            if len(polys) < n_given:
                partly_degenerate[ann.get("id")] = n_given - len(polys)
            if box is None:
                pts = np.concatenate([p.reshape(-1, 2) for p in polys])
                box = np.concatenate([pts.min(axis=0), pts.max(axis=0)])
            if letterbox is not None:
                polys = [letterbox.polygon_to_model(p) for p in polys]
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, fh, fw))  # float64 arrays, as frPoly converts lists
        if box is None:
            no_geometry.append(ann.get("id"))
            continue
        box = np.clip(box, 0, [sample.width, sample.height, sample.width, sample.height])
        rles.append(rle)
        boxes.append(box)
        class_ids.append(cls)
        ids.append(int(ann.get("id", -1)))
        crowd.append(bool(ann.get("iscrowd", 0)))
    if unknown:
        log.warning("sample %s: skipped %d annotations whose category id is not one of the classes %s: %s",
                    sample.sample_id, sum(unknown.values()), list(category_map), unknown)
    if all_degenerate:
        log.warning("sample %s: skipped %d annotations whose every polygon is degenerate (%s): ids %s; fix or "
                    "remove their segmentation ('armbench info' lists them under degenerate_polygon)",
                    sample.sample_id, len(all_degenerate), _DEGENERATE, all_degenerate[:20])
    if partly_degenerate:
        log.warning("sample %s: dropped %d degenerate polygons (%s) from %d annotations, their other polygons "
                    "kept: {annotation id: polygons dropped} %s", sample.sample_id, sum(partly_degenerate.values()),
                    _DEGENERATE, len(partly_degenerate), dict(list(partly_degenerate.items())[:20]))
    if no_geometry:
        log.warning("sample %s: skipped %d annotations without a usable polygon (>= 3 points) or box: ids %s",
                    sample.sample_id, len(no_geometry), no_geometry[:20])
    if bad_rle:
        log.warning("sample %s: skipped %d annotations with invalid RLE: %s", sample.sample_id, len(bad_rle), bad_rle[:5])
    if not rles:
        return _empty_gt(frame)
    if max_instances is not None and len(rles) > max_instances:
        log.warning("sample %s: %d ground-truth instances, keeping the first %d (data.max_instances)",
                    sample.sample_id, len(rles), max_instances)
        rles, boxes, class_ids, ids, crowd = (x[:max_instances] for x in (rles, boxes, class_ids, ids, crowd))
        if not rles:
            return _empty_gt(frame)
    masks = _decode_masks(rles, fh, fw)  # (N, fh, fw)
    boxes_arr = np.stack(boxes)  # (N, 4) original frame
    if letterbox is not None:
        boxes_arr = letterbox.boxes_to_model(boxes_arr)
    boxes_arr = boxes_arr.astype(np.float32)
    empty = ~masks.reshape(len(masks), -1).any(axis=1)
    for i in np.flatnonzero(empty):  # sub-pixel instance: keep its centre pixel
        cx = int(np.clip((boxes_arr[i, 0] + boxes_arr[i, 2]) / 2, 0, fw - 1))
        cy = int(np.clip((boxes_arr[i, 1] + boxes_arr[i, 3]) / 2, 0, fh - 1))
        masks[i, cy, cx] = True
    return Instances(
        boxes=boxes_arr,
        class_ids=np.asarray(class_ids, np.int64),
        image_size=frame,
        masks=masks,
        ids=np.asarray(ids, np.int64),
        extras={"iscrowd": np.asarray(crowd, bool)},
    )

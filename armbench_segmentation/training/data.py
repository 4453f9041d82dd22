"""Training data: COCO images letterboxed once into memory, YOLOv5-style augmentation, batches.

Several COCO files can be given (e.g. the base train set and the merged annotated picks);
each file's images are read from its ``images/`` folder beside it (the mix-object-tote
layout) unless an images folder is given. Categories are mapped to model classes by *name*
(``codecs.category_ids_by_name``); every polygon of an instance is rasterized, RLE masks are
turned into contours. Images are decoded at reduced size (``cv2.IMREAD_REDUCED_COLOR_2/4/8``)
and letterboxed with the project's ``Letterbox`` (gray 114). A ``file_name`` that escapes
its images folder, or an image that cannot be decoded, is skipped with one warning naming it.

Augmentation: random scale/translate (affine), left-right and up-down flips, HSV jitter;
optionally a random ``crop`` window is cut from the canvas (objects keep their pixel scale
while each step gets cheaper); a share ``full_prob`` of the batches shows whole canvases at
``full_size`` so that the tote (which spans the image) is seen whole.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from armbench_segmentation.analysis.store import sha256_file
from armbench_segmentation.codecs import category_ids_by_name
from armbench_segmentation.data.letterbox import Letterbox
from armbench_segmentation.errors import DatasetError

LOG = logging.getLogger(__name__)
PAD = 114


def reduced_flag(h: int, w: int, size: int) -> tuple[int, int]:
    """Largest JPEG reduction (1, 2, 4, 8) whose long side still covers ``size``."""
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if max(h, w) / factor >= size:
            return flag, factor
    return cv2.IMREAD_COLOR, 1


def ann_polygons(coco, ann: dict, h: int, w: int) -> list[np.ndarray]:
    """All polygons of an annotation as (K, 2) float arrays in original pixels (RLE -> contours)."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        return [np.asarray(p, np.float32).reshape(-1, 2) for p in seg if len(p) >= 6]
    mask = coco.annToMask(ann)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2).astype(np.float32) for c in contours if len(c) >= 3]


@dataclass(frozen=True)
class CocoSource:
    """One training COCO file and the folder its ``file_name`` entries are relative to."""

    coco_json: Path
    images_dir: Path

    @classmethod
    def of(cls, coco_json: str | Path, images_dir: str | Path | None = None) -> "CocoSource":
        p = Path(coco_json).expanduser()
        return cls(p, Path(images_dir).expanduser() if images_dir else p.parent / "images")


def _load_coco(path: Path):
    import contextlib
    import io

    from pycocotools.coco import COCO

    if not path.is_file():
        raise DatasetError(f"COCO file {path} does not exist; give the train.json of a dataset or a file "
                           "`armbench merge-labels` wrote")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(str(path))
    except Exception as exc:  # json / key errors of a malformed file
        raise DatasetError(f"COCO file {path} cannot be read ({type(exc).__name__}: {exc}); it must be COCO "
                           "instances JSON (images, annotations, categories)") from None


class CachedSet:
    """Images letterboxed to ``size`` (uint8 RGB) and instance polygons in that frame, in memory.

    ``images[i]`` (size, size, 3) uint8; ``instances[i]`` list of (class index, [(K, 2) float32 polygons]);
    ``names[i]`` "<coco file>:<file_name>"; ``skipped`` the entries left out, with the reason.
    """

    def __init__(self, sources: Sequence[CocoSource], class_names: Sequence[str], size: int, limit: int | None = None,
                 workers: int = 2):
        t0 = time.perf_counter()
        self.size = size
        self.class_names = tuple(class_names)
        self.skipped: list[str] = []
        jobs = []
        self.files = []
        for src in sources:
            coco = _load_coco(src.coco_json)
            by_class, missing = category_ids_by_name(coco.loadCats(coco.getCatIds()), self.class_names)
            if len(missing) == len(self.class_names):
                raise DatasetError(f"COCO file {src.coco_json} has no category named like the model's classes "
                                   f"{list(self.class_names)}; rename its categories or fine-tune another model")
            if missing:
                LOG.warning("%s has no category %s: no instances of it are trained from this file", src.coco_json, missing)
            cat_map = {cid: cls for cls, ids in by_class.items() for cid in ids}
            root = src.images_dir.resolve()
            self.files.append({"coco": str(src.coco_json), "images_dir": str(src.images_dir),
                               "sha256": sha256_file(src.coco_json), "images": len(coco.getImgIds())})
            for info in coco.loadImgs(sorted(coco.getImgIds())):
                jobs.append((src, coco, cat_map, root, info))
        if limit is not None and limit < len(jobs):
            LOG.warning("using the first %d of %d training images", limit, len(jobs))
            jobs = jobs[:limit]

        def load(job):
            src, coco, cat_map, root, info = job
            name = f"{src.coco_json.name}:{info.get('file_name')}"
            file_name = str(info.get("file_name", ""))
            path = None if "\x00" in file_name or not file_name else (root / file_name).resolve()
            if path is None or not path.is_relative_to(root):
                return name, None, f"{name}: file_name escapes {root}; fix the entry"
            h, w = int(info["height"]), int(info["width"])
            flag, _ = reduced_flag(h, w, size)
            img = cv2.imread(str(path), flag)
            if img is None:
                return name, None, f"{name}: {path} is missing or not a decodable image; fix or remove the entry"
            lb = Letterbox.compute((h, w), size)
            img = cv2.resize(img, (lb.new_w, lb.new_h), interpolation=cv2.INTER_AREA)
            canvas = np.full((size, size, 3), PAD, np.uint8)
            canvas[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = img[..., ::-1]  # BGR -> RGB
            instances = []
            scale = np.array([lb.scale_x, lb.scale_y], np.float32)
            shift = np.array([lb.pad_x, lb.pad_y], np.float32)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=info["id"], iscrowd=None)):
                cls = cat_map.get(int(ann["category_id"]))
                if cls is None or ann.get("iscrowd", 0):
                    continue
                polys = [p * scale + shift for p in ann_polygons(coco, ann, h, w)]
                if polys:
                    instances.append((cls, polys))
            return name, (canvas, instances), None

        with ThreadPoolExecutor(max(1, workers)) as ex:
            items = list(ex.map(load, jobs))
        for _, _, problem in items:
            if problem:
                LOG.warning("skipped training image %s", problem)
                self.skipped.append(problem)
        kept = [(n, it) for n, it, _ in items if it is not None]
        self.names = [n for n, _ in kept]
        self.images = [it[0] for _, it in kept]
        self.instances = [it[1] for _, it in kept]
        per_cls = np.bincount([c for inst in self.instances for c, _ in inst], minlength=len(self.class_names))
        self.instances_per_class = {n: int(k) for n, k in zip(self.class_names, per_cls)}
        LOG.info("cached %d training images at %d in %.1f s (%.0f MB): %s", len(self.images), size,
                 time.perf_counter() - t0, sum(i.nbytes for i in self.images) / 1e6, self.instances_per_class)

    def __len__(self) -> int:
        return len(self.images)

def augment_hsv(img: np.ndarray, rng: np.random.Generator, hgain: float, sgain: float, vgain: float) -> np.ndarray:
    """YOLOv5's HSV jitter (RGB uint8 in, RGB uint8 out)."""
    if not (hgain or sgain or vgain):
        return img
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def make_sample(ds: CachedSet, idx: int, out: int, hyp: dict, rng: np.random.Generator, augment: bool,
                full_view: bool = True):
    """One training sample: (out,out,3) uint8 RGB, (n,5) [cls,cx,cy,w,h] normalized, (n,out/4,out/4) uint8 masks.

    ``full_view``: the whole canvas scaled to ``out`` (x scale jitter, translate); otherwise (only
    when out < canvas) a random out x out window of the canvas scaled by the jitter only.
    """
    S = ds.size
    img, instances = ds.images[idx], ds.instances[idx]
    # Affine canvas(S) -> output(out): scale about the centre, translate, crop, flip.
    s = rng.uniform(1 - hyp["scale"], 1 + hyp["scale"]) if augment else 1.0
    full_view = full_view or out >= S
    if not full_view:  # random window of the (scaled) canvas; objects keep their canvas pixel scale
        span = S * s - out
        ox = rng.uniform(min(0, span), max(0, span)) if augment else span / 2
        oy = rng.uniform(min(0, span), max(0, span)) if augment else span / 2
        M = np.array([[s, 0, -ox], [0, s, -oy]], np.float64)
    else:
        k = s * out / S
        t = hyp["translate"] * out
        tx = rng.uniform(-t, t) if augment else 0.0
        ty = rng.uniform(-t, t) if augment else 0.0
        M = np.array([[k, 0, out / 2 - k * S / 2 + tx], [0, k, out / 2 - k * S / 2 + ty]], np.float64)
    if augment and rng.random() < hyp["fliplr"]:
        M = np.array([[-1, 0, out], [0, 1, 0]], np.float64) @ np.vstack([M, [0, 0, 1]])
    if augment and rng.random() < hyp["flipud"]:
        M = np.array([[1, 0, 0], [0, -1, out]], np.float64) @ np.vstack([M, [0, 0, 1]])
    is_identity = np.allclose(M, [[1, 0, 0], [0, 1, 0]]) and out == S
    im = img.copy() if is_identity else cv2.warpAffine(img, M, (out, out), flags=cv2.INTER_LINEAR, borderValue=(PAD, PAD, PAD))
    if augment:
        im = augment_hsv(im, rng, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])

    A, b = M[:, :2], M[:, 2]
    labels, masks = [], []
    ms = out // 4
    min_px = 4  # an instance needs at least this many visible pixels at the output size
    for cls, polys in instances:
        tp = [p.astype(np.float64) @ A.T + b for p in polys]
        allp = np.concatenate(tp)
        x0, y0 = np.clip(allp.min(0), 0, out)
        x1, y1 = np.clip(allp.max(0), 0, out)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        full = np.zeros((out, out), np.uint8)
        cv2.fillPoly(full, [np.round(p * 8).astype(np.int32) for p in tp], 1, lineType=cv2.LINE_8, shift=3)
        ys, xs = np.nonzero(full.any(1))[0], np.nonzero(full.any(0))[0]
        if len(xs) == 0 or full.sum() < min_px:
            continue
        bx0, bx1, by0, by1 = xs[0], xs[-1] + 1, ys[0], ys[-1] + 1
        small = cv2.resize(full, (ms, ms), interpolation=cv2.INTER_LINEAR)  # as yolov5's polygon2mask
        labels.append([cls, (bx0 + bx1) / 2 / out, (by0 + by1) / 2 / out, (bx1 - bx0) / out, (by1 - by0) / out])
        masks.append(small)
    lab = np.asarray(labels, np.float32).reshape(-1, 5)
    msk = np.asarray(masks, np.uint8).reshape(-1, ms, ms)
    return im, lab, msk


def collate(samples):
    imgs = np.stack([s[0] for s in samples])  # (B, H, W, 3)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous().float().div_(255)
    targets, masks = [], []
    for i, (_, lab, msk) in enumerate(samples):
        if len(lab):
            targets.append(np.concatenate([np.full((len(lab), 1), i, np.float32), lab], 1))
            masks.append(msk)
    ms = samples[0][0].shape[0] // 4
    t = torch.from_numpy(np.concatenate(targets)) if targets else torch.zeros((0, 6))
    m = torch.from_numpy(np.concatenate(masks)).float() if masks else torch.zeros((0, ms, ms))
    return x, t, m


class BatchIterator:
    """Shuffled batches built in one background thread (cv2 releases the GIL)."""

    def __init__(self, ds: CachedSet, batch: int, out: int, hyp: dict, seed: int, epoch: int, augment: bool = True,
                 full_size: int = 0, full_prob: float = 0.0):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(ds)) if augment else np.arange(len(ds))
        nb = len(ds) // batch if augment else math.ceil(len(ds) / batch)  # drop_last when training
        self.batches = [order[i * batch : (i + 1) * batch] for i in range(nb)]
        self.ds, self.out, self.hyp, self.augment = ds, out, hyp, augment
        self.seeds = rng.integers(0, 2**63, size=len(self.batches))
        # per batch: a random window of size `out`, or (with full_prob) the whole canvas at full_size
        self.full = (rng.random(len(self.batches)) < full_prob) if (full_size and out < ds.size) else np.zeros(len(self.batches), bool)
        self.full_size = full_size
        self.pool = ThreadPoolExecutor(1)

    def __len__(self) -> int:
        return len(self.batches)

    def _build(self, k):
        rng = np.random.default_rng(int(self.seeds[k]))
        full = bool(self.full[k])
        out = self.full_size if full else self.out
        return collate([make_sample(self.ds, int(i), out, self.hyp, rng, self.augment, full_view=full) for i in self.batches[k]])

    def __iter__(self):
        if not self.batches:
            return
        fut = self.pool.submit(self._build, 0)
        for k in range(len(self.batches)):
            res = fut.result()
            if k + 1 < len(self.batches):
                fut = self.pool.submit(self._build, k + 1)
            yield res
        self.pool.shutdown()

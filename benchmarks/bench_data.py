"""Data-layer cost per image: our path vs the naive full-resolution path.

Writes N synthetic-like 2448x2048 JPEGs (random shapes + noise, quality 90) with ~15
polygon annotations each into a temporary ARMBench-layout folder, then times per image:

  (a) ours:  ArmbenchDataset.load: 1/2 reduced JPEG decode + letterbox to 640 + GT masks
             rasterized directly at 640 from letterboxed polygons
  (b) naive: full-size decode + cv2.resize (letterbox) to 640 + full-size GT masks
             (pycocotools at 2448x2048) + per-mask resize to 640

Usage:  .venv/bin/python benchmarks/bench_data.py [--n 20] [--repeat 3] [--polygons 15]
Goal:   (a) at least 3x faster than (b).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from armbench_segmentation.config import DataConfig
from armbench_segmentation.data.coco import ArmbenchDataset
from armbench_segmentation.data.letterbox import Letterbox

W, H = 2448, 2048


def random_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float, n: int = 24) -> np.ndarray:
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.6, 1.0, n)
    pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    return np.clip(pts, 0, [W - 1, H - 1])


def write_dataset(root: Path, n: int, n_polygons: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    ann_id = 1
    for i in range(n):
        img = np.empty((H, W, 3), np.uint8)
        img[:] = (40, 170, 220) if i % 2 else (200, 90, 40)  # BGR: yellow-ish / blue-ish tote
        for _ in range(n_polygons):
            pts = random_polygon(rng, rng.uniform(200, W - 200), rng.uniform(200, H - 200), rng.uniform(80, 350))
            cv2.fillPoly(img, [pts.astype(np.int32)], tuple(int(c) for c in rng.integers(0, 255, 3)))
            x1, y1 = pts.min(0)
            x2, y2 = pts.max(0)
            annotations.append({"id": ann_id, "image_id": i + 1, "category_id": 2, "iscrowd": 0,
                                "segmentation": [pts.reshape(-1).round(1).tolist()],
                                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
            ann_id += 1
        noise = rng.integers(-12, 13, (H, W, 1), dtype=np.int16)
        img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        name = f"BENCH{i:05d}.jpg"
        (root / "images" / name).write_bytes(buf.tobytes())
        images.append({"id": i + 1, "file_name": name, "width": W, "height": H})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "Tote"}, {"id": 2, "name": "Object"}]}
    for split_file in ("train.json", "val.json", "test.json"):
        (root / split_file).write_text(json.dumps(coco))


def naive_load(path: Path, anns: list[dict], size: int = 640):
    """The legacy-style path: full decode, resize, full-resolution masks resized one by one."""
    with open(path, "rb") as fh:
        img = cv2.imdecode(np.frombuffer(fh.read(), np.uint8), cv2.IMREAD_COLOR)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    lb = Letterbox.compute((h, w), size)
    small = cv2.resize(img, (lb.new_w, lb.new_h), interpolation=cv2.INTER_AREA)
    model_img = np.full((size, size, 3), 114, np.uint8)
    model_img[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = small
    masks = np.zeros((len(anns), size, size), bool)
    for i, ann in enumerate(anns):
        full = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w)))  # (H, W)
        m = cv2.resize(full, (lb.new_w, lb.new_h), interpolation=cv2.INTER_NEAREST)
        masks[i, lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = m > 0
    boxes = lb.boxes_to_model(np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                         a["bbox"][1] + a["bbox"][3]] for a in anns]))
    return model_img, masks, boxes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="number of 2448x2048 images (default 20)")
    parser.add_argument("--polygons", type=int, default=15, help="polygon annotations per image (default 15)")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the images; the median pass is reported")
    args = parser.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # pycocotools vs numpy 2 (naive path)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        root = Path(tmp) / "armbench"
        t0 = time.perf_counter()
        write_dataset(root, args.n, args.polygons)
        print(f"wrote {args.n} {W}x{H} JPEGs with {args.polygons} polygons each in {time.perf_counter() - t0:.1f} s")
        ds = ArmbenchDataset(root, DataConfig(train_size=None, image_size=640, reduced_decode=True))
        samples = ds.samples("train")
        anns = {s.sample_id: ds.annotations(s) for s in samples}
        paths = {s.sample_id: ds.image_path(s) for s in samples}
        ours_passes, naive_passes = [], []
        for _ in range(args.repeat):  # interleave passes so load on the machine hits both alike
            t = time.perf_counter()
            for s in samples:
                loaded = ds.load(s)
            ours_passes.append((time.perf_counter() - t) / len(samples))
            t = time.perf_counter()
            for s in samples:
                img, masks, boxes = naive_load(paths[s.sample_id], anns[s.sample_id])
            naive_passes.append((time.perf_counter() - t) / len(samples))
        # same outputs (sanity): model input and masks agree
        img, masks, _ = naive_load(paths[samples[0].sample_id], anns[samples[0].sample_id])
        loaded = ds.load(samples[0])
        img_diff = float(np.abs(img.astype(int) - loaded.image).mean())
        iou = float((masks & loaded.gt.masks).sum() / max(1, (masks | loaded.gt.masks).sum()))
    ours, naive = statistics.median(ours_passes), statistics.median(naive_passes)
    print(f"(a) ours  (reduced decode + letterbox + GT masks at 640):      {ours * 1000:7.1f} ms/image")
    print(f"(b) naive (full decode + resize + full-size masks + resize):   {naive * 1000:7.1f} ms/image")
    print(f"ratio (b)/(a): {naive / ours:.2f}x   [goal >= 3x]")
    print(f"agreement on image 0: mean |pixel diff| {img_diff:.2f}, mask IoU {iou:.3f}")
    return 0 if naive / ours >= 3 else 1


if __name__ == "__main__":
    sys.exit(main())

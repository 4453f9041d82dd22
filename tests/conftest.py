"""Shared fixtures: a tiny hand-made dataset in the exact ARMBench layout.

``tiny_dataset`` writes (per test, into tmp_path, a few ms)::

    armbench/images/*.jpg|png   train.json   val.json   test.json

with rectangles whose areas are known exactly. Use ``tiny_dataset.root`` as the dataset
folder and ``tiny_dataset.expected`` for known answers. Geometry (original pixels):

train.json  (categories listed Tote first with ids Tote=3, Object=7: mapping must go by name)
  train_a.jpg 200x160, yellow tote; annotations
     101 Tote    polygon [10,10]-[190,150]
     102 Object  polygon [20,20]-[60,60]            area 1600
     103 Object  TWO polygons [100,20]-[120,40] + [140,20]-[160,40]  area 800 (union)
     104 Object  compressed RLE  [20,100]-[50,130]  area 900
     105 Object  uncompressed RLE, iscrowd=1, [70,100]-[90,140]  area 800
     106 Object  polygon [50,50]-[80,80]            area 900 (box overlaps 102)
  train_b.png 200x160 RGBA PNG, no annotations (empty GT)
  train_c.jpg 200x160, blue tote; annotations
     121 Object  degenerate polygon (2 points)      -> dropped by the loader, a "problem"
     122 Object  polygon [180,140]-[220,180] + bbox beyond the image -> clipped, a "problem"
     123 Tote    polygon [10,10]-[190,150]
     124 Object  polygon [30,30]-[70,50]            area 800
val.json  (standard ARMBench ids: Tote=1, Object=2)
  val_a.jpg 200x160: 201 Tote [10,10]-[190,150]; 202 Object [40,40]-[80,80]; 203 Object [100,60]-[140,100]
  val_portrait.jpg 120x200 (w x h): 211 Tote [5,5]-[115,195]; 212 Object [20,20]-[60,100]
test.json (labels present but ignored): test_a.jpg, test_b.jpg, test_c.jpg 200x160
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

YELLOW = (230, 200, 40)  # RGB
BLUE = (40, 90, 200)
BACKGROUND = (90, 90, 90)


@dataclass
class TinyDataset:
    root: Path
    expected: dict[str, Any] = field(default_factory=dict)

    def json(self, split_file: str) -> dict:
        return json.loads((self.root / split_file).read_text())

    def write_json(self, split_file: str, data: dict) -> None:
        (self.root / split_file).write_text(json.dumps(data))

    def rename_images(self, rename: dict[str, str]) -> None:
        """Move images to new file names (old name -> new; a '/' makes a sub-folder) in the
        images folder and in every split file; names not in ``rename`` stay."""
        for split_file in ("train.json", "val.json", "test.json"):
            data = self.json(split_file)
            for img in data["images"]:
                new = rename.get(img["file_name"], img["file_name"])
                target = self.root / "images" / new
                target.parent.mkdir(parents=True, exist_ok=True)
                (self.root / "images" / img["file_name"]).rename(target)
                img["file_name"] = new
            self.write_json(split_file, data)


def rect_poly(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def rect_mask(h: int, w: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y1:y2, x1:x2] = 1
    return m


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major run lengths starting with zeros, as COCO iscrowd annotations store them."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _ann(ann_id, image_id, cat, seg, bbox=None, iscrowd=0, **extra) -> dict:
    if bbox is None and isinstance(seg, list):
        pts = np.concatenate([np.reshape(p, (-1, 2)) for p in seg])
        x1, y1 = pts.min(0)
        x2, y2 = pts.max(0)
        bbox = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
    out = {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": seg, "bbox": bbox,
           "iscrowd": iscrowd, "area": float(bbox[2] * bbox[3]) if bbox else 0.0}
    out.update(extra)
    return out


def _draw(h: int, w: int, tote: tuple | None, tote_color, objects: list[tuple]) -> np.ndarray:
    """RGB image: background, tote rectangle, objects as shaded rectangles."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    if tote is not None:
        x1, y1, x2, y2 = tote
        img[y1:y2, x1:x2] = tote_color
    rng = np.random.default_rng(h * w)
    for i, (x1, y1, x2, y2) in enumerate(objects):
        color = rng.integers(120, 255, 3)
        img[y1:y2, x1:x2] = color
        img[y1:y2:4, x1:x2] = color // 2  # texture so sharpness is non-zero
    return img


def write_image(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    ext = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]) if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb, params)
    assert ok
    path.write_bytes(buf.tobytes())


def build_tiny_dataset(root: Path) -> TinyDataset:
    images = root / "images"
    images.mkdir(parents=True)
    H, W = 160, 200

    # ---------------------------------------------------------------- train
    write_image(images / "train_a.jpg", _draw(H, W, (10, 10, 190, 150), YELLOW,
                                              [(20, 20, 60, 60), (100, 20, 120, 40), (140, 20, 160, 40),
                                               (20, 100, 50, 130), (70, 100, 90, 140), (50, 50, 80, 80)]))
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = BACKGROUND[::-1]
    rgba[..., 3] = 200
    write_image(images / "train_b.png", rgba)
    write_image(images / "train_c.jpg", _draw(H, W, (10, 10, 190, 150), BLUE, [(30, 30, 70, 50), (180, 140, 200, 160)]))
    tote_t, obj_t = 3, 7
    train = {
        "info": {"description": "tiny ARMBench-layout fixture"},
        "categories": [{"id": tote_t, "name": "Tote"}, {"id": obj_t, "name": "Object"}],
        "images": [
            {"id": 1, "file_name": "train_a.jpg", "width": W, "height": H},
            {"id": 2, "file_name": "train_b.png", "width": W, "height": H},
            {"id": 3, "file_name": "train_c.jpg", "width": W, "height": H},
        ],
        "annotations": [
            _ann(101, 1, tote_t, [rect_poly(10, 10, 190, 150)]),
            _ann(102, 1, obj_t, [rect_poly(20, 20, 60, 60)]),
            _ann(103, 1, obj_t, [rect_poly(100, 20, 120, 40), rect_poly(140, 20, 160, 40)]),
            _ann(104, 1, obj_t, compressed_rle(rect_mask(H, W, 20, 100, 50, 130)), bbox=[20.0, 100.0, 30.0, 30.0]),
            _ann(105, 1, obj_t, uncompressed_rle(rect_mask(H, W, 70, 100, 90, 140)), bbox=[70.0, 100.0, 20.0, 40.0], iscrowd=1),
            _ann(106, 1, obj_t, [rect_poly(50, 50, 80, 80)]),
            _ann(121, 3, obj_t, [[5.0, 5.0, 6.0, 6.0]], bbox=[5.0, 5.0, 1.0, 1.0]),
            _ann(122, 3, obj_t, [rect_poly(180, 140, 220, 180)]),
            _ann(123, 3, tote_t, [rect_poly(10, 10, 190, 150)]),
            _ann(124, 3, obj_t, [rect_poly(30, 30, 70, 50)]),
        ],
    }
    # ---------------------------------------------------------------- val
    write_image(images / "val_a.jpg", _draw(H, W, (10, 10, 190, 150), BLUE, [(40, 40, 80, 80), (100, 60, 140, 100)]))
    write_image(images / "val_portrait.jpg", _draw(200, 120, (5, 5, 115, 195), YELLOW, [(20, 20, 60, 100)]))
    val = {
        "categories": [{"id": 1, "name": "Tote"}, {"id": 2, "name": "Object"}],
        "images": [
            {"id": 10, "file_name": "val_a.jpg", "width": W, "height": H},
            {"id": 11, "file_name": "val_portrait.jpg", "width": 120, "height": 200},
        ],
        "annotations": [
            _ann(201, 10, 1, [rect_poly(10, 10, 190, 150)]),
            _ann(202, 10, 2, [rect_poly(40, 40, 80, 80)]),
            _ann(203, 10, 2, [rect_poly(100, 60, 140, 100)]),
            _ann(211, 11, 1, [rect_poly(5, 5, 115, 195)]),
            _ann(212, 11, 2, [rect_poly(20, 20, 60, 100)]),
        ],
    }
    # ---------------------------------------------------------------- test (unlabeled)
    test = {"categories": [{"id": 1, "name": "Tote"}, {"id": 2, "name": "Object"}], "images": [], "annotations": []}
    for i, name in enumerate(["test_a", "test_b", "test_c"]):
        write_image(images / f"{name}.jpg", _draw(H, W, (10, 10, 190, 150), YELLOW if i % 2 else BLUE, [(30 + 10 * i, 30, 90, 90)]))
        test["images"].append({"id": 100 + i, "file_name": f"{name}.jpg", "width": W, "height": H})
        test["annotations"].append(_ann(300 + i, 100 + i, 2, [rect_poly(30 + 10 * i, 30, 90, 90)]))

    for name, data in (("train.json", train), ("val.json", val), ("test.json", test)):
        (root / name).write_text(json.dumps(data))

    expected = {
        "images": {"train": 3, "val": 2, "unlabeled": 3},
        "sample_ids": {"train": {"train_a", "train_b", "train_c"}, "val": {"val_a", "val_portrait"},
                       "unlabeled": {"test_a", "test_b", "test_c"}},
        # instances the loader keeps (degenerate 121 dropped)
        "gt_counts": {"train_a": {"Object": 5, "Tote": 1}, "train_b": {"Object": 0, "Tote": 0},
                      "train_c": {"Object": 2, "Tote": 1}, "val_a": {"Object": 2, "Tote": 1},
                      "val_portrait": {"Object": 1, "Tote": 1}},
        # annotations in the JSON per class (all, including problems)
        "annotation_counts": {"train": {"Object": 8, "Tote": 2}, "val": {"Object": 3, "Tote": 2}},
        # original-pixel areas of train_a's objects by annotation id
        "train_a_object_areas": {102: 1600, 103: 800, 104: 900, 105: 800, 106: 900},
        "image_hw": (H, W),
        "degenerate_annotation_ids": [121],
        "out_of_bounds_annotation_ids": [122],
        "images_without_annotations": ["train_b"],
        "tote_colors": {"train_a": "yellow", "train_c": "blue", "val_a": "blue", "val_portrait": "yellow"},
    }
    return TinyDataset(root, expected)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> TinyDataset:
    """A fresh tiny ARMBench-layout dataset (see module docstring for the known answers)."""
    return build_tiny_dataset(tmp_path / "armbench")


@pytest.fixture
def tiny_config():
    """DataConfig pointing nowhere in particular, all images of every split, seed 0."""
    from armbench_segmentation.config import DataConfig

    return DataConfig(train_size=None, val_size=None, unlabeled_size=None, seed=0, image_size=640)


def exif_jpeg_bytes(rgb: np.ndarray, orientation: int, quality: int = 95) -> bytes:
    """JPEG bytes of ``rgb`` (stored as is) carrying an EXIF APP1 orientation tag (1..8)."""
    import struct

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    data = buf.tobytes()
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + app1 + data[2:]  # right after SOI


@pytest.fixture
def make_exif_jpeg():
    """``make_exif_jpeg(rgb, orientation, quality=95) -> bytes``: a JPEG with an EXIF orientation tag."""
    return exif_jpeg_bytes

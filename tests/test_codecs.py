"""codecs: JSON default, atomic files, box conversions, original-resolution RLE, categories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from armbench_segmentation import codecs, package_version
from armbench_segmentation.data.letterbox import Letterbox
from armbench_segmentation.splits import LABELED_SPLITS, SPLITS, UNLABELED


# ---------------------------------------------------------------------------- JSON
def test_json_default_numpy_and_path():
    obj = {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "a": np.arange(3), "p": Path("/x/y")}
    assert json.loads(json.dumps(obj, default=codecs.json_default)) == {"i": 3, "f": 0.5, "b": True, "a": [0, 1, 2],
                                                                       "p": "/x/y"}


def test_json_default_refuses_other_types_by_name():
    with pytest.raises(TypeError, match="set"):
        json.dumps({"s": {1}}, default=codecs.json_default)


def test_json_default_leaves_nan_to_allow_nan():
    with pytest.raises(ValueError):
        json.dumps([np.float64(math.nan)], default=codecs.json_default, allow_nan=False)
    assert json.dumps([np.float64(math.nan)], default=codecs.json_default) == "[NaN]"


# ---------------------------------------------------------------------------- atomic files
def test_atomic_write_round_trip_and_no_temp(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    codecs.atomic_write_text(path, "new ü")
    assert path.read_text(encoding="utf-8") == "new ü"
    codecs.atomic_write_bytes(path, b"\x00\x01", fsync=True)
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_path_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with codecs.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_atomic_path_failure_before_the_writer_created_the_file(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with codecs.atomic_path(tmp_path / "x.parquet"):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- boxes
def test_box_conversions_known_answers():
    xyxy = np.array([[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 1.0, 2.0]])
    corner = np.array([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 1.0, 2.0]])
    center = np.array([[25.0, 40.0, 30.0, 40.0], [0.5, 1.0, 1.0, 2.0]])
    np.testing.assert_array_equal(codecs.xyxy_to_corner_xywh(xyxy), corner)
    np.testing.assert_array_equal(codecs.corner_xywh_to_xyxy(corner), xyxy)
    np.testing.assert_array_equal(codecs.xyxy_to_center_xywh(xyxy), center)
    np.testing.assert_array_equal(codecs.center_xywh_to_xyxy(center), xyxy)


def test_box_conversions_round_trip_dtype_and_empty():
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 100, (50, 4)).astype(np.float32)
    b[:, 2:] += b[:, :2]
    for fwd, back in ((codecs.xyxy_to_corner_xywh, codecs.corner_xywh_to_xyxy),
                      (codecs.xyxy_to_center_xywh, codecs.center_xywh_to_xyxy)):
        out = fwd(b)
        assert out.dtype == np.float32 and out.shape == (50, 4)
        np.testing.assert_allclose(back(out), b, atol=1e-4)
        assert fwd(np.zeros((0, 4), np.float32)).shape == (0, 4)
    assert codecs.corner_xywh_to_xyxy(np.array([[1, 2, 3, 4]])).dtype == np.float64


def test_box_conversions_refuse_wrong_shape():
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        codecs.corner_xywh_to_xyxy(np.zeros(4))


# ---------------------------------------------------------------------------- RLE
@pytest.mark.parametrize("orig_hw", [(512, 612), (300, 200), (100, 1000), (1280, 640), (7, 900)])
def test_original_rle_is_pycocotools_encoding_of_masks_to_original(orig_hw):
    rng = np.random.default_rng(1)
    lb = Letterbox.compute(orig_hw, 64)
    masks = np.zeros((12, 64, 64), bool)
    for i in range(8):
        x0, y0 = rng.integers(0, 60, 2)
        masks[i, y0:y0 + rng.integers(1, 30), x0:x0 + rng.integers(1, 30)] = True
        masks[i] &= rng.random((64, 64)) > 0.2 * (i % 3)
    masks[8] = True  # every pixel (the last run reaches the last pixel)
    masks[10, -1, -1] = masks[10, 0, 0] = True
    masks[11, lb.pad_y:, lb.pad_x] = True  # a full crop column
    full = lb.masks_to_original(masks)
    for m, f in zip(masks, full):
        ref = mask_utils.encode(np.asfortranarray(f.astype(np.uint8)))
        assert codecs.mask_to_original_rle(m, lb) == {"size": list(orig_hw), "counts": ref["counts"].decode("ascii")}


# ---------------------------------------------------------------------------- categories
def test_category_ids_exact_first_then_case_insensitive_then_missing():
    cats = [{"id": 3, "name": "object"}, {"id": 7, "name": "Object"}, {"id": 1, "name": "TOTE"}, {"name": "Bin"}]
    by_class, missing = codecs.category_ids_by_name(cats, ("Object", "Tote", "Bin"))
    assert by_class == {0: (7,), 1: (1,)}
    assert missing == ["Bin"]  # a category without an id does not count


def test_category_ids_keep_every_category_of_a_name():
    by_class, missing = codecs.category_ids_by_name([{"id": 2, "name": "Object"}, {"id": 5, "name": "Object"}],
                                                    ["Object"])
    assert by_class == {0: (2, 5)} and missing == []


# ---------------------------------------------------------------------------- splits, version
def test_split_names_and_version():
    assert SPLITS == ("train", "val", "unlabeled") and LABELED_SPLITS == ("train", "val") and UNLABELED == "unlabeled"
    import armbench_segmentation

    assert armbench_segmentation.__version__ == package_version() and package_version()


@pytest.mark.parametrize("value,expected", [(1, 1.0), ("2.5", 2.5), (np.float32(0.5), 0.5), (None, None),
                                            ("abc", None), (float("nan"), None), (float("inf"), None),
                                            (np.int64(-3), -3.0), ([1], None)])
def test_finite_float(value, expected):
    assert codecs.finite_float(value) == expected

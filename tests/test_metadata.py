"""Per-sample metadata on the tiny dataset: known counts/areas, None (never NaN) when undefined."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from armbench_segmentation.data.coco import ArmbenchDataset
from armbench_segmentation.metadata import GT_FIELDS, METADATA_FIELDS, image_statistics, sample_metadata


@pytest.fixture
def ds(tiny_dataset, tiny_config):
    return ArmbenchDataset(tiny_dataset.root, tiny_config)


def meta_of(ds, split, sample_id, **kwargs):
    sample = next(s for s in ds.samples(split) if s.sample_id == sample_id)
    return sample_metadata(ds.load(sample), ds.annotations(sample), **kwargs)


def assert_scalars(meta):
    assert len(meta) >= 20
    for key, value in meta.items():
        assert value is None or isinstance(value, (int, float, str, bool)), key
        if isinstance(value, float):
            assert math.isfinite(value), key


def test_known_values(ds):
    m = meta_of(ds, "train", "train_a")
    assert_scalars(m)
    assert (m["file_name"], m["orig_width"], m["orig_height"]) == ("train_a.jpg", 200, 160)
    assert (m["n_instances"], m["n_objects"], m["n_totes"], m["n_crowd"]) == (6, 5, 1, 1)
    # object areas 1600, 800, 900, 800, 900 of 200*160 = 32000 px
    fr = [0.05, 0.025, 0.028125, 0.025, 0.028125]
    assert m["object_area_mean"] == pytest.approx(sum(fr) / 5)
    assert m["object_area_min"] == pytest.approx(0.025) and m["object_area_max"] == pytest.approx(0.05)
    mean = sum(fr) / 5
    assert m["object_area_std"] == pytest.approx(math.sqrt(sum((f - mean) ** 2 for f in fr) / 5))
    assert m["small_object_count"] == 0 and m["small_object_share"] == 0.0
    # boxes of 102 [20,20,60,60] and 106 [50,50,80,80] overlap; nothing else does
    assert m["occluded_object_count"] == 2 and m["occluded_object_share"] == pytest.approx(0.4)
    assert m["mean_box_overlaps"] == pytest.approx(0.4) and m["max_box_overlaps"] == 1
    assert m["multi_polygon_objects"] == 1  # annotation 103
    assert m["mean_visible_fraction"] is None
    # tote 180x140 = 25200 px; objects cover 5000 - 100 (overlap of 102 and 106)
    assert m["tote_area_share"] == pytest.approx(25200 / 32000)
    assert m["background_share"] == pytest.approx((25200 - 4900) / 25200)
    assert m["tote_color"] == "yellow" and m["tote_color_source"] == "tote"
    assert m["annotation_problems"] == 0 and m["dropped_annotations"] == 0
    assert m["brightness"] > 0 and m["contrast"] > 0 and m["sharpness"] > 0 and m["colorfulness"] > 0


def test_small_objects_threshold_and_problems(ds):
    m = meta_of(ds, "train", "train_a", small_area_fraction=0.03)  # 0.025, 0.028125 x2, 0.025 are small
    assert m["small_object_count"] == 4 and m["small_object_share"] == pytest.approx(0.8)
    c = meta_of(ds, "train", "train_c")
    assert c["annotation_problems"] == 2  # degenerate 121, out-of-bounds 122
    assert c["dropped_annotations"] == 1 and c["n_objects"] == 2
    assert c["tote_color"] == "blue"


def test_tote_colours(ds, tiny_dataset):
    for sid, color in tiny_dataset.expected["tote_colors"].items():
        split = "train" if sid.startswith("train") else "val"
        assert meta_of(ds, split, sid)["tote_color"] == color, sid


def test_empty_gt_gives_none_not_nan(ds):
    m = meta_of(ds, "train", "train_b")
    assert_scalars(m)
    assert m["n_instances"] == 0 and m["n_objects"] == 0
    for key in ("object_area_mean", "object_area_std", "object_area_min", "object_area_max",
                "small_object_share", "occluded_object_share", "mean_box_overlaps", "mean_visible_fraction"):
        assert m[key] is None, key
    assert m["background_share"] == 1.0 and m["tote_color_source"] == "border"
    assert m["contrast"] == 0.0 and m["sharpness"] == 0.0  # flat gray PNG


def test_unlabeled_sample_has_image_fields_only(ds):
    m = meta_of(ds, "unlabeled", "test_a")
    assert_scalars(m)
    assert all(m[key] is None for key in GT_FIELDS)
    assert m["labeled"] is False and isinstance(m["brightness"], float)
    assert m["tote_color"] == "blue" and m["tote_color_source"] == "border"


def test_visible_fraction_from_attributes(tiny_dataset, tiny_config):
    data = tiny_dataset.json("val.json")
    for ann, vf in zip([a for a in data["annotations"] if a["category_id"] == 2], [0.5, 0.9, 0.25]):
        ann["attributes"] = {"visible_fraction": vf}
    tiny_dataset.write_json("val.json", data)
    ds = ArmbenchDataset(tiny_dataset.root, tiny_config)
    m = meta_of(ds, "val", "val_a")  # objects 202 (0.5) and 203 (0.9)
    assert m["mean_visible_fraction"] == pytest.approx(0.7) and m["min_visible_fraction"] == pytest.approx(0.5)


ALL_SAMPLES = [("train", "train_a"), ("train", "train_b"), ("train", "train_c"), ("val", "val_a"),
               ("val", "val_portrait"), ("unlabeled", "test_a"), ("unlabeled", "test_b")]


def test_schema_keys_and_types_match_every_sample(ds):
    assert set(GT_FIELDS) <= set(METADATA_FIELDS)
    assert set(METADATA_FIELDS.values()) <= {int, float, str, bool}
    for split, sid in ALL_SAMPLES:
        m = meta_of(ds, split, sid)
        assert list(m) == list(METADATA_FIELDS), (sid, set(m) ^ set(METADATA_FIELDS))
        for key, value in m.items():
            # exact type: a bool is not an int field, an int not a float field
            assert value is None or type(value) is METADATA_FIELDS[key], (sid, key, type(value))
        if split == "unlabeled":
            assert all(m[key] is None for key in GT_FIELDS), sid
        else:  # labeled: counts always defined, even without objects (train_b)
            for key in ("n_annotations", "n_instances", "n_objects", "n_totes", "small_object_count",
                        "occluded_object_count", "multi_polygon_objects", "annotation_problems"):
                assert m[key] is not None, (sid, key)
        for key in set(METADATA_FIELDS) - set(GT_FIELDS) - {"tote_hue"}:
            assert m[key] is not None, (sid, key)  # image fields are set for every (non-empty) image


def _statistics_reference(image):
    """The same four statistics in float64 numpy, written out from their definitions."""
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(luma, cv2.CV_64F)
    r, g, b = (image[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return {"brightness": luma.astype(np.float64).mean(), "contrast": luma.astype(np.float64).std(),
            "sharpness": lap.var(),
            "colorfulness": math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())}


@pytest.mark.parametrize("shape,seed", [((97, 53, 3), 0), ((256, 320, 3), 1), ((1, 1, 3), 2)])
def test_image_statistics_match_float64_definitions(shape, seed):
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    got, want = image_statistics(image), _statistics_reference(image)
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-9), key


def test_image_statistics_known_answers():
    flat = np.full((8, 8, 3), (200, 100, 50), np.uint8)  # one colour: no contrast, no edges
    m = image_statistics(flat)
    assert m["contrast"] == 0 and m["sharpness"] == 0
    assert m["colorfulness"] == pytest.approx(0.3 * math.hypot(100, 0.5 * 300 - 50))
    assert image_statistics(np.zeros((0, 4, 3), np.uint8))["brightness"] is None

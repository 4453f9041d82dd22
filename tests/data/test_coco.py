"""ARMBench COCO loader: categories by name, splits, GT at model resolution, confinement, errors."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random

import cv2
import numpy as np
import pytest

from armbench_segmentation.config import DataConfig
from armbench_segmentation.data.coco import ArmbenchDataset, category_map_by_name
from armbench_segmentation.errors import DatasetError, SampleError
from armbench_segmentation.structures import masks_to_boxes

# tiny_dataset: 200x160 images -> letterbox to 640: scale 3.2, pad_y 64 (pad_x 0)
S, PAD_Y = 3.2, 64


def model_rect(x1, y1, x2, y2, size=640):
    """Expected model-frame mask of an original-pixel rectangle of the 200x160 fixture images."""
    m = np.zeros((size, size), bool)
    m[int(y1 * S) + PAD_Y : int(y2 * S) + PAD_Y, int(x1 * S) : int(x2 * S)] = True
    return m


def by_id(samples):
    return {s.sample_id: s for s in samples}


@pytest.fixture
def ds(tiny_dataset, tiny_config):
    return ArmbenchDataset(tiny_dataset.root, tiny_config)


def test_splits_and_ids(ds, tiny_dataset):
    for split, n in tiny_dataset.expected["images"].items():
        samples = ds.samples(split)
        assert len(samples) == n
        assert {s.sample_id for s in samples} == tiny_dataset.expected["sample_ids"][split]
        assert all(s.split == split for s in samples)
    s = by_id(ds.samples("val"))["val_portrait"]
    assert (s.width, s.height, s.image_id, s.file_name) == (120, 200, 11, "val_portrait.jpg")


def test_category_mapping_by_name_not_id(ds):
    # train.json lists Tote first with id 3, Object with id 7
    assert ds.category_map("train") == {7: 0, 3: 1}
    assert ds.category_map("val") == {2: 0, 1: 1}
    gt = ds.ground_truth(by_id(ds.samples("train"))["train_a"])
    assert gt.ids.tolist() == [101, 102, 103, 104, 105, 106]
    assert gt.class_ids.tolist() == [1, 0, 0, 0, 0, 0]  # Tote=1, Object=0


def test_category_map_missing_name_lists_existing():
    cats = [{"id": 5, "name": "Box"}, {"id": 6, "name": "Tote"}]
    with pytest.raises(DatasetError, match=r"'Object'.*'Box' \(id 5\).*'Tote' \(id 6\)"):
        category_map_by_name(cats, ("Object", "Tote"), source="x.json")
    assert category_map_by_name([{"id": 9, "name": "object"}, {"id": 4, "name": "TOTE"}], ("Object", "Tote")) == {9: 0, 4: 1}


def test_missing_class_in_split_file_is_dataset_error(tiny_dataset, tiny_config):
    data = tiny_dataset.json("val.json")
    data["categories"] = [{"id": 1, "name": "Tote"}, {"id": 2, "name": "Thing"}]
    tiny_dataset.write_json("val.json", data)
    ds = ArmbenchDataset(tiny_dataset.root, tiny_config)
    with pytest.raises(DatasetError, match="Object.*'Thing'"):
        ds.load(ds.samples("val")[0])


def test_gt_model_resolution_polygons_multipolygon_and_rle(ds):
    sample = by_id(ds.samples("train"))["train_a"]
    loaded = ds.load(sample)
    gt = loaded.gt
    assert loaded.image.shape == (640, 640, 3) and loaded.image.dtype == np.uint8
    assert gt.image_size == (640, 640) and gt.masks.shape == (6, 640, 640)
    m = dict(zip(gt.ids.tolist(), gt.masks))
    assert (m[102] == model_rect(20, 20, 60, 60)).all()
    # two polygons -> one instance whose mask is their union
    assert (m[103] == (model_rect(100, 20, 120, 40) | model_rect(140, 20, 160, 40))).all()
    # compressed RLE and uncompressed iscrowd RLE, decoded then letterboxed
    assert (m[104] == model_rect(20, 100, 50, 130)).all()
    assert (m[105] == model_rect(70, 100, 90, 140)).all()
    assert gt.extras["iscrowd"].tolist() == [False, False, False, False, True, False]
    # boxes from the annotation bbox, transformed, consistent with masks
    np.testing.assert_allclose(gt.boxes[gt.ids == 103][0], [320, 128, 512, 192])
    assert np.abs(masks_to_boxes(gt.masks) - gt.boxes).max() <= 1.0
    # padding rows stay empty
    assert not gt.masks[:, :PAD_Y].any() and not gt.masks[:, 640 - PAD_Y :].any()


def test_gt_original_frame_exact_areas(ds, tiny_dataset):
    gt = ds.ground_truth(by_id(ds.samples("train"))["train_a"])
    assert gt.image_size == (160, 200) and gt.masks.shape == (6, 160, 200)
    areas = dict(zip(gt.ids.tolist(), gt.mask_areas().tolist()))
    for ann_id, area in tiny_dataset.expected["train_a_object_areas"].items():
        assert areas[ann_id] == area
    np.testing.assert_allclose(gt.boxes[gt.ids == 102][0], [20, 20, 60, 60])


def test_empty_gt_and_unlabeled(ds):
    loaded = ds.load(by_id(ds.samples("train"))["train_b"])  # RGBA PNG, no annotations
    assert len(loaded.gt) == 0
    assert loaded.gt.masks.shape == (0, 640, 640) and loaded.gt.boxes.shape == (0, 4)
    assert loaded.image.shape == (640, 640, 3)
    for sample in ds.samples("unlabeled"):
        loaded = ds.load(sample)
        assert loaded.gt is None
        assert ds.annotations(sample) == []  # labels in test.json are ignored
    with pytest.raises(ValueError, match="unlabeled"):
        ds.ground_truth(ds.samples("unlabeled")[0])


def test_portrait_letterbox(ds):
    loaded = ds.load(by_id(ds.samples("val"))["val_portrait"])  # 120x200 -> 384x640, pad_x 128
    lb = loaded.letterbox
    assert (lb.new_w, lb.new_h, lb.pad_x, lb.pad_y) == (384, 640, 128, 0)
    obj = loaded.gt[loaded.gt.ids == 212]
    np.testing.assert_allclose(obj.boxes[0], [20 * 3.2 + 128, 64, 60 * 3.2 + 128, 320])
    assert obj.mask_areas()[0] == 40 * 80 * 3.2 * 3.2
    assert (loaded.image[:, :128] == 114).all()  # gray padding


def test_degenerate_polygon_dropped_with_warning_and_clipped_box(ds, caplog):
    with caplog.at_level(logging.WARNING):
        gt = ds.ground_truth(by_id(ds.samples("train"))["train_c"])
    assert 121 not in gt.ids.tolist() and "121" in caplog.text
    np.testing.assert_allclose(gt.boxes[gt.ids == 122][0], [180, 140, 200, 160])  # clipped to the image


def test_zero_area_polygons_are_not_rasterized(tiny_dataset, tiny_config, caplog):
    """Collinear (exact and with float rounding), repeated-point and NaN polygons: never a GT
    instance; one of them next to a good polygon leaves exactly the good polygon's pixels."""
    from armbench_segmentation.data.coco import check_annotation, valid_polygons

    data = tiny_dataset.json("train.json")
    obj = next(c["id"] for c in data["categories"] if c["name"] == "Object")
    degenerate = {
        131: [[10.0, 10.0, 50.0, 50.0, 90.0, 90.0]],  # collinear
        132: [[10.1, 20.2, 30.3, 60.6, 70.7, 141.4]],  # collinear up to float rounding (shoelace ~1e-14)
        133: [[40.0, 40.0, 40.0, 40.0, 60.0, 60.0, 40.0, 40.0]],  # 2 distinct points
        134: [[10.0, 10.0, 50.0, 10.0, 90.0, 10.0], [20.0, 20.0, float("nan"), 20.0, 30.0, 30.0]],
    }
    for ann_id, seg in degenerate.items():
        data["annotations"].append({"id": ann_id, "image_id": 3, "category_id": obj, "iscrowd": 0,
                                    "segmentation": seg, "bbox": [10.0, 10.0, 80.0, 80.0]})
    data["annotations"].append({"id": 135, "image_id": 3, "category_id": obj, "iscrowd": 0, "bbox": [100, 60, 40, 40],
                                "segmentation": [[100, 60, 140, 60, 140, 100, 100, 100], [0, 0, 5, 5, 10, 10]]})
    tiny_dataset.write_json("train.json", data)
    ds = ArmbenchDataset(tiny_dataset.root, tiny_config)
    sample = by_id(ds.samples("train"))["train_c"]
    with caplog.at_level(logging.WARNING):
        loaded = ds.load(sample)
    kept = loaded.gt.ids.tolist()
    assert not set(degenerate) & set(kept) and 121 not in kept
    assert sorted(kept) == [122, 123, 124, 135]
    np.testing.assert_array_equal(loaded.gt.masks[kept.index(135)], model_rect(100, 60, 140, 100))
    assert "every polygon is degenerate" in caplog.text and all(str(i) in caplog.text for i in degenerate)
    assert "dropped 1 degenerate polygons" in caplog.text and "135: 1" in caplog.text
    # the same verdict as 'armbench info' / check_annotation, and as valid_polygons (evaluation)
    for ann in data["annotations"]:
        if ann["id"] in degenerate:
            problems = [k for k, _ in check_annotation(ann, 200, 160)[0]]
            assert problems.count("degenerate_polygon") == len(ann["segmentation"]) and "no_geometry" in problems
            assert valid_polygons(ann["segmentation"]) == []
    assert len(valid_polygons(data["annotations"][-1]["segmentation"])) == 1
    # the original-frame path (annotations_to_instances without pre-parsed polygons) agrees
    orig = ds.ground_truth(sample)
    assert sorted(orig.ids.tolist()) == [122, 123, 124, 135]


def test_max_instances_cap_warns_with_counts(tiny_dataset, tiny_config, caplog):
    ds = ArmbenchDataset(tiny_dataset.root, dataclasses.replace(tiny_config, max_instances=4))
    with caplog.at_level(logging.WARNING):
        gt = ds.load(by_id(ds.samples("train"))["train_a"]).gt
    assert len(gt) == 4 and gt.ids.tolist() == [101, 102, 103, 104]
    assert "6 ground-truth instances, keeping the first 4" in caplog.text


def test_max_instances_per_image_known_answers_from_json_only(tiny_dataset, tiny_config, monkeypatch):
    import armbench_segmentation.data.coco as coco

    def no_decode(*args, **kwargs):
        raise AssertionError("max_instances_per_image must not decode images")

    monkeypatch.setattr(coco, "decode_image_scaled", no_decode)
    ds = ArmbenchDataset(tiny_dataset.root, tiny_config)
    # annotations of a configured class in the JSON: train_a 6, train_b 0, train_c 4 (its
    # degenerate 121 counted: an upper bound of what the loader keeps), val_a 3, val_portrait 2
    assert ds.max_instances_per_image() == 6
    assert ds.max_instances_per_image(("train", "val")) == 6
    assert ds.max_instances_per_image(("val",)) == 3
    assert ds.max_instances_per_image("val") == 3
    assert ds.max_instances_per_image(("unlabeled",)) == 0  # labels ignored
    assert ds.max_instances_per_image(()) == 0
    objects_only = ArmbenchDataset(tiny_dataset.root, dataclasses.replace(tiny_config, class_names=("Object",)))
    assert objects_only.max_instances_per_image() == 5  # train_a without its tote
    with pytest.raises(ValueError, match="unknown split"):
        ds.max_instances_per_image(("test",))


def test_max_instances_per_image_counts_only_selected_samples(tiny_dataset, tiny_config):
    counts = {"train_a": 6, "train_b": 0, "train_c": 4}
    ds = ArmbenchDataset(tiny_dataset.root, dataclasses.replace(tiny_config, train_size=1))
    (picked,) = ds.samples("train")
    assert ds.max_instances_per_image(("train",)) == counts[picked.sample_id]
    ds2 = ArmbenchDataset(tiny_dataset.root, dataclasses.replace(tiny_config, train_size=2))
    assert ds2.max_instances_per_image(("train",)) == max(counts[s.sample_id] for s in ds2.samples("train"))


# ---------------------------------------------------------------------- selection
def _many_images_dataset(root, n=60, shuffle_seed=None):
    (root / "images").mkdir(parents=True)
    images = [{"id": i, "file_name": f"img_{i:03d}.jpg", "width": 20, "height": 10} for i in range(n)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(images)
    data = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "Tote"}, {"id": 2, "name": "Object"}]}
    for name in ("train.json", "val.json", "test.json"):
        (root / name).write_text(json.dumps(data))
    return root


def test_selection_deterministic_and_stable_when_growing(tmp_path):
    root = _many_images_dataset(tmp_path / "a")
    picks = {}
    for n in (5, 10, 30, None):
        ds = ArmbenchDataset(root, DataConfig(train_size=n, seed=3))
        picks[n] = [s.sample_id for s in ds.samples("train")]
        again = ArmbenchDataset(root, DataConfig(train_size=n, seed=3))
        assert [s.sample_id for s in again.samples("train")] == picks[n]  # deterministic
    assert len(picks[5]) == 5 and len(picks[None]) == 60
    assert picks[10][:5] == picks[5] and picks[30][:10] == picks[10] and picks[None][:30] == picks[30]
    assert picks[None] != sorted(picks[None])  # ranked by hash, not by name
    # independent of the order of images in the JSON
    shuffled = _many_images_dataset(tmp_path / "b", shuffle_seed=1)
    assert [s.sample_id for s in ArmbenchDataset(shuffled, DataConfig(train_size=10, seed=3)).samples("train")] == picks[10]
    # another seed, another selection
    assert [s.sample_id for s in ArmbenchDataset(root, DataConfig(train_size=10, seed=4)).samples("train")] != picks[10]
    # 0 is allowed and empty
    assert ArmbenchDataset(root, DataConfig(val_size=0)).samples("val") == []


def _suffix(rel: str) -> str:
    """Independent reference of the documented rule: ``~`` + 8 hex digits of BLAKE2b-512."""
    import hashlib

    return "~" + hashlib.blake2b(rel.encode(), digest_size=64).hexdigest()[:8]


def _clash_dataset(root, order=(0, 1, 2)):
    """images/a/img1.jpg (id 7, 20x10 red), images/b/img1.jpg (id 3, 30x10 blue), images/img2.jpg
    (id 5): two legitimate images sharing the stem 'img1'."""
    entries = [("a/img1.jpg", 7, (20, 10), (255, 0, 0)), ("b/img1.jpg", 3, (30, 10), (0, 0, 255)),
               ("img2.jpg", 5, (20, 10), (0, 255, 0))]
    for rel, _, (w, h), rgb in entries:
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".png", np.full((h, w, 3), rgb[::-1], np.uint8))
        (root / "images" / rel).write_bytes(buf.tobytes())
    images = [{"id": i, "file_name": rel, "width": w, "height": h} for rel, i, (w, h), _ in (entries[k] for k in order)]
    data = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "Tote"}, {"id": 2, "name": "Object"}]}
    for name in ("train.json", "val.json", "test.json"):
        (root / name).write_text(json.dumps(data))
    return root


def test_shared_stems_get_unique_stable_ids(tmp_path):
    root = _clash_dataset(tmp_path / "c")
    ds = ArmbenchDataset(root, DataConfig(train_size=None))
    samples = by_id(ds.samples("train"))
    # the lowest image id (b/img1.jpg, id 3) keeps the stem; the other gets the path-hash suffix
    assert set(samples) == {"img1", "img1" + _suffix("a/img1.jpg"), "img2"}
    assert samples["img1"].file_name == "b/img1.jpg" and samples["img1"].image_id == 3
    other = samples["img1" + _suffix("a/img1.jpg")]
    assert other.file_name == "a/img1.jpg" and other.image_id == 7
    # each id loads its own file (red 20x10 vs blue 30x10)
    assert ds.load_image(samples["img1"]).shape == (10, 30, 3) and ds.load_image(samples["img1"])[0, 0, 2] == 255
    assert ds.load_image(other).shape == (10, 20, 3) and ds.load_image(other)[0, 0, 0] == 255
    # stable: another file order, or a selection of one image, gives the same id to each image
    full = {s.file_name: s.sample_id for s in samples.values()}
    for order in ((2, 1, 0), (1, 0, 2), (0, 2, 1)):
        again = ArmbenchDataset(_clash_dataset(tmp_path / f"c{order}", order), DataConfig(train_size=None))
        assert {s.file_name: s.sample_id for s in again.samples("train")} == full
    for seed in range(6):
        one = ArmbenchDataset(root, DataConfig(train_size=1, seed=seed)).samples("train")
        assert len(one) == 1 and full[one[0].file_name] == one[0].sample_id


def test_assign_sample_ids_rule_edge_cases():
    from armbench_segmentation.data.coco import MAX_SAMPLE_ID_LENGTH, assign_sample_ids

    # Windows separators and ./ are normalized before hashing; the same path listed twice
    # under two image ids hashes path + NUL + image id
    ids = assign_sample_ids([(9, "x\\img1.jpg"), (1, "./img1.jpg"), (4, "img1.jpg")])
    import hashlib

    assert ids == ["img1" + _suffix("x/img1.jpg"), "img1",
                   "img1~" + hashlib.blake2b(b"img1.jpg\x004", digest_size=64).hexdigest()[:8]]
    # a real file named like a suffixed id keeps its name; the clashing suffix is lengthened
    taken = "img1" + _suffix("b/img1.jpg")
    ids = assign_sample_ids([(1, "a/img1.jpg"), (2, "b/img1.jpg"), (3, taken + ".jpg")])
    full = hashlib.blake2b(b"b/img1.jpg", digest_size=64).hexdigest()
    assert ids == ["img1", "img1~" + full[:16], taken]
    # ids stay <= 256 characters: a long stem is cut and suffixed, still unique
    long = "s" * 300
    ids = assign_sample_ids([(1, f"{long}.jpg"), (2, f"d/{long}.jpg"), (3, "short.jpg")])
    assert len(set(ids)) == 3 and all(len(i) <= MAX_SAMPLE_ID_LENGTH for i in ids) and ids[2] == "short"
    assert ids[0] == "s" * 247 + _suffix(f"{long}.jpg") and len(ids[0]) == 256
    # order independent
    entries = [(i, f"{d}/img{i % 3}.jpg") for i, d in enumerate("abcdefgh")]
    assert dict(zip(entries, assign_sample_ids(entries))) == dict(zip(entries[::-1], assign_sample_ids(entries[::-1])))


def test_unsafe_entries_skipped_first_and_take_no_part_in_ids(tiny_dataset, tiny_config, tmp_path, caplog):
    """Hostile entries sharing a stem with each other and with a good image: each one warned
    and skipped, every good image kept under its plain stem."""
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "val_a.jpg").write_bytes((tiny_dataset.root / "images" / "val_a.jpg").read_bytes())
    os.symlink(outside / "val_a.jpg", tiny_dataset.root / "images" / "link.jpg")
    data = tiny_dataset.json("val.json")
    hostile = ["../../x/val_a.jpg", str(outside / "val_a.jpg"), "sub/../../../x/val_a.jpg", "link.jpg",
               "val_a.jpg\x00.png"]
    for k, name in enumerate(hostile):  # lower image ids than the real val_a (10): they would win the stem
        data["images"].append({"id": k + 1, "file_name": name, "width": 200, "height": 160})
    tiny_dataset.write_json("val.json", data)
    ds = ArmbenchDataset(tiny_dataset.root, tiny_config)
    with caplog.at_level(logging.WARNING):
        samples = by_id(ds.samples("val"))
    assert set(samples) == {"val_a", "val_portrait"}  # no suffix: unsafe entries took no part
    assert samples["val_a"].image_id == 10 and samples["val_a"].file_name == "val_a.jpg"
    unsafe = [r.getMessage() for r in caplog.records if "outside" in r.getMessage() or "NUL" in r.getMessage()]
    assert len(unsafe) == len(hostile)  # one warning per entry
    for name, message in zip(hostile, unsafe):
        assert repr(name) in message and "val.json" in message and "Fix: put the image under" in message
    assert len(ds.load(samples["val_a"]).gt) == 3 and ds.load(samples["val_portrait"]).gt is not None


def test_many_unsafe_entries_are_warned_with_a_cap_and_a_count(tiny_dataset, tiny_config, caplog):
    data = tiny_dataset.json("val.json")
    data["images"] += [{"id": 100 + k, "file_name": f"../../etc/f{k}.jpg", "width": 2, "height": 2} for k in range(25)]
    tiny_dataset.write_json("val.json", data)
    with caplog.at_level(logging.WARNING):
        assert len(ArmbenchDataset(tiny_dataset.root, tiny_config).samples("val")) == 2
    lines = [r.getMessage() for r in caplog.records]
    assert sum("refusing to read it" in m for m in lines) == 20
    assert any("5 more image entries" in m and "25 in all" in m for m in lines)


# ---------------------------------------------------------------------- folder problems
def test_missing_dataset_message_says_what_to_do(tmp_path):
    with pytest.raises(DatasetError) as info:
        ArmbenchDataset(tmp_path / "nowhere", DataConfig())
    msg = str(info.value)
    for needle in ("mix-object-tote", "images/", "train.json", "test.json", "--dataset", "ARMBENCH_DATASET",
                   "armbench synth --out DIR", "armbench analyze --synthetic"):
        assert needle in msg


def test_incomplete_dataset_names_missing_parts(tiny_dataset):
    (tiny_dataset.root / "val.json").unlink()
    with pytest.raises(DatasetError, match="missing val.json"):
        ArmbenchDataset(tiny_dataset.root, DataConfig())


def test_parent_folder_with_mix_object_tote_is_accepted(tiny_dataset, tiny_config):
    parent = tiny_dataset.root.parent / "armbench-segmentation-0.1"
    parent.mkdir()
    tiny_dataset.root.rename(parent / "mix-object-tote")
    ds = ArmbenchDataset(parent, tiny_config)
    assert ds.root.name == "mix-object-tote" and len(ds.samples("val")) == 2


def test_invalid_json_is_dataset_error(tiny_dataset, tiny_config):
    (tiny_dataset.root / "train.json").write_text("{not json")
    ds = ArmbenchDataset(tiny_dataset.root, tiny_config)
    with pytest.raises(DatasetError, match="train.json is not valid JSON"):
        ds.samples("train")
    (tiny_dataset.root / "train.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(DatasetError, match="no 'images' list"):
        ArmbenchDataset(tiny_dataset.root, tiny_config).samples("train")


# ---------------------------------------------------------------------- per-sample errors
def _set_file_name(tiny_dataset, sample_id, new_name):
    data = tiny_dataset.json("val.json")
    for img in data["images"]:
        if img["file_name"].startswith(sample_id):
            img["file_name"] = new_name
    tiny_dataset.write_json("val.json", data)


def _secret(tmp_path):
    secret = tmp_path / "secret.jpg"
    ok, buf = cv2.imencode(".jpg", np.zeros((160, 200, 3), np.uint8))
    secret.write_bytes(buf.tobytes())
    return secret


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_path_traversal_rejected(tiny_dataset, tiny_config, tmp_path, kind, caplog):
    secret = _secret(tmp_path)  # a perfectly readable image outside images/
    if kind == "dotdot":
        name = "../../secret.jpg"
    elif kind == "absolute":
        name = str(secret)
    else:
        os.symlink(secret, tiny_dataset.root / "images" / "link.jpg")
        name = "link.jpg"
    _set_file_name(tiny_dataset, "val_a", name)
    ds = ArmbenchDataset(tiny_dataset.root, tiny_config)
    with caplog.at_level(logging.WARNING):
        samples = by_id(ds.samples("val"))
    assert set(samples) == {"val_portrait"}  # skipped while listing, with a warning naming it
    assert repr(name) in caplog.text and "outside the dataset images folder" in caplog.text
    assert ds.load(samples["val_portrait"]).gt is not None  # the other sample still loads
    # a Sample built elsewhere (e.g. armbench info) is still refused when read
    from armbench_segmentation.data.coco import Sample

    bad = Sample("secret", "val", 10, name, 200, 160)
    with pytest.raises(SampleError, match="outside the dataset images folder") as info:
        ds.load(bad)
    assert info.value.sample_id == "secret"


def test_symlink_inside_images_is_fine(tiny_dataset, tiny_config):
    os.symlink(tiny_dataset.root / "images" / "val_a.jpg", tiny_dataset.root / "images" / "alias.jpg")
    _set_file_name(tiny_dataset, "val_a", "alias.jpg")
    ds = ArmbenchDataset(tiny_dataset.root, tiny_config)
    assert len(ds.load(by_id(ds.samples("val"))["alias"]).gt) == 3


def test_missing_and_corrupt_images(tiny_dataset, tiny_config):
    (tiny_dataset.root / "images" / "train_a.jpg").unlink()
    (tiny_dataset.root / "images" / "train_c.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg \xff\xd9")
    ds = ArmbenchDataset(tiny_dataset.root, tiny_config)
    samples = by_id(ds.samples("train"))
    with pytest.raises(SampleError, match="train_a.jpg"):
        ds.load(samples["train_a"])
    with pytest.raises(SampleError, match="train_c.jpg"):
        ds.load(samples["train_c"])
    assert ds.load(samples["train_b"]).image.shape == (640, 640, 3)


def test_size_mismatch_names_both_sizes(tiny_dataset, tiny_config):
    data = tiny_dataset.json("val.json")
    data["images"][0]["width"] = 210
    tiny_dataset.write_json("val.json", data)
    ds = ArmbenchDataset(tiny_dataset.root, tiny_config)
    with pytest.raises(SampleError, match=r"200x160.*210x160"):
        ds.load(by_id(ds.samples("val"))["val_a"])


def test_exif_rotated_image_uses_oriented_size(tiny_dataset, tiny_config, make_exif_jpeg):
    """A stored 200x160 JPEG with orientation 6 is a 160x200 (w x h) image; COCO describes that."""
    stored = np.zeros((160, 200, 3), np.uint8)
    stored[:, :20] = 255  # white band on the stored left edge -> top edge after rotating 90 deg clockwise
    (tiny_dataset.root / "images" / "rot.jpg").write_bytes(make_exif_jpeg(stored, 6))
    data = tiny_dataset.json("val.json")
    data["images"].append({"id": 50, "file_name": "rot.jpg", "width": 160, "height": 200})
    data["annotations"].append({"id": 500, "image_id": 50, "category_id": 2, "iscrowd": 0,
                                "segmentation": [[0, 0, 160, 0, 160, 20, 0, 20]], "bbox": [0, 0, 160, 20]})
    data["images"].append({"id": 51, "file_name": "rot_wrong.jpg", "width": 200, "height": 160})
    (tiny_dataset.root / "images" / "rot_wrong.jpg").write_bytes(make_exif_jpeg(stored, 6))
    tiny_dataset.write_json("val.json", data)
    ds = ArmbenchDataset(tiny_dataset.root, tiny_config)
    samples = by_id(ds.samples("val"))
    loaded = ds.load(samples["rot"])
    band = loaded.gt.masks[0]  # the annotated band must be white in the oriented image
    assert loaded.image[band].mean() > 240 and loaded.image[~band & (loaded.image != 114).any(-1)].mean() < 20
    with pytest.raises(SampleError, match=r"160x200.*200x160"):
        ds.load(samples["rot_wrong"])


def test_reduced_decode_used_for_large_images(tmp_path, make_exif_jpeg):
    root = tmp_path / "big"
    (root / "images").mkdir(parents=True)
    img = np.zeros((1040, 1300, 3), np.uint8)
    img[100:300, 200:600] = (250, 250, 0)
    cv2.imwrite(str(root / "images" / "big.jpg"), img[:, :, ::-1])
    data = {"images": [{"id": 1, "file_name": "big.jpg", "width": 1300, "height": 1040}],
            "categories": [{"id": 1, "name": "Tote"}, {"id": 2, "name": "Object"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [200, 100, 400, 200],
                             "segmentation": [[200, 100, 600, 100, 600, 300, 200, 300]]}]}
    for name in ("train.json", "val.json", "test.json"):
        (root / name).write_text(json.dumps(data))
    ds = ArmbenchDataset(root, DataConfig())
    sample = ds.samples("train")[0]
    assert ds.load_image(sample, 640).shape == (520, 650, 3)  # 1/2 decode
    assert ds.load_image(sample).shape == (1040, 1300, 3)
    full = ArmbenchDataset(root, DataConfig(reduced_decode=False))
    assert full.load_image(sample, 640).shape == (1040, 1300, 3)
    a, b = ds.load(sample), full.load(sample)
    assert np.abs(a.image.astype(int) - b.image).mean() < 2  # same model input either way
    assert (a.gt.masks == b.gt.masks).all()
    inside = a.gt.masks[0]
    assert a.image[inside].mean(axis=0)[:2].min() > 230


def _reference_is_number(v):  # the per-element rule the vectorized validation must keep
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@pytest.mark.parametrize("poly", [
    [0, 0, 10, 0, 10, 10], [0.5, 0, 10, 0, 10, 10.25], [0, 0, 10, 0, 10], [0, 0, 10, 0, 10, 10, 5],
    [1, 2, True, 4, 5, 6], [1, 2, float("nan"), 4, 5, 6], [1, 2, float("-inf"), 4, 5, 6], [1, 2, "3", 4, 5, 6],
    [1, 2, None, 4, 5, 6], [1, 2, [3], 4, 5, 6], [np.float64(1.5), 2, 30, 4, 5, 60], [np.int64(1), 2, 30, 4, 5, 60],
    (0, 0, 50, 0, 50, 50), [0, 0, 1e300, 0, 50, 50], [0, 0, 10**30, 0, 50, 50], "abcdef", None, [],
])
def test_polygon_validation_matches_the_per_element_rule(poly):
    from armbench_segmentation.data.coco import valid_polygons

    ok = isinstance(poly, (list, tuple)) and len(poly) >= 6 and len(poly) % 2 == 0 and all(
        _reference_is_number(v) for v in poly)
    got = valid_polygons([poly])
    assert got == ([[float(v) for v in poly]] if ok else [])
    assert all(type(v) is float for p in got for v in p)


def test_load_checks_each_annotation_once_and_metadata_reuses_it(ds, monkeypatch):
    from armbench_segmentation.data import coco
    from armbench_segmentation.metadata import sample_metadata

    sample = next(s for s in ds.samples("train") if s.sample_id == "train_c")  # degenerate 121, out-of-bounds 122
    anns = ds.annotations(sample)
    calls = []
    real = coco._inspect_annotation
    monkeypatch.setattr(coco, "_inspect_annotation", lambda *a: calls.append(a[0]["id"]) or real(*a))
    loaded = ds.load(sample)
    assert sorted(calls) == sorted(a["id"] for a in anns)  # once each, while loading
    expected = [coco.check_annotation(a, sample.width, sample.height)[0] for a in anns]
    assert [list(loaded.checked_problems(i, a)) for i, a in enumerate(anns)] == expected
    assert loaded.checked_problems(0, dict(anns[0])) is None  # another object: not the loader's
    calls.clear()
    assert sample_metadata(loaded, anns)["annotation_problems"] == 2
    assert calls == []  # reused, not validated again
    assert sample_metadata(loaded, [dict(a) for a in anns])["annotation_problems"] == 2  # copies: checked anew
    assert len(calls) == len(anns)


@pytest.mark.parametrize("hw", [(64, 48), (7, 5), (1, 1), (1, 9), (9, 1), (2048, 2448)])
def test_gt_mask_decoding_equals_pycocotools(hw):
    from pycocotools import mask as mask_utils

    from armbench_segmentation.data.coco import _decode_masks

    h, w = hw
    rng = np.random.default_rng(h * w)
    masks = [np.zeros(hw, np.uint8), np.ones(hw, np.uint8), (rng.random(hw) < 0.5).astype(np.uint8),
             (rng.random(hw) < 0.01).astype(np.uint8)]
    corner = np.zeros(hw, np.uint8)
    corner[-1, -1] = corner[0, 0] = 1
    block = np.zeros(hw, np.uint8)
    block[h // 3: h // 2 + 1, w // 4: max(w // 4 + 1, w - 1)] = 1
    masks += [corner, block]
    rles = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
    got = _decode_masks(rles, h, w)
    assert got.dtype == bool and got.flags.c_contiguous
    assert np.array_equal(got, np.stack(masks).astype(bool))
    as_str = [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]
    assert np.array_equal(_decode_masks(as_str, h, w), got)

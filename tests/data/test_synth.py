"""Synthetic ARMBench-like totes: exact annotations, error-mode content, determinism, layout."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from armbench_segmentation.data import synth
from armbench_segmentation.data.synth import (
    SynthImage,
    generate_dataset,
    mask_to_polygons,
    polygons_to_mask,
    render_tote,
)
from armbench_segmentation.errors import ArmbenchError

W, H = 612, 512
SEEDS = range(24)


@pytest.fixture(scope="module")
def renders() -> dict[int, SynthImage]:
    return {s: render_tote(s, W, H) for s in SEEDS}


def _coco_mask(polygons: list[list[float]], h: int, w: int) -> np.ndarray:
    rles = mask_utils.frPyObjects(polygons, h, w)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


# ----------------------------------------------------------------------------- annotations


def test_object_polygons_rasterize_to_the_label_map(renders):
    checked = 0
    for seed, r in renders.items():
        assert r.image.shape == (H, W, 3) and r.image.dtype == np.uint8
        assert r.label_map.shape == (H, W) and r.label_map.dtype == np.int32
        assert r.image.flags["C_CONTIGUOUS"] and r.label_map.flags["C_CONTIGUOUS"]
        for inst in r.instances:
            if inst.category != "Object":
                continue
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in inst.polygons)
            coco = _coco_mask(inst.polygons, H, W)
            own = r.label_map == inst.label
            iou = (coco & own).sum() / (coco | own).sum()
            assert iou >= 0.98, f"seed {seed} instance {inst.label} ({inst.kind}): IoU {iou:.4f}"
            checked += 1
    assert checked > 100


def test_content_covers_the_error_modes(renders):
    counts = [len(r.instances) for r in renders.values()]
    kinds = {i.kind for r in renders.values() for i in r.instances}
    assert set(synth.OBJECT_KINDS) <= kinds, f"missing kinds: {set(synth.OBJECT_KINDS) - kinds}"
    assert max(counts) >= 25, f"no dense tote among seeds {list(SEEDS)}: {counts}"
    assert min(counts) >= 3
    assert 6 <= np.median(counts) <= 16
    multi = [i for r in renders.values() for i in r.instances if i.category == "Object" and len(i.polygons) >= 2]
    assert multi, "no occlusion-split (multi-polygon) instance"
    assert any(i.visible_fraction < 0.6 for i in multi)


def test_twins_share_a_group_and_touch(renders):
    found = 0
    for r in renders.values():
        groups: dict[int, list] = {}
        for inst in r.instances:
            if inst.group is not None:
                groups.setdefault(inst.group, []).append(inst)
        for members in groups.values():
            if len(members) < 2:
                continue
            assert len({m.kind for m in members}) == 1
            masks = [r.label_map == m.label for m in members]
            # some pair of copies is at most 3 px apart
            dil = [np.pad(m, 3) for m in masks]
            near = False
            for a in range(len(masks)):
                grown = dil[a].copy()
                for dy in range(-3, 4):
                    for dx in range(-3, 4):
                        grown |= np.roll(np.roll(dil[a], dy, 0), dx, 1)
                near |= any((grown & dil[b]).any() for b in range(len(masks)) if b != a)
            assert near
            found += 1
    assert found >= 2


def test_label_map_and_visibility_rules(renders):
    min_area = synth.MIN_FRAGMENT_FRACTION * W * H
    for seed, r in renders.items():
        tote = r.instances[0]
        assert tote.category == "Tote" and tote.label == 1 and tote.kind == "tote"
        assert r.instances[1:] and all(i.category == "Object" for i in r.instances[1:])
        labels = [i.label for i in r.instances]
        assert len(set(labels)) == len(labels)
        assert set(np.unique(r.label_map)) == {0, *labels}, f"seed {seed}: label map values differ from instances"
        # everything labelled lies inside the tote outline; outside is 0
        outline = _coco_mask(tote.polygons, H, W)
        assert not (r.label_map[~outline]).any()
        assert (r.label_map[outline] > 0).all()
        for inst in r.instances[1:]:
            assert synth.MIN_VISIBLE_FRACTION <= inst.visible_fraction <= 1.0
            for p in inst.polygons:
                # each piece is a hole-free region of at least one pixel; total area above the drop limit
                assert _coco_mask([p], H, W).any()
            assert (r.label_map == inst.label).sum() >= min_area


def test_yellow_and_blue_totes(renders):
    colors = set()
    for r in renders.values():
        floor = r.image[r.label_map == 1].astype(float).mean(0)  # RGB
        if floor[0] > floor[2] + 60 and floor[1] > floor[2] + 40:
            colors.add("yellow")
        elif floor[2] > floor[0] + 60:
            colors.add("blue")
        else:
            pytest.fail(f"tote colour neither yellow nor blue: {floor}")
    assert colors == {"yellow", "blue"}


def test_objects_differ_from_the_tote():
    r = render_tote(5, W, H)
    tote_px = r.image[r.label_map == 1].astype(float).mean(0)
    obj_px = r.image[r.label_map > 1].astype(float).mean(0)
    assert np.abs(tote_px - obj_px).max() > 15
    assert r.image[r.label_map == 0].std() > 1  # textured background, not flat


# ----------------------------------------------------------------------------- polygons


def _exact(mask: np.ndarray) -> bool:
    polys = mask_to_polygons(mask)
    return bool(polys) and np.array_equal(polygons_to_mask(polys, *mask.shape), mask.astype(bool))


def test_mask_to_polygons_is_exact_on_hard_masks():
    m = np.zeros((20, 30), bool)
    m[5, 3:25] = True  # one-pixel-thin line
    assert _exact(m)
    m = np.zeros((20, 30), bool)
    m[2:18, 2:28] = True
    m[6:10, 8:12] = False  # hole
    m[12:15, 14:20] = False  # second hole
    assert _exact(m)
    assert len(mask_to_polygons(m)) >= 2
    m = np.zeros((10, 10), bool)
    m[2, 2] = m[3, 3] = m[4, 4] = True  # diagonal chain, single pixels
    assert _exact(m)
    ring = np.ones((9, 9), bool)
    ring[1:8, 1:8] = False
    ring[3:6, 3:6] = True  # island inside a hole inside a region
    assert _exact(ring)
    rng = np.random.default_rng(0)
    for _ in range(30):
        blob = rng.random((25, 35)) < 0.45  # noisy masks: many holes, pinches, pixels
        assert _exact(blob)


def test_mask_to_polygons_offsets_and_empty():
    m = np.zeros((4, 5), bool)
    m[1:3, 2:4] = True
    polys = mask_to_polygons(m, x0=100, y0=50)
    full = polygons_to_mask(polys, 60, 120)
    assert full.sum() == 4 and full[51:53, 102:104].all()
    assert mask_to_polygons(np.zeros((4, 5), bool)) == []


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_image_different_seed_different_image():
    a = render_tote(7, W, H)
    b = render_tote(np.random.SeedSequence(7), W, H)
    c = render_tote(8, W, H)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label_map, b.label_map)
    assert a.instances == b.instances
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("bad", [dict(width=10), dict(height=0), dict(width=64.5)])
def test_render_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="must be an int"):
        render_tote(0, **{"width": W, "height": H, **bad})


def test_render_rejects_negative_seed():
    with pytest.raises(ValueError, match="seed"):
        render_tote(-1, W, H)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_dataset_identical_for_any_worker_count(tmp_path):
    kw = dict(n_train=2, n_val=1, n_unlabeled=1, seed=3, width=320, height=256, progress=False)
    s1 = generate_dataset(tmp_path / "one", workers=1, **kw)
    s2 = generate_dataset(tmp_path / "two", workers=2, **kw)
    assert s1["images"] == s2["images"] == 4
    d1, d2 = _digest(tmp_path / "one"), _digest(tmp_path / "two")
    assert len([k for k in d1 if k.startswith("images/")]) == 4
    assert d1 == d2
    # a different seed gives different ids and images
    generate_dataset(tmp_path / "other", workers=1, **{**kw, "seed": 4})
    d3 = _digest(tmp_path / "other")
    assert set(d3) != set(d1)


# ----------------------------------------------------------------------------- layout / schema


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "mix-object-tote"
    summary = generate_dataset(out, n_train=3, n_val=2, n_unlabeled=2, seed=11, width=W, height=H, workers=1, progress=False)
    return out, summary


def test_dataset_layout_and_summary(dataset):
    out, summary = dataset
    assert summary["splits"] == {
        split: {"images": n, "annotations": summary["splits"][split]["annotations"]}
        for split, n in (("train", 3), ("val", 2), ("test", 2))
    }
    assert summary["images"] == 7
    assert summary["annotations"] == sum(s["annotations"] for s in summary["splits"].values())
    assert summary["instances_per_image"]["min"] >= 4  # tote + at least 3 objects
    assert summary["seconds"] > 0 and summary["images_per_second"] > 0
    files = sorted(p.name for p in (out / "images").iterdir())
    assert len(files) == 7
    for name in files:
        stem, ext = name.split(".")
        assert ext == "jpg" and len(stem) == 10 and stem.isalnum() and stem == stem.upper()
    assert {p.name for p in out.iterdir()} >= {"images", "train.json", "val.json", "test.json"}
    assert not list(out.rglob("*.tmp"))


def test_dataset_coco_schema(dataset):
    out, _ = dataset
    image_ids, ann_ids, file_names = set(), set(), set()
    for split in ("train", "val", "test"):
        raw = json.loads((out / f"{split}.json").read_text())
        assert set(raw) >= {"info", "images", "annotations", "categories"}
        assert raw["categories"] == [
            {"id": 1, "name": "Tote", "supercategory": "container"},
            {"id": 2, "name": "Object", "supercategory": "item"},
        ]
        coco = COCO(str(out / f"{split}.json"))
        by_name = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
        assert set(by_name) == {"Tote", "Object"}
        for img in raw["images"]:
            assert set(img) >= {"id", "file_name", "width", "height"}
            assert (img["width"], img["height"]) == (W, H)
            assert (out / "images" / img["file_name"]).is_file() and "/" not in img["file_name"]
            assert img["id"] not in image_ids
            image_ids.add(img["id"])
            file_names.add(img["file_name"])
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert sum(a["category_id"] == by_name["Tote"] for a in anns) == 1
            assert sum(a["category_id"] == by_name["Object"] for a in anns) >= 3
        for ann in raw["annotations"]:
            assert ann["id"] not in ann_ids
            ann_ids.add(ann["id"])
            assert ann["iscrowd"] == 0
            assert all(len(p) >= 6 for p in ann["segmentation"])
            assert all(round(v, 2) == v for p in ann["segmentation"] for v in p)
            m = coco.annToMask(ann).astype(bool)
            ys, xs = np.nonzero(m)
            union = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert np.allclose(ann["bbox"], union, atol=1.0), (ann["bbox"], union)
            rle = coco.annToRLE(ann)
            assert abs(ann["area"] - float(mask_utils.area(rle))) <= 0.01 * ann["area"]
            assert set(ann["attributes"]) == {"kind", "visible_fraction", "group"}
    assert len(file_names) == len(image_ids) == 7


def test_dataset_image_matches_render(dataset):
    """The JPEG on disk is the rendered image (quality ~90) and annotations match the render."""
    import cv2

    out, _ = dataset
    raw = json.loads((out / "train.json").read_text())
    first = raw["images"][0]
    expected = render_tote(np.random.SeedSequence(11).spawn(1)[0], W, H)
    bgr = cv2.imread(str(out / "images" / first["file_name"]))
    diff = np.abs(bgr[:, :, ::-1].astype(int) - expected.image.astype(int)).mean()
    assert diff < 6
    anns = [a for a in raw["annotations"] if a["image_id"] == first["id"]]
    assert len(anns) == len(expected.instances)
    assert [a["segmentation"] for a in anns] == [i.polygons for i in expected.instances]


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split 'val'"):
        generate_dataset(tmp_path, 1, -1, 0, progress=False)
    with pytest.raises(ValueError, match="workers"):
        generate_dataset(tmp_path, 1, 0, 0, workers=0, progress=False)


def test_regenerating_removes_stale_images(tmp_path):
    kw = dict(n_val=0, n_unlabeled=0, width=160, height=128, workers=1, progress=False)
    generate_dataset(tmp_path, n_train=3, seed=1, **kw)
    generate_dataset(tmp_path, n_train=2, seed=2, **kw)
    names = {p.name for p in (tmp_path / "images").iterdir()}
    listed = {i["file_name"] for i in json.loads((tmp_path / "train.json").read_text())["images"]}
    assert names == listed and len(names) == 2


# ----------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> int:
    from armbench_segmentation.commands import synth as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    return cmd.run(parser.parse_args(argv))


def test_cli_writes_and_summarises(tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["--out", str(out), "--n-train", "1", "--n-val", "1", "--n-unlabeled", "0", "--width", "160",
            "--height", "128", "--workers", "1", "--no-progress"]
    assert _cli(argv) == 0
    text = capsys.readouterr().out
    assert "train" in text and "images/s" in text and "median" in text
    assert len(list((out / "images").glob("*.jpg"))) == 2
    assert _cli(argv) == 0  # a synthetic dataset may be regenerated in place


def test_cli_refuses_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    argv = ["--out", str(tmp_path), "--n-train", "1", "--n-val", "0", "--n-unlabeled", "0", "--width", "160",
            "--height", "128", "--workers", "1", "--no-progress"]
    with pytest.raises(ArmbenchError, match="--force"):
        _cli(argv)
    assert not (tmp_path / "train.json").exists()
    assert _cli(argv + ["--force"]) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "train.json").exists()


@pytest.mark.parametrize("flag,value", [("--n-train", "-1"), ("--width", "10"), ("--workers", "0"), ("--seed", "-3")])
def test_cli_rejects_bad_values(tmp_path, flag, value):
    argv = ["--out", str(tmp_path / "x"), "--no-progress", flag, value]
    with pytest.raises(ArmbenchError, match=flag):
        _cli(argv)


def test_regenerating_never_deletes_foreign_files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "REALIMAGE1.jpg").write_bytes(b"not ours")
    kw = dict(n_val=0, n_unlabeled=0, width=160, height=128, workers=1, progress=False)
    generate_dataset(tmp_path, n_train=2, seed=1, **kw)
    assert synth.is_synthetic_dataset(tmp_path)
    generate_dataset(tmp_path, n_train=1, seed=5, **kw)
    names = {p.name for p in (tmp_path / "images").iterdir()}
    assert "REALIMAGE1.jpg" in names and len(names) == 2

"""The labeling round trip: polygons from masks, pre-annotated COCO / Label Studio exports,
and the merge of annotated COCO files back into a train file.

References: pycocotools rasterizes every polygon written (areas and masks compared with the
hand-drawn masks they came from), pycocotools' COCO loads every merged file; the stores hold
hand-made predictions with known geometry; an "annotator" edits the exported COCO file
(changed mask, deleted and added instance) and the merged file must hold exactly that.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from armbench_segmentation.analysis.labeling import (
    coco_prelabels, label_studio_config, label_studio_tasks, mask_to_polygons, merge_annotated, safe_name,
    write_selection_exports,
)
from armbench_segmentation.analysis.store import ResultsStore, StoredSample
from armbench_segmentation.errors import ArmbenchError

H, W = 100, 120


def _raster(polygons, h=H, w=W) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _rect(x1, y1, x2, y2, h=H, w=W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


def _ring() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    cv2.circle(m, (60, 50), 35, 1, -1)
    cv2.circle(m, (60, 50), 12, 0, -1)
    return m.astype(bool)


# ---------------------------------------------------------------------------- polygons
def test_a_rectangle_of_pixels_comes_back_as_its_corners():
    polygons = mask_to_polygons(_rect(10, 20, 50, 60))
    assert polygons == [[10.0, 20.0, 10.0, 60.0, 50.0, 60.0, 50.0, 20.0]]
    assert mask_utils.area(mask_utils.frPyObjects(polygons, H, W))[0] == 1600  # pycocotools: exactly the pixels


def test_holes_stay_empty_and_parts_stay_separate():
    ring = _ring()
    two = _rect(5, 5, 20, 15) | _rect(90, 70, 110, 95)
    p_ring, p_two = mask_to_polygons(ring), mask_to_polygons(two)
    assert len(p_ring) == 1 and len(p_two) == 2  # the hole is joined in by a cut, not a second part
    back = _raster(p_ring)
    assert not back[50, 60] and back[50, 60 + 25]  # the hole empty, the ring full (pycocotools' fill)
    assert _iou(back, ring) > 0.97 and _iou(_raster(p_two), two) == 1.0


def test_thin_and_tiny_parts_are_kept():
    m = _rect(10, 10, 80, 13) | _rect(100, 50, 101, 51) | _rect(20, 80, 60, 81)  # 3-px bar, one pixel, 1-px line
    polygons = mask_to_polygons(m)
    assert len(polygons) == 3 and _iou(_raster(polygons), m) > 0.95
    assert mask_to_polygons(np.zeros((H, W), bool)) == []
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        mask_to_polygons(np.zeros((2, H, W), bool))


# ---------------------------------------------------------------------------- a store with known predictions
MASKS = {  # sample -> [(class index, score, mask)]; class 0 = Object, 1 = Tote
    "a": [(1, 0.9, _rect(2, 2, 118, 98)), (0, 0.8, _rect(10, 20, 50, 60)), (0, 0.4, _ring())],
    "b": [(0, 0.7, _rect(5, 5, 20, 15) | _rect(90, 70, 110, 95))],
    "c": [],  # no predictions: an image without pre-annotations
}


@pytest.fixture
def store(tmp_path):
    s = ResultsStore(tmp_path / "results.sqlite")
    s.start_run("run1", {"model_sha256": "f" * 64, "settings": {"data": {"class_names": ["Object", "Tote"]}}})
    samples = []
    for i, (sid, preds) in enumerate(MASKS.items()):
        records = [{"class_index": c, "score": sc, "bbox": [0, 0, 1, 1], "segmentation": _rle(m)} for c, sc, m in preds]
        row = {"image_id": 500 + i, "file_name": f"{sid}.jpg", "width": W, "height": H}  # as the pipeline stores
        samples.append(StoredSample("unlabeled", sid, "ok", row=row, predictions=records,
                                    image_id=500 + i, file_name=f"{sid}.jpg", seq=i,
                                    embedding=np.zeros(4, np.float32)))
    samples.append(StoredSample("train", "t0", "ok", row={"width": W, "height": H}, predictions=[], image_id=1,
                                file_name="t0.jpg", seq=0, embedding=np.zeros(4, np.float32)))
    s.put_samples(samples)
    yield s
    s.close()


PICKS = pd.DataFrame({"rank": [1, 2, 3], "sample_id": ["b", "c", "a"], "score": [0.9, 0.5, 0.25],
                      "reason": ["far from labeled data", "=HYPERLINK(\"x\") <script>", "margin 0.3"]})


def test_coco_prelabels_polygons_classes_by_name_and_rank(store, tmp_path):
    coco = coco_prelabels(store, None, ["a", "b", "c"], picks=PICKS)
    assert [im["file_name"] for im in coco["images"]] == ["b.jpg", "c.jpg", "a.jpg"]  # rank order
    assert [im["id"] for im in coco["images"]] == [1, 2, 3]  # image id = rank
    assert [im["dataset_image_id"] for im in coco["images"]] == [501, 502, 500]
    assert [(im["rank"], im["score"], im["reason"]) for im in coco["images"]] == list(
        zip(PICKS["rank"], PICKS["score"], PICKS["reason"]))
    path = tmp_path / "prelabels.json"
    path.write_text(json.dumps(coco))
    api = COCO(str(path))
    cats = {c["name"]: c["id"] for c in coco["categories"]}
    assert cats == {"Tote": 1, "Object": 2}
    by_image = {im["file_name"]: api.imgToAnns[im["id"]] for im in coco["images"]}
    assert [len(by_image[f]) for f in ("a.jpg", "b.jpg", "c.jpg")] == [3, 1, 0]
    for ann, (cls, score, mask) in zip(by_image["a.jpg"], MASKS["a"]):
        assert ann["category_id"] == cats[["Object", "Tote"][cls]] and ann["score"] == score
        assert _iou(api.annToMask(ann).astype(bool), mask) > 0.97
        assert ann["area"] == pytest.approx(api.annToMask(ann).sum()) and ann["iscrowd"] == 0
        assert ann["attributes"] == {"rank": 3, "pick_score": 0.25, "reason": "margin 0.3"}
    (b_ann,) = by_image["b.jpg"]
    assert len(b_ann["segmentation"]) == 2 and b_ann["bbox"] == [5.0, 5.0, 105.0, 90.0]


def test_label_studio_tasks_in_rank_order_with_percent_polygons(store):
    tasks = label_studio_tasks(store, None, ["a", "b", "c"], picks=PICKS, image_url="/data/local-files/?d=images/")
    assert [t["data"]["sample_id"] for t in tasks] == ["b", "c", "a"]
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=images/b.jpg"
    assert [t["data"]["rank"] for t in tasks] == [1, 2, 3]
    pred = tasks[2]["predictions"][0]
    assert pred["model_version"] == "armbench-yolov5s-seg-ffffffffffff" and pred["score"] == 0.25
    labels = [r["value"]["polygonlabels"] for r in pred["result"]]
    assert labels == [["Tote"], ["Object"], ["Object"]]
    rect = pred["result"][1]
    assert rect["type"] == "polygonlabels" and rect["from_name"] == "label" and rect["to_name"] == "image"
    pts = np.array(rect["value"]["points"])  # percent of the image
    assert sorted(map(tuple, np.round(pts * [W / 100, H / 100], 3))) == [(10, 20), (10, 60), (50, 20), (50, 60)]
    assert rect["score"] == 0.8 and rect["original_width"] == W and rect["original_height"] == H
    assert len(tasks[0]["predictions"][0]["result"]) == 2  # a two-part instance: one region per part
    assert tasks[1]["predictions"][0]["result"] == []


def test_label_config_lists_the_labels_and_escapes_them():
    root = ET.fromstring(label_studio_config(["Object", "Tote", 'a"<b>&'], with_reason=True))
    poly = root.find("PolygonLabels")
    assert poly.get("name") == "label" and poly.get("toName") == "image"
    assert [lab.get("value") for lab in poly.findall("Label")] == ["Object", "Tote", 'a"<b>&']
    assert root.find("Image").get("value") == "$image" and root.find("Header").get("value") == "$reason"


def test_write_selection_exports_writes_every_kind_with_a_safe_name(store, tmp_path):
    paths = write_selection_exports(tmp_path / "sel", store, None, [("unlabeled", "a"), "b", "missing"],
                                    "../../etc/my sel<1>")
    assert set(paths) == {"ids", "coco", "label_studio", "label_config"}
    assert all(p.parent == tmp_path / "sel" and p.name.startswith("etc_my_sel_1") for p in paths.values())
    ids = pd.read_csv(paths["ids"])
    assert ids["sample_id"].tolist() == ["a", "b"] and ids["split"].tolist() == ["unlabeled", "unlabeled"]
    coco = json.loads(paths["coco"].read_text())
    assert [im["id"] for im in coco["images"]] == [1, 2] and "rank" not in coco["images"][0]
    assert len(json.loads(paths["label_studio"].read_text())) == 2
    assert ET.parse(paths["label_config"]).getroot().find("Header") is None  # no reason without picks
    assert not list((tmp_path / "sel").glob(".*tmp"))
    with pytest.raises(ValueError, match="no letters"):
        safe_name("../..")


# ---------------------------------------------------------------------------- merging back
def _write_jpg(path: Path, w=W, h=H) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))


@pytest.fixture
def dataset_dir(tmp_path):
    root = tmp_path / "ds"
    for name in ("t0.jpg", "a.jpg", "b.jpg", "c.jpg"):
        _write_jpg(root / "images" / name)
    base = {"info": {"description": "base"}, "licenses": [],
            "images": [{"id": 7, "file_name": "t0.jpg", "width": W, "height": H}],
            "annotations": [{"id": 40, "image_id": 7, "category_id": 2, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]],
                             "area": 100.0, "bbox": [0, 0, 10, 10], "iscrowd": 0}],
            "categories": [{"id": 1, "name": "Tote"}, {"id": 2, "name": "Object"}]}
    (root / "train.json").write_text(json.dumps(base))
    return root


def _annotated(store, tmp_path) -> tuple[Path, dict]:
    """The pre-annotated export edited like an annotator would: image a's Object rectangle
    moved and enlarged (changed mask), its ring deleted, a new Object added on image c; the
    tool renumbers categories (Object 1, Tote 2) and images."""
    coco = coco_prelabels(store, None, ["a", "b", "c"], picks=PICKS)
    old = {c["id"]: c["name"] for c in coco["categories"]}
    coco["categories"] = [{"id": 1, "name": "Object"}, {"id": 2, "name": "Tote"}]
    new_id = {"Object": 1, "Tote": 2}
    for ann in coco["annotations"]:
        ann["category_id"] = new_id[old[ann["category_id"]]]
    img = {im["file_name"]: im["id"] for im in coco["images"]}
    a_anns = [ann for ann in coco["annotations"] if ann["image_id"] == img["a.jpg"]]
    tote, rect, ring = a_anns
    rect["segmentation"] = [[60, 10, 100, 10, 100, 40, 60, 40]]  # changed mask: 40 x 30
    coco["annotations"].remove(ring)  # deleted instance
    coco["annotations"].append({"id": 99, "image_id": img["c.jpg"], "category_id": 1, "iscrowd": 0,
                                "segmentation": [[30, 30, 70, 30, 70, 50, 30, 50]], "bbox": [0, 0, 1, 1]})  # added
    path = tmp_path / "annotated.json"
    path.write_text(json.dumps(coco))
    return path, coco


def test_merge_adds_the_edited_images_with_ids_renumbered_and_areas_from_the_masks(store, tmp_path, dataset_dir):
    annotated, _ = _annotated(store, tmp_path)
    out = tmp_path / "train_new.json"
    summary = merge_annotated(dataset_dir / "train.json", [annotated], out)
    merged = COCO(str(out))
    assert len(merged.imgs) == 4 and len(merged.anns) == 1 + 2 + 1 + 1  # base + a (tote, moved rect) + b + c (new)
    assert summary.images_added == 3 and summary.annotations_added == 4 and not summary.problems
    assert summary.added_by_category == {"Tote": 1, "Object": 3}
    ids = {im["file_name"]: im["id"] for im in merged.dataset["images"]}
    assert ids["t0.jpg"] == 7 and sorted(ids[f] for f in ("a.jpg", "b.jpg", "c.jpg")) == [8, 9, 10]
    assert sorted(merged.anns) == [40, 41, 42, 43, 44]  # base ids kept, new ones after them
    a_objects = [a for a in merged.imgToAnns[ids["a.jpg"]] if a["category_id"] == 2]  # base's Object id
    assert len(a_objects) == 1 and a_objects[0]["area"] == 40 * 30 and a_objects[0]["bbox"] == [60, 10, 40, 30]
    assert np.array_equal(merged.annToMask(a_objects[0]).astype(bool), _rect(60, 10, 100, 40))
    (c_new,) = merged.imgToAnns[ids["c.jpg"]]
    assert c_new["area"] == 800 and c_new["bbox"] == [30, 30, 40, 20] and c_new["category_id"] == 2
    (b_ann,) = merged.imgToAnns[ids["b.jpg"]]
    assert b_ann["area"] == 15 * 10 + 20 * 25  # the two parts, from pycocotools
    assert all("score" not in a and "attributes" not in a for a in merged.dataset["annotations"])
    assert json.loads((dataset_dir / "train.json").read_text())["images"][0]["id"] == 7  # base untouched


def test_careless_inputs_are_named_and_the_good_images_still_merged(store, tmp_path, dataset_dir):
    annotated, coco = _annotated(store, tmp_path)
    coco["categories"].append({"id": 5, "name": "Cat"})
    coco["annotations"].append({"id": 100, "image_id": 1, "category_id": 5, "segmentation": [[1, 1, 9, 1, 9, 9]]})
    coco["annotations"].append({"id": 101, "image_id": 1, "category_id": 1,  # partly outside the 120 x 100 image
                                "segmentation": [[100, 80, 140, 80, 140, 120, 100, 120]]})
    coco["annotations"].append({"id": 102, "image_id": 1, "category_id": 1,  # entirely outside
                                "segmentation": [[200, 200, 210, 200, 210, 210]]})
    coco["annotations"].append({"id": 103, "image_id": 1, "category_id": 1,  # a damaged RLE string
                                "segmentation": {"size": [H, W], "counts": "0000000000"}})
    coco["annotations"].append({"id": 104, "image_id": 1, "category_id": 1,  # a good RLE: kept as a mask
                                "segmentation": _rle(_rect(0, 0, 10, 10)), "iscrowd": 1})
    coco["images"].append({"id": 77, "file_name": "gone.jpg", "width": W, "height": H})
    coco["images"].append({"id": 78, "file_name": "t0.jpg", "width": W, "height": H})  # already in the base
    annotated.write_text(json.dumps(coco))
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    out = tmp_path / "out.json"
    summary = merge_annotated(dataset_dir / "train.json", [broken, annotated, tmp_path / "nope.json"], out)
    text = "\n".join(summary.problems)
    assert summary.files_failed == 2 and "broken.json is not valid JSON" in text and "nope.json not found" in text
    assert "'Cat'" in text and "gone.jpg" in text and "already in the base" in text and "clipped" in text
    assert "RLE counts do not cover" in text
    assert summary.images_added == 3 and summary.polygons_clipped == 2 and summary.annotations_dropped == 3
    merged = COCO(str(out))
    b_id = next(im["id"] for im in merged.dataset["images"] if im["file_name"] == "b.jpg")
    clipped = [a for a in merged.imgToAnns[b_id] if a["area"] == 20 * 20]
    assert len(clipped) == 1 and clipped[0]["bbox"] == [100, 80, 20, 20]  # cut at the image border
    (rle_ann,) = [a for a in merged.imgToAnns[b_id] if isinstance(a["segmentation"], dict)]
    assert rle_ann["area"] == 100 and rle_ann["iscrowd"] == 1
    assert all(len(line.splitlines()) == 1 for line in summary.problems)


def test_existing_images_replace_and_file_names_from_labeling_tools(store, tmp_path, dataset_dir):
    export = {"images": [{"id": 3, "file_name": "/data/local-files/?d=images/t0.jpg", "width": W, "height": H},
                         {"id": 4, "file_name": "images/1a2b3c4d-a.jpg", "width": W, "height": H},
                         {"id": 5, "file_name": "../../etc/passwd", "width": W, "height": H},
                         {"id": 6, "file_name": "b.jpg", "width": 2 * W, "height": H}],
              "annotations": [{"id": 1, "image_id": 3, "category_id": 1, "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]]},
                              {"id": 2, "image_id": 4, "category_id": 1, "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]}],
              "categories": [{"id": 1, "name": "object"}]}  # case differs: matched case-insensitively
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(export))
    out = tmp_path / "out.json"
    summary = merge_annotated(dataset_dir / "train.json", [path], out, existing="replace")
    merged = COCO(str(out))
    names = sorted(im["file_name"] for im in merged.dataset["images"])
    assert names == ["a.jpg", "t0.jpg"] and summary.images_replaced == 1 and summary.annotations_removed == 1
    (t0,) = merged.imgToAnns[7]
    assert t0["area"] == 400 and t0["id"] == 41  # old annotation 40 replaced
    text = "\n".join(summary.problems)
    assert "passwd" in text and "2x" not in text and f"{2 * W}x{H}" in text
    with pytest.raises(ArmbenchError, match="is the base file"):
        merge_annotated(dataset_dir / "train.json", [path], dataset_dir / "train.json")
    with pytest.raises(ArmbenchError, match="images folder"):
        merge_annotated(dataset_dir / "train.json", [path], out, images_dir=tmp_path / "none")


def test_merge_labels_cli_prints_a_summary_and_one_line_per_problem(store, tmp_path, dataset_dir, capsys):
    from armbench_segmentation import cli

    annotated, _ = _annotated(store, tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_bytes(b"\x00\xff not json")
    out = tmp_path / "new" / "train.json"
    rc = cli.main(["merge-labels", "--base", str(dataset_dir / "train.json"), "--annotated", str(annotated),
                   str(broken), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0
    summary = json.loads(captured.out)
    assert summary["images_added"] == 3 and summary["annotations_added"] == 4 and summary["files_failed"] == 1
    assert captured.err.count("\n") == 1 and "broken.json is not valid JSON" in captured.err
    assert "Traceback" not in captured.err and len(COCO(str(out)).imgs) == 4
    rc = cli.main(["merge-labels", "--base", str(broken), "--annotated", str(annotated), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("armbench merge-labels: error:") and err.count("\n") == 1

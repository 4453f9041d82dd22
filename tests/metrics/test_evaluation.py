"""Dataset AP against pycocotools COCOeval on synthetic GT and perturbed predictions,
results-file validation, TP/FP/FN and over/under totals."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from armbench_segmentation.config import MetricsConfig
from armbench_segmentation.errors import ArmbenchError
from armbench_segmentation.metrics.evaluation import CocoEvaluator, evaluate_coco_results, validate_results
from armbench_segmentation.structures import Instances, masks_to_boxes

CLASS_NAMES = ("Object", "Tote")
CATEGORIES = [{"id": 1, "name": "Tote"}, {"id": 2, "name": "Object"}]  # ARMBench ids
NAME_TO_CAT = {"Tote": 1, "Object": 2}


def encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def uncompressed(mask: np.ndarray) -> dict:
    flat = mask.astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [len(flat)]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": list(mask.shape), "counts": [int(r) for r in runs]}


def random_mask(rng, h, w) -> np.ndarray:
    m = np.zeros((h, w), bool)
    x1, y1 = rng.integers(0, w - 4), rng.integers(0, h - 4)
    x2, y2 = rng.integers(x1 + 3, min(w, x1 + 25) + 1), rng.integers(y1 + 3, min(h, y1 + 25) + 1)
    if rng.random() < 0.5:
        m[y1:y2, x1:x2] = True
    else:  # ellipse
        yy, xx = np.ogrid[:h, :w]
        cy, cx, ry, rx = (y1 + y2) / 2, (x1 + x2) / 2, (y2 - y1) / 2, (x2 - x1) / 2
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return m


def jitter(rng, mask: np.ndarray) -> np.ndarray:
    dy, dx = rng.integers(-3, 4, 2)
    out = np.roll(mask, (dy, dx), axis=(0, 1))
    if rng.random() < 0.5:  # erode/grow a side
        ys, xs = np.nonzero(out)
        if len(ys):
            out[ys.min() : ys.min() + rng.integers(0, 3)] = False
    return out


def build_scene(seed: int, n_images: int = 12):
    """GT dataset dict (polygons, RLE, crowd) and a COCO results list, plus the masks."""
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    ann_id = 1
    for img_id in range(1, n_images + 1):
        h, w = int(rng.integers(30, 60)), int(rng.integers(30, 70))
        images.append({"id": img_id * 7, "file_name": f"im{img_id}.jpg", "height": h, "width": w})
        n_gt = 0 if img_id == 3 else int(rng.integers(1, 7))
        for k in range(n_gt):
            name = "Tote" if rng.random() < 0.2 else "Object"
            mask = random_mask(rng, h, w)
            crowd = int(rng.random() < 0.1)
            if crowd:
                seg = uncompressed(mask)
            elif rng.random() < 0.4:
                ys, xs = np.nonzero(mask)
                x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                seg = [[float(x1), float(y1), float(x2), float(y1), float(x2), float(y2), float(x1), float(y2)]]
                mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))).astype(bool)
            else:
                seg = encode(mask)
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            anns.append({"id": ann_id, "image_id": img_id * 7, "category_id": NAME_TO_CAT[name], "segmentation": seg,
                         "area": float(mask.sum()), "bbox": bbox, "iscrowd": crowd})
            ann_id += 1
            # predictions: jittered copies (sometimes two: a duplicate), misses, wrong class
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
                pm = jitter(rng, mask)
                if not pm.any():
                    continue
                pname = name if rng.random() > 0.1 else ("Tote" if name == "Object" else "Object")
                results.append(_result(img_id * 7, pname, pm, float(rng.random())))
        for _ in range(int(rng.integers(0, 4))):  # false positives
            results.append(_result(img_id * 7, "Object", random_mask(rng, h, w), float(rng.random())))
    results.append(_result(7, "Object", random_mask(rng, images[0]["height"], images[0]["width"]), 0.5))  # a score tie
    results.append(_result(14, "Object", random_mask(rng, images[1]["height"], images[1]["width"]), 0.5))
    return {"images": images, "annotations": anns, "categories": CATEGORIES}, results


def _result(image_id, name, mask, score):
    ys, xs = np.nonzero(mask)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    return {"image_id": image_id, "category_id": NAME_TO_CAT[name], "segmentation": encode(mask), "bbox": bbox, "score": score}


def _text(counts) -> str:
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


def make_coco(dataset: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(dataset)
        coco.createIndex()
    return coco


def cocoeval_per_class(dataset, results, iou_type, max_dets=100):
    gt = make_coco(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(results))
        e = COCOeval(gt, dt, iou_type)
        e.params.maxDets = [max_dets]  # evaluate() sorts this list; keep the cap last
        e.evaluate()
        e.accumulate()
    out = {}
    for k, cat_id in enumerate(e.params.catIds):
        name = gt.cats[cat_id]["name"]
        p = e.eval["precision"][:, :, k, 0, -1]  # (T, R)
        ap = lambda a: float(a[a > -1].mean()) if (a > -1).any() else None  # noqa: E731
        out[name] = {"AP": ap(p), "AP50": ap(p[0]), "AP75": ap(p[5])}
    return out


def assert_close(ours, ref, tol=1e-3):
    for name in CLASS_NAMES:
        for key in ("AP", "AP50", "AP75"):
            a, b = ours[name][key], ref[name][key]
            assert (a is None) == (b is None), (name, key, a, b)
            if a is not None:
                assert a == pytest.approx(b, abs=tol), (name, key, a, b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_equals_cocoeval_segm_and_bbox(seed):
    dataset, results = build_scene(seed)
    coco = make_coco(dataset)
    images = {i["id"]: (i["height"], i["width"]) for i in dataset["images"]}
    valid = validate_results(results, images, [1, 2])
    ours = evaluate_coco_results(coco, valid, CLASS_NAMES)
    for iou_type in ("segm", "bbox"):
        ref = cocoeval_per_class(dataset, results, iou_type)
        assert_close(getattr(ours, iou_type).per_class, ref)
        # not a vacuous comparison: both classes evaluated, APs strictly between 0 and 1
        assert 0 < ref["Object"]["AP"] < 1


def test_max_dets_cap_agrees_and_is_reported(caplog):
    dataset, results = build_scene(5, n_images=4)
    coco = make_coco(dataset)
    images = {i["id"]: (i["height"], i["width"]) for i in dataset["images"]}
    ours = evaluate_coco_results(coco, validate_results(results, images, [1, 2]), CLASS_NAMES, max_dets=2)
    assert_close(ours.segm.per_class, cocoeval_per_class(dataset, results, "segm", max_dets=2))
    assert ours.segm.truncated > 0
    assert "max_dets=2" in caplog.text


def test_mask_array_path_equals_cocoeval():
    """CocoEvaluator.add_image on decoded masks (mask_overlaps) gives COCOeval's segm AP."""
    dataset, results = build_scene(7)
    coco = make_coco(dataset)
    ev = CocoEvaluator(CLASS_NAMES)
    cat_to_class = {1: 1, 2: 0}
    for img in sorted(dataset["images"], key=lambda i: i["id"]):
        h, w = img["height"], img["width"]
        anns = coco.imgToAnns.get(img["id"], [])
        gm = np.array([coco.annToMask(a).astype(bool) for a in anns]).reshape(-1, h, w)
        gt = Instances(masks_to_boxes(gm), [cat_to_class[a["category_id"]] for a in anns], (h, w), masks=gm)
        dets = [r for r in results if r["image_id"] == img["id"]]
        dm = np.array([mask_utils.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
                       for r in dets]).reshape(-1, h, w).astype(bool)
        pred = Instances(masks_to_boxes(dm), [cat_to_class[r["category_id"]] for r in dets], (h, w), masks=dm,
                         scores=[r["score"] for r in dets])
        ev.add_image(gt, pred, "segm", gt_crowd=[bool(a["iscrowd"]) for a in anns])
    assert_close(ev.result().per_class, cocoeval_per_class(dataset, results, "segm"))


def test_perfect_and_empty_predictions():
    dataset, _ = build_scene(3, n_images=3)
    coco = make_coco(dataset)
    perfect = []
    for a in dataset["annotations"]:
        if not a["iscrowd"]:
            rle = coco.annToRLE(a)
            perfect.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
                            "segmentation": {"size": rle["size"], "counts": _text(rle["counts"])}, "bbox": a["bbox"]})
    images = {i["id"]: (i["height"], i["width"]) for i in dataset["images"]}
    res = evaluate_coco_results(coco, validate_results(perfect, images, [1, 2]), CLASS_NAMES)
    assert res.segm.per_class["Object"]["AP"] == pytest.approx(1.0)
    assert res.fp == 0 and res.fn == 0 and res.tp > 0 and res.f1 == 1.0
    empty = evaluate_coco_results(coco, [], CLASS_NAMES)
    assert empty.segm.per_class["Object"]["AP"] == 0.0 and empty.tp == 0 and empty.precision == 1.0
    assert empty.recall == 0.0


def test_object_counts_and_over_under_totals():
    h, w = 20, 40
    obj = np.zeros((2, h, w), bool)
    obj[0, 0:10, 0:10] = True
    obj[1, 0:10, 20:30] = True
    dataset = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w}],
        "categories": CATEGORIES,
        "annotations": [
            {"id": 10 + k, "image_id": 1, "category_id": 2, "segmentation": encode(m), "area": float(m.sum()),
             "bbox": [0, 0, 1, 1], "iscrowd": 0} for k, m in enumerate(obj)
        ],
    }
    left, right = obj[0].copy(), obj[0].copy()
    left[:, 5:] = False
    right[:, :5] = False
    merged = obj[0] | obj[1]
    merged[0:10, 10:20] = True
    preds = [_result(1, "Object", left, 0.9), _result(1, "Object", right, 0.8), _result(1, "Object", merged, 0.7),
             _result(1, "Tote", merged, 0.95)]
    coco = make_coco(dataset)
    res = evaluate_coco_results(coco, validate_results(preds, {1: (h, w)}, [1, 2]), CLASS_NAMES)
    # the left half (score 0.9) has IoU 50/100 = 0.5 >= 0.5 with object 10: the only TP;
    # the right half and the merged prediction are FP; object 11 is missed; Tote not counted
    assert (res.tp, res.fp, res.fn) == (1, 2, 1)
    assert res.over_segmented_instances == 1 and res.under_segmented_instances == 1
    assert res.over_segmented_images == 1 and res.under_segmented_images == 1
    d = res.as_dict()
    assert d["segm"]["Object"]["AP"] is not None and d["segm"]["Tote"]["AP"] is None


@pytest.mark.parametrize(
    "results, message",
    [
        ({"image_id": 1}, "JSON list"),
        ([{"image_id": 1, "category_id": 2, "score": 0.5}], r"entry 0 lacks \['segmentation'\]"),
        ([{"image_id": 99, "category_id": 2, "score": 0.5, "segmentation": {"size": [4, 5], "counts": "4"}}], "image_id 99"),
        ([{"image_id": 1, "category_id": 5, "score": 0.5, "segmentation": {"size": [4, 5], "counts": "4"}}], "category_id 5"),
        ([{"image_id": 1, "category_id": 2, "score": 0.5, "segmentation": {"size": [4, 5], "counts": "zz#"}}], "cannot be decoded"),
        ([{"image_id": 1, "category_id": 2, "score": 0.5, "segmentation": {"size": [8, 5], "counts": "8"}}], "original image resolution"),
        ([{"image_id": 1, "category_id": 2, "score": "high", "segmentation": {}}], "must be integers"),
        ([{"image_id": 1, "category_id": 2, "score": float("nan"), "segmentation": {}}], "finite"),
        (["x"], "entry 0 is a str"),
    ],
)
def test_bad_results_name_the_entry(results, message):
    with pytest.raises(ArmbenchError, match=message):
        validate_results(results, {1: (4, 5)}, [1, 2])


def test_valid_results_are_normalized():
    m = np.zeros((4, 5), bool)
    m[1:3, 1:4] = True
    out = validate_results([{"image_id": 1, "category_id": 2, "score": 1, "segmentation": encode(m)},
                            {"image_id": 1, "category_id": 2, "score": 1, "segmentation": uncompressed(m)}],
                           {1: (4, 5)}, [1, 2])
    assert out[0]["bbox"] == [1.0, 1.0, 3.0, 2.0]
    assert isinstance(out[0]["segmentation"]["counts"], bytes)
    assert mask_utils.area(out[1]["segmentation"]) == 6

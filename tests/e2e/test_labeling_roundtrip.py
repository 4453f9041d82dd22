"""The labeling round trip through the real converters: datumaro (CVAT's COCO importer and
exporter) and label-studio-converter, then ``armbench merge-labels`` back into train.json.

The "predictions" in the store are the synthetic dataset's own labels of its unlabeled split
(test.json carries them; the loader ignores them), written as original-resolution RLE like
the pipeline stores predictions. So the polygons that come back after a round trip have a
known truth: the dataset's masks (compared by IoU with pycocotools), and the picks' rank,
score and reason are known per image.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from armbench_segmentation.analysis.labeling import write_selection_exports
from armbench_segmentation.analysis.store import ResultsStore, StoredSample
from armbench_segmentation.config import DataConfig
from armbench_segmentation.data.coco import ArmbenchDataset, category_map_by_name
from armbench_segmentation.splits import UNLABELED

pytest.importorskip("datumaro")
pytest.importorskip("label_studio_converter")

CLASS_NAMES = ("Object", "Tote")


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    """Synthetic dataset, a store whose predictions are test.json's masks, the exports."""
    from armbench_segmentation.data.synth import generate_dataset

    base = tmp_path_factory.mktemp("roundtrip")
    root = base / "totes"
    generate_dataset(root, 2, 1, 4, seed=5, width=612, height=512, workers=1, progress=False)
    dataset = ArmbenchDataset(root, DataConfig(class_names=CLASS_NAMES))
    coco = dataset.coco(UNLABELED)
    cat_to_class = category_map_by_name(coco.dataset["categories"], CLASS_NAMES)
    store = ResultsStore(base / "results.sqlite")
    store.start_run("rt", {"model_sha256": "ab" * 32, "settings": {"data": {"class_names": list(CLASS_NAMES)}}})
    truth: dict[str, list[tuple[str, np.ndarray]]] = {}
    samples = []
    for seq, s in enumerate(dataset.all_samples(UNLABELED)):
        preds, masks = [], []
        for ann in coco.imgToAnns[s.image_id]:
            mask = coco.annToMask(ann).astype(bool)
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            preds.append({"class_index": cat_to_class[ann["category_id"]], "score": 0.5 + 0.01 * len(preds),
                          "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                          "segmentation": {"size": [s.height, s.width], "counts": rle["counts"].decode("ascii")}})
            masks.append((CLASS_NAMES[cat_to_class[ann["category_id"]]], mask))
        truth[s.sample_id] = masks
        samples.append(StoredSample(UNLABELED, s.sample_id, "ok", seq=seq, image_id=s.image_id, file_name=s.file_name,
                                    row={"image_id": s.image_id, "file_name": s.file_name, "width": s.width,
                                         "height": s.height},
                                    predictions=preds, embedding=np.zeros(4, np.float32)))
    store.put_samples(samples)
    ids = [s.sample_id for s in samples]
    picks = pd.DataFrame({"rank": [1, 2, 3, 4], "sample_id": ids[::-1], "score": [3.0, 2.0, 1.5, 1.0],
                          "reason": ["far from labeled data", "margin 0.4, <b>&amp;", "=1+1 entropy", "ünïcode"]})
    paths = write_selection_exports(base / "export", store, dataset, ids, "picks", picks=picks)
    store.close()
    return {"root": root, "paths": paths, "picks": picks, "truth": truth, "base": base,
            "coco": json.loads(paths["coco"].read_text()), "dataset": dataset}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _best_iou(mask: np.ndarray, truths: list[np.ndarray]) -> float:
    return max((_iou(mask, t) for t in truths), default=0.0)


def _merge_summary(rt, annotated: list[Path], out: Path, capsys) -> dict:
    """``armbench merge-labels --json`` into the dataset's train.json; the printed summary."""
    from armbench_segmentation import cli

    capsys.readouterr()
    rc = cli.main(["merge-labels", "--base", str(rt["root"] / "train.json"), "--annotated", *map(str, annotated),
                   "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0 and "Traceback" not in captured.err
    return json.loads(captured.out)


# ---------------------------------------------------------------------------- datumaro (CVAT)
def _datumaro_layout(rt, name: str) -> Path:
    """The COCO file where datumaro's coco importer looks: annotations/instances_<subset>.json
    with images/<subset>/ (what CVAT's COCO 1.0 zip holds)."""
    root = rt["base"] / name
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "default").mkdir(parents=True)
    shutil.copy(rt["paths"]["coco"], root / "annotations" / "instances_default.json")
    for im in rt["coco"]["images"]:
        shutil.copy(rt["root"] / "images" / im["file_name"], root / "images" / "default" / im["file_name"])
    return root


def test_datumaro_keeps_polygons_labels_rank_score_and_reason(rt):
    from datumaro.components.annotation import AnnotationType, Polygon
    from datumaro.components.dataset import Dataset

    ds = Dataset.import_from(str(_datumaro_layout(rt, "dm_in")), "coco_instances")
    labels = [c.name for c in ds.categories()[AnnotationType.label]]
    picks = rt["picks"].set_index("sample_id")
    assert len(ds) == 4
    n_polygons = 0
    for item in ds:
        pick = picks.loc[item.id]  # datumaro's item id is the file stem = our sample id
        assert item.attributes["id"] == pick["rank"]  # image id = rank survives
        polygons = [a for a in item.annotations if isinstance(a, Polygon)]
        truths = [m for _, m in rt["truth"][item.id]]
        assert len({a.group for a in polygons}) == len(truths)  # one group per instance
        for a in polygons:
            assert a.attributes["rank"] == pick["rank"] and a.attributes["pick_score"] == pick["score"]
            assert a.attributes["reason"] == pick["reason"] and 0.5 <= a.attributes["score"] < 1
            assert labels[a.label] in CLASS_NAMES
        n_polygons += len(polygons)
        # the polygons, rasterized, are the dataset's masks (instance by instance)
        by_group: dict[int, list[list[float]]] = {}
        for a in polygons:
            by_group.setdefault(a.group, []).append(list(map(float, a.points)))
        for parts in by_group.values():
            h, w = item.media.size
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(parts, h, w))).astype(bool)
            assert _best_iou(mask, truths) > 0.95
    assert n_polygons >= sum(len(v) for v in rt["truth"].values())


def test_datumaro_export_edited_then_merged_into_train(rt, tmp_path, capsys):
    from datumaro.components.dataset import Dataset

    ds = Dataset.import_from(str(_datumaro_layout(rt, "dm_rt")), "coco_instances")
    ds.export(str(tmp_path / "dm_out"), "coco_instances", save_media=False)
    exported = tmp_path / "dm_out" / "annotations" / "instances_default.json"
    coco = json.loads(exported.read_text())
    # an annotator: first image - one instance deleted, one mask changed, one instance added
    first = coco["images"][0]
    anns = [a for a in coco["annotations"] if a["image_id"] == first["id"]]
    deleted, changed = anns[0], anns[1]
    coco["annotations"].remove(deleted)
    changed["segmentation"] = [[10, 10, 110, 10, 110, 60, 10, 60]]
    object_id = next(c["id"] for c in coco["categories"] if c["name"] == "Object")
    coco["annotations"].append({"id": 10_000, "image_id": first["id"], "category_id": object_id, "iscrowd": 0,
                                "segmentation": [[300, 200, 340, 200, 340, 230, 300, 230]], "bbox": [0, 0, 0, 0],
                                "area": 0})
    exported.write_text(json.dumps(coco))
    base = json.loads((rt["root"] / "train.json").read_text())
    out = tmp_path / "train_new.json"
    summary = _merge_summary(rt, [exported], out, capsys)
    merged = COCO(str(out))
    n_truth = sum(len(v) for v in rt["truth"].values())
    assert summary["images_added"] == 4 and summary["annotations_added"] == n_truth  # -1 deleted, +1 added
    assert len(merged.imgs) == len(base["images"]) + 4
    assert len(merged.anns) == len(base["annotations"]) + n_truth
    assert max(merged.anns) == max(a["id"] for a in base["annotations"]) + n_truth  # renumbered after the base
    by_name = {im["file_name"]: im["id"] for im in merged.dataset["images"]}
    sid = Path(first["file_name"]).stem
    merged_first = merged.imgToAnns[by_name[first["file_name"]]]
    areas = sorted(a["area"] for a in merged_first)
    assert 100 * 50 in areas and 40 * 30 in areas  # the changed mask and the added one, exact
    truths = [m for _, m in rt["truth"][sid]]
    kept = [a for a in merged_first if a["area"] not in (100 * 50, 40 * 30)]
    assert len(kept) == len(truths) - 2
    for a in kept:
        assert _best_iou(merged.annToMask(a).astype(bool), truths) > 0.95
    for fname, image_id in by_name.items():  # every other picked image: its instances are the dataset's masks
        stem = Path(fname).stem
        if stem in rt["truth"] and stem != sid:
            truths = [m for _, m in rt["truth"][stem]]
            anns = merged.imgToAnns[image_id]
            assert len(anns) == len(truths)
            assert min(_best_iou(merged.annToMask(a).astype(bool), truths) for a in anns) > 0.95
            assert all(a["area"] == pytest.approx(merged.annToMask(a).sum()) for a in anns)


# ---------------------------------------------------------------------------- label-studio-converter
def test_label_studio_converter_imports_our_coco_with_predictions_in_rank_order(rt, tmp_path):
    from label_studio_converter.imports.coco import convert_coco_to_ls

    out = tmp_path / "ls_tasks.json"
    convert_coco_to_ls(str(rt["paths"]["coco"]), str(out), out_type="predictions",
                       image_root_url="/data/local-files/?d=images/")
    tasks = json.loads(out.read_text())
    ranked = rt["picks"]["sample_id"].tolist()
    assert [Path(t["data"]["image"]).stem for t in tasks] == ranked  # the importer orders by image id = rank
    coco = rt["coco"]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for task, image in zip(tasks, coco["images"]):
        regions = [r for r in task["predictions"][0]["result"] if r["type"] == "polygonlabels"]
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert [r["value"]["polygonlabels"] for r in regions] == [[names[a["category_id"]]] for a in anns]
        for r, a in zip(regions, anns):
            pts = np.array(r["value"]["points"]) * [image["width"] / 100, image["height"] / 100]
            assert np.allclose(pts.ravel(), a["segmentation"][0], atol=1e-6)
    config = (tmp_path / "ls_tasks.label_config.xml").read_text()
    assert "PolygonLabels" in config and 'value="Object"' in config and 'value="Tote"' in config


def test_label_studio_annotations_convert_back_with_its_converter_and_merge(rt, tmp_path, capsys, monkeypatch):
    from label_studio_converter import Converter

    tasks = json.loads(rt["paths"]["label_studio"].read_text())
    assert [t["data"]["rank"] for t in tasks] == [1, 2, 3, 4]
    assert [t["predictions"][0]["score"] for t in tasks] == [3.0, 2.0, 1.5, 1.0]
    export = []  # Label Studio's JSON export after the annotator accepted and edited the pre-labels
    for i, task in enumerate(tasks):
        result = [dict(r) for r in task["predictions"][0]["result"]]
        if i == 0:
            result.pop(0)  # deleted
            w, h = result[0]["original_width"], result[0]["original_height"]
            result[0] = {**result[0], "value": {**result[0]["value"], "points": [  # changed: a 60 x 40 rectangle
                [100 / w * 100, 100 / h * 100], [160 / w * 100, 100 / h * 100], [160 / w * 100, 140 / h * 100],
                [100 / w * 100, 140 / h * 100]]}}
            result.append({**result[0], "id": "added", "value": {"polygonlabels": ["Object"], "points": [
                [400 / w * 100, 300 / h * 100], [420 / w * 100, 300 / h * 100], [420 / w * 100, 330 / h * 100],
                [400 / w * 100, 330 / h * 100]]}})
        export.append({"id": i + 1, "data": task["data"], "annotations": [{"id": i + 1, "result": result}],
                       "predictions": task["predictions"]})
    export_path = tmp_path / "ls_export.json"
    export_path.write_text(json.dumps(export))
    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", str(rt["root"]))
    conv = Converter(config=rt["paths"]["label_config"].read_text(), project_dir=str(tmp_path),
                     download_resources=False)
    conv.convert_to_coco(str(export_path), str(tmp_path / "ls_coco"), is_dir=False)
    ls_coco = tmp_path / "ls_coco" / "result.json"
    out = tmp_path / "train_ls.json"
    summary = _merge_summary(rt, [ls_coco], out, capsys)
    n_regions = sum(len(t["predictions"][0]["result"]) for t in tasks)  # one COCO annotation per LS region
    assert summary["images_added"] == 4 and summary["annotations_added"] == n_regions and not summary["problems"]
    merged = COCO(str(out))
    first = tasks[0]["data"]["file_name"]
    image_id = next(im["id"] for im in merged.dataset["images"] if im["file_name"] == first)
    areas = [a["area"] for a in merged.imgToAnns[image_id]]
    assert 60 * 40 in areas and 20 * 30 in areas
    for task in tasks[1:]:
        image_id = next(im["id"] for im in merged.dataset["images"] if im["file_name"] == task["data"]["file_name"])
        truths = [m for _, m in rt["truth"][task["data"]["sample_id"]]]
        masks = [merged.annToMask(a).astype(bool) for a in merged.imgToAnns[image_id]]
        for m in masks:  # each region (an instance, or one part of one) lies inside a dataset mask
            assert max((m & t).sum() for t in truths) / m.sum() > 0.9
        assert _iou(np.any(masks, axis=0), np.any(truths, axis=0)) > 0.95  # and together they cover them


# ---------------------------------------------------------------------------- FiftyOne export
def _fiftyone_python() -> str | None:
    """A Python that imports fiftyone: $ARMBENCH_FIFTYONE_PYTHON, else this one if it can."""
    import importlib.util
    import sys

    candidate = os.environ.get("ARMBENCH_FIFTYONE_PYTHON")
    if candidate:
        return candidate
    return sys.executable if importlib.util.find_spec("fiftyone") is not None else None


@pytest.fixture(scope="module")
def fo_run(rt, tmp_path_factory):
    """A run folder (results.sqlite, samples.parquet, run.json) over the synthetic dataset:
    train samples with their GT, unlabeled ones with predictions = test.json's masks."""
    run_dir = tmp_path_factory.mktemp("fo_run")
    dataset = rt["dataset"]
    src = ResultsStore(rt["base"] / "results.sqlite")
    src.start_run("rt")
    store = ResultsStore(run_dir / "results.sqlite")
    store.start_run("rt", {"settings": {"data": {"class_names": list(CLASS_NAMES)}}})
    rows, samples = [], []
    for seq, s in enumerate(dataset.all_samples("train") + dataset.all_samples(UNLABELED)):
        preds = src.sample_predictions(s.split, s.sample_id) or []
        row = {"image_id": s.image_id, "file_name": s.file_name, "width": s.width, "height": s.height,
               "loss": 0.1 * seq, "a.b": seq, "id": f"x{seq}"}
        samples.append(StoredSample(s.split, s.sample_id, "ok", seq=seq, image_id=s.image_id, file_name=s.file_name,
                                    row=row, predictions=preds, embedding=np.zeros(4, np.float32)))
        rows.append({"split": s.split, "sample_id": s.sample_id, **row, "map_x": float(seq), "map_y": -2.0 * seq,
                     "cluster": seq % 2})
    store.put_samples(samples)
    store.close()
    src.close()
    pd.DataFrame(rows).to_parquet(run_dir / "samples.parquet", index=False)
    (run_dir / "run.json").write_text(json.dumps({"run_key": "rt", "settings": {
        "data": {"path": str(rt["root"]), "class_names": list(CLASS_NAMES)}}}))
    return run_dir, pd.DataFrame(rows)


def test_fiftyone_export_is_coco_with_masks_fields_and_the_map(rt, fo_run, tmp_path, capsys):
    from armbench_segmentation import cli

    run_dir, table = fo_run
    out = tmp_path / "fo"
    assert cli.main(["export-fiftyone", str(run_dir), str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    gt, pred = COCO(str(out / "ground_truth.json")), COCO(str(out / "predictions.json"))
    train = COCO(str(rt["root"] / "train.json"))
    assert result["samples"] == len(table) == len(gt.imgs) == len(pred.imgs)
    assert len(gt.anns) == len(train.anns) == result["gt_annotations"]  # only the labeled split has GT
    assert len(pred.anns) == sum(len(v) for v in rt["truth"].values())
    assert [im["file_name"] for im in gt.dataset["images"]] == table["file_name"].tolist()
    for image_id, anns in pred.imgToAnns.items():  # areas are the masks' pixel counts (pycocotools)
        assert all(a["area"] == pred.annToMask(a).sum() and 0 < a["score"] <= 1 for a in anns)
    fields = json.loads((out / "fields.json").read_text())
    assert fields["file_name"] == table["file_name"].tolist()
    assert fields["map_x"] == table["map_x"].tolist() and fields["map_y"] == table["map_y"].tolist()
    assert "a_b" in fields and "armbench_id" in fields and "id" not in fields  # FiftyOne-safe names
    manifest = json.loads((out / "export.json").read_text())
    assert Path(manifest["images_dir"]) == (rt["root"] / "images").resolve()
    assert manifest["field_renames"] == {"a.b": "a_b", "id": "armbench_id"}
    compile((out / "load_fiftyone.py").read_text(), "load_fiftyone.py", "exec")  # the loader is valid Python


@pytest.mark.slow
def test_fiftyone_importers_read_the_export(rt, fo_run, tmp_path, capsys):
    """FiftyOne's own COCODetectionDatasetImporter (no database) over the export, through the
    shipped loader's --check. Runs where a Python with fiftyone is available (this one, or
    $ARMBENCH_FIFTYONE_PYTHON, e.g. a scratch venv: fiftyone is not a project dependency)."""
    import subprocess

    python = _fiftyone_python()
    if python is None:
        pytest.skip("fiftyone is not importable here; set ARMBENCH_FIFTYONE_PYTHON to a Python that has it")
    from armbench_segmentation import cli

    run_dir, table = fo_run
    out = tmp_path / "fo"
    assert cli.main(["export-fiftyone", str(run_dir), str(out)]) == 0
    capsys.readouterr()
    proc = subprocess.run([python, str(out / "load_fiftyone.py"), str(out), "--check"], capture_output=True,
                          text=True, timeout=600, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    gt, pred = COCO(str(out / "ground_truth.json")), COCO(str(out / "predictions.json"))
    for kind, api in (("ground_truth", gt), ("predictions", pred)):
        assert seen[kind]["samples"] == len(table)
        assert seen[kind]["objects"] == seen[kind]["masks"] == len(api.anns)
        assert set(seen[kind]["labels"]) <= set(CLASS_NAMES)
        pixels = sum(int(api.annToMask(a).sum()) for a in api.anns.values())
        assert abs(seen[kind]["mask_pixels"] - pixels) <= 0.02 * pixels  # FiftyOne crops masks to the box
    assert seen["fields"]["rows"] == seen["fields"]["matched"] == len(table)


# ---------------------------------------------------------------------------- the shipped model
SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "armbench-yolov5s-seg.onnx"


@pytest.mark.e2e
@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason=f"shipped model {SHIPPED_MODEL} is absent")
def test_analyze_picks_carry_the_models_predictions_and_merge_back(rt, tmp_path, monkeypatch, capsys):
    """``armbench analyze`` with the shipped model: the picks' COCO file holds the stored
    predictions as polygons (rasterized: the stored masks), the Label Studio tasks follow
    the rank, and the file merges back into train.json."""
    from armbench_segmentation import cli

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for k in [k for k in os.environ if k.startswith("ARMBENCH_")]:
        monkeypatch.delenv(k)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("data:\n  train_size: all\n  val_size: all\n  unlabeled_size: all\nmodel:\n  device: cpu\n"
                   "analysis:\n  n_clusters: 2\n  label_budget: 3\n")
    out = tmp_path / "run"
    assert cli.main(["analyze", "--no-progress", "--no-crops", "--dataset", str(rt["root"]), "--model",
                     str(SHIPPED_MODEL), "--config", str(cfg), "--out", str(out)]) == 0
    capsys.readouterr()
    picks = pd.read_csv(out / "label_picks.csv")
    coco = json.loads((out / "label_picks.coco.json").read_text())
    assert [im["id"] for im in coco["images"]] == picks["rank"].tolist() == [1, 2, 3]
    score = picks["score"].to_numpy(float)
    assert (np.diff(score[np.isfinite(score)]) <= 1e-9).all()
    assert [im["score"] for im in coco["images"]] == pytest.approx(picks["score"].tolist())
    store = ResultsStore(out / "results.sqlite")
    store.run_key = json.loads((out / "run.json").read_text())["run_key"]
    api = COCO(str(out / "label_picks.coco.json"))
    n_preds = 0
    for im in coco["images"]:
        preds = store.sample_predictions(UNLABELED, im["sample_id"])
        anns = api.imgToAnns[im["id"]]
        assert len(anns) == len(preds)  # every stored prediction (all have a class with a category)
        n_preds += len(preds)
        for ann, pred in zip(anns, preds):
            seg = pred["segmentation"]
            stored = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
            assert _iou(api.annToMask(ann).astype(bool), stored) > 0.9
    store.close()
    assert n_preds > 0, "the shipped model found nothing on the synthetic totes"
    tasks = json.loads((out / "label_picks.label_studio.json").read_text())
    assert [t["data"]["sample_id"] for t in tasks] == picks["sample_id"].tolist()
    merged_path = tmp_path / "train_v2.json"
    summary = _merge_summary(rt, [out / "label_picks.coco.json"], merged_path, capsys)
    merged = COCO(str(merged_path))
    base = COCO(str(rt["root"] / "train.json"))
    assert summary["images_added"] == 3 and len(merged.imgs) == len(base.imgs) + 3
    assert len(merged.anns) == len(base.anns) + summary["annotations_added"] > len(base.anns)

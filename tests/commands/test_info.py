"""armbench info on the tiny dataset: exact counts and the annotation problems it contains."""

from __future__ import annotations

import argparse
import json

import pytest

from armbench_segmentation import config
from armbench_segmentation.commands import info
from armbench_segmentation.errors import DatasetError


def run_info(argv, monkeypatch):
    monkeypatch.delenv("ARMBENCH_DATASET", raising=False)
    monkeypatch.setenv("ARMBENCH_CONFIG", "")
    monkeypatch.setattr(config, "USER_CONFIG_PATH", config.PACKAGE_DIR / "no-such-user-config.yaml")
    parser = argparse.ArgumentParser()
    info.add_arguments(parser)
    return info.run(parser.parse_args(argv))


def summary_of(tiny_dataset, monkeypatch, capsys, *extra):
    assert run_info(["--dataset", str(tiny_dataset.root), "--json", *extra], monkeypatch) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON object


def test_counts_exact(tiny_dataset, monkeypatch, capsys):
    s = summary_of(tiny_dataset, monkeypatch, capsys)
    splits = s["splits"]
    assert {k: v["images"] for k, v in splits.items()} == tiny_dataset.expected["images"]
    assert splits["train"]["class_counts"] == tiny_dataset.expected["annotation_counts"]["train"]
    assert splits["val"]["class_counts"] == tiny_dataset.expected["annotation_counts"]["val"]
    t = splits["train"]
    assert t["annotations"] == 10
    assert t["instances_per_image"]["min"] == 0 and t["instances_per_image"]["max"] == 6
    assert t["instances_per_image"]["median"] == 4.0  # train_b 0, train_c 4, train_a 6
    assert {b["bin"]: b["images"] for b in t["instances_per_image"]["histogram"]}["5-9"] == 1
    assert t["class_frequency"] == {"Object": 0.8, "Tote": 0.2}
    assert t["class_weights"] == {"Object": pytest.approx(10 / (2 * 8)), "Tote": pytest.approx(10 / (2 * 2))}
    assert t["images_without_annotations"] == {"count": 1, "examples": ["train_b"]}
    q = splits["val"]["area_fraction_quantiles"]["Object"]
    assert q["q00"] == pytest.approx(0.05) and q["q100"] == pytest.approx(3200 / 24000)
    assert splits["unlabeled"]["labeled"] is False and splits["unlabeled"]["annotations_ignored"] == 3
    assert splits["val"]["selected"] == 2


def test_problems_found(tiny_dataset, monkeypatch, capsys):
    s = summary_of(tiny_dataset, monkeypatch, capsys)
    p = s["problems"]
    assert [e["annotation_id"] for e in p["degenerate_polygon"]["examples"]] == tiny_dataset.expected["degenerate_annotation_ids"]
    assert [e["annotation_id"] for e in p["out_of_bounds"]["examples"]] == tiny_dataset.expected["out_of_bounds_annotation_ids"]
    assert p["out_of_bounds"]["examples"][0]["image_id"] == 3
    assert "missing_image_file" not in p and "unknown_category" not in p


def test_more_problems_listed_with_ids(tiny_dataset, monkeypatch, capsys):
    (tiny_dataset.root / "images" / "val_a.jpg").unlink()
    data = tiny_dataset.json("val.json")
    data["annotations"].append({"id": 901, "image_id": 10, "category_id": 42, "segmentation": [[0, 0, 5, 0, 5, 5]], "bbox": [0, 0, 5, 5]})
    data["annotations"].append({"id": 902, "image_id": 777, "category_id": 2, "segmentation": [[0, 0, 5, 0, 5, 5]], "bbox": [0, 0, 5, 5]})
    data["annotations"] += [{"id": 1000 + i, "image_id": 11, "category_id": 2, "segmentation": [[1, 1, 2, 2]],
                             "bbox": [1, 1, 1, 1]} for i in range(25)]
    tiny_dataset.write_json("val.json", data)
    s = summary_of(tiny_dataset, monkeypatch, capsys)
    p = s["problems"]
    assert p["missing_image_file"]["examples"] == [{"split": "val", "image_id": 10, "file_name": "val_a.jpg"}]
    assert s["splits"]["val"]["missing_image_files"] == 1
    assert p["unknown_category"]["examples"][0]["annotation_id"] == 901
    assert p["unknown_image_id"]["examples"][0]["annotation_id"] == 902
    assert p["degenerate_polygon"]["count"] == 26 and len(p["degenerate_polygon"]["examples"]) == 20  # first 20 + count


def test_text_output(tiny_dataset, monkeypatch, capsys):
    assert run_info(["--dataset", str(tiny_dataset.root)], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "[train] train.json: 3 images" in out
    assert "degenerate_polygon: 1" in out and "annotation_id=121" in out
    assert "images without annotations: 1 (train_b)" in out


def test_missing_dataset(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="armbench synth"):
        run_info(["--dataset", str(tmp_path / "none")], monkeypatch)

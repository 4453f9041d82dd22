"""``armbench loop``: one round on tiny synthetic data with the oracle as the annotator.

Checks the chaining (every step's output feeds the next: the merged train file holds the
base images plus exactly the picked ones with their ground truth; the fine-tuned model is
the one the after-analysis ran; compare reads both runs) and resumability (a stop at the
annotation step, then a second call that does not redo the analysis, then a third that
redoes nothing; another model for the same folder is refused).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "armbench-yolov5s-seg.onnx"


def _has_train_extra() -> bool:
    from armbench_segmentation.training import missing_train_modules

    return not missing_train_modules()


@pytest.mark.slow
@pytest.mark.skipif(not _has_train_extra(), reason="the train extra is not installed (make install-train)")
def test_one_round_with_the_oracle_resumes_at_every_step(tmp_path):
    from armbench_segmentation.data.synth import generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, n_train=4, n_val=2, n_unlabeled=4, seed=6, width=612, height=512, workers=1, progress=False)
    cfg = tmp_path / "small.yaml"
    cfg.write_text("data:\n  image_size: 320\nanalysis:\n  projection: pca\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMBENCH_")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    loop = tmp_path / "loop"
    base = [sys.executable, "-m", "armbench_segmentation.cli", "loop", "--dir", str(loop), "--dataset", str(data),
            "--model", str(SHIPPED), "--config", str(cfg), "--budget", "2", "--no-progress"]

    def call(*extra):
        r = subprocess.run(base + list(extra), capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    out = call()
    assert "waiting for annotations" in out and "to do: annotate" in out
    state = json.loads((loop / "loop.json").read_text())
    assert list(state["steps"]) == ["analyze", "export"]
    picks = state["steps"]["analyze"]["picks"]
    assert len(picks) == 2
    run_json_mtime = (loop / "before" / "run.json").stat().st_mtime_ns

    out = call("--oracle", "--epochs", "1", "--imgsz", "320", "--batch", "2")
    assert "[analyze] done earlier" in out and "round complete" in out
    assert (loop / "before" / "run.json").stat().st_mtime_ns == run_json_mtime  # not analysed again
    state = json.loads((loop / "loop.json").read_text())
    assert list(state["steps"]) == ["analyze", "export", "annotate", "merge", "finetune", "analyze_after", "compare"]
    merged = json.loads((loop / "train_merged.json").read_text())
    stems = sorted(Path(im["file_name"]).stem for im in merged["images"])
    base_train = json.loads((data / "train.json").read_text())
    assert len(merged["images"]) == len(base_train["images"]) + 2 and set(picks) <= set(stems)
    test = json.loads((data / "test.json").read_text())
    gt_count = sum(1 for a in test["annotations"]
                   if Path(next(i["file_name"] for i in test["images"] if i["id"] == a["image_id"])).stem in picks)
    assert len(merged["annotations"]) == len(base_train["annotations"]) + gt_count
    after = json.loads((loop / "after" / "run.json").read_text())
    assert Path(after["model_path"]) == loop / "model.onnx"
    cmp = json.loads((loop / "compare.json").read_text())
    assert cmp["splits"] == ["train", "val"] and Path(cmp["run_b"]) == loop / "after"
    model_mtime = (loop / "model.onnx").stat().st_mtime_ns

    out = call("--oracle")
    assert out.count("done earlier") == 7 and (loop / "model.onnx").stat().st_mtime_ns == model_mtime

    other = subprocess.run(base[:-7] + ["--model", str(loop / "model.onnx"), "--config", str(cfg)],
                           capture_output=True, text=True, env=env, timeout=300)
    assert other.returncode == 1 and "other inputs" in other.stderr

    # round 2 from round 1's labels and model: the images labeled in round 1 are train now, never picked again
    loop2 = tmp_path / "loop2"
    round2 = [sys.executable, "-m", "armbench_segmentation.cli", "loop", "--dir", str(loop2), "--dataset", str(data),
              "--model", str(loop / "model.onnx"), "--train", str(loop / "train_merged.json"), "--config", str(cfg),
              "--budget", "2", "--no-progress", "--oracle", "--epochs", "1", "--imgsz", "320", "--batch", "2"]
    r = subprocess.run(round2, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    state2 = json.loads((loop2 / "loop.json").read_text())
    picks2 = state2["steps"]["analyze"]["picks"]
    assert len(picks2) == 2 and not set(picks2) & set(picks)
    unlabeled_stems = {Path(im["file_name"]).stem for im in test["images"]}
    assert set(picks2) <= unlabeled_stems - set(picks)
    import pandas as pd

    before2 = pd.read_parquet(loop2 / "before" / "samples.parquet")
    assert set(before2.loc[before2["split"] == "train", "sample_id"]) == set(stems)  # round 1's merged train file
    assert set(before2.loc[before2["split"] == "unlabeled", "sample_id"]) == unlabeled_stems - set(picks)
    merged2 = json.loads((loop2 / "train_merged.json").read_text())
    assert len(merged2["images"]) == len(merged["images"]) + 2


def test_round_dataset_leaves_out_what_the_train_file_holds_and_names_a_broken_file(tmp_path):
    from armbench_segmentation.errors import ArmbenchError
    from armbench_segmentation.training.loop import round_dataset

    root = tmp_path / "data"
    (root / "images" / "sub").mkdir(parents=True)
    cats = [{"id": 1, "name": "Object"}, {"id": 2, "name": "Tote"}]
    test = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "sub\\b.jpg"},
                       {"id": 3, "file_name": "c.jpg"}],
            "annotations": [{"id": 10, "image_id": 2, "category_id": 1}, {"id": 11, "image_id": 3, "category_id": 1}],
            "categories": cats}
    (root / "test.json").write_text(json.dumps(test))
    (root / "val.json").write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    train = tmp_path / "merged.json"  # a.jpg and sub/b.jpg (spelt differently) were labeled in round 1
    train.write_text(json.dumps({"images": [{"id": 1, "file_name": "./a.jpg"}, {"id": 2, "file_name": "sub/b.jpg"}],
                                 "annotations": [], "categories": cats}))
    view = round_dataset(root, train, tmp_path / "loop" / "dataset")
    left = json.loads((view / "test.json").read_text())
    assert [im["file_name"] for im in left["images"]] == ["c.jpg"]
    assert [a["id"] for a in left["annotations"]] == [11]
    assert json.loads((view / "train.json").read_text()) == json.loads(train.read_text())
    assert (view / "images").resolve() == (root / "images").resolve()
    mtime = (view / "test.json").stat().st_mtime_ns
    round_dataset(root, train, view)  # a resume writes nothing new
    assert (view / "test.json").stat().st_mtime_ns == mtime
    train.write_text('{"images": [')
    with pytest.raises(ArmbenchError, match="merged.json.*previous round"):
        round_dataset(root, train, view)

"""``armbench compare`` on two real analyze runs of the shipped model on one small synthetic
dataset: default settings (A) and a stricter confidence threshold (B, via --config).

References: pycocotools' own COCOeval on each run's predictions file (AP), the two runs'
samples.csv read with the csv module (losses and error counts, by brute force), a run
compared with itself (nothing changes), a hand-edited run.json (different data -> refused),
and Python's HTML parser on the page (hostile strings stay text).
"""

from __future__ import annotations

import contextlib
import csv
import html.parser
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from armbench_segmentation.analysis.compare import Comparison, compare_runs, write_page
from armbench_segmentation.errors import ArmbenchError
from armbench_segmentation.metrics.sample_evaluation import COUNT_COLUMNS, ERROR_KINDS

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "armbench-yolov5s-seg.onnx"
pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped model absent")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from armbench_segmentation.data.synth import generate_dataset

    tmp = tmp_path_factory.mktemp("cmp")
    data = tmp / "data"
    generate_dataset(data, n_train=3, n_val=4, n_unlabeled=2, seed=5, width=612, height=512, workers=1, progress=False)
    strict = tmp / "strict.yaml"
    strict.write_text("model:\n  conf_threshold: 0.6\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMBENCH_")}
    env.update(HOME=str(tmp / "home"), PYTHONPATH=str(ROOT))
    out = {}
    for name, extra in (("A", []), ("B", ["--config", str(strict)])):
        out[name] = tmp / f"run{name}"
        r = subprocess.run([sys.executable, "-m", "armbench_segmentation.cli", "analyze", "--dataset", str(data),
                            "--model", str(SHIPPED), "--out", str(out[name]), "--projection", "pca", "--no-crops",
                            "--no-progress", "--budget", "1", *extra], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    out["data"] = data
    return out


def _pycocotools_ap(gt: Path, preds: Path, cat_id: int) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt))
        dt = coco.loadRes(json.loads(preds.read_text()))
        ev = COCOeval(coco, dt, "segm")
        ev.params.catIds = [cat_id]
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return float(ev.stats[0])


def _csv(run: Path) -> dict:
    with open(run / "samples.csv", newline="", encoding="utf-8") as f:
        return {(r["split"], r["sample_id"]): r for r in csv.DictReader(f)}


@pytest.mark.e2e
def test_compare_matches_pycocotools_and_the_sample_tables(runs):
    c = compare_runs(runs["A"], runs["B"], top=5)
    assert c.splits == ["train", "val"]
    for name in ("A", "B"):
        for cls, cat in (("Object", 2), ("Tote", 1)):
            ref = _pycocotools_ap(runs["data"] / "val.json", runs[name] / "predictions_val.json", cat)
            assert c.ap["val"][name]["segm"][cls]["AP"] == pytest.approx(ref, abs=1e-6)
    a, b = _csv(runs["A"]), _csv(runs["B"])
    keys = [k for k in a if k[0] in ("train", "val") and k in b]
    for kind in ERROR_KINDS:
        col = COUNT_COLUMNS[kind]
        ca = np.array([float(a[k][col] or 0) for k in keys])
        cb = np.array([float(b[k][col] or 0) for k in keys])
        row = next(e for e in c.errors if e["kind"] == kind)
        assert (row["A"], row["B"]) == (int(ca.sum()), int(cb.sum()))
        assert row["fixed"] == int(np.maximum(ca - cb, 0).sum()) and row["new"] == int(np.maximum(cb - ca, 0).sum())
    deltas = {k: float(b[k]["loss"]) - float(a[k]["loss"]) for k in keys}
    assert c.loss["mean_change"] == pytest.approx(np.mean(list(deltas.values())), abs=1e-9)
    top = max(deltas, key=lambda k: abs(deltas[k]))
    assert (c.changed_most[0]["split"], c.changed_most[0]["sample_id"]) == top
    # a stricter threshold drops detections: fewer false positives than A
    fp = next(e for e in c.errors if e["kind"] == "false_positive")
    assert fp["B"] < fp["A"] and fp["fixed"] > 0
    assert c.ap_per_cluster and all(r["images"] >= 1 for r in c.ap_per_cluster)


@pytest.mark.e2e
def test_compare_with_itself_changes_nothing_and_other_data_is_refused(runs, tmp_path):
    c = compare_runs(runs["A"], runs["A"])
    assert c.loss["mean_change"] == 0 and c.loss["better"] == c.loss["worse"] == 0
    assert all(e["fixed"] == e["new"] == 0 for e in c.errors)
    other = tmp_path / "other"
    shutil.copytree(runs["B"], other)
    info = json.loads((other / "run.json").read_text())
    info["dataset_files"] = {k: "0" * 64 for k in info["dataset_files"]}
    (other / "run.json").write_text(json.dumps(info))
    with pytest.raises(ArmbenchError, match="not on the same data"):
        compare_runs(runs["A"], other)
    r = subprocess.run([sys.executable, "-m", "armbench_segmentation.cli", "compare", str(runs["A"]), str(other)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 1 and "not on the same data" in r.stderr and "Traceback" not in r.stderr
    (other / "samples.parquet").unlink()
    with pytest.raises(ArmbenchError, match="samples.parquet is missing"):
        compare_runs(runs["A"], other)


@pytest.mark.e2e
def test_cli_json_and_page(runs, tmp_path):
    page = tmp_path / "cmp.html"
    r = subprocess.run([sys.executable, "-m", "armbench_segmentation.cli", "compare", str(runs["A"]), str(runs["B"]),
                        "--json", "--out", str(page)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d["splits"] == ["train", "val"] and {e["kind"] for e in d["errors"]} == set(ERROR_KINDS)
    assert "<h2>Errors fixed and new, by kind</h2>" in page.read_text()


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self._in = [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in = tag == "script"

    def handle_data(self, data):
        if self._in:
            self.scripts.append(data)

    def handle_endtag(self, tag):
        self._in = False


def test_page_escapes_hostile_strings(tmp_path):
    evil = '</script><script>alert(1)</script><img src=x onerror=alert(2)>'
    c = Comparison(evil, evil, evil, None, ["val"], {evil: evil},
                   changed_most=[{"split": "val", "sample_id": evil, "loss_A": 1.0, "loss_B": float("nan"),
                                  "loss_change": None}])
    path = write_page(c, tmp_path / "p.html")
    p = _Tags()
    p.feed(path.read_text())
    assert "img" not in p.tags and p.tags.count("script") == 1
    embedded = json.loads(p.scripts[0])
    assert embedded["run_a"] == evil and embedded["changed_most"][0]["sample_id"] == evil
    assert embedded["changed_most"][0]["loss_B"] is None

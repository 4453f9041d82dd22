"""A crafted dataset holding hostile names, clashes, traversal, broken and unusual images and
annotation defects, through every command and ``leap_test.py``: every good image processed,
every bad one named, no traceback (the shipped model, real files, real processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = ROOT / "models" / "armbench-yolov5s-seg.onnx"

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason=f"shipped model {SHIPPED_MODEL} is absent")]

HOSTILE = ["<!--<script>", "=HYPERLINK(1)", "<b>x&amp;"]


def _rename(data: Path, split_file: str, index: int, new_stem: str) -> str:
    doc = json.loads((data / split_file).read_text())
    image = doc["images"][index]
    old = data / "images" / image["file_name"]
    image["file_name"] = new_stem + ".jpg"
    old.rename(data / "images" / image["file_name"])
    (data / split_file).write_text(json.dumps(doc))
    return new_stem


def _entry(data: Path, split_file: str, index: int) -> tuple[dict, Path]:
    image = json.loads((data / split_file).read_text())["images"][index]
    return image, data / "images" / image["file_name"]


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    from armbench_segmentation.data.synth import generate_dataset

    base = tmp_path_factory.mktemp("crafted")
    data = base / "totes"
    generate_dataset(data, 6, 6, 6, seed=8, width=612, height=512, workers=1, progress=False)
    good, bad = set(), {}
    # hostile names (good images)
    good.add(_rename(data, "train.json", 0, HOSTILE[0]))
    good.add(_rename(data, "val.json", 0, HOSTILE[1]))
    good.add(_rename(data, "test.json", 0, HOSTILE[2]))
    # unusual but valid formats: gray and 16-bit PNG bytes under .jpg names, RGBA PNG
    image, path = _entry(data, "train.json", 1)
    rgb = cv2.imread(str(path))
    path.write_bytes(cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY))[1].tobytes())
    good.add(Path(image["file_name"]).stem)
    image, path = _entry(data, "val.json", 1)
    path.write_bytes(cv2.imencode(".png", cv2.imread(str(path)).astype(np.uint16) * 257)[1].tobytes())
    good.add(Path(image["file_name"]).stem)
    # broken images
    for split_file, index, how in (("train.json", 2, "truncated"), ("val.json", 2, "empty"),
                                   ("test.json", 2, "not found")):
        image, path = _entry(data, split_file, index)
        if how == "truncated":
            path.write_bytes(path.read_bytes()[:2000])
        elif how == "empty":
            path.write_bytes(b"")
        else:
            path.unlink()
        bad[Path(image["file_name"]).stem] = how
    # unsafe entries and a legitimate stem clash in train.json
    doc = json.loads((data / "train.json").read_text())
    first = doc["images"][3]
    (data / "images" / "sub").mkdir()
    shutil.copy(data / "images" / first["file_name"], data / "images" / "sub" / first["file_name"])
    next_id = max(i["id"] for i in doc["images"]) + 1
    doc["images"].append({**first, "id": next_id, "file_name": "sub/" + first["file_name"]})
    doc["images"].append({**first, "id": next_id + 1, "file_name": "../../../etc/passwd"})
    doc["images"].append({**first, "id": next_id + 2, "file_name": "/etc/hostname"})
    # annotation defects: a zero-area polygon and an unknown category on a good image
    ann = doc["annotations"][0]
    doc["annotations"].append({**ann, "id": 10 ** 6, "segmentation": [[10, 10, 20, 20, 30, 30]], "area": 0})
    doc["annotations"].append({**ann, "id": 10 ** 6 + 1, "category_id": 999})
    (data / "train.json").write_text(json.dumps(doc))
    good.add(Path(first["file_name"]).stem)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMBENCH_")}
    env.update(HOME=str(base / "home"), XDG_CACHE_HOME=str(base / "home" / ".cache"), TL_DISABLE_ANALYTICS="1")
    (base / "home").mkdir()
    return data, base, env, good, bad


def _armbench(env, cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "armbench_segmentation.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def _no_traceback(proc) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-4000:]
    return out


SIZES = ("--train-size", "all", "--val-size", "all", "--unlabeled-size", "all")


def test_info_names_the_problems(crafted):
    data, base, env, good, bad = crafted
    proc = _armbench(env, base, "info", "--dataset", str(data), "--json")
    out = _no_traceback(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "passwd" in out and "hostname" in out  # the unsafe entries are named


def test_predict_and_evaluate_process_every_good_image(crafted):
    data, base, env, good, bad = crafted
    preds = base / "preds_val.json"
    proc = _armbench(env, base, "predict", "--dataset", str(data), "--model", str(SHIPPED_MODEL), "--split", "val",
                     "--val-size", "all", "--out", str(preds))
    out = _no_traceback(proc)
    assert proc.returncode == 0, out[-3000:]
    for sid, how in bad.items():
        if sid in [Path(i["file_name"]).stem for i in json.loads((data / "val.json").read_text())["images"]]:
            assert sid in out
    results = json.loads(preds.read_text())
    val_ids = {i["id"] for i in json.loads((data / "val.json").read_text())["images"]}
    assert len({r["image_id"] for r in results}) == len(val_ids) - 1  # all but the empty image
    proc = _armbench(env, base, "evaluate", "--dataset", str(data), "--split", "val", "--val-size", "all",
                     "--predictions", str(preds), "--json")
    out = _no_traceback(proc)
    assert proc.returncode == 0, out[-3000:]


def test_analyze_keeps_every_good_image_and_names_the_bad(crafted):
    data, base, env, good, bad = crafted
    run = base / "run"
    proc = _armbench(env, base, "analyze", "--dataset", str(data), "--model", str(SHIPPED_MODEL), "--out",
                     str(run), "--no-progress", *SIZES)
    out = _no_traceback(proc)
    assert proc.returncode == 0, out[-3000:]
    table = pd.read_parquet(run / "samples.parquet")
    ids = set(table["sample_id"])
    assert good <= ids and not (set(bad) & ids)
    assert len(table) == 6 * 3 - len(bad) + 1  # + the clashing copy, - the broken images
    assert any("~" in s for s in ids)  # the clashing stem got its own id
    errors = pd.read_csv(run / "errors.csv")
    assert set(bad) <= set(errors["sample_id"].astype(str))
    # the page (plotly.js and the images beside it, in assets/): every good sample has a thumbnail
    assert (run / "dashboard.html").stat().st_size > 10_000 and (run / "assets" / "plotly.min.js").is_file()
    assert len(list((run / "assets" / "dashboard" / "thumbs").glob("*.jpg"))) == len(table)


def test_leap_test_runs_the_good_samples_and_names_the_bad_once(crafted):
    data, base, env, good, bad = crafted
    proc = subprocess.run([sys.executable, str(ROOT / "leap_test.py"), "--dataset", str(data), "--model",
                           str(SHIPPED_MODEL), "--samples", "2"], env=env, cwd=base, capture_output=True, text=True,
                          timeout=900)
    out = _no_traceback(proc)
    assert proc.returncode == 0, out[-4000:]
    for sid, how in bad.items():
        lines = [ln for ln in proc.stdout.splitlines() if "excluded from the preprocess" in ln and sid in ln]
        assert len(lines) == 1 and how in lines[0], (sid, lines)

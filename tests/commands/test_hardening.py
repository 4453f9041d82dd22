"""Bad input through the real commands: output paths checked before any work, a damaged
results store moved aside, settings refused at start, CSV cells a spreadsheet would run.

Every command runs in-process through ``cli.main`` (real parser, real dataset loader, the
tiny ONNX model of tests/analysis/test_runner.py); results are read back from the files.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from armbench_segmentation import cli

ROOT = Path(__file__).resolve().parents[2]


def _runner_helpers():
    spec = importlib.util.spec_from_file_location("_hardening_test_runner", ROOT / "tests" / "analysis" / "test_runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _runner_helpers()
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("data:\n  image_size: 64\n  train_size: all\n  val_size: all\n  unlabeled_size: all\n"
                    "model:\n  device: cpu\n  num_threads: 1\nanalysis:\n  n_clusters: 2\n  label_budget: 2\n" + extra)
    return path


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"armbench {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------- output paths
def _a_file(tmp_path):
    p = tmp_path / "taken"
    p.write_text("x")
    return p, "exists and is not a folder"


def _under_a_file(tmp_path):
    p = tmp_path / "taken"
    p.write_text("x")
    return p / "sub" / "out", "is a file, not a folder"


@pytest.mark.parametrize("make_out", [_a_file, _under_a_file])
@pytest.mark.parametrize("command", ["analyze", "synth"])
def test_folder_output_that_cannot_be_a_folder(command, make_out, tmp_path, isolated, capsys):
    out, why = make_out(tmp_path)
    # analyze: the dataset is missing too; the --out error must come first (checked before any work)
    argv = [command, "--out", str(out)] + (["--dataset", str(tmp_path / "none"), "--no-progress"]
                                            if command == "analyze" else ["--n-train", "1", "--no-progress"])
    assert cli.main(argv) == 1
    line = _one_error_line(capsys, command)
    assert f"--out {out}" in line and why in line
    assert (tmp_path / "taken").read_text() == "x"


def _file_under_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    return tmp_path / "taken" / "preds.json"


@pytest.mark.parametrize("make_out, why", [
    (lambda t: t, "is a folder; give a file path"),
    (_file_under_a_file, "is a file, not a folder"),
])
def test_predict_output_checked_before_the_model_runs(make_out, why, tmp_path, isolated, tiny_dataset, capsys):
    out = make_out(tmp_path)
    missing_model = tmp_path / "no-model.onnx"  # loading it would fail: the --out check must come first
    assert cli.main(["predict", "--dataset", str(tiny_dataset.root), "--model", str(missing_model),
                     "--out", str(out)]) == 1
    line = _one_error_line(capsys, "predict")
    assert f"--out {out}" in line and why in line


@pytest.mark.skipif(IS_ROOT, reason="root writes into a 0o500 folder anyway; the folder/file cases above run as root")
@pytest.mark.parametrize("command", ["analyze", "predict", "synth"])
def test_unwritable_output_folder(command, tmp_path, isolated, tiny_dataset, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        out = locked / ("preds.json" if command == "predict" else "out")
        argv = {"analyze": ["analyze", "--dataset", str(tiny_dataset.root), "--no-progress"],
                "predict": ["predict", "--dataset", str(tiny_dataset.root)],
                "synth": ["synth", "--n-train", "1", "--no-progress"]}[command]
        assert cli.main(argv + ["--out", str(out)]) == 1
        line = _one_error_line(capsys, command)
        assert "not writable" in line and str(out) in line
    finally:
        locked.chmod(0o700)


def test_output_helper_creates_nothing(tmp_path):
    from armbench_segmentation.commands._common import check_output_path

    assert check_output_path(tmp_path / "a" / "b", "dir") == tmp_path / "a" / "b"
    assert check_output_path(tmp_path / "c" / "p.json", "file") == tmp_path / "c" / "p.json"
    assert sorted(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- settings at start
@pytest.mark.parametrize("argv, extra_config, expected_error", [
    (["--projection", "mds"], "", "analysis.projection must be one of ['pca', 'tsne', 'umap'], got 'mds' (from --projection)"),
    ([], "  clustering: dbscan\n", "analysis.clustering must be one of ['hdbscan', 'kmeans'], got 'dbscan'"),
    ([], "  label_strategy: random\n", "analysis.label_strategy must be one of ["),
    ([], "  n_clusters: -3\n", "analysis.n_clusters must be an integer >= 1, got -3"),
    (["--budget", "-1"], "", "analysis.label_budget must be an integer >= 0, got -1 (from --budget)"),
    (["--batch-size", "0"], "", "model.batch_size must be an integer >= 1, got 0 (from --batch-size)"),
])
def test_analyze_refuses_bad_settings_before_any_work(argv, extra_config, expected_error, tmp_path, isolated,
                                                      tiny_dataset, capsys):
    cfg = _config(tmp_path)
    if extra_config:
        cfg.write_text(cfg.read_text() + extra_config)  # appended under analysis:
    out = tmp_path / "out"
    model = helpers.build_model(tmp_path / "m.onnx")
    assert cli.main(["analyze", "--no-progress", "--dataset", str(tiny_dataset.root), "--model", str(model),
                     "--config", str(cfg), "--out", str(out), *argv]) == 1
    assert expected_error in _one_error_line(capsys, "analyze")
    assert not out.exists()  # nothing computed, nothing written


@pytest.mark.parametrize("value", ["1.5", "7", "-0.1"])
def test_predict_refuses_a_conf_threshold_outside_0_1(value, tmp_path, isolated, tiny_dataset, capsys):
    out = tmp_path / "preds.json"
    assert cli.main(["predict", "--dataset", str(tiny_dataset.root), "--model", str(tmp_path / "none.onnx"),
                     "--out", str(out), "--conf-threshold", value]) == 1
    line = _one_error_line(capsys, "predict")
    assert f"model.conf_threshold must be a number in [0, 1], got {float(value)} (from --conf-threshold)" in line
    assert not out.exists()


def test_unknown_boolean_in_the_environment_file_is_refused(tmp_path, isolated, tiny_dataset, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  intra_op_spinning: sometimes\n")
    assert cli.main(["info", "--dataset", str(tiny_dataset.root), "--config", str(cfg)]) == 1
    assert "model.intra_op_spinning must be true or false" in _one_error_line(capsys, "info")


# ---------------------------------------------------------------------------- damaged store
def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign(path: Path) -> None:
    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER, total REAL)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("no_resume", [False, True], ids=["resume", "no-resume"])
@pytest.mark.parametrize("damage", [_garbage, _truncated, _foreign])
def test_analyze_moves_a_damaged_store_aside_and_recomputes(damage, no_resume, tmp_path, isolated, tiny_dataset,
                                                            capsys, caplog):
    model = helpers.build_model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    argv = ["analyze", "--no-progress", "--no-crops", "--dataset", str(tiny_dataset.root), "--model", str(model),
            "--config", str(_config(tmp_path)), "--out", str(out)]
    assert cli.main(argv) == 0
    store = out / "results.sqlite"
    damage(store)
    damaged = store.read_bytes()
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert cli.main(argv + (["--no-resume"] if no_resume else [])) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    assert "8 analysed (8 computed now" in printed.out
    moved = sorted(out.glob("results.sqlite.corrupt-*"))
    moved = [m for m in moved if not m.name.endswith(("-wal", "-shm"))]
    assert len(moved) == 1 and moved[0].read_bytes() == damaged
    notes = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(notes) == 1 and str(store) in notes[0] and str(moved[0]) in notes[0]
    conn = sqlite3.connect(store)
    assert conn.execute("SELECT count(*) FROM samples WHERE status='ok'").fetchone()[0] == 8
    conn.close()


# ---------------------------------------------------------------------------- CSV cells
HOSTILE = ["=HYPERLINK(\"http://x\")", "+1+2", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "plain", "-0.5", "a=b"]


def test_write_csv_neutralises_text_cells_only(tmp_path):
    from armbench_segmentation.analysis.exports import write_csv

    frame = pd.DataFrame({"name": HOSTILE, "value": [-0.5, 1.0, -2.0, 3.5, -1e-3, 0.0, 2.0, -7.25, 1.5],
                          "count": range(-4, 5), "mixed": ["=1", -0.5, None, "@x", 3, "ok", "-", "+", "x"]})
    path = write_csv(frame, tmp_path / "t.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["'=HYPERLINK(\"http://x\")", "'+1+2", "'-2+3", "'@SUM(A1)", "'\tTAB",
                                        "'\rCR", "plain", "-0.5", "a=b"]
    assert [r["mixed"] for r in rows] == ["'=1", "-0.5", "", "'@x", "3", "ok", "'-", "'+", "x"]
    back = pd.read_csv(path)
    assert back["value"].dtype == float and back["value"].tolist() == frame["value"].tolist()
    assert back["count"].tolist() == list(range(-4, 5))
    assert not (tmp_path / "t.csv.tmp").exists()


def test_every_csv_of_a_run_is_neutralised(tmp_path, isolated, tiny_dataset):
    """Rename images to formula-like names, run analyze, read every CSV back with csv."""
    names = {"test_a.jpg": "=cmd.jpg", "test_b.jpg": "+x.jpg", "test_c.jpg": "@y.jpg",
             "train_a.jpg": "-z.jpg", "val_a.jpg": "=HYPERLINK(\"http:/x\").jpg"}
    for split_file in ("train.json", "val.json", "test.json"):
        data = tiny_dataset.json(split_file)
        for img in data["images"]:
            if img["file_name"] in names:
                new = names[img["file_name"]]
                (tiny_dataset.root / "images" / new).parent.mkdir(parents=True, exist_ok=True)
                (tiny_dataset.root / "images" / img["file_name"]).rename(tiny_dataset.root / "images" / new)
                img["file_name"] = new
        tiny_dataset.write_json(split_file, data)
    model = helpers.build_model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    assert cli.main(["analyze", "--no-progress", "--no-crops", "--dataset", str(tiny_dataset.root), "--model",
                     str(model), "--config", str(_config(tmp_path)), "--out", str(out)]) == 0
    written = sorted(p.name for p in out.glob("*.csv"))
    for name in ("samples.csv", "errors.csv", "label_picks.csv", "prune_keep.csv", "prune_drop.csv",
                 "prune_summary.csv"):
        assert name in written
    seen = set()
    for path in out.glob("*.csv"):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for col, cell in row.items():
                    if cell[:1] in ("=", "+", "@", "\t", "\r"):
                        raise AssertionError(f"{path.name} {col}: formula cell {cell!r}")
                    if cell.startswith("-"):
                        float(cell)  # only numbers may start with '-'
                    if cell.startswith("'"):
                        seen.add(cell)
    assert {"'=cmd", "'+x", "'@y", "'-z"} <= seen
    samples = pd.read_csv(out / "samples.csv")
    assert samples["loss"].dtype == float  # numbers stay numbers

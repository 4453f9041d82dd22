"""``armbench finetune``: a tiny real fine-tune (4 images, 320 px, 1 epoch) whose ONNX the
project's own ``armbench predict`` loads; the resume after a kill; the missing-extra message.

References: the project's predict/evaluate path reading the exported file (not the training
code), the checkpoint's own epoch counter, and a real interpreter without torch importable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "armbench-yolov5s-seg.onnx"
ARMBENCH = [sys.executable, "-m", "armbench_segmentation.cli"]


def _has_train_extra() -> bool:
    from armbench_segmentation.training import missing_train_modules

    return not missing_train_modules()


needs_train = pytest.mark.skipif(not _has_train_extra(), reason="the train extra is not installed (make install-train)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from armbench_segmentation.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(root, n_train=4, n_val=3, n_unlabeled=2, seed=3, width=816, height=683, workers=1, progress=False)
    return root


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMBENCH_")}
    env.update(HOME=str(tmp / "home"), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    return env


@pytest.mark.slow
@needs_train
def test_tiny_finetune_exports_a_model_predict_loads(tiny, tmp_path):
    out = tmp_path / "m" / "tuned.onnx"
    r = subprocess.run(ARMBENCH + ["finetune", "--train", str(tiny / "train.json"), "--base", str(SHIPPED),
                                   "--out", str(out), "--val", str(tiny / "val.json"), "--epochs", "1",
                                   "--imgsz", "320", "--batch", "4", "--json"],
                       capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    card = json.loads(r.stdout)
    assert card["epochs_completed"] == 1 and card["train_images"] == 4
    assert card["train_data"][0]["sha256"] == __import__("hashlib").sha256((tiny / "train.json").read_bytes()).hexdigest()
    assert card["export"]["outputs"][2][0] == "embedding"
    seg = card["val"]["segm"]["mean"]
    assert 0.0 <= seg["AP"] <= 1.0 and seg["AP50"] > 0.2  # one gentle epoch from the shipped model still segments
    assert (out.parent / "tuned.onnx.card.md").read_text().count("| segm Object |") == 1
    # the project's own inference path reads the new file: armbench predict
    preds = tmp_path / "p.json"
    r = subprocess.run(ARMBENCH + ["predict", "--dataset", str(tiny), "--model", str(out), "--split", "val",
                                   "--val-size", "all", "--out", str(preds)],
                       capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(preds.read_text())
    assert results and {"image_id", "category_id", "segmentation", "score"} <= set(results[0])
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["output0", "output1", "embedding"]


@pytest.mark.slow
@needs_train
def test_killed_finetune_resumes_at_the_next_epoch(tiny, tmp_path):
    import torch

    out = tmp_path / "r" / "tuned.onnx"
    cmd = ARMBENCH + ["-v", "finetune", "--train", str(tiny / "train.json"), "--base", str(SHIPPED), "--out", str(out),
                      "--epochs", "2", "--imgsz", "320", "--batch", "1", "--json"]
    last = out.with_name("tuned.onnx.work") / "last.pt"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path),
                            start_new_session=True)
    deadline = time.monotonic() + 400
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert last.exists(), "no checkpoint after the first epoch"
    os.killpg(proc.pid, signal.SIGKILL)  # killed during epoch 2 (4 steps of batch 1)
    proc.wait()
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 0  # only epoch 1 finished
    first = json.loads(state["history_json"])
    assert not out.exists()
    r = subprocess.run(cmd[:-1], capture_output=True, text=True, env=_env(tmp_path), timeout=600)  # no --json
    assert r.returncode == 0, r.stderr[-2000:]
    card = json.loads(out.with_name("tuned.onnx.card.json").read_text())
    assert card["resumed_at_epoch"] == 2 and card["epochs_completed"] == 2
    assert card["history"][0] == first[0]  # epoch 1 was not trained again
    assert "resumed from" in r.stderr and out.is_file()
    # one progress line per epoch trained in this call, on stderr; the summary on stdout
    assert "epoch 2/2: " in r.stderr and "epoch 1/2: " not in r.stderr and "checkpoint saved" in r.stderr
    assert "(resumed at epoch 2)" in r.stdout
    # a checkpoint of other settings is refused, not silently mixed in
    r = subprocess.run(cmd[:-1] + ["--lr0", "0.05"], capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert r.returncode == 1 and "other settings or data" in r.stderr and "--restart" in r.stderr


def test_missing_train_extra_gives_one_actionable_line(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; sys.modules['yolov5'] = None\n"
            "from armbench_segmentation.cli import main\n"
            f"sys.exit(main(['finetune', '--train', 'x.json', '--base', 'm.onnx', '--out', {str(tmp_path / 'o.onnx')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "make install-train" in lines[0] and "torch" in lines[0] and "Traceback" not in r.stderr

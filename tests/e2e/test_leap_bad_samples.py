"""The Tensorleap face with unreadable samples: they are left out of the preprocess, each
named once, and every good sample still runs (``leap_test.py``, the shipped model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = ROOT / "models" / "armbench-yolov5s-seg.onnx"

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason=f"shipped model {SHIPPED_MODEL} is absent")]


def _image_of(data: Path, split_file: str, index: int) -> tuple[str, Path]:
    image = json.loads((data / split_file).read_text())["images"][index]
    return Path(image["file_name"]).stem, data / "images" / image["file_name"]


def test_unreadable_samples_are_excluded_and_named_once(tmp_path):
    from armbench_segmentation.data.synth import generate_dataset

    data = tmp_path / "totes"
    generate_dataset(data, 5, 5, 5, seed=4, width=612, height=512, workers=1, progress=False)
    bad = {}
    sid, path = _image_of(data, "train.json", 0)  # the first sample: the one code-loader's check() reads
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated
    bad[sid] = "truncated"
    sid, path = _image_of(data, "val.json", 1)
    path.write_bytes(b"")
    bad[sid] = "empty"
    sid, path = _image_of(data, "test.json", 2)
    path.unlink()
    bad[sid] = "not found"

    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMBENCH_")}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "home" / ".cache"))
    proc = subprocess.run([sys.executable, str(ROOT / "leap_test.py"), "--dataset", str(data), "--model",
                           str(SHIPPED_MODEL), "--samples", "3"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Traceback" not in out
    for sid, problem in bad.items():
        lines = [ln for ln in proc.stdout.splitlines() if "excluded from the preprocess" in ln and sid in ln]
        assert len(lines) == 1 and problem in lines[0], (sid, lines)
        assert f"integration_test('{sid}'" not in out  # never run, never blamed
    assert out.count("FAIL") == 0

"""Generate the synthetic data the shipped model was trained and validated on, with a pinned generator.

    .venv/bin/python tools/make_synth_data.py --commit f6e1ddf --out tools/work

The generator (``armbench_segmentation/data/synth.py``) keeps evolving; to make the training
data reproducible its source is taken from git at ``--commit`` (``git show``), written to
``<out>/pinned/`` and imported from there. Two datasets are written:

- ``<out>/synth-s1``: ``generate_dataset(DIR, 500, 0, 0, seed=1)`` -- the training images;
- ``<out>/synth-s0``: ``generate_dataset(DIR, 100, 100, 0, seed=0)`` -- its val split is the
  validation set of the model card. Its train/val images are the ones ``armbench synth --out DIR``
  writes with its defaults (100/100/100, seed 0) when run with the same generator revision;
  seed 0's val images are never trained on.

Run it with the project's runtime venv (``.venv``) so that OpenCV/numpy match ``armbench synth``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYNTH_PATH = "armbench_segmentation/data/synth.py"


def pinned_generator(commit: str, out: Path):
    full = subprocess.run(["git", "-C", str(REPO), "rev-parse", commit], check=True, capture_output=True, text=True).stdout.strip()
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{full}:{SYNTH_PATH}"], check=True, capture_output=True, text=True).stdout
    pin_dir = out / "pinned"
    pin_dir.mkdir(parents=True, exist_ok=True)
    name = f"armbench_synth_{full[:10]}"
    (pin_dir / f"{name}.py").write_text(src)
    sys.path.insert(0, str(pin_dir))  # spawned workers inherit sys.path
    return importlib.import_module(name), full


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commit", default="f6e1ddf", help="git revision of armbench_segmentation/data/synth.py")
    p.add_argument("--out", type=Path, default=REPO / "tools" / "work")
    p.add_argument("--n-train", type=int, default=500)
    p.add_argument("--train-seed", type=int, default=1)
    p.add_argument("--val-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", choices=("train", "val"), default=None)
    a = p.parse_args(argv)
    synth, full = pinned_generator(a.commit, a.out)
    print(f"generator {SYNTH_PATH} at {full} (GENERATOR_VERSION {synth.GENERATOR_VERSION})", flush=True)
    jobs = []
    if a.only in (None, "train"):
        jobs.append((a.out / f"synth-s{a.train_seed}", a.n_train, 0, 0, a.train_seed))
    if a.only in (None, "val"):
        jobs.append((a.out / f"synth-s{a.val_seed}", 100, 100, 0, a.val_seed))
    for d, n_train, n_val, n_unl, seed in jobs:
        summary = synth.generate_dataset(d, n_train, n_val, n_unl, seed=seed, workers=a.workers, progress=False)
        summary["generator_commit"] = full
        (d / "generator_commit.txt").write_text(full + "\n")
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

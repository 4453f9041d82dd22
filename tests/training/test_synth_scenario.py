"""The synthetic generator's rare-population knob (``scenario="dense-small"``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from armbench_segmentation.data.synth import DENSE_COUNT, generate_dataset


def _images(root, split):
    d = json.loads((root / f"{split}.json").read_text())
    per = {im["id"]: 0 for im in d["images"]}
    for a in d["annotations"]:
        per[a["image_id"]] += 1
    return [(im.get("scenario"), per[im["id"]], im["file_name"]) for im in d["images"]]


def test_dense_small_fractions_are_exact_per_split_and_the_rest_is_unchanged(tmp_path):
    kw = dict(n_train=4, n_val=4, n_unlabeled=5, seed=4, width=408, height=342, workers=1, progress=False)
    plain, mixed = tmp_path / "plain", tmp_path / "mixed"
    generate_dataset(plain, **kw)
    generate_dataset(mixed, **kw, scenario="dense-small", scenario_fraction={"train": 0.0, "val": 0.5, "test": 0.4})
    counts = {s: sum(sc == "dense-small" for sc, _, _ in _images(mixed, s)) for s in ("train", "val", "test")}
    assert counts == {"train": 0, "val": 2, "test": 2}  # round(0.5*4), round(0.4*5)
    # the ordinary images are byte-identical to a run without the scenario
    for split in ("train", "val", "test"):
        for (sc, _, name), (_, _, name0) in zip(_images(mixed, split), _images(plain, split)):
            assert name == name0
            same = (mixed / "images" / name).read_bytes() == (plain / "images" / name).read_bytes()
            assert same == (sc is None)
    assert (mixed / "train.json").read_bytes() == (plain / "train.json").read_bytes()
    # dense images are cluttered: far more annotated objects than an ordinary tote's median
    dense = [n for s in ("val", "test") for sc, n, _ in _images(mixed, s) if sc]
    normal = [n for s in ("train", "val", "test") for sc, n, _ in _images(mixed, s) if not sc]
    assert min(dense) > np.median(normal) * 2 and max(dense) <= DENSE_COUNT[1] + 1


def test_bad_scenario_values_are_refused(tmp_path):
    with pytest.raises(ValueError, match="scenario must be one of"):
        generate_dataset(tmp_path, 1, 0, 0, width=128, height=128, workers=1, progress=False, scenario="fog")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        generate_dataset(tmp_path, 1, 0, 0, width=128, height=128, workers=1, progress=False, scenario="dense-small",
                         scenario_fraction=1.5)

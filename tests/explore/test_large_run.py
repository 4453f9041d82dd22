"""The benchmark fixture run (benchmarks/large_run.py) is a run the explorer opens, labelled
as a fixture, with facts that agree with its counts (so the sample view's one-truth holds)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd

from armbench_segmentation.explore.app import create_app
from armbench_segmentation.explore.run import ExploreRun
from armbench_segmentation.metrics.sample_evaluation import COUNT_COLUMNS, COUNTED_SIDE


def _large_run():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "large_run.py"
    spec = importlib.util.spec_from_file_location("_test_large_run", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_fixture_run_opens_and_its_facts_agree_with_its_counts(tmp_path):
    large_run = _large_run()
    out = large_run.make_large_run(tmp_path / "large", n=300, seed=1)
    info = json.loads((out / "run.json").read_text())
    assert info["benchmark_fixture"] is True and "not an analysis" in info["note"]
    table = pd.read_parquet(out / "samples.parquet")
    assert len(table) == 300 and table["sample_id"].is_unique
    assert set(table["split"]) == {"train", "val", "unlabeled"}
    assert table.loc[table["split"] == "unlabeled", "loss"].isna().all()
    run = ExploreRun(out)
    try:
        client = create_app(run).test_client()
        meta = client.get("/api/meta").get_json()
        assert meta["n_samples"] == 300 and not meta["dataset_available"]
        assert str(out) not in json.dumps(meta)
        for row in table[table["split"] != "unlabeled"].head(40).itertuples(index=False):
            s = client.get("/api/sample", query_string={"split": row.split, "id": row.sample_id}).get_json()
            assert not s["image_available"]
            for kind, column in COUNT_COLUMNS.items():
                flagged = [i for i in s["instances"] if i["kind"] == COUNTED_SIDE[kind] and i.get(kind)]
                assert s["errors"][kind]["counted"] == int(getattr(row, column)) == len(flagged), (row.sample_id, kind)
        image = client.get("/api/image", query_string={"split": row.split, "id": row.sample_id})
        assert image.status_code == 409 and "unavailable" in image.get_json()["error"]
    finally:
        run.close()

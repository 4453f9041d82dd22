"""A BENCHMARK FIXTURE, not an analysis: a run folder with ``n`` synthetic result rows.

    from benchmarks.large_run import make_large_run      # or load this file by path
    run_dir = make_large_run("/tmp/large-run", n=44253)  # ARMBench's size

Every value is drawn at random (seeded) to look like a run: a map of Gaussian blobs with
one cluster per blob, loss/F1/counts that grow with the number of objects, a categorical
tote colour, uncertainty columns, and facts whose involved instances and instance rows
agree with the row's counts. Nothing was evaluated and there are no images (the dataset
path points at a missing folder, so ``armbench serve`` says images are unavailable). It
exists to measure the explorer, the map and the exports at scale. It is written through
the store's own API (``ResultsStore.start_run`` / ``put_samples``) and the project's
exporters (``exports.write_table``, ``write_run_info``, ``write_csv``), so its files have
exactly the layout ``armbench analyze`` writes; ``run.json`` says ``benchmark_fixture``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

FIXTURE_NOTE = "benchmark fixture: synthetic random rows, not an analysis (benchmarks/large_run.py)"
TOTE_COLOURS = ("yellow", "blue", "gray", "black")
N_CLUSTERS = 12


def _columns(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """The per-sample table (vectorised): identity, map, cluster, metrics, uncertainty, metadata."""
    split = rng.choice(["train", "val", "unlabeled"], n, p=[0.6, 0.1, 0.3])
    cluster = rng.integers(0, N_CLUSTERS, n)
    centres = rng.normal(scale=12.0, size=(N_CLUSTERS, 2))
    xy = centres[cluster] + rng.normal(scale=2.0, size=(n, 2))
    n_obj = rng.integers(3, 31, n)
    fn = rng.binomial(n_obj, 0.1)
    tp = n_obj - fn
    fp = rng.poisson(1.5, n)
    over = rng.binomial(tp, 0.05)
    under = np.minimum(rng.poisson(0.3, n), tp)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.ones(n), where=(2 * tp + fp + fn) > 0)
    loss = 0.05 + 0.01 * n_obj + 0.05 * (fp + fn) + rng.gamma(2.0, 0.02, n)
    ids = np.char.add("bench", np.char.zfill(np.arange(n).astype(str), 6))
    frame = pd.DataFrame({
        "sample_id": ids, "split": split, "file_name": np.char.add(ids, ".jpg"), "image_id": np.arange(1, n + 1),
        "map_x": xy[:, 0], "map_y": xy[:, 1], "cluster": cluster,
        "loss": loss, "error_rate": 1 - f1, "tp": tp, "fp": fp, "fn": fn, "f1": f1,
        "over_segmented_count": over, "under_segmented_count": under, "duplicate_count": np.zeros(n, np.int64),
        "n_pred": tp + fp, "unc_mask_entropy": rng.beta(2, 5, n), "unc_score_entropy": rng.beta(2, 6, n),
        "meta_n_objects": n_obj, "meta_tote_color": rng.choice(TOTE_COLOURS, n), "meta_brightness": rng.uniform(60, 200, n),
        "width": np.full(n, 2448), "height": np.full(n, 2048),
    })
    unlabeled = frame["split"] == "unlabeled"
    labeled_only = ["loss", "error_rate", "tp", "fp", "fn", "f1", "over_segmented_count", "under_segmented_count",
                    "duplicate_count"]
    for c in labeled_only:  # as the engine: labeled-only columns are empty for unlabeled samples
        frame[c] = frame[c].astype("float64" if frame[c].dtype.kind == "f" else "Int64")
        frame.loc[unlabeled, c] = None
    return frame


def _facts(n_gt: int, tp: int, fp: int, fn: int, over: int, under: int, labeled: bool) -> dict:
    """Facts that agree with the counts: GT 0..over-1 split, the last fn GT missed, predictions
    tp..tp+fp-1 unmatched, predictions 0..under-1 merging."""
    n_pred = tp + fp
    involved = {k: {"gt": [], "pred": []} for k in ("over_segmented", "under_segmenting", "duplicate",
                                                      "false_positive", "missed")}
    if labeled:
        involved["over_segmented"]["gt"] = list(range(over))
        involved["missed"]["gt"] = list(range(n_gt - fn, n_gt))
        involved["false_positive"]["pred"] = list(range(tp, n_pred))
        involved["under_segmenting"]["pred"] = list(range(under))
    rows = []
    for side, count in (("gt", n_gt if labeled else 0), ("pred", n_pred)):
        for i in range(count):
            row = {"kind": side, "index": i, "class": "Object", "score": None if side == "gt" else 0.5 + 0.5 / (1 + i)}
            if labeled:
                flags = (("over_segmented", "over_segmented"), ("missed", "missed")) if side == "gt" else \
                    (("under_segmenting", "under_segmenting"), ("false_positive", "false_positive"))
                for name, kind in flags:
                    row[name] = i in set(involved[kind][side])
            rows.append(row)
    return {"frame": [640, 640], "involved": involved, "hard_region": None, "instances": rows}


def make_large_run(out_dir: str | Path, n: int = 44253, seed: int = 0) -> Path:
    """Write the fixture run into ``out_dir`` (created; an existing store there is replaced)
    and return the folder."""
    from armbench_segmentation.analysis import exports
    from armbench_segmentation.analysis.store import ResultsStore, StoredSample

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("results.sqlite*"):
        old.unlink()
    rng = np.random.default_rng(seed)
    frame = _columns(n, rng)
    row_columns = [c for c in frame.columns if c not in ("sample_id", "split", "map_x", "map_y", "cluster")]
    records = frame[row_columns].astype(object).where(frame[row_columns].notna(), None).to_dict("records")
    store = ResultsStore(out / "results.sqlite")
    try:
        store.start_run(f"benchmark-fixture-{n}-{seed}", {
            "note": FIXTURE_NOTE, "benchmark_fixture": True, "model_path": "benchmark-fixture.onnx",
            "model_sha256": "0" * 64, "settings": {"data": {"path": str(out / "no-dataset")}},
        })
        batch = []
        cols = {c: frame[c].to_numpy() for c in ("tp", "fp", "fn", "over_segmented_count", "under_segmented_count",
                                                 "meta_n_objects", "n_pred")}
        for i, (sid, split) in enumerate(zip(frame["sample_id"], frame["split"])):
            labeled = split != "unlabeled"
            tp = int(cols["tp"][i]) if labeled else int(cols["n_pred"][i])
            facts = _facts(int(cols["meta_n_objects"][i]), tp, int(cols["fp"][i]) if labeled else 0,
                           int(cols["fn"][i]) if labeled else 0, int(cols["over_segmented_count"][i]) if labeled else 0,
                           int(cols["under_segmented_count"][i]) if labeled else 0, labeled)
            batch.append(StoredSample(split=str(split), sample_id=str(sid), status="ok", row=records[i], predictions=[],
                                      facts=facts, image_id=i + 1, file_name=f"{sid}.jpg", seq=i))
            if len(batch) == 2000:
                store.put_samples(batch)
                batch = []
        store.put_samples(batch)
        exports.write_table(frame, out)
        exports.write_run_info(store, out, {"dataset": FIXTURE_NOTE, "benchmark_fixture": True})
        summary = frame.groupby("cluster").agg(size=("sample_id", "size"), mean_loss=("loss", "mean")).reset_index()
        summary["insight"] = [f"benchmark fixture blob {c}" for c in summary["cluster"]]
        exports.write_csv(summary, out / "clusters.csv")
    finally:
        store.close()
    return out


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=44253)
    args = parser.parse_args()
    t0 = time.perf_counter()
    make_large_run(args.out, args.n)
    print(f"{args.n} rows written to {args.out} in {time.perf_counter() - t0:.1f} s")

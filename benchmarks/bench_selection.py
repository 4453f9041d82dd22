"""Are the labeling picks useful? Hold out the labeled val split as if it were unlabeled,
run every labeling strategy, and compare what the picks really contain with random picks.

    .venv/bin/python benchmarks/bench_selection.py --run OUT_DIR        # a finished `armbench analyze` folder
    .venv/bin/python benchmarks/bench_selection.py --synthetic          # development data (planted signal)

For each strategy and budget k it prints, among the top-k picks of the held-out val split:
mean true loss, share of over-segmented and of under-segmented images, and each as a ratio
to random picks of the same size (mean over --draws random draws). Ratio > 1: the strategy
finds more failures than chance. Only the train split serves as labeled data; the real
unlabeled split is left out (it has no truth), and the val rows' loss/over/under columns
are hidden from the strategies.

--run DIR reads DIR/results.sqlite (the engine's store: frame + embeddings of the latest
run) or, failing that, DIR/samples.parquet with DIR/embeddings.npy (rows aligned).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

TRUTH = ("loss", "over_segmented", "under_segmented", "over_segmented_count", "under_segmented_count",
         "tp", "fp", "fn", "precision", "recall", "f1", "mean_iou", "sample_ap", "ap")


def load_run(run_dir: Path) -> tuple[pd.DataFrame, np.ndarray, str]:
    store_path = run_dir / "results.sqlite"
    if store_path.exists():
        from armbench_segmentation.analysis.store import ResultsStore

        store = ResultsStore(store_path)
        runs = store.runs()
        if not runs:
            raise SystemExit(f"{store_path} holds no run")
        store.start_run(runs[-1])
        frame = store.frame()
        emb = store.embeddings(frame)
        store.close()
        return frame, emb, f"{store_path} (run {runs[-1][:12]})"
    pq, npy = run_dir / "samples.parquet", run_dir / "embeddings.npy"
    if pq.exists() and npy.exists():
        return pd.read_parquet(pq), np.load(npy), str(pq)
    raise SystemExit(f"{run_dir}: neither results.sqlite nor samples.parquet + embeddings.npy found")


def synthetic(n_train: int = 3000, n_val: int = 1500, dim: int = 64, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Regions of latent space differ in difficulty; uncertainty is a noisy view of the loss."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val
    k = 12
    centres = rng.normal(size=(k, dim)) * 3
    comp = rng.integers(0, k, n)
    emb = (centres[comp] + rng.normal(size=(n, dim))).astype(np.float32)
    difficulty = rng.normal(size=k) * 1.2
    logit = difficulty[comp] + 0.8 * rng.normal(size=n) - 1.0
    loss = 1 / (1 + np.exp(-logit))
    over = (rng.uniform(size=n) < 0.6 * loss).astype(int)
    under = (rng.uniform(size=n) < 0.5 * loss).astype(int)
    frame = pd.DataFrame({
        "sample_id": [f"s{i:05d}" for i in range(n)], "split": ["train"] * n_train + ["val"] * n_val,
        "loss": loss, "over_segmented": over, "under_segmented": under,
        "unc_mask_entropy": loss + 0.35 * rng.normal(size=n), "unc_score_entropy": loss + 0.5 * rng.normal(size=n),
        "unc_margin": loss + 0.5 * rng.normal(size=n), "unc_least_confidence": loss + 0.5 * rng.normal(size=n),
        "unc_low_conf_count": rng.poisson(1 + 4 * loss),
    })
    return frame, emb


def evaluate(frame: pd.DataFrame, emb: np.ndarray, budgets: list[int], draws: int, seed: int) -> pd.DataFrame:
    from armbench_segmentation.analysis.selection import LABEL_STRATEGIES, select_for_labeling

    keep = frame["split"].astype(str).isin(["train", "val"]).to_numpy()
    frame, emb = frame[keep].reset_index(drop=True), emb[keep]
    truth = frame.copy()
    for c in ("over_segmented", "under_segmented"):
        if c not in truth.columns and f"{c}_count" in truth.columns:
            truth[c] = (pd.to_numeric(truth[f"{c}_count"], errors="coerce") > 0).astype(float)
    held = frame.copy()
    val = held["split"] == "val"
    held.loc[val, "split"] = "unlabeled"
    held.loc[val, [c for c in TRUTH if c in held.columns]] = np.nan
    val_idx = np.flatnonzero(val.to_numpy())
    metrics = [c for c in ("loss", "over_segmented", "under_segmented") if c in truth.columns]
    rng = np.random.default_rng(seed)
    rows = []
    for k in budgets:
        k = min(k, len(val_idx))
        rand = {m: np.mean([np.nanmean(pd.to_numeric(truth[m], errors="coerce").to_numpy()[
            rng.choice(val_idx, k, replace=False)]) for _ in range(draws)]) for m in metrics}
        for strategy in LABEL_STRATEGIES:
            try:
                res = select_for_labeling(held, emb, budget=k, strategy=strategy, seed=seed)
            except ValueError as exc:  # e.g. a missing uncertainty column in this run
                rows.append({"strategy": strategy, "k": k, "note": str(exc).split(";")[0]})
                continue
            row = {"strategy": strategy, "k": k}
            for m in metrics:
                v = float(np.nanmean(pd.to_numeric(truth[m], errors="coerce").to_numpy()[res.row_index]))
                row[m], row[f"{m}_random"] = v, float(rand[m])
                row[f"{m}_ratio"] = v / rand[m] if rand[m] > 0 else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="a finished analysis output folder")
    src.add_argument("--synthetic", action="store_true", help="synthetic frame with a planted signal")
    ap.add_argument("--budget", type=int, nargs="+", default=None,
                    help="pick sizes (default: 5%% and 10%% of the val split)")
    ap.add_argument("--draws", type=int, default=20, help="random draws for the baseline")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.run:
        frame, emb, where = load_run(args.run)
    else:
        frame, emb = synthetic(seed=args.seed)
        where = "synthetic (planted: difficulty by latent region, uncertainty = noisy loss)"
    n_val = int((frame["split"].astype(str) == "val").sum())
    if n_val == 0 or emb.shape[0] != len(frame):
        raise SystemExit(f"need a val split and aligned embeddings (val rows {n_val}, frame {len(frame)}, "
                         f"embeddings {emb.shape})")
    budgets = args.budget or sorted({max(1, n_val // 20), max(1, n_val // 10)})
    print(f"source: {where}\nrows: {len(frame)} (val held out: {n_val}), embeddings {emb.shape}")
    table = evaluate(frame, emb, budgets, args.draws, args.seed)
    ratio_cols = [c for c in table.columns if c.endswith("_ratio")]
    show = ["strategy", "k"] + [c for c in ("loss", "loss_random") if c in table] + ratio_cols + \
        (["note"] if "note" in table else [])
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(table[show].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

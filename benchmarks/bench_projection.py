"""Time to build the population map (and, with --all, clusters and picks) at ARMBench scale.

    .venv/bin/python benchmarks/bench_projection.py                 # PCA on 44,253 x 512
    .venv/bin/python benchmarks/bench_projection.py --method umap   # needs umap-learn
    .venv/bin/python benchmarks/bench_projection.py --all           # + k-means clusters, labeling and pruning picks
    .venv/bin/python benchmarks/bench_projection.py --method tsne   # the default map (openTSNE)

benchmarks/bench_map.py compares the methods side by side, with a neighbourhood score.

Synthetic embeddings: 20 Gaussian blobs in a 32-d subspace of R^512 plus isotropic noise,
split like ARMBench's files (train/val/unlabeled). Prints seconds and the ratio to the goal.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd


def synthetic(n: int, dim: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 32)) * 4
    basis = np.linalg.qr(rng.normal(size=(dim, 32)))[0].T  # (32, dim) orthonormal rows
    comp = rng.integers(0, 20, n)
    emb = ((centres[comp] + rng.normal(size=(n, 32))) @ basis + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)
    split = rng.choice(["train", "val", "unlabeled"], n, p=[0.7, 0.15, 0.15])
    frame = pd.DataFrame({"sample_id": [f"s{i:06d}" for i in range(n)], "split": split,
                          "loss": np.where(split == "unlabeled", np.nan, rng.uniform(size=n)),
                          "unc_mask_entropy": rng.uniform(size=n), "unc_margin": rng.uniform(size=n)})
    return frame, emb


def timed(label: str, fn, goal: float | None = None):
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    extra = f"   ({dt / goal:.2f}x of the {goal:.0f} s goal)" if goal else ""
    print(f"{label:<44s}{dt:8.2f} s{extra}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=44_253)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--method", default="pca")
    ap.add_argument("--goal", type=float, default=60.0, help="seconds")
    ap.add_argument("--all", action="store_true", help="also time clustering and selection")
    args = ap.parse_args()

    from armbench_segmentation.analysis.projection import fit_projection

    print(f"{args.n} x {args.dim} float32 embeddings, {os.cpu_count()} CPUs visible")
    frame, emb = synthetic(args.n, args.dim)
    timed("import sklearn (once per process)", lambda: __import__("sklearn.decomposition"))
    proj = timed(f"map: fit_projection(method={args.method!r})", lambda: fit_projection(frame, emb, args.method),
                 args.goal)
    print(f"    fitted on {proj.n_fit} rows ({proj.fitted_on}), transformed {proj.n_transformed}")
    if args.all:
        from armbench_segmentation.analysis.clustering import cluster
        from armbench_segmentation.analysis.selection import select_for_labeling, select_for_pruning

        cl = timed("clusters: cluster(kmeans, k=8)", lambda: cluster(frame, emb, n_clusters=8))
        for strategy in ("combined", "entropy", "loss_neighbourhood", "diversity"):
            timed(f"labeling picks: {strategy}, budget 500",
                  lambda s=strategy: select_for_labeling(frame, emb, budget=500, strategy=s))
        timed("pruning: keep 0.8, dedup, sub-groups", lambda: select_for_pruning(frame, emb, cl.labels, 0.8))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

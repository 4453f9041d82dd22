"""The population map at ARMBench scale: time and structure of each projection, side by side.

    .venv/bin/python benchmarks/bench_map.py                        # 44,253 x 512, tsne + pca (+ umap if installed)
    .venv/bin/python benchmarks/bench_map.py --methods tsne --tsne-fit 8000 --n-iter 400
    .venv/bin/python benchmarks/bench_map.py --n 5000               # a quick look

Embeddings: a Gaussian mixture in R^512 with uneven cluster sizes (a Zipf-like spread: the
largest cluster ~50x the smallest), each cluster with its own spread, living in a 48-d
subspace plus isotropic noise (the shape a CNN embedding of tote images has: a few dozen
directions that matter). Split like ARMBench's files (train / val / unlabeled), so the map is
fitted on the labeled rows (a subset of them at most) and the rest is transformed.

Each method runs through ``analysis.projection.fit_projection`` exactly as ``armbench
analyze`` calls it (the default parameters of the method), and is scored by

- ``knn_recall@10``: for 2,000 random rows, the share of their 10 nearest neighbours in the
  512-d space that are also among their 10 nearest neighbours on the 2-D map (1 = every
  neighbourhood kept; a random map scores ~10/n);
- ``cluster_purity@10``: the share of each row's 10 nearest map neighbours drawn from the
  same mixture component (how well the map keeps the clusters apart).

It prints the load average before and after and the CPU seconds of each method: on a shared
machine the wall time grows with what else runs, while CPU seconds / 2 is about the wall time
the method needs on 2 idle cores.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd


def mixture(n: int, dim: int, n_clusters: int = 30, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(frame, embeddings (n, dim) float32, component (n,) int): an uneven Gaussian mixture."""
    rng = np.random.default_rng(seed)
    sub = 48
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 1.15  # uneven: Zipf-like
    weights /= weights.sum()
    comp = rng.choice(n_clusters, size=n, p=weights)
    centres = rng.normal(size=(n_clusters, sub)) * 3.0
    spread = rng.uniform(0.6, 1.6, n_clusters)
    basis = np.linalg.qr(rng.normal(size=(dim, sub)))[0].T  # (sub, dim) orthonormal rows
    latent = centres[comp] + spread[comp, None] * rng.normal(size=(n, sub))
    emb = (latent @ basis + 0.35 * rng.normal(size=(n, dim))).astype(np.float32)
    split = rng.choice(["train", "val", "unlabeled"], n, p=[0.6, 0.15, 0.25])
    frame = pd.DataFrame({"sample_id": [f"s{i:06d}" for i in range(n)], "split": split})
    return frame, emb, comp


def neighbour_scores(emb: np.ndarray, xy: np.ndarray, comp: np.ndarray, k: int = 10, n_query: int = 2000,
                     seed: int = 0) -> tuple[float, float]:
    """(knn_recall@k of the map vs the high-d space, cluster purity of the map's k-NN)."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    q = rng.choice(len(emb), size=min(n_query, len(emb)), replace=False)
    high = NearestNeighbors(n_neighbors=k + 1).fit(emb).kneighbors(emb[q], return_distance=False)[:, 1:]
    low = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy[q], return_distance=False)[:, 1:]
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(high, low)])
    purity = float(np.mean(comp[low] == comp[q, None]))
    return float(recall), purity


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=44_253)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--methods", default="tsne,pca,umap", help="comma-separated; umap is skipped when not installed")
    ap.add_argument("--goal", type=float, default=60.0, help="seconds")
    ap.add_argument("--tsne-fit", type=int, default=None, help="fit subset for tsne (default: the method's own)")
    ap.add_argument("--n-iter", type=int, default=None, help="tsne optimisation iterations (default: the method's)")
    args = ap.parse_args()

    from armbench_segmentation.analysis.projection import fit_projection, get_projection

    print(f"{args.n} x {args.dim} float32 embeddings (uneven Gaussian mixture), {os.cpu_count()} CPUs visible, "
          f"load average before {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    frame, emb, comp = mixture(args.n, args.dim)
    __import__("sklearn.decomposition")  # import time is not map time
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        spec = get_projection(method)
        try:
            spec.check_available()
        except Exception as exc:  # noqa: BLE001 - an optional method that is not installed
            print(f"{method:<6s} skipped: {str(exc).splitlines()[0][:120]}")
            continue
        kwargs, params = {}, {}
        if method == "tsne":
            if args.tsne_fit:
                kwargs["max_fit"] = args.tsne_fit
            if args.n_iter:
                params["n_iter"] = args.n_iter
        t, cpu = time.perf_counter(), time.process_time()
        proj = fit_projection(frame, emb, method=method, seed=0, params=params, **kwargs)
        dt, cpu = time.perf_counter() - t, time.process_time() - cpu
        recall, purity = neighbour_scores(emb, proj.xy, comp)
        rows.append((method, dt, recall, purity, proj.n_fit, proj.n_transformed))
        print(f"{method:<6s} {dt:8.1f} s wall, {cpu:7.1f} s CPU ({dt / args.goal:.2f}x of the {args.goal:.0f} s goal)  "
              f"knn_recall@10 {recall:.3f}  cluster_purity@10 {purity:.3f}  "
              f"fit {proj.n_fit} rows, transformed {proj.n_transformed}", flush=True)
    if len(rows) > 1:
        base = next((r for r in rows if r[0] == "pca"), rows[-1])
        for r in rows:
            if r is not base:
                print(f"{r[0]} vs {base[0]}: {r[1] / base[1]:.1f}x the time, knn_recall {r[2] / max(base[2], 1e-9):.1f}x, "
                      f"purity {r[3]:.3f} vs {base[3]:.3f}")
    la = os.getloadavg()
    print(f"load average after {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (2 cores shared: times grow with the load)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

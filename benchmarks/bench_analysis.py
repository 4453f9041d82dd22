"""Analysis engine throughput vs raw ONNX inference, memory, and map time at ARMBench scale.

    .venv/bin/python benchmarks/bench_analysis.py                      # shipped model, synthetic 2448x2048 totes
    .venv/bin/python benchmarks/bench_analysis.py --n 20 --model M.onnx --dataset DIR

Prints, in one run:

1. raw ONNX inference throughput (img/s): ``model.run`` alone on the letterboxed images of
   the benchmark samples, preloaded in memory (batch size from the settings);
2. end-to-end analysis throughput (img/s) through the runner on the same samples: JPEG
   decode + letterbox + GT rasterization (prefetch threads), inference, decode, every metric,
   the YOLOv5-seg loss, uncertainty, metadata, original-resolution RLE and the SQLite
   store; and the ratio end-to-end / raw (goal >= 0.8 on CPU);
3. memory: process RSS before / peak during / after the end-to-end run (sampled every
   20 ms) and ru_maxrss;
4. the population map (analysis.projection) of 44,253 synthetic 512-d embeddings with
   cluster structure (the size of ARMBench mix-object-tote), goal < 60 s on 2 cores.

The dataset defaults to synthetic totes at ARMBench resolution (2448x2048) generated once
into the cache (``$XDG_CACHE_HOME/armbench-segmentation``); the store goes to a temporary
folder. Numbers depend on the machine's load: run it on an idle machine for reporting.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval, self.peak, self._halt = interval, rss_mb(), threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return max(self.peak, rss_mb())


def clustered_embeddings(n: int, dim: int = 512, k: int = 40, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """n x dim float32 vectors around k centres (ReLU'd like pooled CNN features) and a frame
    with ARMBench-like splits (train / val / unlabeled)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)).astype(np.float32) * 2.0
    comp = rng.integers(0, k, n)
    emb = np.maximum(centres[comp] + rng.normal(size=(n, dim)).astype(np.float32), 0)
    split = rng.choice(np.array(["train", "val", "unlabeled"]), size=n, p=[0.6, 0.1, 0.3])
    frame = pd.DataFrame({"split": split, "sample_id": [f"s{i}" for i in range(n)]})
    return frame, emb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=None, help="ARMBench-layout folder (default: synthetic)")
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: the shipped one)")
    parser.add_argument("--n", type=int, default=24, help="images per split of the synthetic dataset (default 24)")
    parser.add_argument("--samples", type=int, default=40, help="images timed (train+val+unlabeled, default 40)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--map-rows", type=int, default=44_253)
    parser.add_argument("--projection", default="pca", help="projection method for the map (default pca)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from armbench_segmentation.analysis.engine import SyntheticSpec, ensure_synthetic_dataset
    from armbench_segmentation.analysis.runner import open_run, run_samples, selected_samples
    from armbench_segmentation.analysis.store import ResultsStore
    from armbench_segmentation.config import load_settings
    from armbench_segmentation.data.coco import ArmbenchDataset
    from armbench_segmentation.model.onnx_model import SegmentationModel

    overrides = {"model.path": str(args.model) if args.model else None, "model.batch_size": args.batch_size,
                 "data.train_size": "all", "data.val_size": "all", "data.unlabeled_size": "all", "model.device": "cpu"}
    settings = load_settings(overrides=overrides, env={})
    if not Path(settings.model.path).is_file():
        raise SystemExit(f"model {settings.model.path} not found; pass --model PATH")
    if args.dataset is None:
        spec = SyntheticSpec(n_train=args.n, n_val=args.n, n_unlabeled=args.n)
        root = ensure_synthetic_dataset(spec, progress=False)
        what = f"synthetic {spec.describe()} ({root})"
    else:
        root, what = args.dataset, str(args.dataset)
    settings = settings.replace({"data.path": str(root)})
    dataset = ArmbenchDataset(root, settings.data)
    model = SegmentationModel(settings.model.path, settings.model, settings.data.class_names)
    samples = selected_samples(dataset)[: args.samples]
    keep = {(s.split, s.sample_id) for s in samples}

    class Subset:  # the same dataset restricted to the timed samples
        def __getattr__(self, name):
            return getattr(dataset, name)

        def samples(self, split):
            return [s for s in dataset.samples(split) if (s.split, s.sample_id) in keep]

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"dataset: {what}; {len(samples)} images timed; model {Path(settings.model.path).name} "
          f"({model.providers[0] if model.providers else '?'}, batch {settings.model.batch_size}); {cores} CPU cores")

    # warm up the session (first runs allocate) and, likewise, the per-sample path once (first-call
    # imports of the metric modules and numpy.ma, ~0.1-0.2 s per process: a per-run, not a per-image cost)
    from armbench_segmentation.analysis.pipeline import compact_predictions, process_sample, split_raw

    warm_loaded = dataset.load(samples[0])
    for _ in range(2):
        warm_raw = model.run(model.to_input(warm_loaded.image[None]))
    warm_result = process_sample(warm_loaded, split_raw(warm_raw)[0], model, settings, dataset.annotations(samples[0]))
    compact_predictions(warm_result.predictions, warm_loaded.letterbox)
    del warm_loaded, warm_raw, warm_result

    # ---- end-to-end first (so preloaded images do not inflate its memory numbers)
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultsStore(Path(tmp) / "results.sqlite")
        open_run(store, Subset(), model, settings)
        rss_before = rss_mb()
        sampler = RssSampler()
        sampler.start()
        t0, c0 = time.perf_counter(), time.process_time()
        summary = run_samples(Subset(), model, store, settings, progress=False)
        e2e_s, e2e_cpu = time.perf_counter() - t0, time.process_time() - c0
        rss_peak = sampler.stop()
        rss_after = rss_mb()
        store.close()
    done = summary.computed + summary.errors
    e2e = done / e2e_s

    # ---- raw inference on the same images, preloaded
    images = [dataset.load(s).image for s in samples]
    bs = max(1, settings.model.batch_size)
    batches = [model.to_input(np.stack(images[i: i + bs])) for i in range(0, len(images), bs)]
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        model.run(b)
    raw_s, raw_cpu = time.perf_counter() - t0, time.process_time() - c0
    raw = len(images) / raw_s

    print(f"raw ONNX inference:      {raw:7.2f} img/s ({1000 * raw_s / len(images):.0f} ms/img)")
    print(f"end-to-end analysis:     {e2e:7.2f} img/s ({1000 * e2e_s / done:.0f} ms/img; {summary.computed} ok, "
          f"{summary.errors} errors)")
    print(f"ratio end-to-end / raw:  {e2e / raw:7.2f}   (goal >= 0.8)")
    print(f"CPU time per image (all threads): raw {1000 * raw_cpu / len(images):.0f} ms, end-to-end "
          f"{1000 * e2e_cpu / done:.0f} ms -> CPU-bound ratio {raw_cpu / len(images) / (e2e_cpu / done):.2f}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"memory (RSS): {rss_before:.0f} MB before, {rss_peak:.0f} MB peak during, {rss_after:.0f} MB after the "
          f"run; ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")

    # ---- the map at ARMBench scale
    from armbench_segmentation.analysis.projection import fit_projection

    frame, emb = clustered_embeddings(args.map_rows)
    t0 = time.perf_counter()
    proj = fit_projection(frame, emb, method=args.projection, seed=0)
    map_s = time.perf_counter() - t0
    print(f"map ({args.projection}) of {len(emb):,} x {emb.shape[1]} embeddings: {map_s:.1f} s "
          f"(fit on {proj.n_fit:,}, transformed {proj.n_transformed:,}; goal < 60 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

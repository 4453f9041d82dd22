"""Analysis engine throughput vs raw ONNX inference, memory, and map time at ARMBench scale.

    .venv/bin/python benchmarks/bench_analysis.py                      # shipped model, synthetic 2448x2048 totes
    .venv/bin/python benchmarks/bench_analysis.py --n 20 --model M.onnx --dataset DIR
    .venv/bin/python benchmarks/bench_analysis.py --samples 30 --repeat 3 --map-rows 0   # ratio + stage table only

Prints, in one run:

1. raw ONNX inference throughput (img/s): ``model.run`` alone on the letterboxed images of
   the benchmark samples, preloaded in memory (batch size from the settings);
2. end-to-end analysis throughput (img/s) through the runner on the same samples: JPEG
   decode + letterbox + GT rasterization (prefetch threads), inference, decode, every metric,
   the YOLOv5-seg loss, uncertainty, metadata, original-resolution RLE and the SQLite
   store; and the ratio end-to-end / raw (goal >= 0.9 on CPU). ``--repeat R`` alternates
   R raw, R end-to-end and R floor passes (ratio per round and overall), since the ratio moves with
   the machine's load; the CPU-bound ratio (raw CPU / end-to-end CPU per image) moves less;
   The floor pass runs only what any analysis must: the runner's loader (read, JPEG decode,
   letterbox, GT) in two threads ahead of the model, and inference; floor / raw is the
   highest ratio reachable on the machine, and end-to-end / floor what the analysis keeps;
3. memory: process RSS before / peak during / after the first end-to-end run (sampled
   every 20 ms) and ru_maxrss;
4. where the end-to-end CPU goes (skip with ``--no-profile``): one more end-to-end pass
   with the per-sample stage functions (``STAGES``) wrapped by a timer of the calling
   thread's CPU (``time.thread_time``, nested stages counted once), as CPU ms per image,
   next to the raw inference's CPU per image and what is left of the process CPU
   (ONNX Runtime's extra work under contention, queues, thread hand-offs);
5. with ``--compare-threads 1,2``: raw and end-to-end per ONNX Runtime intra-op thread
   count, alternating, each end-to-end also divided by the fastest raw setting;
6. with the stage table, how busy the model was: the share of the pass's wall time during
   which a ``SegmentationModel.run`` call was executing (union of the calls' intervals),
   and its complement, the share the model (the GPU with ``--device cuda``) waited for the
   CPU side; each stage's CPU ms/img is also given as the img/s one core could sustain;
7. the population map (analysis.projection) of 44,253 synthetic 512-d embeddings with
   cluster structure (the size of ARMBench mix-object-tote), goal < 60 s on 2 cores
   (``--map-rows 0`` skips it).

The dataset defaults to synthetic totes at ARMBench resolution (2448x2048) generated once
into the cache (``$XDG_CACHE_HOME/armbench-segmentation``); the store goes to a temporary
folder. Numbers depend on the machine's load: run it on an idle machine for reporting.
"""

from __future__ import annotations

import argparse
import contextlib
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


# (stage, module, attribute) of the per-sample stage functions timed by the profile; nested
# stages are timed exclusively (a stage's time excludes the stages it calls). Methods are
# given as "Class.method".
STAGES = (
    ("read + JPEG decode", "armbench_segmentation.data.image", "decode_bytes"),
    ("read + JPEG decode", "armbench_segmentation.data.image", "_read_bytes"),
    ("letterbox", "armbench_segmentation.data.letterbox", "Letterbox.apply_image"),
    ("GT check + rasterize", "armbench_segmentation.data.coco", "_inspect_annotation"),
    ("GT check + rasterize", "armbench_segmentation.data.coco", "_annotations_to_instances"),
    ("output decode (NMS, masks)", "armbench_segmentation.model.decode", "decode"),
    ("uncertainty + hard region", "armbench_segmentation.metrics.uncertainty", "uncertainty_scores"),
    ("uncertainty + hard region", "armbench_segmentation.metrics.sample_evaluation", "_hard_region"),
    ("overlaps (pack + IoU)", "armbench_segmentation.metrics.overlap", "pack_masks"),
    ("overlaps (pack + IoU)", "armbench_segmentation.metrics.overlap", "mask_overlaps"),
    ("over/under segmentation", "armbench_segmentation.metrics.segmentation", "segmentation_errors"),
    ("matching + AP", "armbench_segmentation.metrics.matching", "match"),
    ("matching + AP", "armbench_segmentation.metrics.matching", "sample_ap"),
    ("YOLOv5-seg loss", "armbench_segmentation.metrics.loss", "yolov5_seg_loss"),
    ("evaluation (rest)", "armbench_segmentation.metrics.sample_evaluation", "evaluate_sample"),
    ("columns + facts", "armbench_segmentation.metrics.sample_evaluation", "SampleEvaluation.columns"),
    ("columns + facts", "armbench_segmentation.metrics.sample_evaluation", "SampleEvaluation.facts"),
    ("metadata", "armbench_segmentation.metadata", "sample_metadata"),
    ("row assembly + embedding", "armbench_segmentation.analysis.pipeline", "process_sample"),
    ("original-resolution RLE", "armbench_segmentation.analysis.runner", "compact_predictions"),
    ("store (SQLite)", "armbench_segmentation.analysis.store", "ResultsStore.put_samples"),
)


class StageProfile:
    """CPU seconds (``time.thread_time``: the calling thread only) spent in each stage's
    functions while installed, exclusive of nested stages. ONNX Runtime's own threads are
    not in any stage: the process CPU time not attributed to a stage is reported apart."""

    def __init__(self, stages=STAGES):
        self.stages, self.seconds, self.calls = stages, {}, {}
        self._local, self._lock, self._undo = threading.local(), threading.Lock(), []

    def _wrap(self, stage: str, fn):
        import functools

        profile = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            stack = profile._local.__dict__.setdefault("stack", [])
            stack.append(0.0)  # CPU time of nested stages, subtracted from this one
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time() - t0
                nested = stack.pop()
                if stack:
                    stack[-1] += spent
                with profile._lock:
                    profile.seconds[stage] = profile.seconds.get(stage, 0.0) + spent - nested
                    profile.calls[stage] = profile.calls.get(stage, 0) + 1

        return timed

    def __enter__(self):
        import importlib

        self.missing = []
        for stage, module_name, attr in self.stages:
            owner = importlib.import_module(module_name)
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part, None)
            original = getattr(owner, "__dict__", {}).get(name)
            if original is None:  # renamed or moved: its time falls into the enclosing stage
                self.missing.append(f"{module_name}.{attr}")
                continue
            self._undo.append((owner, name, original))
            setattr(owner, name, self._wrap(stage, original))
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()

    def table(self, n_images: int, process_cpu_s: float, raw_cpu_per_image: float) -> str:
        """One row per stage: ms of CPU per image and share of the end-to-end CPU."""
        lines = [f"{'stage':<30}{'CPU ms/img':>11}{'share':>8}{'img/s/core':>14}", "-" * 63]
        order = list(dict.fromkeys(stage for stage, _, _ in self.stages))
        attributed = sum(self.seconds.values())
        rows = [(stage, self.seconds.get(stage, 0.0)) for stage in order]
        rows.append(("inference (as in the raw run)", raw_cpu_per_image * n_images))
        rows.append(("rest of the process [1]", process_cpu_s - attributed - raw_cpu_per_image * n_images))
        for stage, sec in rows:
            per_core = f"{n_images / sec:.0f}" if sec > 0 else "-"  # img/s one core could sustain
            lines.append(f"{stage:<30}{1000 * sec / n_images:>11.1f}{100 * sec / process_cpu_s:>7.1f}%{per_core:>14}")
        lines.append(f"{'total (process CPU)':<30}{1000 * process_cpu_s / n_images:>11.1f}{100.0:>7.1f}%")
        if getattr(self, "missing", None):
            lines.append(f"not timed (not found; counted in the stage that calls them): {', '.join(self.missing)}")
        lines.append("[1] the model's CPU beyond the raw run's (its threads under contention), model input "
                     "conversion, queues, thread hand-offs")
        return "\n".join(lines)


class ModelBusy:
    """Wall time during which at least one ``SegmentationModel.run`` call was executing
    (overlapping calls counted once), while installed."""

    def __init__(self):
        self.busy_s, self._active, self._since, self._lock = 0.0, 0, 0.0, threading.Lock()

    def __enter__(self):
        from armbench_segmentation.model.onnx_model import SegmentationModel

        self._original = original = SegmentationModel.__dict__["run"]
        busy = self

        def run(model, *args, **kwargs):
            with busy._lock:
                if busy._active == 0:
                    busy._since = time.perf_counter()
                busy._active += 1
            try:
                return original(model, *args, **kwargs)
            finally:
                with busy._lock:
                    busy._active -= 1
                    if busy._active == 0:
                        busy.busy_s += time.perf_counter() - busy._since

        SegmentationModel.run = run
        return self

    def __exit__(self, *exc):
        from armbench_segmentation.model.onnx_model import SegmentationModel

        SegmentationModel.run = self._original


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
    parser.add_argument("--repeat", type=int, default=1, help="rounds alternating raw and end-to-end (default 1)")
    parser.add_argument("--compare-threads", metavar="A,B", default=None,
                        help="also measure raw and end-to-end with these model.num_threads (ONNX Runtime intra-op "
                             "threads), e.g. 1,2; 'vs best raw' divides by the fastest raw setting")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                        help="model.device (default cpu; on a GPU machine: cuda, and --batch-size for a dynamic export)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-stage CPU profile (a second "
                        "end-to-end run with the stage functions timed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from armbench_segmentation.analysis.runner import open_run, run_samples
    from armbench_segmentation.analysis.store import ResultsStore
    from armbench_segmentation.model.onnx_model import SegmentationModel

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from timed_samples import timed_samples

    timed = timed_samples(args.model, args.dataset, args.n, args.samples,
                          {"model.batch_size": args.batch_size, "model.device": args.device})
    settings, dataset, model, samples, what = timed.settings, timed.dataset, timed.model, timed.samples, timed.description

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

    def end_to_end(profile: StageProfile | None = None, m=model, st=settings) -> tuple[int, float, float, object]:
        """(images done, wall s, process CPU s, summary) of one runner pass into a fresh store."""
        with tempfile.TemporaryDirectory() as tmp:
            store = ResultsStore(Path(tmp) / "results.sqlite")
            open_run(store, timed.subset, m, st)
            with profile if profile is not None else contextlib.nullcontext():
                t0, c0 = time.perf_counter(), time.process_time()
                summary = run_samples(timed.subset, m, store, st, progress=False)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            store.close()
        return summary.computed + summary.errors, wall, cpu, summary

    # ---- end-to-end first (so preloaded images do not inflate its memory numbers)
    rss_before = rss_mb()
    sampler = RssSampler()
    sampler.start()
    *first, summary = end_to_end()
    rss_peak = sampler.stop()
    rss_after = rss_mb()

    # ---- raw inference on the same images, preloaded
    images = [dataset.load(s).image for s in samples]
    bs = max(1, settings.model.batch_size)
    batches = [model.to_input(np.stack(images[i: i + bs])) for i in range(0, len(images), bs)]

    def raw_pass(m=model) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            m.run(b)
        return time.perf_counter() - t0, time.process_time() - c0

    def floor_pass(m=model) -> tuple[float, float]:
        """What no analysis can avoid: read + decode + letterbox + GT (the runner's loader, in as
        many threads ahead of the model as the runner uses) and inference, nothing else."""
        from concurrent.futures import ThreadPoolExecutor

        from armbench_segmentation.analysis.runner import _load

        t0, c0 = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="floor-load") as pool:
            pending = [pool.submit(_load, dataset, i, s) for i, s in enumerate(samples)]
            for fut in pending:
                item = fut.result()
                m.run(m.to_input(item.loaded.image[None]))
        return time.perf_counter() - t0, time.process_time() - c0

    # rounds alternate raw, end-to-end and floor passes, so a change in the machine's load hits all
    e2e_runs, raw_runs, floor_runs = [tuple(first)], [raw_pass()], [floor_pass()]
    for _ in range(args.repeat - 1):
        e2e_runs.append(tuple(end_to_end()[:3]))
        raw_runs.append(raw_pass())
        floor_runs.append(floor_pass())
    n_raw = len(images) * len(raw_runs)
    raw_s, raw_cpu = sum(w for w, _ in raw_runs), sum(c for _, c in raw_runs)
    done, e2e_s, e2e_cpu = (sum(run[i] for run in e2e_runs) for i in range(3))
    raw, e2e = n_raw / raw_s, done / e2e_s
    rounds = ", ".join(f"{(d / w) / (len(images) / rw):.2f}" for (d, w, _), (rw, _) in zip(e2e_runs, raw_runs))
    print(f"raw ONNX inference:      {raw:7.2f} img/s ({1000 * raw_s / n_raw:.0f} ms/img)")
    print(f"end-to-end analysis:     {e2e:7.2f} img/s ({1000 * e2e_s / done:.0f} ms/img; {summary.computed} ok, "
          f"{summary.errors} errors per pass)")
    print(f"ratio end-to-end / raw:  {e2e / raw:7.2f}   (goal >= 0.9 on CPU; {len(raw_runs)} alternating round(s): "
          f"{rounds})")
    print(f"CPU time per image (all threads): raw {1000 * raw_cpu / n_raw:.0f} ms, end-to-end "
          f"{1000 * e2e_cpu / done:.0f} ms -> CPU-bound ratio {raw_cpu / n_raw / (e2e_cpu / done):.2f}; "
          f"load average {os.getloadavg()[0]:.1f}")
    floor_s, floor_cpu = sum(w for w, _ in floor_runs), sum(c for _, c in floor_runs)
    floor = n_raw / floor_s
    print(f"floor (read + decode + letterbox + GT, then inference; no analysis): {floor:.2f} img/s -> the "
          f"highest ratio any analysis reaches here: {floor / raw:.2f} (CPU-bound {raw_cpu / floor_cpu:.2f}; "
          f"input CPU {1000 * (floor_cpu - raw_cpu) / n_raw:.0f} ms/img); the analysis keeps "
          f"{(e2e / raw) / (floor / raw):.2f} of it")
    print(f"memory (RSS): {rss_before:.0f} MB before, {rss_peak:.0f} MB peak during, {rss_after:.0f} MB after the "
          f"first run; ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")

    # ---- where the end-to-end CPU goes: one more pass with the stage functions timed
    if not args.no_profile:
        profile, busy = StageProfile(), ModelBusy()
        with busy:
            p_done, p_wall, p_cpu, _ = end_to_end(profile)
        print(f"\nper-stage CPU, one more end-to-end pass with the stage functions timed ({p_done} images, "
              f"{p_done / p_wall:.2f} img/s):")
        print(profile.table(p_done, p_cpu, raw_cpu / n_raw))
        print(f"model busy {100 * busy.busy_s / p_wall:.0f}% of the pass's wall time, waiting for the CPU side "
              f"{100 * (1 - busy.busy_s / p_wall):.0f}% ({model.providers[0] if model.providers else '?'})")
        print(f"load average {os.getloadavg()[0]:.1f}")

    # ---- the map at ARMBench scale
    # ---- ONNX Runtime's intra-op threads: raw and end-to-end per setting, alternating
    if args.compare_threads:
        counts = [int(v) for v in args.compare_threads.split(",")]
        variants = {}
        for t in counts:
            st = settings.replace({"model.num_threads": t})
            m = SegmentationModel(st.model.path, st.model, st.data.class_names)
            for b in batches[:2]:
                m.run(b)
            variants[t] = (m, st, [], [])
        for _ in range(args.repeat):
            for t, (m, st, raws, e2es) in variants.items():
                raws.append(raw_pass(m))
                e2es.append(end_to_end(m=m, st=st)[:3])
        best_raw = max(len(images) * len(r) / sum(w for w, _ in r) for _, _, r, _ in variants.values())
        print(f"\nONNX Runtime intra-op threads ({args.repeat} alternating round(s); load average "
              f"{os.getloadavg()[0]:.1f}):")
        print(f"{'threads':>7}{'raw img/s':>11}{'raw CPU ms':>12}{'e2e img/s':>11}{'e2e CPU ms':>12}{'ratio':>7}"
              f"{'vs best raw':>13}{'CPU-bound':>11}")
        for t, (m, st, raws, e2es) in variants.items():
            n = len(images) * len(raws)
            r_w, r_c = sum(w for w, _ in raws), sum(c for _, c in raws)
            d, e_w, e_c = (sum(x[i] for x in e2es) for i in range(3))
            print(f"{t:>7}{n / r_w:>11.2f}{1000 * r_c / n:>12.0f}{d / e_w:>11.2f}{1000 * e_c / d:>12.0f}"
                  f"{(d / e_w) / (n / r_w):>7.2f}{(d / e_w) / best_raw:>13.2f}{(r_c / n) / (e_c / d):>11.2f}")

    if args.map_rows <= 0:
        return 0
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

"""Scaling: the local engine vs the Ray engine with 1, 2, ... workers, side by side in one run.

    .venv/bin/python benchmarks/bench_scaling.py                        # shipped model, synthetic totes
    .venv/bin/python benchmarks/bench_scaling.py --workers 1 2 4 8 --samples 60 --rounds 2
    .venv/bin/python benchmarks/bench_scaling.py --ray-address HOST:6379   # an existing cluster

Every configuration analyses the same samples into a fresh results store:

* ``local``: ``runner.run_samples`` (prefetch threads, onnxruntime's default thread count);
* ``ray xN``: ``ray_engine.run_samples_ray`` with N workers, one intra-op thread each, on a
  local Ray cluster of max(N) CPUs started once for the whole benchmark (or the cluster at
  ``--ray-address``).

Throughput (and CPU time per image) is measured in steady state: samples committed between the first and the last
commit of the store, divided by the time between them (the cluster start, the workers'
model load and the first sample's warm-up are left out; the total with them is printed
too). Scaling efficiency of N workers = throughput(N) / (N x throughput(1)); the goal is
>= 0.8 per added worker where the machine has a free core for it. The rows every
configuration stored are compared with the local engine's (they must be identical).

The load average is printed with every row: on a shared machine the numbers only mean
something next to it. ``--rounds R`` repeats the whole sequence (interleaved) and reports
the best round of each configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ray_worker_cpu_s() -> float:
    """CPU seconds (user + system) of the live Ray ``SampleWorker`` processes (Linux /proc;
    0 elsewhere)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    proc = Path("/proc")
    for d in proc.iterdir() if proc.is_dir() else ():
        if not d.name.isdigit():
            continue
        try:
            if not (d / "cmdline").read_bytes().startswith(b"ray::SampleWorker"):
                continue
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()  # fields from the 3rd (state) on
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):  # ended meanwhile
            continue
    return total


class CommitClock:
    """on_commit callback: (time, samples done, CPU seconds) at every commit -> steady-state
    img/s and CPU per image. CPU = this process (all its threads) + the Ray workers."""

    def __init__(self, with_workers: bool) -> None:
        self.with_workers = with_workers
        self.points: list[tuple[float, int, float]] = []

    def __call__(self, done: int) -> None:
        t = os.times()
        cpu = t.user + t.system + (ray_worker_cpu_s() if self.with_workers else 0.0)
        self.points.append((time.perf_counter(), done, cpu))

    def rate(self) -> float | None:
        if len(self.points) < 2 or self.points[-1][0] <= self.points[0][0]:
            return None
        (t0, n0, _), (t1, n1, _) = self.points[0], self.points[-1]
        return (n1 - n0) / (t1 - t0)

    def cpu_ms_per_image(self) -> float | None:
        if len(self.points) < 2 or self.points[-1][1] <= self.points[0][1]:
            return None
        (_, n0, c0), (_, n1, c1) = self.points[0], self.points[-1]
        return 1000 * (c1 - c0) / (n1 - n0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=None, help="ARMBench-layout folder (default: synthetic)")
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: the shipped one)")
    parser.add_argument("--n", type=int, default=24, help="images per split of the synthetic dataset (default 24)")
    parser.add_argument("--samples", type=int, default=30, help="images analysed per configuration (default 30)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the sequence, keep each one's best (default 1)")
    parser.add_argument("--no-local", action="store_true", help="skip the local engine")
    parser.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a local one)")
    parser.add_argument("--config", type=Path, default=None,
                        help="a settings YAML (e.g. data.image_size for a small model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if 1 not in args.workers:
        parser.error("--workers must include 1 (the reference of the efficiency)")

    from armbench_segmentation.analysis.ray_engine import (RayOptions, connect, disconnect, import_ray,
                                                           run_samples_ray, wants_local_cluster)
    from armbench_segmentation.analysis.runner import open_run, run_samples
    from armbench_segmentation.analysis.store import ResultsStore

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from timed_samples import timed_samples

    timed = timed_samples(args.model, args.dataset, args.n, args.samples, config=args.config)
    settings, model, samples, what = timed.settings, timed.model, timed.samples, timed.description
    keep = {(s.split, s.sample_id) for s in samples}

    print(f"dataset: {what}; {len(samples)} images per configuration; model {Path(settings.model.path).name}; "
          f"{_cores()} CPU cores; load average at start {os.getloadavg()[0]:.1f}")

    ray = import_ray(wants_local_cluster(args.ray_address))
    t0 = time.perf_counter()
    connect(RayOptions(address=args.ray_address, workers=max(args.workers)))  # one cluster for every configuration
    print(f"Ray {ray.__version__} cluster ready in {time.perf_counter() - t0:.1f} s: "
          f"{int(ray.cluster_resources().get('CPU', 0))} CPUs")

    configs = ([] if args.no_local else ["local"]) + [f"ray x{n}" for n in sorted(set(args.workers))]
    best: dict[str, tuple] = {}  # name -> (steady img/s, img/s with start-up, load average, CPU ms/img)
    reference = None
    mismatches: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            rates: dict[str, float] = {}  # this round's steady img/s
            for name in configs:
                store = ResultsStore(Path(tmp) / f"{name.replace(' ', '')}-{r}.sqlite")
                open_run(store, timed.subset, model, settings)
                clock = CommitClock(with_workers=name != "local")
                load0 = os.getloadavg()[0]
                t0 = time.perf_counter()
                if name == "local":
                    summary = run_samples(timed.subset, model, store, settings, progress=False, on_commit=clock)
                else:
                    n = int(name.split("x")[1])
                    summary = run_samples_ray(timed.subset, model, store, settings, progress=False, on_commit=clock,
                                              options=RayOptions(workers=n, threads_per_worker=1))
                total_s = time.perf_counter() - t0
                load = (load0 + os.getloadavg()[0]) / 2
                done = summary.computed + summary.errors
                frame = store.frame(keys=sorted(keep))
                store.close()
                if reference is None:
                    reference = frame
                elif not frame.equals(reference):
                    mismatches.append(f"{name} (round {r + 1})")
                steady = clock.rate() or done / total_s
                cpu = clock.cpu_ms_per_image()
                rates[name] = steady
                eff = ""
                if name.startswith("ray") and rates.get("ray x1"):
                    eff = f", efficiency {steady / (int(name.split('x')[1]) * rates['ray x1']):.2f}"
                print(f"  round {r + 1} {name:<8} {steady:6.2f} img/s steady, {done / total_s:6.2f} img/s with "
                      f"start-up ({total_s:.1f} s, {done} images, {summary.errors} errors){eff}; "
                      f"CPU {cpu or float('nan'):.0f} ms/img; load average {load:.1f}")
                if name not in best or steady > best[name][0]:
                    best[name] = (steady, done / total_s, load, cpu)
    disconnect()

    one = best.get("ray x1", (None,))[0]
    print(f"\nbest round of each ({args.rounds} round(s)):")
    print(f"{'configuration':<14} {'img/s':>7} {'with start-up':>14} {'efficiency':>11} {'vs local':>9} "
          f"{'CPU ms/img':>11} {'load':>5}")
    for name in configs:
        steady, total, load, cpu = best[name]
        eff = ""
        if name.startswith("ray") and one:
            n = int(name.split("x")[1])
            eff = f"{steady / (n * one):.2f}"
        vs_local = f"{steady / best['local'][0]:.2f}" if "local" in best else ""
        cpu_text = f"{cpu:.0f}" if cpu else "n/a"
        print(f"{name:<14} {steady:7.2f} {total:14.2f} {eff:>11} {vs_local:>9} {cpu_text:>11} {load:5.1f}")
    print("efficiency = throughput / (workers x 1-worker throughput); goal >= 0.8 per added worker where a core "
          f"is free for it ({_cores()} cores here, shared: see the load average). CPU ms/img: this process and the "
          "Ray workers together; the same CPU per image at a lower efficiency means the workers waited for a core")
    print("results identical to the first configuration's: " + ("yes" if not mismatches else
                                                                 f"NO ({', '.join(mismatches)})"))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

"""Time ``generate_dataset``: N synthetic totes (default 300 at 2448x2048) into a temp folder.

    .venv/bin/python benchmarks/bench_synth.py --n 300 --workers 2

Prints seconds, images/s and the per-image time per worker, plus a split of one image's
time into rendering and JPEG encoding (single process).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="images in total (split 1/3 train, val, unlabeled)")
    parser.add_argument("--width", type=int, default=2448)
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=None, help="default: all CPU cores")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import cv2
    import numpy as np

    from armbench_segmentation.data.synth import generate_dataset, render_tote

    # one image, in process: render vs encode
    t0 = time.perf_counter()
    synth = render_tote(np.random.SeedSequence(args.seed).spawn(1)[0], args.width, args.height)
    t1 = time.perf_counter()
    cv2.imencode(".jpg", cv2.cvtColor(synth.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    t2 = time.perf_counter()
    print(f"one image {args.width}x{args.height}: render {t1 - t0:.3f} s, JPEG encode {t2 - t1:.3f} s, "
          f"{len(synth.instances)} instances")

    n_train = args.n // 3
    n_val = args.n // 3
    n_unlabeled = args.n - n_train - n_val
    workers = args.workers or os.cpu_count() or 1
    def cpu_seconds() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    load = os.getloadavg()[0]
    cpu0 = cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        summary = generate_dataset(tmp, n_train, n_val, n_unlabeled, seed=args.seed, width=args.width,
                                   height=args.height, workers=workers, progress=False)
        size_mb = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 1e6
    cpu = cpu_seconds() - cpu0
    secs = summary["seconds"]
    per = summary["instances_per_image"]
    print(f"generate_dataset: {args.n} images {args.width}x{args.height}, {workers} workers: {secs:.1f} s, "
          f"{args.n / secs:.2f} images/s, {secs * workers / args.n:.2f} s per image per worker")
    print(f"CPU time (all processes): {cpu:.1f} s = {cpu / args.n:.2f} CPU-s per image "
          f"(wall time also depends on other load: 1-min load average was {load:.1f} at start)")
    print(f"instances per image min/median/max: {per['min']}/{per['median']:g}/{per['max']}; "
          f"{summary['annotations']} annotations; {size_mb:.0f} MB on disk")


if __name__ == "__main__":
    main()

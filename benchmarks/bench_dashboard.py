"""The static dashboard at ARMBench scale: page size, write time, load and recolour time in Chromium.

    .venv/bin/python benchmarks/bench_dashboard.py                 # 44,253 rows
    .venv/bin/python benchmarks/bench_dashboard.py --n 5000 --no-browser

The rows come from benchmarks/large_run.py (a BENCHMARK FIXTURE: random rows shaped like a run,
no images); thumbnails are a generated 96-px image per sample (a real run decodes each image,
which costs more than writing it), so the page embeds DEFAULT_MAX_THUMBNAILS of them and says
so. Prints:

- the page's size and the size of its assets folder (plotly.min.js + thumbnails), and the page
  size had plotly.js been inlined as before (page + plotly.min.js) for the ratio;
- the time to write the page (report.write_report);
- in headless Chromium (file://): time from navigation until every point is drawn, and the
  time of a recolour by cluster and by a numeric column (goal: under 1 s).

The browser's times depend on the machine's load (printed): headless Chromium draws WebGL on
the CPU here (SwiftShader).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import large_run  # noqa: E402  (benchmarks/large_run.py: the 44,253-row run fixture)
from headless_browser import start_browser  # noqa: E402


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=44_253)
    ap.add_argument("--out", default=None, help="folder (default: a temporary one)")
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()

    from armbench_segmentation.analysis.report import DEFAULT_MAX_THUMBNAILS, encode_image, plotly_js_path, write_report

    la = os.getloadavg()
    print(f"{args.n} rows, load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} on {os.cpu_count()} CPUs")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-dashboard-"))
    run = large_run.make_large_run(out / "run", n=args.n, seed=0)
    frame = pd.read_parquet(run / "samples.parquet")
    xy = frame[["map_x", "map_y"]].to_numpy(np.float64)
    rng = np.random.default_rng(0)
    tiles = [encode_image(np.full((72, 96, 3), rng.integers(0, 256, 3), np.uint8), quality=80) for _ in range(16)]

    def thumbnail(sample_id: str) -> bytes:
        return tiles[hash(sample_id) % len(tiles)]

    t = time.perf_counter()
    page = write_report(run, frame, xy, thumbnails=thumbnail, provenance={"note": large_run.FIXTURE_NOTE})
    write_s = time.perf_counter() - t
    page_b = page.stat().st_size
    assets_b = _folder_bytes(run / "assets")
    plotly_b = plotly_js_path().stat().st_size
    print(f"write_report                 {write_s:8.2f} s  ({min(args.n, DEFAULT_MAX_THUMBNAILS)} thumbnails)")
    print(f"page dashboard.html          {page_b / 1e6:8.2f} MB")
    print(f"assets/ beside it            {assets_b / 1e6:8.2f} MB  (plotly.min.js {plotly_b / 1e6:.2f} MB, loaded once)")
    print(f"page with plotly.js inlined  {(page_b + plotly_b) / 1e6:8.2f} MB  -> the page is "
          f"{page_b / (page_b + plotly_b):.2f}x of that")
    if args.no_browser:
        return 0

    driver, profile = start_browser()
    try:
        driver.set_script_timeout(300)
        t = time.perf_counter()
        driver.get(page.resolve().as_uri())
        count = ("const d = document.getElementById('map');"
                 "return (d && d.data) ? d.data.reduce((s, t) => s + t.x.length, 0) : 0;")
        while driver.execute_script(count) < args.n and time.perf_counter() - t < 300:
            time.sleep(0.05)
        load_s = time.perf_counter() - t
        print(f"load until all points drawn  {load_s:8.2f} s  ({driver.execute_script(count)} points)")
        recolor = """
const done = arguments[arguments.length - 1]; const t = performance.now();
Promise.resolve(window.armbenchDashboard.map.recolor(arguments[0]))
  .then(() => requestAnimationFrame(() => done(performance.now() - t)));"""
        for column in ("cluster", "f1", "meta_tote_color"):
            ms = driver.execute_async_script(recolor, column)
            print(f"recolour by {column:<16s} {ms / 1000:8.2f} s  (goal < 1 s: {ms / 1000:.2f}x)")
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        print(f"console errors: {len(severe)}")
    finally:
        driver.quit()
    la = os.getloadavg()
    print(f"load average after {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}; files in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

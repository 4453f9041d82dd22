"""How fast is ``armbench serve`` at ARMBench's size? First paint, map drawn and recolour times
in a real headless Chromium, over a 44,253-row run (``benchmarks/large_run.py``, a benchmark
fixture of synthetic rows).

    .venv/bin/python benchmarks/bench_explorer.py                  # n = 44253
    .venv/bin/python benchmarks/bench_explorer.py --n 5000 --repeat 5

Prints, side by side in one run: the fixture's build time; the endpoints' server times
(/api/points, /api/column); in the browser (performance API, ms since navigation start)
first contentful paint, "data loaded" (meta, points and the first colour column fetched)
and "map drawn" (the app's mark after Plotly resolved its first draw), then recolour times (column fetch + redraw, measured in the page around the same
call the colour selector makes) for a numeric and a categorical column not yet loaded and
for one already loaded; each as a ratio to the 1 s goal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import large_run  # noqa: E402  (benchmarks/large_run.py: the 44,253-row run fixture)
from headless_browser import start_browser  # noqa: E402

GOAL_MS = 1000.0

RECOLOR_JS = """
const done = arguments[arguments.length - 1]; const name = arguments[0];
const t0 = performance.now();
window.armbenchExplorer.recolor(name).then(() => done(performance.now() - t0), e => done(-1));
"""


def _wait(driver, script: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for: {script}")


def _server_ms(url: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        urllib.request.urlopen(url).read()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=44253, help="rows of the fixture run (default: ARMBench's 44253)")
    parser.add_argument("--out", type=Path, default=None, help="fixture folder (default: a temporary one)")
    parser.add_argument("--repeat", type=int, default=3, help="page loads / recolours measured (median)")
    args = parser.parse_args()

    from armbench_segmentation.explore.app import spawn

    out = args.out or Path(tempfile.mkdtemp(prefix="armbench-bench-explorer-"))
    t0 = time.perf_counter()
    large_run.make_large_run(out, n=args.n)
    print(f"fixture: {args.n} rows (benchmark fixture, synthetic) written in {time.perf_counter() - t0:.1f} s to {out}")

    proc, url = spawn(out, timeout=300)
    try:
        print(f"server: /api/points {_server_ms(url + 'api/points', args.repeat):.0f} ms, "
              f"/api/column?name=unc_score_entropy {_server_ms(url + 'api/column?name=unc_score_entropy', args.repeat):.0f} ms "
              f"(median of {args.repeat}, after the first)")
        try:
            driver, profile = start_browser()
        except BaseException as exc:  # pytest.skip outside pytest: no Chromium here
            raise SystemExit(f"no headless Chromium: {exc}") from None
        try:
            driver.set_script_timeout(300)
            paints, loaded, drawn, numeric, categorical, cached = [], [], [], [], [], []
            for k in range(args.repeat):
                driver.get(url)
                _wait(driver, "return window.armbenchExplorer && window.armbenchExplorer.ready")
                n_points = driver.execute_script(
                    "return document.getElementById('map').data.reduce((s, t) => s + t.x.length, 0)")
                assert n_points == args.n, (n_points, args.n)
                paints.append(driver.execute_script(
                    "const p = performance.getEntriesByName('first-contentful-paint')[0]; return p ? p.startTime : -1"))
                drawn.append(driver.execute_script(
                    "return performance.getEntriesByName('armbench-map-drawn')[0].startTime"))
                loaded.append(driver.execute_script(
                    "return performance.getEntriesByName('armbench-data-loaded')[0].startTime"))
                _wait(driver, "return window.armbenchExplorer.tablesReady")
                numeric.append(driver.execute_async_script(RECOLOR_JS, "unc_score_entropy"))
                categorical.append(driver.execute_async_script(RECOLOR_JS, "meta_tote_color"))
                cached.append(driver.execute_async_script(RECOLOR_JS, "loss"))  # fetched at start
            severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        finally:
            driver.quit()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    med = statistics.median
    print(f"browser ({args.n} points, scattergl, median of {args.repeat} page loads):")
    print(f"  first contentful paint  {med(paints):7.0f} ms")
    print(f"  data loaded             {med(loaded):7.0f} ms  (meta, points and the first colour column fetched)")
    print(f"  map drawn               {med(drawn):7.0f} ms  (the first Plotly draw resolved)")
    for label, values in (("recolour, numeric, new column", numeric), ("recolour, categorical, new column", categorical),
                          ("recolour, column already loaded", cached)):
        print(f"  {label:33s} {med(values):7.0f} ms  = {med(values) / GOAL_MS:.2f} x the 1 s goal")
    print(f"  console errors: {len(severe)}")


if __name__ == "__main__":
    main()

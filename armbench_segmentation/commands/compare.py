"""``armbench compare``: two analyze runs on the same data, side by side.

    armbench compare RUN_A RUN_B [--json] [--out PAGE.html] [--top 10]

AP per class and per cluster, per-sample loss changes, errors fixed and new by kind, the
samples that changed most (``analysis.compare``). Refused when the runs share no labeled
split file (their run.json dataset identity differs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from armbench_segmentation.commands._common import check_output_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", type=Path, help="analyze output folder (before)")
    parser.add_argument("run_b", metavar="RUN_B", type=Path, help="analyze output folder (after)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    parser.add_argument("--out", type=Path, default=None, metavar="PAGE.html", help="also write an HTML page")
    parser.add_argument("--top", type=int, default=10, help="samples listed as changed most (default 10)")


def run(args: argparse.Namespace) -> int:
    from armbench_segmentation.analysis.compare import _clean, compare_runs, format_text, write_page

    out = check_output_path(args.out, "file", "--out") if args.out is not None else None
    result = compare_runs(args.run_a, args.run_b, top=max(0, args.top))
    if out is not None:
        write_page(result, out)
    if args.json:
        print(json.dumps(_clean(result.as_dict()), indent=1))
    else:
        print(format_text(result))
        if out is not None:
            print(f"\npage: {out}")
    return 0

"""``armbench export-fiftyone RUN_DIR OUT``: the run as files FiftyOne imports.

The export is ``analysis.fiftyone_export`` (COCO detection files for GT and predictions with
instance masks, the per-sample fields and map coordinates as Parquet, a loader script); this
module opens the run folder, checks ``OUT`` first and prints where things went.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from armbench_segmentation.commands._common import check_output_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the --out folder of 'armbench analyze'")
    parser.add_argument("out", metavar="OUT", type=Path, help="folder to write the FiftyOne export into")
    parser.add_argument("--json", action="store_true", help="print the counts and paths as one JSON object")


def run(args: argparse.Namespace) -> int:
    from armbench_segmentation.analysis.fiftyone_export import export_fiftyone
    from armbench_segmentation.explore.run import ExploreRun

    out = check_output_path(args.out, "dir", "OUT")
    opened = ExploreRun(args.run_dir)
    try:
        result = export_fiftyone(opened, out)
    finally:
        opened.close()
    if args.json:
        print(json.dumps({**result, "files": {k: str(v) for k, v in result["files"].items()}}))
    else:
        print(f"export-fiftyone: {result['samples']} samples, {result['gt_annotations']} GT instances, "
              f"{result['predictions']} predictions -> {out}")
        print(f"load it in FiftyOne: python {out / 'load_fiftyone.py'} {out}   (or see the README, 'FiftyOne')")
    return 0

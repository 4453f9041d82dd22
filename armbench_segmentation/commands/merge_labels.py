"""``armbench merge-labels``: add annotated images (COCO exported from CVAT, Label Studio or
datumaro) to a train COCO file, writing a new one.

The merge itself is ``analysis.labeling.merge_annotated`` (categories by name, ids
renumbered, file names resolved in the dataset's images folder, area and bbox recomputed);
this module parses the flags, checks ``--out`` before reading anything and prints the
summary (or one JSON object with ``--json``). Problems with the annotated files are one
line each on stderr; the good images are merged all the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from armbench_segmentation.analysis.labeling import EXISTING_POLICIES, merge_annotated
from armbench_segmentation.commands._common import check_output_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", metavar="TRAIN_COCO", required=True, type=Path,
                        help="the train COCO file to extend (e.g. DATASET/train.json); it is not modified")
    parser.add_argument("--annotated", metavar="EXPORTED_COCO", required=True, nargs="+", type=Path,
                        help="COCO file(s) exported from CVAT / Label Studio / datumaro after annotation")
    parser.add_argument("--out", metavar="NEW_TRAIN_COCO", required=True, type=Path,
                        help="the merged train COCO file to write (a new path)")
    parser.add_argument("--images", metavar="DIR", type=Path, default=None,
                        help="the dataset's image folder (default: images/ beside --base)")
    parser.add_argument("--existing", choices=EXISTING_POLICIES, default="skip",
                        help="an annotated image already in the base: skip it (keep the base's annotations; "
                             "default) or replace the base's annotations of that image with the annotated ones")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    out = check_output_path(args.out, "file", "--out")
    summary = merge_annotated(args.base, args.annotated, out, images_dir=args.images, existing=args.existing)
    for line in summary.problems:
        print(f"armbench merge-labels: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        for line in summary.lines():
            print(f"merge-labels: {line}")
    return 0 if summary.files_read else 1

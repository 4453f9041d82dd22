"""``armbench predict``: run the ONNX model over a split and write COCO results JSON.

The loop and the result format are ``analysis.predict`` (``run_split``); this module parses
the flags, checks ``--out`` before the model runs, writes the file atomically and prints
one line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from armbench_segmentation.analysis.predict import run_split, write_json_atomic
from armbench_segmentation.commands._common import add_settings_arguments, check_output_path, settings_from_args
from armbench_segmentation.data.coco import SPLITS
from armbench_segmentation.errors import ArmbenchError

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=SPLITS, default="val", help="split to predict (default: val)")
    parser.add_argument("--out", metavar="FILE", required=True, type=Path, help="COCO results JSON to write")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="onnxruntime device (default: model.device, env ARMBENCH_DEVICE, else auto)")
    parser.add_argument("--conf-threshold", type=float, default=None, metavar="P",
                        help="minimum score (default: model.conf_threshold, 0.25)")
    add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, extra={"model.device": args.device, "model.conf_threshold": args.conf_threshold},
                                  flags={"model.device": "--device", "model.conf_threshold": "--conf-threshold"})
    check_output_path(args.out, "file", "--out")  # before the model runs over the split
    t0 = time.perf_counter()
    out = run_split(settings, args.split)
    try:
        write_json_atomic(args.out, out.results)
    except OSError as exc:
        raise ArmbenchError(f"cannot write --out {args.out}: {exc.strerror or exc}; choose a writable file "
                            f"path") from None
    elapsed = time.perf_counter() - t0
    skipped = out.skipped
    print(f"predict: {out.images} images, {len(out.results)} detections, {len(skipped)} skipped"
          f"{' (' + ', '.join(skipped[:10]) + (' ...' if len(skipped) > 10 else '') + ')' if skipped else ''}"
          f" in {elapsed:.1f}s -> {args.out}")
    return 0

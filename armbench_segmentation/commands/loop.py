"""``armbench loop``: one active-learning round, resumable at every step.

    armbench loop --dir LOOP --dataset DIR [--model M] [--budget 50]          # analyze + picks, then waits
    armbench loop --dir LOOP --dataset DIR --annotated picks_done.coco.json   # merge, finetune, analyze, compare
    armbench loop --dir LOOP --dataset DIR --oracle                           # synthetic data: GT as the annotator

Steps (``training.loop``): analyze -> export picks -> (annotation outside) -> merge-labels ->
finetune -> analyze -> compare. ``LOOP/loop.json`` records each finished step; run the same
command again after a stop or a kill and it goes on from there. Fine-tuning needs the train
extra (``make install-train``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from armbench_segmentation.commands._common import add_settings_arguments, check_output_path, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, type=Path, metavar="LOOP", help="the round's folder (state, runs, model)")
    parser.add_argument("--annotated", nargs="+", default=(), metavar="COCO",
                        help="COCO file(s) exported after annotating the picks (CVAT, Label Studio, datumaro)")
    parser.add_argument("--train", default=None, metavar="COCO",
                        help="train file the annotations are merged into (default DATASET/train.json; for the next "
                             "round: the previous round's LOOP/train_merged.json)")
    parser.add_argument("--oracle", action="store_true",
                        help="simulate the annotator with the unlabeled split's own ground truth (synthetic data)")
    parser.add_argument("--budget", type=int, default=None, help="images to pick for labeling (analysis.label_budget)")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    parser.add_argument("--imgsz", type=int, default=640, help="fine-tuning image size")
    parser.add_argument("--batch", type=int, default=8, help="fine-tuning batch size")
    parser.add_argument("--device", default="auto", help="fine-tuning device: auto | cpu | cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from armbench_segmentation.errors import ArmbenchError
    from armbench_segmentation.training.loop import LoopOptions, loop_status, run_loop

    loop_dir = check_output_path(args.dir, "dir", "--dir")
    if args.annotated and args.oracle:
        raise ArmbenchError("--annotated and --oracle both say who annotated the picks; give one")
    if args.imgsz % 32 or args.imgsz < 64:
        raise ArmbenchError(f"--imgsz must be a multiple of 32 and >= 64, got {args.imgsz}")
    extra = {"analysis.label_budget": args.budget}
    settings = settings_from_args(args, extra=extra, flags={"analysis.label_budget": "--budget"})
    state = run_loop(settings, LoopOptions(loop_dir, tuple(args.annotated), args.oracle, args.epochs, args.imgsz,
                                           args.batch, args.device, progress=not args.no_progress,
                                           train=args.train))
    print(loop_status(state))
    return 0

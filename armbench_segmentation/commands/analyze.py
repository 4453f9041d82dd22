"""``armbench analyze``: the full local analysis (per-sample results, map, clusters, picks,
exports, dashboard).

Examples::

    armbench analyze --synthetic --out /tmp/armbench-demo        # no ARMBench needed
    armbench analyze --dataset ~/data/mix-object-tote --out runs/armbench --budget 100

Without ``--out`` the results go to ``~/.cache/armbench-segmentation/runs/<dataset name>``
(``$XDG_CACHE_HOME`` respected), never into the working directory. Running the same
command again resumes: finished samples are not computed again unless the model, the
settings or the dataset changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from armbench_segmentation.commands._common import add_settings_arguments, check_output_path, settings_from_args
from armbench_segmentation.errors import ArmbenchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser)
    parser.add_argument("--out", metavar="DIR", type=Path, default=None,
                        help="output folder (default: ~/.cache/armbench-segmentation/runs/<dataset name>)")
    parser.add_argument("--synthetic", action="store_true",
                        help="analyse the synthetic ARMBench-like dataset (generated once into the cache) "
                             "when no --dataset is given")
    parser.add_argument("--projection", metavar="NAME", default=None,
                        help="population map method: pca, umap, tsne or another registered in "
                             "analysis.projection (default from settings: pca)")
    parser.add_argument("--budget", metavar="K", type=int, default=None,
                        help="number of unlabeled images to pick for labeling (analysis.label_budget)")
    parser.add_argument("--keep-fraction", metavar="F", type=float, default=None,
                        help="share of train images to keep when pruning, in (0, 1] (analysis.prune_keep_fraction)")
    parser.add_argument("--no-resume", action="store_true",
                        help="recompute every sample instead of resuming from the stored results")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="model.device")
    parser.add_argument("--batch-size", metavar="N", type=int, default=None, help="model.batch_size")
    parser.add_argument("--workers", metavar="N", type=int, default=None,
                        help="processes computing per-sample metrics (default: 0 on <= 4 cores, else up to 8); "
                             "more help when inference is fast (CUDA)")
    parser.add_argument("--max-samples", metavar="N", type=int, default=None,
                        help="compute at most N new samples this time (the rest on the next run)")
    parser.add_argument("--no-crops", action="store_true",
                        help="do not write crops of each labeling pick's hardest region (crops/)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# settings key -> the flag of this command that sets it
FLAGS = {
    "analysis.projection": "--projection",
    "analysis.label_budget": "--budget",
    "analysis.prune_keep_fraction": "--keep-fraction",
    "model.device": "--device",
    "model.batch_size": "--batch-size",
}


def _validate(args: argparse.Namespace) -> None:
    """Flags that are not settings (settings flags are checked by their config rules)."""
    if args.workers is not None and args.workers < 0:
        raise ArmbenchError(f"--workers must be >= 0, got {args.workers}")
    if args.max_samples is not None and args.max_samples < 0:
        raise ArmbenchError(f"--max-samples must be >= 0, got {args.max_samples}")


def run(args: argparse.Namespace) -> int:
    from armbench_segmentation.analysis.engine import default_out_dir, resolve_dataset, run_analysis

    _validate(args)
    settings = settings_from_args(args, extra={
        "analysis.projection": args.projection,
        "analysis.label_budget": args.budget,
        "analysis.prune_keep_fraction": args.keep_fraction,
        "model.device": args.device,
        "model.batch_size": args.batch_size,
    }, flags=FLAGS)
    if args.out is not None:
        check_output_path(args.out, "dir", "--out")
    progress = not args.no_progress
    # Resolve (and generate, for --synthetic) the dataset first: the default --out is named after it.
    settings, where = resolve_dataset(settings, args.synthetic, progress=progress)
    out = args.out
    if out is None:
        out = default_out_dir(Path(settings.data.path).name)
    out = check_output_path(out, "dir", "--out")
    print(f"dataset: {where}")
    print(f"output:  {out}")
    result = run_analysis(settings, out, synthetic=False, resume=not args.no_resume, progress=progress,
                          max_samples=args.max_samples, process_workers=args.workers,
                          crops=not args.no_crops)
    s = result.summary
    print(f"samples: {result.n_samples} analysed ({s.computed} computed now at {s.rate:.2f} img/s, "
          f"{s.already_finished} from earlier runs, {s.errors} failed)")
    if s.errors:
        print(f"failed samples are listed in {result.files['errors']}", file=sys.stderr)
    if s.stopped_early:
        print(f"stopped after --max-samples {args.max_samples}; run the same command again to continue")
    for key in ("samples_csv", "samples_parquet"):
        print(f"table:   {result.files[key]}")
    for key, path in result.files.items():
        if key.startswith("predictions_"):
            print(f"COCO:    {path}")
    if result.dashboard is not None:
        print(f"dashboard: {result.dashboard}")
    else:
        print("dashboard: not written (analysis.report unavailable)")
    return 0

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
import contextlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from armbench_segmentation.commands._common import add_settings_arguments, check_output_path, settings_from_args
from armbench_segmentation.codecs import json_default
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
                             "analysis.projection (default from settings: tsne; pca is the fast fallback)")
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
    parser.add_argument("--json", action="store_true",
                        help="print the run summary as one JSON object on stdout (nothing else goes to stdout)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="where the per-sample work runs: this machine (default) or a Ray cluster "
                             "(needs the 'ray' extra; same results, resumes either way)")
    parser.add_argument("--ray-address", metavar="ADDR", default=None,
                        help="with --engine ray: an existing cluster (host:6379, ray://host:10001 or auto; default "
                             "$RAY_ADDRESS, else a local cluster for this run)")
    parser.add_argument("--ray-workers", metavar="N", type=int, default=None,
                        help="with --engine ray: workers, one model and one thread each (default: the cluster's CPUs)")


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
    if args.engine != "ray" and (args.ray_address is not None or args.ray_workers is not None):
        raise ArmbenchError("--ray-address and --ray-workers need --engine ray")
    if args.engine == "ray" and args.workers is not None:
        raise ArmbenchError("--workers sets the local engine's metric processes; with --engine ray use --ray-workers")
    if args.ray_workers is not None and args.ray_workers < 1:
        raise ArmbenchError(f"--ray-workers must be >= 1, got {args.ray_workers}")


def _ray_options(args: argparse.Namespace) -> Any:
    if args.engine != "ray":
        return None
    from armbench_segmentation.analysis.ray_engine import RayOptions, import_ray, wants_local_cluster

    import_ray(wants_local_cluster(args.ray_address))  # before any work: a missing extra is one clear line
    return RayOptions(address=args.ray_address, workers=args.ray_workers)


def run(args: argparse.Namespace) -> int:
    from armbench_segmentation.analysis.engine import default_out_dir, resolve_dataset, run_analysis

    _validate(args)
    ray_options = _ray_options(args)  # fails fast when the Ray extra is missing
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
    # --json: stdout carries the JSON alone; anything else printed on the way goes to stderr
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet_stdout:
        # Resolve (and generate, for --synthetic) the dataset first: the default --out is named after it.
        settings, where = resolve_dataset(settings, args.synthetic, progress=progress)
        out = args.out
        if out is None:
            out = default_out_dir(Path(settings.data.path).name)
        out = check_output_path(out, "dir", "--out")
        if not args.json:
            print(f"dataset: {where}")
            print(f"output:  {out}")
        result = run_analysis(settings, out, synthetic=False, resume=not args.no_resume, progress=progress,
                              max_samples=args.max_samples, process_workers=args.workers,
                              crops=not args.no_crops, engine=args.engine, ray_options=ray_options)
    if args.json:
        print(json.dumps(summary_dict(result), indent=2, default=json_default))
        return 0
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
    print(f"explore:  {serve_command(result.out_dir)}")
    return 0


# per-split totals and means of the samples table in the JSON summary (columns absent in a
# run, e.g. the labeled-only ones of an unlabeled split, are left out)
SUMMED_COLUMNS = ("num_gt", "num_pred", "tp", "fp", "fn", "over_segmented_count", "under_segmented_count")
MEAN_COLUMNS = ("ap", "precision", "recall", "f1", "mean_iou", "error_rate", "loss")


def serve_command(run_dir: Path) -> str:
    """The command that opens the explorer on a run folder (shell-quoted)."""
    return f"armbench serve {shlex.quote(str(run_dir))}"


def summary_dict(result: Any) -> dict[str, Any]:
    """What ``analyze --json`` prints: counts and rate of this call, per-split totals and means
    read back from the written samples table (``means.ap`` is the mean per-image AP), the
    insights' sizes and every output path (absolute)."""
    from armbench_segmentation import package_version

    s = result.summary
    return {
        "version": package_version(),
        "dataset": result.dataset,
        "out_dir": _abs(result.out_dir),
        "store": _abs(result.store_path),
        "run_key": s.run_key,
        "samples": {"selected": s.selected, "analysed": result.n_samples, "computed": s.computed,
                    "already_finished": s.already_finished, "errors": s.errors,
                    "stopped_early": s.stopped_early, "elapsed_s": round(s.elapsed_s, 3),
                    "rate_img_per_s": round(s.rate, 3)},
        "error_samples": [{"split": split, "sample_id": sid, "message": msg} for split, sid, msg in s.error_samples],
        "splits": _split_stats(result.files.get("samples_parquet")),
        "insights": _insight_sizes(result.insights),
        "files": {key: _abs(path) for key, path in sorted(result.files.items())},
        "dashboard": None if result.dashboard is None else _abs(result.dashboard),
        "serve": serve_command(result.out_dir),
    }


def _abs(path: Path) -> str:
    return os.path.abspath(path)


def _split_stats(table: Path | None) -> dict[str, Any]:
    """{split: {"samples": n, "totals": {column: sum}, "means": {column: mean}}} over the
    stored samples of each split (columns without any value in a split are left out)."""
    if table is None or not Path(table).is_file():
        return {}
    import pandas as pd

    frame = pd.read_parquet(table)
    stats: dict[str, Any] = {}
    for split, part in frame.groupby("split", sort=False):
        totals = {c: int(part[c].sum()) for c in SUMMED_COLUMNS if c in part and part[c].notna().any()}
        means = {c: float(part[c].mean()) for c in MEAN_COLUMNS if c in part and part[c].notna().any()}
        stats[str(split)] = {"samples": int(len(part)), "totals": totals, "means": means}
    return stats


def _insight_sizes(insights: Any) -> dict[str, Any]:
    if insights is None:
        return {}
    out: dict[str, Any] = {}
    if insights.projection is not None:
        out["map_method"] = getattr(insights.projection, "method", None)
    if insights.clusters is not None:
        out["clusters"] = len(insights.clusters.summaries)
    if insights.picks is not None:
        out["label_picks"] = len(insights.picks.picks)
    if insights.pruning is not None:
        out["prune_keep"] = len(insights.pruning.keep_ids)
        out["prune_drop"] = len(insights.pruning.drop_ids)
    return out

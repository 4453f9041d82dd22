"""``armbench synth``: write an ARMBench-like synthetic tote dataset.

Example::

    armbench synth --out data/synth --n-train 100 --n-val 100 --n-unlabeled 100 --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from armbench_segmentation.commands._common import check_output_path
from armbench_segmentation.errors import ArmbenchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (mix-object-tote layout)")
    parser.add_argument("--n-train", type=int, default=100, help="images in train.json (default 100)")
    parser.add_argument("--n-val", type=int, default=100, help="images in val.json (default 100)")
    parser.add_argument("--n-unlabeled", type=int, default=100, help="images in test.json, the unlabeled split (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0); same seed, same files")
    parser.add_argument("--width", type=int, default=2448, help="image width in pixels (default 2448, as ARMBench)")
    parser.add_argument("--height", type=int, default=2048, help="image height in pixels (default 2048, as ARMBench)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPU cores)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder that is not a synthetic dataset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--rare-dense", metavar="F[,F_VAL,F_TEST]", default=None,
                        help="mix in the rare 'dense-small' scenario (45-70 small items per tote): this fraction of "
                             "each split's images, or three fractions for train,val,test (e.g. 0,0.5,0.2)")


def _scenario_fractions(text: str | None) -> dict[str, float] | None:
    """``--rare-dense`` -> {"train": f, "val": f, "test": f} (None when not given)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise ArmbenchError(f"--rare-dense takes one fraction or three (train,val,test), got {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise ArmbenchError(f"--rare-dense takes one fraction or three (train,val,test), each in [0, 1], got {text!r}")
    return dict(zip(("train", "val", "test"), values))


def _validate(args: argparse.Namespace) -> None:
    from armbench_segmentation.data.synth import MIN_SIZE

    for flag, value in (("--n-train", args.n_train), ("--n-val", args.n_val), ("--n-unlabeled", args.n_unlabeled)):
        if value < 0:
            raise ArmbenchError(f"{flag} must be >= 0, got {value}")
    if args.n_train + args.n_val + args.n_unlabeled == 0:
        raise ArmbenchError("nothing to generate: --n-train, --n-val and --n-unlabeled are all 0")
    if args.seed < 0:
        raise ArmbenchError(f"--seed must be >= 0, got {args.seed}")
    for flag, value in (("--width", args.width), ("--height", args.height)):
        if value < MIN_SIZE:
            raise ArmbenchError(f"{flag} must be at least {MIN_SIZE} pixels, got {value}")
    if args.workers is not None and args.workers < 1:
        raise ArmbenchError(f"--workers must be >= 1, got {args.workers}")


def run(args: argparse.Namespace) -> int:
    from armbench_segmentation.data.synth import generate_dataset, is_synthetic_dataset

    _validate(args)
    fractions = _scenario_fractions(getattr(args, "rare_dense", None))
    out: Path = check_output_path(args.out, "dir", "--out")
    if out.is_dir() and any(out.iterdir()) and not is_synthetic_dataset(out) and not args.force:
        raise ArmbenchError(
            f"--out {out} is not empty and is not a synthetic dataset written by `armbench synth`; "
            "choose an empty or new folder, or pass --force to write into it anyway"
        )
    try:
        summary = generate_dataset(
            out,
            n_train=args.n_train,
            n_val=args.n_val,
            n_unlabeled=args.n_unlabeled,
            seed=args.seed,
            width=args.width,
            height=args.height,
            workers=args.workers,
            progress=not args.no_progress,
            **({"scenario": "dense-small", "scenario_fraction": fractions} if fractions else {}),
        )
    except OSError as exc:
        raise ArmbenchError(f"cannot write the dataset to {out}: {exc}") from exc
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    """One screen of text describing a ``generate_dataset`` summary."""
    per = summary["instances_per_image"]
    lines = [
        f"synthetic ARMBench-like dataset written to {summary['out_dir']}",
        f"  seed {summary['seed']}, {summary['width']}x{summary['height']}, {summary['workers']} worker(s)",
        f"  {'split':<16} {'images':>6}  {'annotations':>11}",
    ]
    names = {"train": "train", "val": "val", "test": "test (unlabeled)"}
    for split, counts in summary["splits"].items():
        lines.append(f"  {names.get(split, split):<16} {counts['images']:>6}  {counts['annotations']:>11}")
    lines.append(f"  {'total':<16} {summary['images']:>6}  {summary['annotations']:>11}")
    if per["min"] is not None:
        lines.append(f"  instances per image (tote included): min {per['min']}, median {per['median']:g}, max {per['max']}")
    ips = summary["images_per_second"]
    lines.append(f"  {summary['seconds']:.1f} s" + (f", {ips:.2f} images/s" if ips else ""))
    return "\n".join(lines)

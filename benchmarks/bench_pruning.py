"""Pruning experiment: train on 100%, on 70% kept by the pruning picks, on a random 70%.

Per seed, a synthetic train set (``--train`` images, ``--train-rare`` of them in the rare
``dense-small`` scenario) and a fixed held-out set. The shipped model analyses the train split
(``analysis.engine.run_analysis`` with ``analysis.prune_keep_fraction = --keep``:
``analysis.selection.select_for_pruning``, coverage-centric per-cluster strata); then the
shipped model is fine-tuned three times with the same schedule and initialisation
(``training.engine.finetune``, same seed, same epochs): on all images, on the kept ones, and on
a random subset of the same size. Reported: held-out segm AP / AP50 (mean ± std over seeds),
the AP difference to 100%, and the training time (fewer images, same epochs -> fewer steps).
Results are appended to ``<out>/results.jsonl`` (a killed run resumes).

    nice -n 19 .venv/bin/python benchmarks/bench_pruning.py --out /tmp/prune --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_active_learning import (  # noqa: E402
    Results, analyze, dataset_view, finetune, heldout_scores, load, run_and_report, subset, write_json,
)

ARMS = ("full", "pruned", "random")


def run_seed(args, seed: int, results: Results) -> None:
    from armbench_segmentation.data.synth import generate_dataset

    base = Path(args.out) / f"seed{seed}"
    data = base / "data"
    if not (data / ".done").is_file():
        generate_dataset(data, n_train=args.train, n_val=args.heldout, n_unlabeled=0, seed=2000 + seed,
                         width=args.width, height=args.height, workers=1, progress=False, scenario="dense-small",
                         scenario_fraction={"train": args.train_rare, "val": args.heldout_rare, "test": 0.0})
        (data / ".done").write_text("ok")
    train, heldout = load(data / "train.json"), load(data / "val.json")
    rare = {Path(im["file_name"]).stem for im in heldout["images"] if im.get("scenario")}
    train_rare = {Path(im["file_name"]).stem for im in train["images"] if im.get("scenario")}
    stems = sorted(Path(im["file_name"]).stem for im in train["images"])
    keep_path = base / "keep.json"
    if not keep_path.is_file():
        empty = {"images": [], "annotations": [], "categories": train["categories"]}
        view = dataset_view(base / "view", data / "images", train, empty)
        t0 = time.perf_counter()
        insights = analyze(view, Path(args.model), base / "analysis", args.imgsz, 1, "combined", seed,
                           keep_fraction=args.keep)
        write_json(keep_path, {"keep": insights.pruning.keep_ids, "seconds": round(time.perf_counter() - t0, 1)})
    keep = load(keep_path)["keep"]
    rng = np.random.default_rng([seed, 70])
    random_keep = [stems[i] for i in rng.permutation(len(stems))[: len(keep)]]
    subsets = {"full": stems, "pruned": keep, "random": random_keep}
    for arm in ARMS:
        if results.get(seed=seed, arm=arm) is not None:
            continue
        t0 = time.perf_counter()
        train_json = write_json(base / arm / "train.json", subset(train, set(subsets[arm])))
        card = finetune(train_json, data / "images", base / arm / "model.onnx", data / "val.json", args.imgsz,
                        args.epochs, args.batch, seed, rare)
        row = heldout_scores(card)
        results.add({"seed": seed, "arm": arm, "images": len(subsets[arm]),
                     "rare_images": len(set(subsets[arm]) & train_rare), **row,
                     "seconds": round(time.perf_counter() - t0, 1)})
        logging.getLogger("bench_pruning").info("seed %d %s: %d images AP %.3f (%.0f s train)", seed, arm,
                                                len(subsets[arm]), row["AP"], row["train_seconds"])


def report(rows: list[dict], settings: dict) -> str:
    lines = [f"settings: {json.dumps(settings)}", "",
             "| arm | images | dense images | held-out segm AP | AP50 | dense-image Object AP | AP - full (paired, mean ± std) | train s | time saved |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by = {(r["seed"], r["arm"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    full_t = [by[(s, "full")]["train_seconds"] for s in seeds if (s, "full") in by]
    for arm in ARMS:
        rs = [by[(s, arm)] for s in seeds if (s, arm) in by]
        if not rs:
            continue
        ap = [r["AP"] for r in rs]
        deltas = [by[(s, arm)]["AP"] - by[(s, "full")]["AP"] for s in seeds if (s, arm) in by and (s, "full") in by]
        t = [r["train_seconds"] for r in rs]
        saved = 1 - np.mean(t) / np.mean(full_t) if full_t else float("nan")
        rare_ap = [r.get("rare_object_AP") for r in rs if r.get("rare_object_AP") is not None]
        lines.append(
            f"| {arm} | {np.mean([r['images'] for r in rs]):.0f} | {np.mean([r['rare_images'] for r in rs]):.1f} | "
            f"{np.mean(ap):.4f} ± {np.std(ap):.4f} (n={len(rs)}) | {np.mean([r['AP50'] for r in rs]):.4f} | "
            f"{np.mean(rare_ap):.4f} | {np.mean(deltas) * 100:+.2f} ± {np.std(deltas) * 100:.2f} points "
            f"(worse in {sum(d < 0 for d in deltas)}/{len(deltas)}) | {np.mean(t):.1f} | {saved * 100:.0f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_pruning"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--model", default=str(Path(__file__).resolve().parent.parent / "models" / "armbench-yolov5s-seg.onnx"))
    p.add_argument("--train", type=int, default=56)
    p.add_argument("--train-rare", type=float, default=0.15)
    p.add_argument("--heldout", type=int, default=40)
    p.add_argument("--heldout-rare", type=float, default=0.5)
    p.add_argument("--keep", type=float, default=0.7)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--width", type=int, default=816)
    p.add_argument("--height", type=int, default=683)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--table", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("armbench_segmentation").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out / "results.jsonl")
    settings = {k: getattr(args, k) for k in ("train", "train_rare", "heldout", "heldout_rare", "keep", "imgsz",
                                              "epochs", "batch", "width", "height")}
    return run_and_report(args, lambda seed: run_seed(args, seed, results), lambda: report(results.rows, settings))


if __name__ == "__main__":
    sys.exit(main())

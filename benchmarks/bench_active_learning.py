"""Simulated active-learning loop: do the labeling picks buy more AP per label than random ones?

Per seed, a synthetic dataset (``data.synth``, scenario ``dense-small``: a rare, hard
sub-population of dense totes with many small items) is split into
- an initial labeled set (``--init`` images, none of them dense),
- an unlabeled pool (``--pool`` images, ``--pool-rare`` of them dense),
- a fixed held-out set (``--heldout`` images, ``--heldout-rare`` of them dense).
The oracle is the pool's own ground truth. Every strategy starts from the same model: the
shipped model fine-tuned on the initial set (``round 0``). Each round: analyze the pool with
the current model (the project's own ``analysis.engine.run_analysis``: per-sample
uncertainty, embeddings, ``analysis.selection`` picks; ``random`` skips it) -> pick ``--k``
-> add their oracle labels -> fine-tune the *shipped* model again on all labels so far, same
schedule (``training.engine.finetune``) -> score it on the held-out set (COCO AP, the
project's own predict + evaluation at ``--imgsz``, conf 0.001).

Printed: segm AP / AP50 (mean over classes) against the number of labeled images per
strategy, mean and spread over seeds, the AP on the dense held-out images, and the labels
each strategy needs to reach random's final AP (linear interpolation on the mean curve; ">N"
when it never gets there). Every finished step is appended to ``<out>/results.jsonl``, so
a killed run resumes and a partial run still reports.

Reduced settings for 2 shared CPU cores (documented in benchmarks/results/active_learning.md):
816x683 images, --imgsz 320, a few epochs per fine-tune, small pool. Example::

    nice -n 19 .venv/bin/python benchmarks/bench_active_learning.py --out /tmp/al --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from armbench_segmentation.codecs import atomic_write_text  # noqa: E402

SHIPPED = ROOT / "models" / "armbench-yolov5s-seg.onnx"
STRATEGIES = ("combined", "entropy", "diversity", "random")
LOG = logging.getLogger("bench_al")


# ---------------------------------------------------------------------- data
def make_data(root: Path, seed: int, n_init: int, n_pool: int, n_heldout: int, pool_rare: float, heldout_rare: float,
              width: int, height: int) -> Path:
    """The seed's synthetic dataset: train = initial labeled set, val = held-out, test = pool (with GT = oracle)."""
    from armbench_segmentation.data.synth import generate_dataset

    if (root / "test.json").is_file() and (root / ".done").is_file():
        return root
    generate_dataset(root, n_train=n_init, n_val=n_heldout, n_unlabeled=n_pool, seed=1000 + seed, width=width,
                     height=height, workers=1, progress=False, scenario="dense-small",
                     scenario_fraction={"train": 0.0, "val": heldout_rare, "test": pool_rare})
    (root / ".done").write_text("ok")
    return root


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def subset(coco: dict, stems: set[str]) -> dict:
    """The images of ``coco`` whose file stem is in ``stems``, with their annotations."""
    images = [im for im in coco["images"] if Path(im["file_name"]).stem in stems]
    ids = {im["id"] for im in images}
    return {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}


def merge(base: dict, extra: dict) -> dict:
    """``base`` + ``extra`` images (ids remapped), same categories: the oracle's labels added."""
    out = {**base, "images": list(base["images"]), "annotations": list(base["annotations"])}
    next_img = max([im["id"] for im in out["images"]], default=0) + 1
    next_ann = max([a["id"] for a in out["annotations"]], default=0) + 1
    remap = {}
    for im in extra["images"]:
        remap[im["id"]] = next_img
        out["images"].append({**im, "id": next_img})
        next_img += 1
    for a in extra["annotations"]:
        out["annotations"].append({**a, "id": next_ann, "image_id": remap[a["image_id"]]})
        next_ann += 1
    return out


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj))
    return path


def dataset_view(folder: Path, images_dir: Path, train: dict, pool: dict, val: dict | None = None) -> Path:
    """A dataset folder (mix-object-tote layout) over the shared images: train, val, test=pool."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "images"
    if not link.exists():
        link.symlink_to(images_dir.resolve(), target_is_directory=True)
    empty = {"images": [], "annotations": [], "categories": train["categories"]}
    write_json(folder / "train.json", train)
    write_json(folder / "val.json", val or empty)
    write_json(folder / "test.json", pool)
    return folder


# ---------------------------------------------------------------------- steps
def analyze(folder: Path, model: Path, out: Path, imgsz: int, k: int, strategy: str, seed: int,
            keep_fraction: float = 0.8):
    """run_analysis over ``folder`` (no dashboard, no crops); returns the Insights."""
    from armbench_segmentation.analysis.engine import run_analysis
    from armbench_segmentation.config import load_settings

    settings = load_settings(config_path=None, env={}, overrides={
        "data.path": str(folder), "model.path": str(model), "data.image_size": imgsz, "data.train_size": "all",
        "data.val_size": "all", "data.unlabeled_size": "all", "data.seed": seed, "analysis.label_budget": max(1, k),
        "analysis.label_strategy": strategy if strategy != "random" else "combined",
        "analysis.prune_keep_fraction": keep_fraction, "model.num_threads": 2})
    result = run_analysis(settings, out, progress=False, report=False, crops=False, process_workers=0)
    return result.insights


def finetune(train_json: Path, images: Path, out: Path, heldout_json: Path, imgsz: int, epochs: int, batch: int,
             seed: int, rare: set[str] = frozenset(), lr0: float | None = None) -> dict:
    from armbench_segmentation.training.engine import FinetuneConfig
    from armbench_segmentation.training.engine import finetune as run_finetune

    card_path = out.with_name(out.name + ".card.json")
    if card_path.is_file() and out.is_file():
        return load(card_path)
    cfg = FinetuneConfig(train=(str(train_json),), images=(str(images),), base=str(SHIPPED), out=str(out),
                         val=str(heldout_json), check_export=False, lr0=lr0,
                         val_subsets=(("rare", tuple(sorted(rare))),) if rare else (),
                         epochs=epochs, imgsz=imgsz, batch=batch, seed=seed, device="auto", threads=2)
    return run_finetune(cfg).card


def heldout_scores(card: dict) -> dict:
    v = card["val"]
    row = {"AP": v["segm"]["mean"]["AP"], "AP50": v["segm"]["mean"]["AP50"], "box_AP": v["bbox"]["mean"]["AP"],
           "object_AP": v["segm"]["per_class"]["Object"]["AP"], "train_seconds": card["train_seconds"]}
    if "rare" in v.get("subsets", {}):
        row["rare_object_AP"] = v["subsets"]["rare"]["segm"]["per_class"]["Object"]["AP"]
    return row


class Results:
    """Append-only JSON lines: finished steps survive a kill; ``get`` finds one again."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    def get(self, **key):
        for r in self.rows:
            if all(r.get(k) == v for k, v in key.items()):
                return r
        return None

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------- the loop
def run_seed(args, seed: int, results: Results) -> None:
    base = Path(args.out) / f"seed{seed}"
    data = make_data(base / "data", seed, args.init, args.pool, args.heldout, args.pool_rare, args.heldout_rare,
                     args.width, args.height)
    images = data / "images"
    init, pool_all, heldout = load(data / "train.json"), load(data / "test.json"), load(data / "val.json")
    heldout_json = data / "val.json"
    rare = {Path(im["file_name"]).stem for im in heldout["images"] if im.get("scenario")}
    pool_rare_ids = {Path(im["file_name"]).stem for im in pool_all["images"] if im.get("scenario")}

    # round 0, shared by every strategy: the shipped model fine-tuned on the initial set
    r0_model = base / "round0" / "model.onnx"
    if results.get(seed=seed, round=0, strategy="all") is None:
        t0 = time.perf_counter()
        card = finetune(write_json(base / "round0" / "train.json", init), images, r0_model, heldout_json, args.imgsz,
                        args.epochs, args.batch, seed, rare, args.lr0)
        row = heldout_scores(card)
        results.add({"seed": seed, "round": 0, "strategy": "all", "labeled": len(init["images"]), "rare_labeled": 0,
                     **row, "seconds": round(time.perf_counter() - t0, 1)})
        LOG.info("seed %d round 0: %s", seed, row)
    for strategy in args.strategies:
        labeled, model = init, r0_model
        for rnd in range(1, args.rounds + 1):
            rdir = base / strategy / f"round{rnd}"
            done = results.get(seed=seed, round=rnd, strategy=strategy)
            if done is not None:
                labeled = load(rdir / "train.json")
                model = rdir / "model.onnx"
                continue
            t0 = time.perf_counter()
            have = {Path(im["file_name"]).stem for im in labeled["images"]}
            pool = subset(pool_all, {Path(im["file_name"]).stem for im in pool_all["images"]} - have)
            if strategy == "random":
                stems = sorted(Path(im["file_name"]).stem for im in pool["images"])
                rng = np.random.default_rng([seed, rnd, 7])
                picks = [stems[i] for i in rng.permutation(len(stems))[: args.k]]
                t_pick = 0.0
            else:
                tp = time.perf_counter()
                view = dataset_view(rdir / "view", images, labeled, pool)
                insights = analyze(view, model, rdir / "analysis", args.imgsz, args.k, strategy, seed)
                picks = list(insights.picks.sample_ids)[: args.k]
                t_pick = time.perf_counter() - tp
            labeled = merge(labeled, subset(pool_all, set(picks)))  # the oracle labels them
            train_json = write_json(rdir / "train.json", labeled)
            model = rdir / "model.onnx"
            card = finetune(train_json, images, model, heldout_json, args.imgsz, args.epochs, args.batch, seed, rare,
                            args.lr0)
            row = heldout_scores(card)
            n_rare = sum(Path(im["file_name"]).stem in pool_rare_ids for im in labeled["images"])
            results.add({"seed": seed, "round": rnd, "strategy": strategy, "labeled": len(labeled["images"]),
                         "labeled_instances": len(labeled["annotations"]), "rare_labeled": n_rare, "picks": picks, "pick_seconds": round(t_pick, 1), **row,
                         "seconds": round(time.perf_counter() - t0, 1)})
            LOG.info("seed %d %s round %d: %d labeled (%d dense) AP %.3f AP50 %.3f (%.0f s)", seed, strategy, rnd,
                     len(labeled["images"]), n_rare, row["AP"], row["AP50"], time.perf_counter() - t0)
            if rdir.joinpath("view").exists():
                shutil.rmtree(rdir / "analysis" / "crops", ignore_errors=True)


# ---------------------------------------------------------------------- report
def curves(rows: list[dict], strategies, metric: str) -> dict[str, dict[int, list[float]]]:
    """strategy -> labeled count -> values over seeds (round 0 counts for every strategy)."""
    out: dict[str, dict[int, list[float]]] = {s: {} for s in strategies}
    for r in rows:
        if metric not in r or r[metric] is None:
            continue
        for s in (strategies if r["strategy"] == "all" else [r["strategy"]]):
            if s in out:
                out[s].setdefault(int(r["labeled"]), []).append(float(r[metric]))
    return out


def labels_to_reach(curve: dict[int, list[float]], target: float) -> str:
    """Labels at which the mean curve first reaches ``target`` (linear interpolation)."""
    pts = sorted((n, float(np.mean(v))) for n, v in curve.items())
    for (n0, a0), (n1, a1) in zip([(None, None)] + pts[:-1], pts):
        if a1 >= target:
            if n0 is None or a1 == a0:
                return f"{n1}"
            return f"{n0 + (target - a0) / (a1 - a0) * (n1 - n0):.1f}"
    return f">{pts[-1][0]}" if pts else "-"


def bootstrap_ci(values, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean of ``values`` (one value per seed)."""
    v = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def report(rows: list[dict], strategies, settings: dict) -> str:
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"seeds finished (any step): {seeds}; settings: {json.dumps(settings)}", ""]
    for metric in ("AP", "AP50", "object_AP", "rare_object_AP"):
        c = curves(rows, strategies, metric)
        ns = sorted({n for s in c.values() for n in s})
        if not ns:
            continue
        lines.append(f"held-out segm {metric} (mean ± std over seeds, n = seeds) vs labeled images")
        lines.append("| strategy | " + " | ".join(str(n) for n in ns) + " |")
        lines.append("| --- |" + " --- |" * len(ns))
        for s in strategies:
            cells = []
            for n in ns:
                v = c[s].get(n)
                cells.append("-" if not v else f"{np.mean(v):.3f} ± {np.std(v):.3f} (n={len(v)})")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("")
    c = curves(rows, strategies, "AP")
    if c.get("random"):
        final_n = max(c["random"])
        target = float(np.mean(c["random"][final_n]))
        lines.append(f"labels to reach random's final AP ({target:.3f} at {final_n} labels):")
        for s in strategies:
            lines.append(f"- {s}: {labels_to_reach(c[s], target)}")
        lines.append("")
    if c.get("random"):
        lines.append("paired difference to random, same seed and round, AP points (mean ± std over seeds; "
                     "worse-than-random seeds):")
        by_key = {(r["seed"], r["round"], r["strategy"]): r for r in rows if r["strategy"] != "all"}
        for s in strategies:
            if s == "random":
                continue
            cells = []
            rounds = sorted({k[1] for k in by_key})
            for rnd in rounds:
                d = [100 * (by_key[(sd, rnd, s)]["AP"] - by_key[(sd, rnd, "random")]["AP"]) for sd in seeds
                     if (sd, rnd, s) in by_key and (sd, rnd, "random") in by_key]
                if d:
                    cells.append(f"r{rnd}: {np.mean(d):+.2f} ± {np.std(d):.2f} ({sum(x < 0 for x in d)}/{len(d)})")
            per_seed = []  # each seed's mean difference over its rounds: seeds are the independent units
            for sd in seeds:
                d = [100 * (by_key[(sd, rnd, s)]["AP"] - by_key[(sd, rnd, "random")]["AP"]) for rnd in rounds
                     if (sd, rnd, s) in by_key and (sd, rnd, "random") in by_key]
                if d:
                    per_seed.append(float(np.mean(d)))
            if len(per_seed) >= 2:
                lo, hi = bootstrap_ci(per_seed)
                cells.append(f"all rounds: {np.mean(per_seed):+.2f} (95% CI over seeds {lo:+.2f} .. {hi:+.2f})")
            lines.append(f"- {s}: " + ", ".join(cells))
        lines.append("")
    inst = {}
    for r in rows:
        if r["strategy"] != "all" and r.get("labeled_instances") is not None:
            inst.setdefault((r["strategy"], r["round"]), []).append(r["labeled_instances"])
    if inst:
        lines.append("annotated instances (the annotators' work, not only images), mean over seeds, by round:")
        for s in strategies:
            lines.append(f"- {s}: " + ", ".join(f"r{k[1]}: {np.mean(v):.0f}" for k, v in sorted(inst.items())
                                                if k[0] == s))
        lines.append("")
    rare = {}
    for r in rows:
        if r["strategy"] != "all" and "rare_labeled" in r:
            rare.setdefault((r["strategy"], r["round"]), []).append(r["rare_labeled"] - 0)
    if rare:
        lines.append("dense (rare) images among the labels, mean over seeds, by round:")
        for s in strategies:
            vals = [f"r{k[1]}: {np.mean(v):.1f}" for k, v in sorted(rare.items()) if k[0] == s]
            lines.append(f"- {s}: " + ", ".join(vals))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_active_learning"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--init", type=int, default=16, help="initial labeled images (no dense ones)")
    p.add_argument("--pool", type=int, default=96)
    p.add_argument("--heldout", type=int, default=48)
    p.add_argument("--pool-rare", type=float, default=0.2, help="share of dense-small images in the pool")
    p.add_argument("--heldout-rare", type=float, default=0.5, help="share of dense-small images in the held-out set")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--k", type=int, default=16, help="images labeled per round")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr0", type=float, default=None, help="fine-tuning learning rate (default: the engine's 0.002)")
    p.add_argument("--width", type=int, default=816)
    p.add_argument("--height", type=int, default=683)
    p.add_argument("--report-only", action="store_true", help="print the table of what results.jsonl holds")
    p.add_argument("--table", type=Path, default=None, help="also write the table (Markdown) here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("armbench_segmentation", "yolov5"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out / "results.jsonl")
    settings = {k: getattr(args, k) for k in ("init", "pool", "heldout", "pool_rare", "heldout_rare", "rounds", "k",
                                              "imgsz", "epochs", "batch", "lr0", "width", "height")}

    def make_report() -> str:
        for r in results.rows:  # rows written before labeled_instances was recorded: count the round's train file
            f = args.out / f"seed{r['seed']}" / str(r["strategy"]) / f"round{r['round']}" / "train.json"
            if r["strategy"] != "all" and "labeled_instances" not in r and f.is_file():
                r["labeled_instances"] = len(load(f)["annotations"])
        return report(results.rows, args.strategies, settings)

    return run_and_report(args, lambda seed: run_seed(args, seed, results), make_report)


def run_and_report(args, run_one_seed: Callable[[int], None], make_report: Callable[[], str]) -> int:
    """The benchmarks' main loop: unless ``--report-only``, each seed of ``--seeds`` in turn
    (its finished steps are appended to results.jsonl) with the table so far printed after
    it; then the table of everything stored, printed and, with ``--table``, written."""
    if not args.report_only:
        from armbench_segmentation.training import require_train_extra

        require_train_extra()
        for seed in args.seeds:
            run_one_seed(seed)
            print(make_report(), flush=True)
    text = make_report()
    print(text)
    if args.table:
        atomic_write_text(args.table, text + "\n")
    return 0

if __name__ == "__main__":
    sys.exit(main())

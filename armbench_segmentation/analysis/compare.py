"""Two analyze runs on the same data, side by side (``armbench compare``).

Read from each run folder (what ``armbench analyze`` wrote): ``run.json`` (model, settings,
dataset identity = sha256 of every split file), ``samples.parquet`` (the stored per-sample
rows: loss, error counts, cluster) and ``predictions_<split>.json`` (COCO results).

- **Same data**: the labeled splits whose COCO file has the same sha256 in both runs are
  compared; others are named and skipped. When none matches the comparison is refused.
- **AP per class**: COCO AP (segm and bbox) of each run's predictions against the split's
  ground truth (``metrics.evaluation.evaluate_coco_results``, the ``armbench evaluate``
  numbers), per class and the mean.
- **AP per cluster**: the same, on the images of each cluster of run A (clusters are fitted per
  run; run A's assignment is used for both, so the same images are scored).
- **Per-sample loss change**: ``loss`` (B - A) per sample; mean, and how many got better/worse.
- **Errors fixed and new, by kind** (``sample_evaluation.ERROR_KINDS`` with the per-sample count
  columns ``COUNT_COLUMNS``): per sample, ``max(0, A - B)`` instances fixed and ``max(0, B - A)``
  new; totals per kind, and the samples whose kind went from present to absent (and back).
- **Samples that changed most**: the largest |loss change|.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from armbench_segmentation.codecs import finite_float
from armbench_segmentation.errors import ArmbenchError
from armbench_segmentation.metrics.sample_evaluation import COUNT_COLUMNS, ERROR_KINDS
from armbench_segmentation.splits import LABELED_SPLITS

SPLIT_FILES = {"train": "train.json", "val": "val.json"}


@dataclass
class RunData:
    path: Path
    info: dict
    frame: Any  # pandas DataFrame of samples.parquet


def load_run(path: str | Path) -> RunData:
    """The run folder's run.json and samples table; ArmbenchError naming the file when missing/unreadable."""
    import pandas as pd

    path = Path(path).expanduser()
    info_path, table = path / "run.json", path / "samples.parquet"
    for p in (info_path, table):
        if not p.is_file():
            raise ArmbenchError(f"{path} is not a finished analyze run: {p.name} is missing; run "
                                f"`armbench analyze --out {path}` first (or let it finish)")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArmbenchError(f"{info_path} is not valid JSON ({exc}); re-run `armbench analyze --out {path}`") from None
    try:
        frame = pd.read_parquet(table)
    except Exception as exc:  # pyarrow raises several types for a truncated file
        raise ArmbenchError(f"{table} cannot be read ({type(exc).__name__}); re-run `armbench analyze --out {path}`") from None
    if not isinstance(info, dict) or not isinstance(info.get("dataset_files"), dict):
        raise ArmbenchError(f"{info_path} has no dataset identity (dataset_files); re-run `armbench analyze --out {path}`")
    return RunData(path, info, frame)


def _settings_for(info: dict):
    from armbench_segmentation.config import load_settings

    s = info.get("settings") or {}
    overrides = {"data.path": info.get("dataset_root")}
    if s.get("data", {}).get("class_names"):
        overrides["data.class_names"] = list(s["data"]["class_names"])
    for key, value in (s.get("metrics") or {}).items():
        overrides[f"metrics.{key}"] = value
    return load_settings(config_path=None, env={}, overrides=overrides)


def _coco_ap(gt_path: Path, preds_path: Path, settings, image_ids: list[int]) -> dict:
    from pycocotools.coco import COCO

    from armbench_segmentation.metrics.evaluation import evaluate_coco_results, validate_results

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
    raw = json.loads(preds_path.read_text())
    images = {int(i): (int(im["height"]), int(im["width"])) for i, im in coco.imgs.items()}
    results = validate_results(raw, images, coco.getCatIds())
    keep = set(image_ids)
    res = evaluate_coco_results(coco, [r for r in results if r["image_id"] in keep], settings.data.class_names,
                                settings.metrics, image_ids=sorted(keep))
    return {"segm": {**res.segm.per_class, "mean": res.segm.mean}, "bbox": {**res.bbox.per_class, "mean": res.bbox.mean}}


@dataclass
class Comparison:
    run_a: str
    run_b: str
    model_a: str | None
    model_b: str | None
    splits: list[str]
    skipped_splits: dict[str, str]
    ap: dict[str, dict] = field(default_factory=dict)            # split -> {"A": ..., "B": ...}
    ap_per_cluster: list[dict] = field(default_factory=list)     # rows: split, cluster, images, A/B segm AP
    loss: dict[str, Any] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)             # per kind
    changed_most: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("run_a", "run_b", "model_a", "model_b", "splits", "skipped_splits", "ap",
                                              "ap_per_cluster", "loss", "errors", "changed_most")}


def compare_runs(path_a: str | Path, path_b: str | Path, top: int = 10) -> Comparison:
    """Compare two runs (see the module docstring). Raises ArmbenchError when they share no labeled data."""
    a, b = load_run(path_a), load_run(path_b)
    fa, fb = a.info["dataset_files"], b.info["dataset_files"]
    splits, skipped = [], {}
    for split in LABELED_SPLITS:
        name = SPLIT_FILES.get(split, f"{split}.json")
        if name not in fa or name not in fb:
            skipped[split] = "not in both runs"
        elif fa[name] != fb[name]:
            skipped[split] = f"{name} differs (sha256 {str(fa[name])[:12]} vs {str(fb[name])[:12]})"
        else:
            splits.append(split)
    if not splits:
        raise ArmbenchError(f"runs {a.path} and {b.path} are not on the same data: no labeled split file is identical "
                            f"({'; '.join(f'{k}: {v}' for k, v in skipped.items())}); analyze both models on the same "
                            "dataset folder (`armbench analyze --dataset DIR --model M --out RUN`)")
    cmp = Comparison(str(a.path), str(b.path), a.info.get("model_path"), b.info.get("model_path"), splits, skipped)
    settings = _settings_for(a.info)
    root = Path(str(a.info.get("dataset_root")))

    key = ["split", "sample_id"]
    cols = ["loss", "cluster", "file_name", "image_id"] + [COUNT_COLUMNS[k] for k in ERROR_KINDS]
    ta = a.frame[[c for c in key + cols if c in a.frame.columns]]
    tb = b.frame[[c for c in key + ["loss"] + [COUNT_COLUMNS[k] for k in ERROR_KINDS] if c in b.frame.columns]]
    joined = ta.merge(tb, on=key, suffixes=("_a", "_b"))
    joined = joined[joined["split"].isin(splits)]

    for split in splits:
        gt = root / SPLIT_FILES[split]
        pa, pb = a.path / f"predictions_{split}.json", b.path / f"predictions_{split}.json"
        rows = joined[joined["split"] == split]
        ids = sorted(int(i) for i in rows["image_id"].dropna()) if "image_id" in rows else []
        if not (gt.is_file() and pa.is_file() and pb.is_file()) or not ids:
            cmp.skipped_splits[split + " AP"] = "ground truth or predictions file missing"
            continue
        cmp.ap[split] = {"A": _coco_ap(gt, pa, settings, ids), "B": _coco_ap(gt, pb, settings, ids), "images": len(ids)}
        if "cluster" in rows:
            for cluster, grp in rows.groupby("cluster"):
                cids = sorted(int(i) for i in grp["image_id"].dropna())
                if not cids:
                    continue
                ra, rb = _coco_ap(gt, pa, settings, cids), _coco_ap(gt, pb, settings, cids)
                cmp.ap_per_cluster.append({
                    "split": split, "cluster": int(cluster), "images": len(cids),
                    "A_AP": ra["segm"]["mean"]["AP"], "B_AP": rb["segm"]["mean"]["AP"],
                    "A_AP50": ra["segm"]["mean"]["AP50"], "B_AP50": rb["segm"]["mean"]["AP50"]})

    la, lb = joined["loss_a"].astype(float), joined["loss_b"].astype(float)
    delta = lb - la
    ok = np.isfinite(delta.to_numpy())
    cmp.loss = {"samples": int(ok.sum()), "mean_A": finite_float(la[ok].mean()), "mean_B": finite_float(lb[ok].mean()),
                "mean_change": finite_float(delta[ok].mean()), "better": int((delta[ok] < 0).sum()),
                "worse": int((delta[ok] > 0).sum()), "unchanged": int((delta[ok] == 0).sum())}
    for kind in ERROR_KINDS:
        col = COUNT_COLUMNS[kind]
        if f"{col}_a" not in joined or f"{col}_b" not in joined:
            continue
        ca = joined[f"{col}_a"].fillna(0).astype(float).to_numpy()
        cb = joined[f"{col}_b"].fillna(0).astype(float).to_numpy()
        cmp.errors.append({"kind": kind, "column": col, "A": int(ca.sum()), "B": int(cb.sum()),
                           "fixed": int(np.maximum(ca - cb, 0).sum()), "new": int(np.maximum(cb - ca, 0).sum()),
                           "samples_fixed": int(((ca > 0) & (cb == 0)).sum()),
                           "samples_new": int(((ca == 0) & (cb > 0)).sum())})
    j = joined.assign(loss_change=delta)[ok]
    j = j.reindex(j["loss_change"].abs().sort_values(ascending=False).index).head(top)
    for _, r in j.iterrows():
        row = {"split": r["split"], "sample_id": str(r["sample_id"]), "loss_A": finite_float(r["loss_a"]),
               "loss_B": finite_float(r["loss_b"]), "loss_change": finite_float(r["loss_change"])}
        for kind in ERROR_KINDS:
            col = COUNT_COLUMNS[kind]
            if f"{col}_a" in r:
                row[f"{kind}_A"], row[f"{kind}_B"] = finite_float(r[f"{col}_a"]), finite_float(r[f"{col}_b"])
        cmp.changed_most.append(row)
    return cmp


def _f(v: Any, digits: int = 3) -> str:
    v = finite_float(v)
    return "-" if v is None else f"{v:.{digits}f}"


def _d(a: Any, b: Any) -> str:
    a, b = finite_float(a), finite_float(b)
    return "-" if a is None or b is None else f"{b - a:+.3f}"


def format_text(c: Comparison) -> str:
    """Terminal tables (dataset strings are printed as data; the terminal shows no markup)."""
    lines = [f"compare A = {c.run_a} ({c.model_a})", f"        B = {c.run_b} ({c.model_b})",
             f"splits compared: {', '.join(c.splits)}" + (f"; skipped: {c.skipped_splits}" if c.skipped_splits else ""), ""]
    for split, d in c.ap.items():
        lines.append(f"AP on {split} ({d['images']} images)   {'A':>7} {'B':>7} {'B-A':>7}")
        for kind in ("segm", "bbox"):
            for name in d["A"][kind]:
                for m in ("AP", "AP50"):
                    va, vb = d["A"][kind][name].get(m), d["B"][kind][name].get(m)
                    lines.append(f"  {kind} {name:<10} {m:<5} {_f(va):>7} {_f(vb):>7} {_d(va, vb):>7}")
        lines.append("")
    if c.ap_per_cluster:
        lines.append("segm AP per cluster (run A's clusters)   images   A       B       B-A")
        for r in c.ap_per_cluster:
            lines.append(f"  {r['split']:<6} cluster {r['cluster']:<4} {r['images']:>6}   {_f(r['A_AP'])}   {_f(r['B_AP'])}   "
                         f"{_d(r['A_AP'], r['B_AP'])}")
        lines.append("")
    lo = c.loss
    lines.append(f"per-sample loss: mean {_f(lo.get('mean_A'), 4)} -> {_f(lo.get('mean_B'), 4)} "
                 f"(change {_f(lo.get('mean_change'), 4)}); {lo.get('better')} better, {lo.get('worse')} worse, "
                 f"{lo.get('unchanged')} unchanged of {lo.get('samples')}")
    lines.append("")
    lines.append(f"{'errors by kind':<18} {'A':>6} {'B':>6} {'fixed':>6} {'new':>6} {'samples fixed':>14} {'samples new':>12}")
    for e in c.errors:
        lines.append(f"  {e['kind']:<16} {e['A']:>6} {e['B']:>6} {e['fixed']:>6} {e['new']:>6} {e['samples_fixed']:>14} "
                     f"{e['samples_new']:>12}")
    lines.append("")
    lines.append("samples that changed most (loss B - A):")
    for r in c.changed_most:
        lines.append(f"  {r['split']}/{r['sample_id']!r}: {_f(r['loss_A'], 4)} -> {_f(r['loss_B'], 4)} ({_f(r['loss_change'], 4)})")
    return "\n".join(lines)


def write_page(c: Comparison, out: str | Path) -> Path:
    """A self-contained HTML page: every string escaped; the full result embedded with script_json."""
    from armbench_segmentation.analysis.report import script_json
    from armbench_segmentation.codecs import atomic_write_text

    e = html.escape

    def table(headers, rows) -> str:
        head = "".join(f"<th>{e(str(h))}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = [f"<h1>armbench compare</h1><p>A: <code>{e(c.run_a)}</code> ({e(str(c.model_a))})<br>"
             f"B: <code>{e(c.run_b)}</code> ({e(str(c.model_b))})</p>",
             f"<p>splits compared: {e(', '.join(c.splits))}; skipped: {e(json.dumps(c.skipped_splits))}</p>"]
    for split, d in c.ap.items():
        rows = [(kind, name, m, _f(d["A"][kind][name].get(m)), _f(d["B"][kind][name].get(m)),
                 _d(d["A"][kind][name].get(m), d["B"][kind][name].get(m)))
                for kind in ("segm", "bbox") for name in d["A"][kind] for m in ("AP", "AP50", "AP75")]
        parts.append(f"<h2>AP on {e(split)} ({d['images']} images)</h2>" + table(("type", "class", "metric", "A", "B", "B-A"), rows))
    if c.ap_per_cluster:
        parts.append("<h2>segm AP per cluster (run A's clusters)</h2>" + table(
            ("split", "cluster", "images", "A AP", "B AP", "B-A"),
            [(r["split"], r["cluster"], r["images"], _f(r["A_AP"]), _f(r["B_AP"]), _d(r["A_AP"], r["B_AP"]))
             for r in c.ap_per_cluster]))
    lo = c.loss
    parts.append(f"<h2>Per-sample loss</h2><p>mean {e(_f(lo.get('mean_A'), 4))} &rarr; {e(_f(lo.get('mean_B'), 4))}; "
                 f"{e(str(lo.get('better')))} better, {e(str(lo.get('worse')))} worse of {e(str(lo.get('samples')))}</p>")
    parts.append("<h2>Errors fixed and new, by kind</h2>" + table(
        ("kind", "A", "B", "fixed", "new", "samples fixed", "samples new"),
        [(r["kind"], r["A"], r["B"], r["fixed"], r["new"], r["samples_fixed"], r["samples_new"]) for r in c.errors]))
    parts.append("<h2>Samples that changed most</h2>" + table(
        ("split", "sample", "loss A", "loss B", "change"),
        [(r["split"], r["sample_id"], _f(r["loss_A"], 4), _f(r["loss_B"], 4), _f(r["loss_change"], 4))
         for r in c.changed_most]))
    page = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>armbench compare</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>"
            + "".join(parts)
            + f"<script type=\"application/json\" id=\"comparison\">{script_json(_clean(c.as_dict()))}</script>"
            + "</body></html>")
    return atomic_write_text(Path(out), page)


def _clean(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python (script_json refuses NaN)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return finite_float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj

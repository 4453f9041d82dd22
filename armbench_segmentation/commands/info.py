"""``armbench info``: summarise a dataset from its COCO files (no image decoding).

Counts per split, instances per image, per-class counts and inverse-frequency weights,
instance size quantiles and every annotation problem found (with image/annotation ids):
``data.summary.summarize``; this module parses the flags and prints it as text or JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from armbench_segmentation.commands._common import add_settings_arguments, open_dataset, settings_from_args
from armbench_segmentation.data.summary import summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, model=False)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    dataset = open_dataset(settings)
    summary = summarize(dataset)
    if args.json:
        print(json.dumps(summary, indent=None, sort_keys=False))
    else:
        print(format_text(summary))
    return 0


# ---------------------------------------------------------------------- text
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def format_text(summary: dict[str, Any]) -> str:
    lines = [f"dataset: {summary['dataset']}", f"classes: {', '.join(summary['class_names'])}", ""]
    for split, s in summary["splits"].items():
        lines.append(f"[{split}] {s['file']}: {s['images']} images ({s['selected']} selected), "
                     f"{s['missing_image_files']} missing files")
        if not s["labeled"]:
            lines.append(f"  labels ignored ({s['annotations_ignored']} annotations in the file)")
            lines.append("")
            continue
        ipi = s["instances_per_image"]
        lines.append(f"  annotations: {s['annotations']}; per image min/median/mean/max: "
                     f"{_fmt(ipi['min'])} / {_fmt(ipi['median'])} / {_fmt(ipi['mean'])} / {_fmt(ipi['max'])}")
        peak = max([b["images"] for b in ipi["histogram"]] + [1])
        for b in ipi["histogram"]:
            bar = "#" * int(round(30 * b["images"] / peak))
            lines.append(f"    {b['bin']:>6} | {bar} {b['images']}")
        for name in s["class_counts"]:
            lines.append(f"  {name:>8}: {s['class_counts'][name]:>8}  frequency {_fmt(s['class_frequency'][name])}"
                         f"  weight {_fmt(s['class_weights'][name])}")
        for name, q in s["area_fraction_quantiles"].items():
            if q:
                lines.append(f"  {name} area / image: " + "  ".join(f"{k} {v:.4f}" for k, v in q.items()))
        w = s["images_without_annotations"]
        lines.append(f"  images without annotations: {w['count']}" + (f" ({', '.join(w['examples'])})" if w["examples"] else ""))
        lines.append("")
    lines.append(f"annotation problems: {summary['problem_count']}")
    for kind, p in summary["problems"].items():
        lines.append(f"  {kind}: {p['count']} - {p['description']}")
        for row in p["examples"]:
            lines.append("      " + ", ".join(f"{k}={v}" for k, v in row.items()))
        if p["count"] > len(p["examples"]):
            lines.append(f"      ... and {p['count'] - len(p['examples'])} more")
    return "\n".join(lines)

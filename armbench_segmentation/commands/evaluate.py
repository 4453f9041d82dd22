"""``armbench evaluate``: COCO AP per class plus the over/under-segmentation report.

    armbench evaluate --dataset DIR --split val --predictions preds.json [--json]

``preds.json`` is a COCO results list (``armbench predict`` writes one): ``image_id``,
``category_id`` (the dataset's ids), ``bbox`` [x, y, w, h], ``segmentation`` (RLE at the
original resolution), ``score``. Without ``--predictions`` the configured model predicts
the split first (``analysis.predict.predict_split``).

Reported:
- mask (segm) and box (bbox) AP, AP50, AP75, AR100 per class: pycocotools COCOeval's
  numbers (areaRng all, maxDets 100), computed by ``metrics.evaluation``;
- for the first of ``metrics.segmentation_classes`` (Object): TP/FP/FN, precision, recall
  and F1 at IoU ``metrics.match_iou`` (0.5), counting every prediction in the file;
- over/under segmentation: images and instances (``metrics.ioa_threshold``), with the
  legacy over-segmentation count (duplicates not collapsed) and the duplicates.

Masks are compared as RLE at the original image resolution (never decoded).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from armbench_segmentation.commands._common import add_settings_arguments, open_dataset, settings_from_args
from armbench_segmentation.errors import ArmbenchError
from armbench_segmentation.splits import LABELED_SPLITS

log = logging.getLogger(__name__)



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=LABELED_SPLITS, default="val", help="labeled split to evaluate (default: val)")
    parser.add_argument("--predictions", metavar="FILE", type=Path, default=None,
                        help="COCO results JSON (from `armbench predict`); default: run the model first")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    add_settings_arguments(parser)


def load_predictions(path: Path) -> Any:
    """Parse a predictions file; ArmbenchError with the position of a JSON syntax error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ArmbenchError(f"predictions file {path} does not exist; write one with "
                            f"`armbench predict --split SPLIT --out {path}`")
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ArmbenchError(f"predictions file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                            f"{exc.msg}); it must be a COCO results list as written by `armbench predict`") from None
    except UnicodeDecodeError:
        raise ArmbenchError(f"predictions file {path} is not UTF-8 JSON text") from None
    except OSError as exc:
        raise ArmbenchError(f"cannot read predictions file {path}: {exc.strerror or exc}; check the path "
                            f"and its permissions") from None


def _predict(settings, split: str) -> list[dict]:
    try:
        from armbench_segmentation.analysis import predict
    except ImportError as exc:  # pragma: no cover - the predict command ships with the package
        raise ArmbenchError(f"cannot run the model ({exc}); run `armbench predict --split {split} --out preds.json` "
                            f"and pass --predictions preds.json") from None
    predict_split = getattr(predict, "predict_split", None)
    if predict_split is None:
        raise ArmbenchError(f"no predictions given: run `armbench predict --split {split} --out preds.json` first, "
                            f"then `armbench evaluate --split {split} --predictions preds.json`")
    log.info("no --predictions: predicting the %s split with %s", split, settings.model.path)
    return predict_split(settings, split)


def _fmt(v: float | None) -> str:
    return "   -  " if v is None else f"{v:6.3f}"


def format_report(result, split: str, source: str) -> str:
    """Plain-text tables in the spirit of COCOeval's summary and ``yolo val``."""
    d = result
    keys = ("AP", "AP50", "AP75", "AR100")
    lines = [f"evaluate {split}: {d.num_images} images, {d.num_predictions} predictions ({source})", ""]
    head = f"{'class':<12}" + "".join(f"{'segm ' + k:>11}" for k in keys) + "".join(f"{'box ' + k:>11}" for k in keys)
    lines += [head, "-" * len(head)]
    names = list(d.segm.per_class)
    for name in names + ["all"]:
        seg = d.segm.mean if name == "all" else d.segm.per_class[name]
        box = d.bbox.mean if name == "all" else d.bbox.per_class[name]
        label = "all (mean)" if name == "all" else f"{name}"
        n = "" if name == "all" else f" ({d.segm.num_gt[name]})"
        lines.append(f"{(label + n):<12}" + "".join(f"{_fmt(seg[k]):>11}" for k in keys)
                     + "".join(f"{_fmt(box[k]):>11}" for k in keys))
    lines += [
        "",
        f"{d.match_class} @ IoU {d.match_iou:.2f} (every prediction): TP {d.tp}  FP {d.fp}  FN {d.fn}  "
        f"precision {d.precision:.3f}  recall {d.recall:.3f}  F1 {d.f1:.3f}",
        f"over-segmented {d.match_class.lower()}s: {d.over_segmented_instances} in {d.over_segmented_images} images "
        f"(legacy rule, duplicates not collapsed: {d.over_segmented_instances_legacy}; duplicate predictions: "
        f"{d.duplicate_predictions})",
        f"under-segmenting predictions: {d.under_segmented_instances} in {d.under_segmented_images} images",
    ]
    if d.segm.truncated:
        lines.append(f"note: {d.segm.truncated} detections beyond 100 per image and class were left out of AP (COCO rule)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from armbench_segmentation.metrics.evaluation import evaluate_coco_results, validate_results

    settings = settings_from_args(args)
    dataset = open_dataset(settings)
    split = args.split
    coco = dataset.coco(split)
    dataset.category_map(split)  # DatasetError when a configured class has no category
    samples = dataset.samples(split)
    t0 = time.perf_counter()
    if args.predictions is not None:
        raw = load_predictions(args.predictions)
        source = str(args.predictions)
    else:
        raw = _predict(settings, split)
        source = f"predicted with {Path(settings.model.path).name}"
    images = {int(i): (int(im["height"]), int(im["width"])) for i, im in coco.imgs.items()}
    results = validate_results(raw, images, coco.getCatIds())
    selected = {s.image_id for s in samples}
    outside = sum(1 for r in results if r["image_id"] not in selected)
    if outside:
        log.warning("%d predictions are for %s images outside the %d selected ones (data.%s_size); they are not "
                    "evaluated: pass --%s-size all to evaluate the whole file", outside, split, len(selected), split, split)
    if results and outside == len(results):
        raise ArmbenchError(f"none of the {len(results)} predictions is for the {len(selected)} selected {split} images; "
                            f"were they made with another --{split}-size or on another split?")
    result = evaluate_coco_results(coco, [r for r in results if r["image_id"] in selected],
                                   settings.data.class_names, settings.metrics, image_ids=sorted(selected))
    log.debug("evaluated in %.2fs", time.perf_counter() - t0)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(format_report(result, split, source))
    return 0

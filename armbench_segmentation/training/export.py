"""ONNX export of a yolov5s-seg SegmentationModel in the layout the project reads, with a check.

Dynamic export (default), opset 17, legacy TorchScript exporter:
    input   images     [N, 3, H, W] float32 RGB 0..1 (letterboxed, H and W multiples of 32)
    output0            [N, A, 5 + nc + 32]  cx, cy, w, h (input pixels), obj and class scores
                                             sigmoided, 32 raw mask coefficients; A = 3 * sum(H/s * W/s), s in 8/16/32
    output1            [N, 32, H/4, W/4]     mask prototypes
    embedding          [N, 512]              global-average-pooled SPPF output (model.9, the end of the backbone)
``static``: 1x3x640x640, outputs output0/output1 only (what a stock YOLOv5-seg export looks like).

Conv+BN are fused as in YOLOv5's export (a model already fused stays as it is), so the
initializers are named after the fused state dict, which is what ``model.load_onnx_base``
reads back. The file carries metadata ``names`` / ``stride`` like stock exports, plus
``embedding_layer``. :func:`verify` compares onnxruntime with torch.
"""

from __future__ import annotations

import json
import logging
import warnings
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from armbench_segmentation.codecs import atomic_path
from armbench_segmentation.training.model import EMBED_LAYER, _quiet_yolov5

LOG = logging.getLogger(__name__)
OPSET = 17


class ExportModel(nn.Module):
    """Runs the YOLOv5 layer graph; returns (output0, protos[, embedding])."""

    def __init__(self, model: nn.Module, embedding: bool):
        super().__init__()
        self.model = model.model  # nn.Sequential of yolov5 layers
        self.save = set(model.save) | {EMBED_LAYER}
        self.embedding = embedding

    def forward(self, x):
        y = []
        emb = None
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            if m.i == EMBED_LAYER:
                emb = x.mean(dim=(2, 3))  # (N, 512) global average pool
            y.append(x if m.i in self.save else None)
        det, proto = x  # Segment head in export mode: (cat(z, 1), protos)
        return (det, proto, emb) if self.embedding else (det, proto)


def prepare(model: nn.Module, dynamic: bool = True, embedding: bool = True) -> ExportModel:
    """A fused, eval-mode, export-mode copy of ``model`` wrapped in :class:`ExportModel`."""
    from yolov5.models.yolo import Detect

    model = deepcopy(model).float().cpu().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with _quiet_yolov5(), torch.no_grad():
        model.fuse()  # no-op for layers already fused
    for m in model.modules():
        if isinstance(m, Detect):
            m.inplace = False
            m.dynamic = dynamic  # rebuild the anchor grid from the runtime shape
            m.export = True
    return ExportModel(model, embedding).eval()


def _shape(v) -> list:
    return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]


def export(model: nn.Module, out: str | Path, static: bool = False, check: bool = True, check_size: int = 640,
           description: str = "YOLOv5s-seg fine-tuned with armbench finetune (see the model card beside it)") -> dict:
    """Write ``model`` to ``out`` (atomically) and, with ``check``, compare onnxruntime with torch."""
    import onnx

    names = list(getattr(model, "names", ["Object", "Tote"]))
    dynamic = not static
    em = prepare(model, dynamic=dynamic, embedding=dynamic)
    x = torch.zeros(1, 3, 640, 640)
    with torch.no_grad():
        em(x)  # build grids
    output_names = ["output0", "output1"] + (["embedding"] if dynamic else [])
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {
            "images": {0: "batch", 2: "height", 3: "width"},
            "output0": {0: "batch", 1: "anchors"},
            "output1": {0: "batch", 2: "mask_height", 3: "mask_width"},
            "embedding": {0: "batch"},
        }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(opset_version=OPSET, do_constant_folding=True, input_names=["images"], output_names=output_names,
                  dynamic_axes=dynamic_axes)
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(em, x, str(tmp), dynamo=False, **kwargs)
            except TypeError:  # torch without the dynamo switch
                torch.onnx.export(em, x, str(tmp), **kwargs)
        m = onnx.load(str(tmp))
        # the legacy exporter leaves the width of output0 symbolic with dynamic axes: pin it
        no = 5 + len(names) + model.model[-1].nm
        d = m.graph.output[0].type.tensor_type.shape.dim[2]
        d.ClearField("dim_param")
        d.dim_value = no
        onnx.checker.check_model(m)
        meta = {"names": str({i: n for i, n in enumerate(names)}), "stride": "32", "task": "segment",
                "description": description, "license": "AGPL-3.0"}
        if dynamic:
            meta["embedding_layer"] = f"GlobalAveragePool(model.{EMBED_LAYER} SPPF output, 512 ch, stride 32)"
        for k, v in meta.items():
            p = m.metadata_props.add()
            p.key, p.value = k, v
        onnx.save(m, str(tmp))
        if check:
            check_report = verify(em, tmp, dynamic, size=check_size)
    info = {
        "path": str(out), "bytes": out.stat().st_size, "opset": OPSET, "dynamic": dynamic,
        "inputs": [(i.name, _shape(i)) for i in m.graph.input],
        "outputs": [(o.name, _shape(o)) for o in m.graph.output],
    }
    if check:
        info["check"] = check_report
    LOG.info("exported %s (%.1f MB): %s -> %s", out, info["bytes"] / 1e6, info["inputs"], info["outputs"])
    return info


def onnx_outputs(path: str | Path, x: np.ndarray) -> list[np.ndarray]:
    """onnxruntime (CPU) outputs of the model at ``path`` for the batch ``x`` (N, 3, H, W) float32."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": x}), [o.name for o in sess.get_outputs()]


def compare_outputs(em: ExportModel, path: str | Path, shapes, atol: float = 1e-4, seed: int = 0) -> dict:
    """Max differences between torch (``em``) and onnxruntime (``path``) on random inputs of ``shapes``.

    Box coordinates are in pixels (up to ~640), where float32 resolution is ~6e-5, so box
    columns are compared relative to their magnitude (|d| <= atol * max(1, |x|)).
    Raises RuntimeError when a shape differs or a scaled difference exceeds ``atol``.
    """
    rng = np.random.default_rng(seed)
    report = {}
    for n, h, w in shapes:
        x = rng.random((n, 3, h, w), dtype=np.float32)
        with torch.no_grad():
            ref = [t.numpy() for t in em(torch.from_numpy(x))]
        got, names = onnx_outputs(path, x)
        worst = 0.0
        for name, r, g in zip(names, ref, got):
            if r.shape != g.shape:
                raise RuntimeError(f"{name}: onnxruntime shape {g.shape} != torch {r.shape} for input {(n, 3, h, w)}")
            scale = np.ones_like(r)
            if name == "output0":
                scale[..., :4] = np.maximum(1.0, np.abs(r[..., :4]))
            diff = float((np.abs(r - g) / scale).max())
            worst = max(worst, diff)
            report[f"{name}@{n}x{h}x{w}"] = {"shape": list(g.shape), "max_abs_diff": float(np.abs(r - g).max()),
                                             "max_scaled_diff": diff}
        if worst > atol:
            raise RuntimeError(f"onnxruntime and torch differ by {worst:.2e} > {atol} at input {(n, 3, h, w)}: {report}")
    return report


def verify(em: ExportModel, path: str | Path, dynamic: bool, atol: float = 1e-4, size: int = 640) -> dict:
    """The export check: size x size, a non-square 3/4 size x size and batch 2 (dynamic); 1x640x640 (static)."""
    short = max(32, (size * 3 // 4) // 32 * 32)
    shapes = [(1, size, size), (1, short, size), (2, size, size)] if dynamic else [(1, 640, 640)]
    report = compare_outputs(em, path, shapes, atol)
    LOG.info("onnxruntime check passed: %s", json.dumps({k: (v["shape"], f"{v['max_abs_diff']:.1e}") for k, v in report.items()}))
    return report

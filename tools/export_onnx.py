"""Export fine-tuned YOLOv5s-seg weights to ONNX in the standard YOLOv5-seg layout (+ embedding).

    tools/.venv/bin/python tools/export_onnx.py --weights tools/work/run/final_weights.pt \
        --out models/armbench-yolov5s-seg.onnx [--static]

Dynamic export (default), opset 17, legacy TorchScript exporter:
    input   images     [N, 3, H, W] float32 RGB 0..1 (letterboxed, H and W multiples of 32)
    output0            [N, A, 5 + nc + 32]  cx, cy, w, h (input pixels), obj and class scores
                                             sigmoided, 32 raw mask coefficients; A = 3 * sum(H/s * W/s), s in 8/16/32
    output1            [N, 32, H/4, W/4]     mask prototypes
    embedding          [N, 512]              global-average-pooled SPPF output (model.9, the end of the backbone)
``--static``: 1x3x640x640, outputs output0/output1 only (what a stock YOLOv5-seg export looks like).

Conv+BN are fused as in YOLOv5's export. The file carries metadata ``names`` / ``stride`` like
stock exports, plus ``embedding_layer``. The export is checked against the torch model with
onnxruntime (640x640, 480x640 and batch 2 for dynamic exports).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from copy import deepcopy
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import torch  # noqa: E402
from torch import nn  # noqa: E402

LOG = logging.getLogger("export_onnx")
EMBED_LAYER = 9  # SPPF, last backbone layer of yolov5s-seg (512 channels, stride 32)
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


def load_finetuned(weights: Path):
    """SegmentationModel (nc from the weights' class names) with the fine-tuned state dict."""
    from finetune import build_model

    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    names = state.get("class_names", ["Object", "Tote"])
    model = build_model(nc=len(names))
    model.load_state_dict(state["model"])
    model.names = list(names)
    return model.float().eval()


def prepare(model: nn.Module, dynamic: bool, embedding: bool) -> ExportModel:
    from yolov5.models.yolo import Detect

    from yolov5.utils.general import LOGGER as YLOG

    model = deepcopy(model).float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    level = YLOG.level
    YLOG.setLevel(logging.WARNING)
    try:
        with torch.no_grad():
            model.fuse()
    finally:
        YLOG.setLevel(level)
    for m in model.modules():
        if isinstance(m, Detect):
            m.inplace = False
            m.dynamic = dynamic  # rebuild the anchor grid from the runtime shape
            m.export = True
    return ExportModel(model, embedding).eval()


def export(weights: Path, out: Path, static: bool = False, check: bool = True, model: nn.Module | None = None) -> dict:
    import onnx

    model = model if model is not None else load_finetuned(Path(weights))
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
    tmp = out.with_suffix(".tmp.onnx")
    kwargs = dict(
        opset_version=OPSET, do_constant_folding=True, input_names=["images"], output_names=output_names,
        dynamic_axes=dynamic_axes,
    )
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
    meta = {
        "names": str({i: n for i, n in enumerate(names)}),
        "stride": "32",
        "task": "segment",
        "description": "YOLOv5s-seg fine-tuned on synthetic ARMBench-like totes (Object, Tote); see models/MODEL_CARD.md",
        "license": "AGPL-3.0",
    }
    if dynamic:
        meta["embedding_layer"] = f"GlobalAveragePool(model.{EMBED_LAYER} SPPF output, 512 ch, stride 32)"
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(tmp))
    tmp.replace(out)
    info = {
        "path": str(out),
        "bytes": out.stat().st_size,
        "opset": OPSET,
        "dynamic": dynamic,
        "inputs": [(i.name, _shape(i)) for i in m.graph.input],
        "outputs": [(o.name, _shape(o)) for o in m.graph.output],
    }
    LOG.info("exported %s (%.1f MB): %s -> %s", out, info["bytes"] / 1e6, info["inputs"], info["outputs"])
    if check:
        info["check"] = verify(em, out, dynamic)
    return info


def _shape(v) -> list:
    return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]


def verify(em: ExportModel, path: Path, dynamic: bool, atol: float = 1e-4) -> dict:
    """Compare onnxruntime against torch; raise if any output differs by more than ``atol``.

    Box coordinates are in pixels (up to ~640), where float32 resolution is ~6e-5, so box
    columns are compared relative to their magnitude (|d| <= atol * max(1, |x|)).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    shapes = [(1, 640, 640), (1, 480, 640), (2, 640, 640)] if dynamic else [(1, 640, 640)]
    rng = np.random.default_rng(0)
    report = {}
    for n, h, w in shapes:
        x = rng.random((n, 3, h, w), dtype=np.float32)
        with torch.no_grad():
            ref = [t.numpy() for t in em(torch.from_numpy(x))]
        got = sess.run(None, {"images": x})
        worst = 0.0
        for name, r, g in zip([o.name for o in sess.get_outputs()], ref, got):
            if r.shape != g.shape:
                raise RuntimeError(f"{name}: onnxruntime shape {g.shape} != torch {r.shape} for input {(n, 3, h, w)}")
            scale = np.ones_like(r)
            if name == "output0":
                scale[..., :4] = np.maximum(1.0, np.abs(r[..., :4]))
            d = float((np.abs(r - g) / scale).max())
            worst = max(worst, d)
            report[f"{name}@{n}x{h}x{w}"] = {"shape": list(g.shape), "max_abs_diff": float(np.abs(r - g).max()), "max_scaled_diff": d}
        if worst > atol:
            raise RuntimeError(f"onnxruntime and torch differ by {worst:.2e} > {atol} at input {(n, 3, h, w)}: {report}")
    LOG.info("onnxruntime check passed: %s", json.dumps({k: (v["shape"], f"{v['max_abs_diff']:.1e}") for k, v in report.items()}))
    return report


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(description="Export fine-tuned YOLOv5s-seg weights to ONNX")
    p.add_argument("--weights", required=True, type=Path, help="final_weights.pt or last.pt written by tools/finetune.py")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--static", action="store_true", help="1x3x640x640, output0/output1 only (stock layout, no embedding)")
    p.add_argument("--use-raw", action="store_true", help="with last.pt: export the raw (non-EMA) weights")
    p.add_argument("--no-check", dest="check", action="store_false")
    a = p.parse_args(argv)
    weights = a.weights
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    if "ema" in state:  # a training checkpoint: pick EMA unless asked otherwise
        from finetune import build_model

        model = build_model(nc=len(state.get("class_names", ["Object", "Tote"])))
        model.load_state_dict(state["model"] if a.use_raw or state["ema"] is None else state["ema"])
        model.names = list(state.get("class_names", ["Object", "Tote"]))
        info = export(weights, a.out, static=a.static, check=a.check, model=model.float().eval())
    else:
        info = export(weights, a.out, static=a.static, check=a.check)
    print(json.dumps({k: v for k, v in info.items() if k != "check"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

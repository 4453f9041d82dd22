"""Golden fixtures for ``armbench_segmentation.model.decode``, computed by yolov5 itself.

Runs an ONNX YOLOv5-seg export on a few synthetic totes at 320x320, then yolov5's own
post-processing (``yolov5.utils.general.non_max_suppression(..., nm=32)``,
``yolov5.utils.segment.general.process_mask(..., upsample=True)`` as in
``segment/predict.py``, ``scale_boxes``) and stores, compressed, in
``tests/fixtures/decode_golden.npz``:

* raw outputs per image (``img{k}_det``: the detection rows whose objectness can pass the
  threshold, ``img{k}_protos``), rounded to float16 and back *before* the golden run, so the
  test feeds decode exactly the numbers yolov5 saw;
* golden ``img{k}_boxes`` (model frame), ``img{k}_boxes_orig`` (scale_boxes to the
  original size), ``img{k}_scores``, ``img{k}_classes``, ``img{k}_masks`` (model-frame masks
  as COCO RLE strings), ``img{k}_orig_hw``;
* ``meta`` (JSON): thresholds, model file and sha256, yolov5/torch versions.

Usage (tools venv, from the repository root)::

    tools/.venv/bin/python tools/make_decode_fixtures.py                  # the shipped model
    tools/.venv/bin/python tools/make_decode_fixtures.py --model M.onnx
    tools/.venv/bin/python tools/make_decode_fixtures.py --pretrained-coco --conf 0.05  # no model yet: COCO YOLOv5s-seg (nc=80)
    tools/.venv/bin/python tools/make_decode_fixtures.py --random-init      # random YOLOv5s-seg nc=2 (degenerate: ties)

Original sizes are chosen so that yolov5's float padding and the project's integer
``Letterbox`` agree exactly (scale 0.5, pads of whole pixels).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MODEL = ROOT / "models" / "armbench-yolov5s-seg.onnx"
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "decode_golden.npz"
SIZE = 320
ORIG_SIZES = [(480, 640), (640, 480)]  # (H, W): landscape and portrait, letterbox scale exactly 0.5
SEEDS = [11, 12]
IOU, MAX_DET = 0.45, 300


def export_random_init(path: Path, seed: int = 0) -> None:
    """A random-init YOLOv5s-seg (nc=2) exported like yolov5's export.py (dynamic axes)."""
    import torch
    from yolov5.models.yolo import Detect, SegmentationModel

    import yolov5

    torch.manual_seed(seed)
    cfg = Path(yolov5.__file__).parent / "models" / "segment" / "yolov5s-seg.yaml"
    model = SegmentationModel(str(cfg), ch=3, nc=2).eval()
    for m in model.modules():
        if isinstance(m, Detect):
            m.inplace, m.dynamic, m.export = False, True, True
            with torch.no_grad():  # yolov5 initialises objectness near zero: lift it so detections exist
                for conv in m.m:
                    b = conv.bias.view(m.na, -1)
                    b[:, 4] = 1.0
                    b[:, 5 : 5 + m.nc] = 0.0
    _export(model, path)


def export_pretrained_coco(path: Path) -> None:
    """The COCO-pretrained YOLOv5s-seg (80 classes), loaded through tools/pretrained.py's allow-list."""
    import torch
    from yolov5.models.yolo import Detect

    sys.path.insert(0, str(ROOT / "tools"))
    from pretrained import CHECKPOINT_FILE, fetch_pretrained, load_checkpoint_safely

    ckpt_path = ROOT / "tools" / "work" / CHECKPOINT_FILE
    if not ckpt_path.is_file():
        ckpt_path = fetch_pretrained(ROOT / "tools" / "work")
    model = load_checkpoint_safely(ckpt_path)["model"].float().eval()
    for m in model.modules():
        if isinstance(m, Detect):
            m.inplace, m.dynamic, m.export = False, True, True
    _export(model, path)


def _export(model, path: Path) -> None:
    import torch

    x = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(model, x, str(path), opset_version=17, input_names=["images"], output_names=["output0", "output1"],
                      dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                    "output0": {0: "batch", 1: "anchors"},
                                    "output1": {0: "batch", 2: "mask_height", 3: "mask_width"}},
                      dynamo=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--random-init", action="store_true", help="export and use a random-init YOLOv5s-seg nc=2")
    parser.add_argument("--pretrained-coco", action="store_true",
                        help="export and use the COCO-pretrained YOLOv5s-seg (nc=80; decode derives nc)")
    parser.add_argument("--conf", type=float, default=0.25, help="confidence threshold (0.05 suits the COCO model)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch
    from pycocotools import mask as mask_utils
    from yolov5.utils.general import non_max_suppression, scale_boxes
    from yolov5.utils.segment.general import process_mask

    from armbench_segmentation.data.letterbox import Letterbox
    from armbench_segmentation.data.synth import render_tote

    tmp = tempfile.TemporaryDirectory()
    model_path = args.model
    if args.random_init:
        model_path = Path(tmp.name) / "random-init-yolov5s-seg.onnx"
        export_random_init(model_path)
    elif args.pretrained_coco:
        model_path = Path(tmp.name) / "coco-pretrained-yolov5s-seg.onnx"
        export_pretrained_coco(model_path)
    if not model_path.is_file():
        print(f"model {model_path} not found; pass --model or --random-init", file=sys.stderr)
        return 1
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    outputs = {len(o.shape): o.name for o in session.get_outputs()}
    det_name, proto_name = outputs[3], outputs[4]

    data: dict[str, np.ndarray] = {}
    summary = []
    for k, ((h, w), seed) in enumerate(zip(ORIG_SIZES, SEEDS)):
        image = render_tote(seed, width=w, height=h).image
        lb = Letterbox.compute((h, w), SIZE)
        x = lb.apply_image(image).transpose(2, 0, 1)[None].astype(np.float32) / 255
        det, protos = session.run([det_name, proto_name], {session.get_inputs()[0].name: x})
        det = det[0][det[0][:, 4] > 0.8 * args.conf]  # (K, 5+nc+nm); rows below can never pass: not stored
        det = det.astype(np.float16).astype(np.float32)
        protos = protos[0].astype(np.float16).astype(np.float32)  # (nm, h, w)
        nm = protos.shape[0]
        out = non_max_suppression(torch.from_numpy(det[None].copy()), args.conf, IOU, max_det=MAX_DET, nm=nm)[0]
        if len(out):
            masks = process_mask(torch.from_numpy(protos), out[:, 6:], out[:, :4], (SIZE, SIZE), upsample=True)  # (n, H, W)
        else:
            masks = torch.zeros((0, SIZE, SIZE), dtype=torch.bool)
        boxes = out[:, :4].clone()
        boxes_orig = scale_boxes((SIZE, SIZE), out[:, :4].clone(), (h, w))
        rles = [mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))["counts"].decode("ascii") for m in masks]
        data[f"img{k}_det"] = det.astype(np.float16)
        data[f"img{k}_protos"] = protos.astype(np.float16)
        data[f"img{k}_orig_hw"] = np.array([h, w], np.int64)
        data[f"img{k}_boxes"] = boxes.numpy().astype(np.float32)
        data[f"img{k}_boxes_orig"] = boxes_orig.numpy().astype(np.float32)
        data[f"img{k}_scores"] = out[:, 4].numpy().astype(np.float32)
        data[f"img{k}_classes"] = out[:, 5].numpy().astype(np.int64)
        data[f"img{k}_masks"] = np.array(rles, dtype=np.str_) if rles else np.zeros(0, dtype="<U1")
        summary.append({"orig_hw": [h, w], "candidates": int(len(det)), "kept": int(len(out)),
                        "classes": {int(c): int(n) for c, n in zip(*np.unique(out[:, 5].long().numpy(), return_counts=True))}})

    import yolov5

    meta = {
        "input_size": SIZE, "conf_threshold": args.conf, "iou_threshold": IOU, "max_detections": MAX_DET, "mask_threshold": 0.5,
        "images": len(ORIG_SIZES), "model": model_path.name,
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "yolov5": getattr(yolov5, "__version__", "?"), "torch": torch.__version__, "summary": summary,
        "generated_by": "tools/make_decode_fixtures.py",
    }
    data["meta"] = np.array(json.dumps(meta))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **data)
    print(json.dumps(meta, indent=1))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

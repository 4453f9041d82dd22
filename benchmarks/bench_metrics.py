"""Per-sample cost of the metric set at 640x640, next to a per-pair loop and the model.

    .venv/bin/python benchmarks/bench_metrics.py [--repeats 7] [--densities 10 15 50 150]

For each density (instances per image) a synthetic tote scene is built: one Tote and N
Object GT masks (ellipses sized to fill the tote), predictions that jitter, split and merge
them plus a few false positives, scores and ``proto_probs`` at 160x160 like
``model.decode``. Timed per sample (median of ``--repeats``):

- ``overlaps``: packing both mask sets + the GT x prediction overlap matrices;
- ``over/under``, ``matching``, ``sample AP``, ``confusion``: given the shared overlaps;
- ``uncertainty``: all prediction-only scores; ``loss``: YOLOv5-seg loss when
  ``metrics.loss`` is importable (on random raw outputs of the 640 export's shapes);
- the legacy way: one ``logical_and(...).sum()`` per (GT, prediction) pair for the same
  intersection/IoU/IoA matrices (measured on up to 2,500 pairs, extrapolated beyond);
- the model: onnxruntime on one 640 input when ``models/armbench-yolov5s-seg.onnx`` exists.

The metrics are timed with numpy's BLAS on one thread (``--blas-threads``, default 1), as
``analysis.runner`` computes them: a multi-threaded OpenBLAS busy-waits after each call and
its CPU time would count here (the loss's matmuls), as it would take the model's cores there.

Prints ratios; nothing is asserted (see CONTRIBUTING: benchmarks are not tests).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from armbench_segmentation.config import MetricsConfig  # noqa: E402
from armbench_segmentation.metrics.matching import confusion_elements, match, sample_ap  # noqa: E402
from armbench_segmentation.metrics.overlap import mask_overlaps, pack_masks  # noqa: E402
from armbench_segmentation.metrics.segmentation import segmentation_errors  # noqa: E402
from armbench_segmentation.metrics.uncertainty import uncertainty_scores  # noqa: E402
from armbench_segmentation.structures import Instances, masks_to_boxes  # noqa: E402

SIZE = 640
CLASS_NAMES = ("Object", "Tote")
MODEL = ROOT / "models" / "armbench-yolov5s-seg.onnx"
INFERENCE_REFERENCE_MS = 70.0  # docs: ONNX Runtime, 2 CPU threads, 640 input


def ellipse(h, w, cy, cx, ry, rx, angle) -> np.ndarray:
    """(h, w) bool rotated ellipse, drawn only inside its bounding square."""
    m = np.zeros((h, w), bool)
    r = int(max(ry, rx)) + 1
    y0, y1, x0, x1 = max(0, int(cy) - r), min(h, int(cy) + r + 1), max(0, int(cx) - r), min(w, int(cx) + r + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    m[y0:y1, x0:x1] = (u / rx) ** 2 + (v / ry) ** 2 <= 1
    return m


def scene(n: int, rng: np.random.Generator) -> tuple[Instances, Instances]:
    """A tote with n objects and predictions with realistic errors, at 640x640."""
    tote = np.zeros((SIZE, SIZE), bool)
    tote[40:600, 20:620] = True
    radius = np.sqrt(560 * 600 / n / np.pi)  # objects roughly fill the tote
    objs = []
    for _ in range(n):
        cy, cx = rng.uniform(60, 580), rng.uniform(40, 600)
        ry, rx = radius * rng.uniform(0.5, 1.1), radius * rng.uniform(0.5, 1.1)
        objs.append(ellipse(SIZE, SIZE, cy, cx, ry, rx, rng.uniform(0, np.pi)) & tote)
    gt_masks = np.stack([tote] + objs)
    gt = Instances(masks_to_boxes(gt_masks), [1] + [0] * n, (SIZE, SIZE), masks=gt_masks)

    preds, classes = [np.roll(tote, (3, -2), axis=(0, 1))], [1]
    i = 0
    while i < n:
        m = objs[i]
        r = rng.random()
        if r < 0.1 and i + 1 < n:  # merge with the next object
            preds.append(m | objs[i + 1])
            i += 2
            continue
        if r < 0.2:  # split in two halves
            ys, xs = np.nonzero(m)
            if len(xs):
                mid = int(np.median(xs))
                left = m.copy()
                left[:, mid:] = False
                preds += [left, m & ~left]
                classes += [0, 0]
            i += 1
            continue
        if r < 0.25:  # missed
            i += 1
            continue
        preds.append(np.roll(m, tuple(rng.integers(-4, 5, 2)), axis=(0, 1)))
        classes.append(0)
        if r > 0.95:  # NMS-missed duplicate
            preds.append(np.roll(m, (1, 0), axis=(0, 1)))
            classes.append(0)
        i += 1
    for _ in range(max(1, n // 10)):  # false positives
        preds.append(ellipse(SIZE, SIZE, rng.uniform(60, 580), rng.uniform(40, 600), 15, 25, 0.0))
        classes.append(0)
    classes = classes[: len(preds)] + [0] * (len(preds) - len(classes))
    pm = np.stack(preds)
    boxes = masks_to_boxes(pm)
    # proto_probs like model.decode: (N, 160, 160) sigmoid values, zero outside the box
    small = pm[:, ::4, ::4].astype(np.float32)
    probs = np.clip(0.1 + 0.8 * small + rng.normal(0, 0.05, small.shape).astype(np.float32), 0, 1)
    yy, xx = np.arange(SIZE // 4), np.arange(SIZE // 4)
    b4 = boxes / 4
    inside = ((yy[None, :, None] >= np.floor(b4[:, 1, None, None])) & (yy[None, :, None] < np.ceil(b4[:, 3, None, None]))
              & (xx[None, None, :] >= np.floor(b4[:, 0, None, None])) & (xx[None, None, :] < np.ceil(b4[:, 2, None, None])))
    probs = np.where(inside, probs, 0).astype(np.float32)
    pred = Instances(boxes, classes, (SIZE, SIZE), masks=pm, scores=rng.uniform(0.25, 1.0, len(pm)),
                     extras={"proto_probs": probs})
    return gt, pred


def legacy_overlaps(gt_masks: np.ndarray, pred_masks: np.ndarray, max_pairs: int) -> tuple[float, int]:
    """Per-pair loop (the legacy project's way); returns (seconds for all pairs, pairs timed)."""
    n, m = len(gt_masks), len(pred_masks)
    pairs = [(i, j) for i in range(n) for j in range(m)]
    timed = pairs[:max_pairs]
    area_g = [g.sum() for g in gt_masks]
    area_p = [p.sum() for p in pred_masks]
    t0 = time.process_time()
    for i, j in timed:
        inter = np.logical_and(gt_masks[i], pred_masks[j]).sum()
        union = area_g[i] + area_p[j] - inter
        _ = inter / union if union else 0.0
        _ = inter / area_g[i] if area_g[i] else 0.0
        _ = inter / area_p[j] if area_p[j] else 0.0
    elapsed = time.process_time() - t0
    return elapsed * len(pairs) / max(1, len(timed)), len(timed)


def time_median(fn, repeats: int, clock=time.process_time) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        runs.append(clock() - t0)
    return statistics.median(runs)


def model_time(repeats: int) -> tuple[float | None, str]:
    if not MODEL.is_file():
        return None, f"{MODEL.relative_to(ROOT)} not found: model inference not timed here"
    import onnxruntime as ort

    opts = ort.SessionOptions()
    session = ort.InferenceSession(str(MODEL), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    t = time_median(lambda: session.run(None, {inp.name: x}), repeats, clock=time.perf_counter)  # multi-threaded
    return t, f"onnxruntime CPU, {MODEL.name}, 1x3x{SIZE}x{SIZE}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--densities", type=int, nargs="+", default=[10, 15, 50, 150])
    ap.add_argument("--legacy-pairs", type=int, default=2500, help="pairs timed for the per-pair loop")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="numpy BLAS threads for the metrics (default 1, as analysis.runner; 0 = the library default)")
    args = ap.parse_args(argv)

    try:
        from armbench_segmentation.metrics.loss import yolov5_seg_loss
    except ImportError as exc:
        yolov5_seg_loss = None
        print(f"loss: metrics.loss not importable ({exc}); left out")
    infer_s, infer_note = model_time(args.repeats)
    infer_ms = infer_s * 1e3 if infer_s is not None else None
    print(f"model: {infer_note}" + (f": {infer_ms:.1f} ms" if infer_ms else
                                     f"; the reference is ~{INFERENCE_REFERENCE_MS:.0f} ms (docs, 2 CPU threads)"))
    budget_ref = infer_ms or INFERENCE_REFERENCE_MS
    if args.blas_threads > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.blas_threads, user_api="blas")  # after the model: ORT keeps its own threads
    print(f"metrics with numpy BLAS on {args.blas_threads or 'default'} thread(s)")
    cfg = MetricsConfig()
    rng = np.random.default_rng(0)
    raw_det = rng.random((25200, 5 + 2 + 32), dtype=np.float32)
    raw_det[:, :4] *= SIZE
    raw_proto = rng.normal(0, 1, (32, SIZE // 4, SIZE // 4)).astype(np.float32)

    header = (f"{'N':>4} {'GT x pred':>10} {'overlaps':>9} {'over/und':>9} {'match':>7} {'AP':>7} {'confus':>7} "
              f"{'uncert':>7} {'TOTAL':>7} {'wall':>7} {'loss':>7} {'% model':>8} {'+loss %':>8} {'legacy loop':>12} {'speed-up':>9}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nper-sample milliseconds at {SIZE}x{SIZE}, median of {args.repeats} runs of the whole set, CPU time of this "
          f"process ({os.cpu_count()} cores, load average {load:.1f}); 'wall' = wall-clock TOTAL")
    print(header)
    print("-" * len(header))
    for n in args.densities:
        gt, pred = scene(n, rng)

        def one_sample() -> dict[str, float]:
            """The full set in pipeline order, timing each part (cold caches, as in a run).
            CPU time of this process (immune to other processes taking the cores), plus the
            wall time of the whole set."""
            clock = time.process_time
            wall0 = time.perf_counter()
            t = [clock()]
            pg, pp = pack_masks(gt.masks), pack_masks(pred.masks)
            ov = mask_overlaps(pg, pp)  # (G, P), shared by everything below
            t.append(clock())
            segmentation_errors(gt, pred, cfg, CLASS_NAMES, overlaps=ov, packed_gt=pg, packed_pred=pp)
            t.append(clock())
            match(gt, pred, cfg.match_iou, overlaps=ov)
            t.append(clock())
            sample_ap(gt, pred, overlaps=ov)
            t.append(clock())
            confusion_elements(gt, pred, CLASS_NAMES, overlaps=ov)
            t.append(clock())
            uncertainty_scores(pred, cfg)
            t.append(clock())
            wall = time.perf_counter() - wall0
            names = ("overlaps", "over/under", "match", "AP", "confusion", "uncertainty")
            out = {k: (b - a) * 1e3 for k, a, b in zip(names, t[:-1], t[1:])}
            out["total"] = (t[-1] - t[0]) * 1e3
            out["wall"] = wall * 1e3
            return out

        one_sample()  # warm-up
        runs = [one_sample() for _ in range(args.repeats)]
        ms = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        wall = ms["wall"]
        loss_ms = None
        if yolov5_seg_loss is not None:
            try:
                loss_ms = time_median(lambda: yolov5_seg_loss(raw_det, raw_proto, gt, (SIZE, SIZE)),
                                      max(1, args.repeats // 2)) * 1e3
            except Exception as exc:  # a colleague's module: report, do not stop the benchmark
                print(f"loss failed at N={n}: {type(exc).__name__}: {exc}")
        legacy_s, timed = legacy_overlaps(gt.masks, pred.masks, args.legacy_pairs)
        legacy_ms = legacy_s * 1e3
        pairs = len(gt) * len(pred)
        extrap = "" if timed == pairs else "*"
        loss_txt = f"{loss_ms:7.1f}" if loss_ms is not None else f"{'-':>7}"
        with_loss = f"{100 * (ms['total'] + loss_ms) / budget_ref:7.1f}%" if loss_ms is not None else f"{'-':>8}"
        print(f"{n:>4} {f'{len(gt)}x{len(pred)}':>10} {ms['overlaps']:9.2f} {ms['over/under']:9.2f} {ms['match']:7.2f} "
              f"{ms['AP']:7.2f} {ms['confusion']:7.2f} {ms['uncertainty']:7.2f} {ms['total']:7.2f} {wall:7.2f} {loss_txt} "
              f"{100 * ms['total'] / budget_ref:7.1f}% {with_loss} {legacy_ms:11.0f}{extrap} {legacy_ms / ms['overlaps']:8.0f}x")
    print("\noverlaps = packing both mask sets + the GT x prediction matrices; TOTAL = the whole set without the loss;")
    print("CPU time excludes time other processes hold the cores; on an idle machine wall time equals it")
    print(f"'% model' = TOTAL / model inference ({budget_ref:.0f} ms); the loss (metrics.loss) is listed apart, "
          f"'+loss %' = (TOTAL + loss) / model inference;")
    print("legacy loop = per-pair logical_and().sum() for the same GT x prediction matrices; speed-up = legacy / overlaps")
    print(f"(* extrapolated from {args.legacy_pairs} timed pairs: the per-pair cost is constant at full resolution)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

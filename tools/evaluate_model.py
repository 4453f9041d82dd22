"""COCO evaluation of a YOLOv5-seg ONNX model on an ARMBench-layout split (pycocotools COCOeval).

    tools/.venv/bin/python tools/evaluate_model.py --model models/armbench-yolov5s-seg.onnx \
        --data DIR [--split-json val.json] [--json-out FILE]

Self-contained (onnxruntime + numpy), independent of the runtime package:
- images decoded at 1/2 size (cv2.IMREAD_REDUCED_COLOR_2), letterboxed to 640 (INTER_AREA,
  gray 114, RGB, /255);
- decode: obj > conf, conf = obj * best class score > conf, class-aware greedy NMS (IoU 0.45),
  at most 300 detections; mask = sigmoid(coeffs @ protos) > 0.5, sampled bilinearly from the
  prototype grid straight into the original-resolution box (box-local) and cropped to the box;
- boxes and masks are mapped back to the original resolution (exact inverse letterbox) and
  masks RLE-encoded there; COCOeval ``segm`` and ``bbox``, all classes and per class;
- over/under-segmentation at the deployment threshold (conf 0.25) with intersection over
  area 0.8 (the project's definition): an image has over-segmentation when a ground-truth
  Object is covered by >= 2 predictions that each lie >= 80 % inside it, under-segmentation
  when one prediction holds >= 2 ground-truth Objects that each lie >= 80 % inside it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root
from armbench_segmentation.data.letterbox import Letterbox  # noqa: E402

LOG = logging.getLogger("evaluate_model")
CLASS_NAMES = ("Object", "Tote")
PAD = 114
MAX_WH = 7680


def letterbox_params(h: int, w: int, size: int) -> tuple[float, float, int, int, int, int]:
    """(scale_x, scale_y, new_w, new_h, pad_x, pad_y): the project's own Letterbox (YOLOv5 rule)."""
    lb = Letterbox.compute((h, w), size)
    return lb.scale_x, lb.scale_y, lb.new_w, lb.new_h, lb.pad_x, lb.pad_y


def load_input(path: Path, h: int, w: int, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB letterboxed model input."""
    flag = cv2.IMREAD_REDUCED_COLOR_2 if max(h, w) / 2 >= size else cv2.IMREAD_COLOR
    img = cv2.imread(str(path), flag)
    if img is None:
        raise FileNotFoundError(path)
    _, _, nw, nh, px, py = letterbox_params(h, w, size)
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if img.shape[0] > nh else cv2.INTER_LINEAR)
    out = np.full((size, size, 3), PAD, np.uint8)
    out[py : py + nh, px : px + nw] = img[..., ::-1]
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    keep, rest = [], np.arange(len(order))
    while rest.size:
        i, rest = rest[0], rest[1:]
        keep.append(i)
        if not rest.size:
            break
        iw = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        ih = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = iw * ih
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        rest = rest[iou <= thr]
    return order[np.asarray(keep, np.int64)]


def select(det: np.ndarray, nc: int, conf_thr: float, iou_thr: float, max_det: int):
    """det (A, 5+nc+nm) -> boxes xyxy (K,4), scores (K,), classes (K,), coeffs (K,nm), model frame."""
    x = det[det[:, 4] > conf_thr]
    cls = x[:, 5 : 5 + nc] * x[:, 4:5]
    j = cls.argmax(1) if len(x) else np.zeros(0, np.int64)
    conf = cls[np.arange(len(x)), j]
    good = conf > conf_thr
    x, j, conf = x[good], j[good], conf[good]
    order = np.argsort(-conf, kind="stable")[:30000]
    x, j, conf = x[order], j[order], conf[order]
    boxes = np.concatenate([x[:, :2] - x[:, 2:4] / 2, x[:, :2] + x[:, 2:4] / 2], 1)
    keep = nms(boxes + (j * MAX_WH)[:, None].astype(np.float32), conf, iou_thr)[:max_det]
    return boxes[keep], conf[keep], j[keep], x[keep, 5 + nc :]


def roi_rle(roi: np.ndarray, x0: int, y0: int, H: int, W: int) -> dict:
    """COCO RLE of an (H, W) image that is zero except ``roi`` (h, w) bool placed at (y0, x0)."""
    from pycocotools import mask as mu

    h, w = roi.shape
    padded = np.zeros((h + 2, w), np.int8)
    padded[1:-1] = roi
    d = np.diff(padded, axis=0).T  # (w, h+1): column-major scan order
    cs, rs = np.nonzero(d == 1)
    ce, re_ = np.nonzero(d == -1)
    starts = (x0 + cs) * H + y0 + rs
    ends = (x0 + ce) * H + y0 + re_
    if len(starts) == 0:
        counts = [H * W]
    else:
        # merge runs that continue across a column boundary (end == next start)
        b = np.empty(2 * len(starts), np.int64)
        b[0::2], b[1::2] = starts, ends
        dup = np.nonzero(b[1:-1:2] == b[2::2])[0]
        if len(dup):
            b = np.delete(b, np.concatenate([2 * dup + 1, 2 * dup + 2]))
        edges = np.concatenate([[0], b, [H * W]])
        counts = np.diff(edges).tolist()
        if len(counts) > 1 and counts[-1] == 0:  # run reaches the last pixel
            counts.pop()
    rle = mu.frPyObjects({"size": [H, W], "counts": counts}, H, W)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def masks_original(boxes_m, coeffs, protos, lb, H, W, size):
    """Per detection: (x0, y0, roi bool) in original pixels; box xyxy in original pixels."""
    sx, sy, nw, nh, px, py = lb
    nm, ph, pw = protos.shape
    stride_x, stride_y = size / pw, size / ph  # prototype grid step in input pixels (4)
    out = []
    boxes_o = np.empty_like(boxes_m)
    boxes_o[:, [0, 2]] = np.clip((boxes_m[:, [0, 2]] - px) / sx, 0, W)
    boxes_o[:, [1, 3]] = np.clip((boxes_m[:, [1, 3]] - py) / sy, 0, H)
    P = protos.reshape(nm, -1)
    for k in range(len(boxes_m)):
        bx0, by0, bx1, by1 = boxes_o[k]
        x0, y0 = int(np.floor(bx0)), int(np.floor(by0))
        x1, y1 = int(np.ceil(bx1)), int(np.ceil(by1))
        if x1 <= x0 or y1 <= y0:
            out.append((x0, y0, np.zeros((0, 0), bool)))
            continue
        logit = (coeffs[k] @ P).reshape(ph, pw).astype(np.float32)
        # original pixel index X -> model coordinate (X + 0.5) * sx + px -> proto index that / s - 0.5
        M = np.array([[sx / stride_x, 0, ((x0 + 0.5) * sx + px) / stride_x - 0.5],
                      [0, sy / stride_y, ((y0 + 0.5) * sy + py) / stride_y - 0.5]], np.float64)
        roi = cv2.warpAffine(logit, M, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        m = roi > 0  # sigmoid > 0.5
        # crop to the box: pixel centres inside [bx0, bx1) x [by0, by1)
        xs = np.arange(x0, x1) + 0.5
        ys = np.arange(y0, y1) + 0.5
        m &= ((ys >= by0) & (ys < by1))[:, None] & ((xs >= bx0) & (xs < bx1))[None, :]
        out.append((x0, y0, m))
    return boxes_o, out


def evaluate(model_path: Path, data: Path, split_json: str = "val.json", conf: float = 0.001, iou: float = 0.45,
             max_det: int = 300, deploy_conf: float = 0.25, size: int = 640, limit: int | None = None,
             threads: int = 2) -> dict:
    import onnxruntime as ort
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = Path(data)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data / split_json))
    cats = gt.loadCats(gt.getCatIds())
    name_to_cid = {c["name"].strip().lower(): int(c["id"]) for c in cats}
    cid_of_class = [name_to_cid[n.lower()] for n in CLASS_NAMES]
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    img_ids = sorted(gt.getImgIds())[:limit]
    results = []
    seg_stats = {"images": 0, "over": 0, "under": 0, "over_images": [], "under_images": []}
    t0 = time.perf_counter()
    t_inf = 0.0
    for n, iid in enumerate(img_ids):
        info = gt.loadImgs(iid)[0]
        H, W = int(info["height"]), int(info["width"])
        lb = letterbox_params(H, W, size)
        x = load_input(data / "images" / info["file_name"], H, W, size)
        ti = time.perf_counter()
        outs = sess.run(None, {"images": (x.transpose(2, 0, 1)[None].astype(np.float32) / 255)})
        t_inf += time.perf_counter() - ti
        det, protos = outs[out_names.index("output0")][0], outs[out_names.index("output1")][0]
        nc = det.shape[1] - 5 - protos.shape[0]
        if nc != len(CLASS_NAMES):
            raise ValueError(f"model has {nc} classes, expected {len(CLASS_NAMES)} {CLASS_NAMES}")
        boxes, scores, classes, coeffs = select(det, nc, conf, iou, max_det)
        boxes_o, rois = masks_original(boxes, coeffs, protos, lb, H, W, size)
        for k in range(len(boxes)):
            x0, y0, roi = rois[k]
            if roi.size == 0:
                continue
            bx0, by0, bx1, by1 = boxes_o[k]
            results.append({
                "image_id": iid, "category_id": cid_of_class[int(classes[k])], "score": float(scores[k]),
                "bbox": [float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)],
                "segmentation": roi_rle(roi, x0, y0, H, W),
            })
        # over/under segmentation at the deployment threshold, Object class, original resolution
        dep = [k for k in range(len(boxes)) if scores[k] > deploy_conf and classes[k] == 0 and rois[k][2].size]
        over, under = _over_under(gt, iid, cid_of_class[0], [rois[k] for k in dep], H, W)
        seg_stats["images"] += 1
        if over:
            seg_stats["over"] += 1
            seg_stats["over_images"].append(info["file_name"])
        if under:
            seg_stats["under"] += 1
            seg_stats["under_images"].append(info["file_name"])
        if (n + 1) % 25 == 0:
            LOG.info("evaluated %d/%d images (%.1f s)", n + 1, len(img_ids), time.perf_counter() - t0)
    res = {"model": str(model_path), "data": str(data), "split": split_json, "images": len(img_ids),
           "conf_threshold": conf, "iou_threshold": iou, "max_det": max_det, "input_size": size,
           "detections": len(results), "inference_ms_per_image": round(1000 * t_inf / max(1, len(img_ids)), 1)}
    names = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100"]
    scores_out = {}
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(results)
        for iou_type in ("segm", "bbox"):
            for label, cat_ids in [("all", cid_of_class)] + [(n, [c]) for n, c in zip(CLASS_NAMES, cid_of_class)]:
                ev = COCOeval(gt, dt, iou_type)
                ev.params.imgIds = img_ids
                ev.params.catIds = cat_ids
                with contextlib.redirect_stdout(io.StringIO()):
                    ev.evaluate()
                    ev.accumulate()
                    ev.summarize()
                scores_out.setdefault(iou_type, {})[label] = {k: round(float(v), 4) for k, v in zip(names, ev.stats[:9])}
    res["coco"] = scores_out
    n_img = max(1, seg_stats["images"])
    res["segmentation_errors"] = {
        "deploy_conf": deploy_conf, "ioa_threshold": 0.8,
        "over_fraction": round(seg_stats["over"] / n_img, 4), "under_fraction": round(seg_stats["under"] / n_img, 4),
        "over_images": seg_stats["over_images"], "under_images": seg_stats["under_images"],
    }
    res["summary"] = {
        f"{t}_{c}_{k}": scores_out.get(t, {}).get(c, {}).get(k)
        for t in ("segm", "bbox") for c in CLASS_NAMES for k in ("AP", "AP50", "AP75")
    }
    res["summary"].update({"over_fraction": res["segmentation_errors"]["over_fraction"],
                           "under_fraction": res["segmentation_errors"]["under_fraction"]})
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def _over_under(gt, iid, obj_cid, preds, H, W, ioa=0.8) -> tuple[bool, bool]:
    """preds: list of (x0, y0, roi bool) in original pixels. Computed on a 1/4 grid for speed."""
    anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=iid, catIds=[obj_cid], iscrowd=None)) if not a.get("iscrowd", 0)]
    if not anns or not preds:
        return False, False
    f = 4
    h, w = (H + f - 1) // f, (W + f - 1) // f
    g = np.stack([cv2.resize(gt.annToMask(a), (w, h), interpolation=cv2.INTER_NEAREST) for a in anns]).reshape(len(anns), -1).astype(np.float32)
    pm = np.zeros((len(preds), h, w), np.uint8)
    for k, (x0, y0, roi) in enumerate(preds):
        full = np.zeros((H, W), np.uint8)
        full[y0 : y0 + roi.shape[0], x0 : x0 + roi.shape[1]] = roi[: H - y0, : W - x0]
        pm[k] = cv2.resize(full, (w, h), interpolation=cv2.INTER_NEAREST)
    p = pm.reshape(len(preds), -1).astype(np.float32)
    inter = g @ p.T  # (G, P)
    ga, pa = g.sum(1), p.sum(1)
    p_in_g = np.divide(inter, pa[None, :], out=np.zeros_like(inter), where=pa[None, :] > 0)
    g_in_p = np.divide(inter, ga[:, None], out=np.zeros_like(inter), where=ga[:, None] > 0)
    over = bool(((p_in_g >= ioa).sum(1) >= 2).any())
    under = bool(((g_in_p >= ioa).sum(0) >= 2).any())
    return over, under


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(description="COCOeval (segm + bbox) of a YOLOv5-seg ONNX model")
    p.add_argument("--model", type=Path, default=Path("models/armbench-yolov5s-seg.onnx"))
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split-json", default="val.json")
    p.add_argument("--conf", type=float, default=0.001)
    p.add_argument("--iou", type=float, default=0.45)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--json-out", type=Path, default=None)
    a = p.parse_args(argv)
    res = evaluate(a.model, a.data, a.split_json, conf=a.conf, iou=a.iou, limit=a.limit)
    if a.json_out:
        a.json_out.write_text(json.dumps(res, indent=2))
    print(json.dumps({"summary": res["summary"], "coco": res["coco"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A YOLOv8-seg-layout export through predict, evaluate and analyze, against the YOLOv5 model.

The real-model check: ``yolov8_wrapper`` appends ONNX nodes to the shipped YOLOv5s-seg export
that turn its ``output0`` (N, A, 5 + nc + 32) into Ultralytics' layout (N, 4 + nc + 32, A):
xywh kept, class score = objectness x class score (what yolov5's NMS ranks by), objectness
dropped, channel first; ``output1`` and ``embedding`` untouched. Both models then make the
same candidates with the same scores, so every command must give the same detections
(boxes, scores, classes). Masks are assembled the way each package does (yolov5: sigmoid,
crop at prototype resolution, upsample; ultralytics: upsample logits, threshold, crop at input
resolution) and differ only along edges: per-detection mask IoU and the AP are compared with
tolerances measured here. The loss (YOLOv5-seg, needs objectness and anchors) is empty for
the YOLOv8 layout, with one warning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from armbench_segmentation.config import DEFAULT_MODEL_PATH, ModelConfig

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = Path(DEFAULT_MODEL_PATH)
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not SHIPPED.is_file(), reason=f"shipped model {SHIPPED} absent")]
NAMES = ("Object", "Tote")
SIZES = ("--train-size", "all", "--val-size", "all", "--unlabeled-size", "all")


def yolov8_wrapper(src: Path, dst: Path) -> Path:
    """The YOLOv5-seg export ``src`` with its detections re-laid out as a YOLOv8-seg export."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    det = next(o for o in graph.output if o.name == "output0")
    nc = det.type.tensor_type.shape.dim[2].dim_value - 5 - 32
    inner = "output0_yolov5"
    for node in graph.node:
        node.output[:] = [inner if o == "output0" else o for o in node.output]
        node.input[:] = [inner if i == "output0" else i for i in node.input]

    def const(name, values):
        graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), name))

    const("v8_axes", [2])
    for name, (a, b) in {"xywh": (0, 4), "obj": (4, 5), "cls": (5, 5 + nc), "coef": (5 + nc, 5 + nc + 32)}.items():
        const(f"v8_{name}_start", [a])
        const(f"v8_{name}_end", [b])
        graph.node.append(helper.make_node("Slice", [inner, f"v8_{name}_start", f"v8_{name}_end", "v8_axes"], [f"v8_{name}"]))
    graph.node.extend([
        helper.make_node("Mul", ["v8_cls", "v8_obj"], ["v8_score"]),  # (N, A, nc)
        helper.make_node("Concat", ["v8_xywh", "v8_score", "v8_coef"], ["v8_cat"], axis=2),  # (N, A, 4+nc+32)
        helper.make_node("Transpose", ["v8_cat"], ["output0"], perm=[0, 2, 1]),  # (N, 4+nc+32, A)
    ])
    graph.output.remove(det)
    graph.output.insert(0, helper.make_tensor_value_info("output0", onnx.TensorProto.FLOAT, ["batch", 4 + nc + 32, "anchors"]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from armbench_segmentation.data.synth import generate_dataset

    base = tmp_path_factory.mktemp("yolov8_layout")
    data = base / "totes"
    generate_dataset(data, 2, 3, 1, seed=4242, width=612, height=512, workers=1, progress=False)
    v8 = yolov8_wrapper(SHIPPED, base / "armbench-yolov8-layout.onnx")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMBENCH_")}
    env.update(HOME=str(base / "home"), XDG_CACHE_HOME=str(base / "home" / ".cache"), TL_DISABLE_ANALYTICS="1")
    (base / "home").mkdir()
    return data, base, env, v8


def _armbench(env, cwd, *args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "armbench_segmentation.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out[-4000:]
    return proc


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def test_wrapper_is_read_as_yolov8_and_decodes_to_the_same_detections(setup):
    from armbench_segmentation.data.coco import ArmbenchDataset
    from armbench_segmentation.config import DataConfig
    from armbench_segmentation.model.decode import decode
    from armbench_segmentation.model.layout import HeadLayout
    from armbench_segmentation.model.onnx_model import SegmentationModel

    data, _, _, v8_path = setup
    cfg = ModelConfig(device="cpu", num_threads=2)
    v5, v8 = SegmentationModel(SHIPPED, cfg, NAMES), SegmentationModel(v8_path, cfg, NAMES)
    assert (v5.layout, v8.layout) == (HeadLayout.YOLOV5, HeadLayout.YOLOV8)
    assert v8.num_classes == 2 and v8.has_embedding and v8.model_class_names == NAMES
    dataset = ArmbenchDataset(data, DataConfig(path=data, val_size=None, train_size=None, unlabeled_size=None))
    n, ious = 0, []
    for sample in dataset.samples("val"):
        x = v5.to_input(dataset.load(sample).image[None])
        r5, r8 = v5.run(x), v8.run(x)
        assert r8.detections.shape == (1, 38, r5.detections.shape[1])
        np.testing.assert_array_equal(r8.protos, r5.protos)
        np.testing.assert_array_equal(r8.embedding, r5.embedding)
        hw = x.shape[2:]
        p5 = decode(r5.detections[0], r5.protos[0], hw, ModelConfig(), r5.layout)
        p8 = decode(r8.detections[0], r8.protos[0], hw, ModelConfig(), r8.layout)
        assert len(p5) == len(p8)
        np.testing.assert_array_equal(p8.boxes, p5.boxes)
        np.testing.assert_allclose(p8.scores, p5.scores, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(p8.class_ids, p5.class_ids)
        ious += [_mask_iou(a, b) for a, b in zip(p5.masks, p8.masks)]
        n += len(p5)
    assert n >= 10, n
    assert min(ious) >= 0.85 and np.mean(ious) >= 0.95, (min(ious), np.mean(ious))  # measured: 0.878, 0.961


def test_predict_and_evaluate_match_the_yolov5_model(setup):
    from pycocotools import mask as mask_utils

    data, base, env, v8 = setup
    preds = {}
    for name, model in (("v5", SHIPPED), ("v8", v8)):
        out = base / f"preds_{name}.json"
        _armbench(env, base, "predict", "--dataset", str(data), "--model", str(model), "--split", "val",
                  "--val-size", "all", "--out", str(out))
        preds[name] = json.loads(out.read_text())
    a, b = preds["v5"], preds["v8"]
    assert len(a) == len(b) >= 10
    for ra, rb in zip(a, b):
        assert (ra["image_id"], ra["category_id"]) == (rb["image_id"], rb["category_id"])
        assert ra["score"] == pytest.approx(rb["score"], abs=1e-5)
        np.testing.assert_allclose(ra["bbox"], rb["bbox"], atol=0.02)
        assert mask_utils.iou([ra["segmentation"]], [rb["segmentation"]], [0])[0, 0] >= 0.85
    reports = {}
    for name in ("v5", "v8"):
        proc = _armbench(env, base, "evaluate", "--dataset", str(data), "--split", "val", "--val-size", "all",
                         "--predictions", str(base / f"preds_{name}.json"), "--json")
        reports[name] = json.loads(proc.stdout)
    # the model run by evaluate itself (no --predictions) gives the same report as its predict output
    proc = _armbench(env, base, "evaluate", "--dataset", str(data), "--split", "val", "--val-size", "all",
                     "--model", str(v8), "--json")
    assert json.loads(proc.stdout) == reports["v8"]
    flat5, flat8 = _numbers(reports["v5"]), _numbers(reports["v8"])
    assert flat5.keys() == flat8.keys() and "bbox.mean.AP" in flat5 and "segm.mean.AP" in flat5
    for key in flat5:
        if key.startswith("segm."):  # mask edges differ (see the module docstring); measured: |diff| <= 0.039 (AP75)
            assert flat8[key] == pytest.approx(flat5[key], abs=0.06), key
        else:  # boxes, matching at IoU 0.5, over/under segmentation, counts: identical
            assert flat8[key] == pytest.approx(flat5[key], abs=1e-9), key
    assert flat8["segm.mean.AP"] == pytest.approx(flat5["segm.mean.AP"], abs=0.02)


def _numbers(obj, prefix="") -> dict[str, float]:
    """Every number of a JSON report, by its dotted path."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _numbers(val, f"{prefix}{key}.").items()}
    if isinstance(obj, list):
        return {k: v for i, val in enumerate(obj) for k, v in _numbers(val, f"{prefix}{i}.").items()}
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {prefix.rstrip("."): float(obj)}
    return {}


def test_analyze_matches_the_yolov5_model_and_leaves_the_loss_empty(setup):
    import pandas as pd

    data, base, env, v8 = setup
    tables, logs = {}, {}
    for name, model in (("v5", SHIPPED), ("v8", v8)):
        run = base / f"run_{name}"
        proc = _armbench(env, base, "analyze", "--dataset", str(data), "--model", str(model), "--out", str(run),
                         "--no-progress", *SIZES)
        tables[name] = pd.read_parquet(run / "samples.parquet").sort_values("sample_id").reset_index(drop=True)
        logs[name] = proc.stdout + proc.stderr
    t5, t8 = tables["v5"], tables["v8"]
    assert list(t5["sample_id"]) == list(t8["sample_id"]) and len(t5) == 6
    np.testing.assert_array_equal(t8["n_pred"], t5["n_pred"])
    labeled = t5["split"] != "unlabeled"
    for col in ("tp", "fp", "fn"):
        assert (t8.loc[labeled, col] - t5.loc[labeled, col]).abs().max() <= 1, col
    np.testing.assert_allclose(t8.loc[labeled, "error_rate"], t5.loc[labeled, "error_rate"], atol=0.1)
    assert t8.loc[labeled, "error_rate"].notna().all()
    # the YOLOv5-seg loss: computed for v5, empty for the YOLOv8 layout, with one warning naming why
    loss_cols = [c for c in t5.columns if c == "loss" or c.startswith("yolo_loss_")]
    assert np.isfinite(t5.loc[labeled, loss_cols].to_numpy(float)).all()
    assert t8[loss_cols].isna().all().all()
    assert "loss not computed" not in logs["v5"]
    assert logs["v8"].count("loss not computed") == 1 and "objectness and anchor grid" in logs["v8"]


def test_tensorleap_binder_refuses_the_yolov8_layout_with_the_reason(setup, monkeypatch):
    """The binder declares YOLOv5-seg's prediction types and loss: a YOLOv8 export is refused
    when loaded, saying why and what takes it (the v5 model loads)."""
    import armbench_segmentation.config as config
    from armbench_segmentation.errors import ModelError

    data, base, _, v8 = setup
    monkeypatch.setenv("ARMBENCH_DATASET", str(data))
    monkeypatch.delenv("ARMBENCH_CONFIG", raising=False)
    monkeypatch.setattr(config, "USER_CONFIG_PATH", base / "no-user-config.yaml")
    import leap_binder

    try:
        monkeypatch.setenv("ARMBENCH_MODEL", str(v8))
        leap_binder._settings.cache_clear()
        with pytest.raises(ModelError) as err:
            leap_binder.load_model()
        msg = str(err.value)
        assert "yolov8-layout head" in msg and "(N, A, 5+nc+32)" in msg and "armbench CLI" in msg
        monkeypatch.setenv("ARMBENCH_MODEL", str(SHIPPED))
        leap_binder._settings.cache_clear()
        assert leap_binder.load_model() is not None
    finally:
        leap_binder._settings.cache_clear()

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import argparse

from armbench_segmentation.commands import predict
from armbench_segmentation.errors import ModelError
from armbench_segmentation.data.letterbox import Letterbox

SIZE = 64
NM = 32
BOX = (8.0, 16.0, 40.0, 48.0)  # model frame, class 0 (Object)
BOX_TOTE = (2.0, 8.0, 62.0, 56.0)  # class 1 (Tote)


def _constant_model(path):
    """Dynamic-batch export whose outputs are constants: one Object and one Tote detection."""
    a, c = 84, 5 + 2 + NM
    det = np.zeros((1, a, c), np.float32)
    for row, (box, cls, obj) in enumerate([(BOX, 0, 0.9), (BOX_TOTE, 1, 0.8)]):
        x1, y1, x2, y2 = box
        det[0, row, :5] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, obj]
        det[0, row, 5 + cls] = 0.95
        det[0, row, 7 + row] = 1.0  # coefficient selecting proto channel `row`
    protos = np.full((1, NM, SIZE // 4, SIZE // 4), -10.0, np.float32)
    protos[0, :2] = 10.0
    inits = [numpy_helper.from_array(det, "det"), numpy_helper.from_array(protos, "protos"),
             numpy_helper.from_array(np.array([a, c], np.int64), "det_rest"),
             numpy_helper.from_array(np.array([NM, SIZE // 4, SIZE // 4], np.int64), "proto_rest"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "det_rest"], ["det_shape"], axis=0),
        helper.make_node("Concat", ["n", "proto_rest"], ["proto_shape"], axis=0),
        helper.make_node("Expand", ["det", "det_shape"], ["output0"]),
        helper.make_node("Expand", ["protos", "proto_shape"], ["output1"]),
    ]
    graph = helper.make_graph(
        nodes, "constant_yolo", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", a, c]),
         helper.make_tensor_value_info("output1", TensorProto.FLOAT, ["batch", NM, SIZE // 4, SIZE // 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.fixture
def predict_env(tiny_dataset, tmp_path, monkeypatch):
    for var in ("ARMBENCH_DATASET", "ARMBENCH_MODEL", "ARMBENCH_CONFIG", "ARMBENCH_DEVICE", "ARMBENCH_VAL_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no user config file
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  image_size: {SIZE}\nmodel:\n  num_threads: 1\n")
    model = _constant_model(tmp_path / "const.onnx")
    return tiny_dataset, model, config


def _run(tiny, model, config, out, *extra):
    # the predict sub-command alone (cli.main imports every command module)
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    return predict.run(parser.parse_args(["--dataset", str(tiny.root), "--model", str(model), "--config", str(config),
                 "--out", str(out), "--val-size", "all", "--device", "cpu", *extra]))


def test_predict_writes_coco_results(predict_env, tmp_path, capsys):
    tiny, model, config = predict_env
    out = tmp_path / "res" / "preds.json"
    assert _run(tiny, model, config, out) == 0
    summary = capsys.readouterr().out
    assert "2 images, 4 detections, 0 skipped" in summary
    results = json.loads(out.read_text())
    assert len(results) == 4
    gt = COCO(str(tiny.root / "val.json"))
    dt = gt.loadRes(str(out))  # pycocotools accepts it
    assert len(dt.getAnnIds()) == 4
    by_image = {img["id"]: img for img in json.loads((tiny.root / "val.json").read_text())["images"]}
    for r in results:
        img = by_image[r["image_id"]]
        assert r["category_id"] in (1, 2)  # val.json: Tote=1, Object=2 (mapped by name)
        lb = Letterbox.compute((img["height"], img["width"]), SIZE)
        box = BOX if r["category_id"] == 2 else BOX_TOTE
        x1, y1, x2, y2 = lb.boxes_to_original(np.array([box]))[0]
        np.testing.assert_allclose(r["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=0.01)
        assert r["score"] == pytest.approx(0.9 * 0.95 if r["category_id"] == 2 else 0.8 * 0.95, abs=1e-5)
        assert isinstance(r["segmentation"]["counts"], str)
        mask = mask_utils.decode(r["segmentation"]).astype(bool)
        assert mask.shape == (img["height"], img["width"])
        model_mask = np.zeros((1, SIZE, SIZE), bool)
        model_mask[0, int(box[1]) : int(box[3]), int(box[0]) : int(box[2])] = True
        expected = lb.masks_to_original(model_mask)[0]
        iou = (mask & expected).sum() / (mask | expected).sum()
        assert iou > 0.9


def test_predict_skips_unreadable_image(predict_env, tmp_path, capsys, caplog):
    tiny, model, config = predict_env
    (tiny.root / "images" / "val_a.jpg").write_bytes(b"broken")
    out = tmp_path / "preds.json"
    assert _run(tiny, model, config, out) == 0
    assert "1 images, 2 detections, 1 skipped (val_a)" in capsys.readouterr().out
    assert any("val_a" in r.getMessage() for r in caplog.records)
    assert {r["image_id"] for r in json.loads(out.read_text())} == {11}
    assert not list(tmp_path.glob(".preds.json.*"))  # no temp file left


def test_predict_missing_model_is_a_clear_error(predict_env, tmp_path):
    tiny, _, config = predict_env
    out = tmp_path / "preds.json"
    with pytest.raises(ModelError, match="missing.onnx.*--model"):
        _run(tiny, tmp_path / "missing.onnx", config, out)
    assert not out.exists()


def test_predict_split_returns_what_the_command_writes(predict_env, tmp_path):
    from armbench_segmentation.analysis.predict import predict_split
    from armbench_segmentation.config import load_settings

    tiny, model, config = predict_env
    out = tmp_path / "preds.json"
    assert _run(tiny, model, config, out) == 0
    settings = load_settings(config, overrides={"data.path": str(tiny.root), "model.path": str(model),
                                                "data.val_size": "all", "model.device": "cpu"}, env={})
    results = predict_split(settings, "val", progress=False)
    assert results == json.loads(out.read_text())
    assert len(results) == 4 and {r["image_id"] for r in results} == {10, 11}

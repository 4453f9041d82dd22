"""The ONNX base round trip: weights read back from the shipped ONNX reproduce its outputs.

The reference is onnxruntime running the shipped file itself; the torch model is rebuilt from
nothing but that file's initializers and metadata (training.model.load_onnx_base).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the train extra (make install-train) is not installed")
pytest.importorskip("yolov5", reason="the train extra (make install-train) is not installed")

from armbench_segmentation.errors import ArmbenchError, ModelError  # noqa: E402
from armbench_segmentation.training.export import compare_outputs, prepare  # noqa: E402
from armbench_segmentation.training.model import load_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "armbench-yolov5s-seg.onnx"

pytestmark = pytest.mark.slow


def test_onnx_base_reproduces_the_shipped_model_outputs():
    model, info = load_base(SHIPPED)
    assert info["class_names"] == ["Object", "Tote"]
    assert info["fused"] and info["tensors"] == 126
    # the yolov5s anchors (in stride units) were read back from the anchor-grid constants
    np.testing.assert_allclose(model.model[-1].anchors[0].numpy(), [[1.25, 1.625], [2.0, 3.75], [4.125, 2.875]])
    report = compare_outputs(prepare(model), SHIPPED, [(1, 320, 320), (2, 256, 320)], atol=1e-4)
    assert {k.split("@")[0] for k in report} == {"output0", "output1", "embedding"}
    assert all(v["max_scaled_diff"] <= 1e-4 for v in report.values())
    # and a real difference would be seen: perturb one weight, the check must fail
    with __import__("torch").no_grad():
        model.model[24].m[0].bias[5] += 1.0
    with pytest.raises(RuntimeError, match="differ"):
        compare_outputs(prepare(model), SHIPPED, [(1, 320, 320)], atol=1e-4)


def test_incompatible_onnx_base_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ModelError, match="not a compatible YOLOv5s-seg export"):
        load_base(path)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable ONNX file"):
        load_base(tmp_path / "junk.onnx")
    with pytest.raises(ArmbenchError, match="does not exist"):
        load_base(tmp_path / "missing.onnx")

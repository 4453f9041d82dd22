"""Tiny YOLOv5-seg-shaped ONNX graphs built in the test (no shipped model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def build_tiny_yolo(path: Path, nc: int = 2, nm: int = 32, static: bool = False, embedding: bool = True,
                    size: int = 64, names: tuple[str, str, str] = ("output0", "output1", "embedding"),
                    symbolic_width: bool = False, metadata: dict[str, str] | None = None,
                    layout: str = "yolov5") -> Path:
    """Outputs shaped like a YOLOv5-seg export, derived from the input by pooling + 1x1 convs.

    detections (N, (H/8)*(W/8), 5+nc+nm), protos (N, nm, H/4, W/4), embedding (N, 3).
    ``layout="yolov8"``: detections shaped like an Ultralytics YOLOv8/YOLO11-seg export,
    (N, 4+nc+nm, (H/8)*(W/8)) channel first, ``symbolic_width`` then makes the anchor axis symbolic.
    ``symbolic_width``: declare the detection width symbolic, as yolov5's dynamic export does
    (``Concatoutput0_dim_2``). ``metadata``: ONNX ``metadata_props`` (e.g. yolov5's ``names``).
    """
    rng = np.random.default_rng(0)
    v8 = layout == "yolov8"
    c = (4 if v8 else 5) + nc + nm
    dims = [1, 3, size, size] if static else ["batch", 3, "height", "width"]
    n = 1 if static else "batch"
    inits = [
        numpy_helper.from_array(rng.normal(size=(c, 3, 1, 1)).astype(np.float32), "w_det"),
        numpy_helper.from_array(rng.normal(size=(nm, 3, 1, 1)).astype(np.float32), "w_proto"),
        numpy_helper.from_array(np.array([0, c, -1], np.int64), "det_shape"),
    ]
    det_name, proto_name, emb_name = names
    nodes = [
        helper.make_node("AveragePool", ["images"], ["p8"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Conv", ["p8", "w_det"], ["c8"]),
        helper.make_node("Sigmoid", ["c8"], ["s8"]),
        helper.make_node("Reshape", ["s8", "det_shape"], ["r8"]),
        helper.make_node("Identity", ["r8"], [det_name]) if v8 else helper.make_node("Transpose", ["r8"], [det_name], perm=[0, 2, 1]),
        helper.make_node("AveragePool", ["images"], ["p4"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Conv", ["p4", "w_proto"], [proto_name]),
    ]
    det_dims = [n, (size // 8) ** 2 if static else "anchors", "Concatoutput0_dim_2" if symbolic_width else c]
    if v8:
        det_dims = [n, c, "anchors" if symbolic_width or not static else (size // 8) ** 2]
    outputs = [
        helper.make_tensor_value_info(det_name, TensorProto.FLOAT, det_dims),
        helper.make_tensor_value_info(proto_name, TensorProto.FLOAT,
                                      [n, nm, size // 4 if static else "h4", size // 4 if static else "w4"]),
    ]
    if embedding:
        nodes += [helper.make_node("GlobalAveragePool", ["p4"], ["gap"]), helper.make_node("Flatten", ["gap"], [emb_name])]
        outputs.append(helper.make_tensor_value_info(emb_name, TensorProto.FLOAT, [n, 3]))
    graph = helper.make_graph(nodes, "tiny_yolo_seg", [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    for key, value in (metadata or {}).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


@pytest.fixture
def tiny_model(tmp_path):
    """Factory: tiny_model(**build_tiny_yolo kwargs) -> path."""
    counter = iter(range(1000))

    def make(**kwargs) -> Path:
        return build_tiny_yolo(tmp_path / f"tiny{next(counter)}.onnx", **kwargs)

    return make

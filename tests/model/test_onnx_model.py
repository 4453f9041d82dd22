import logging

import numpy as np
import pytest

from armbench_segmentation.config import ModelConfig
from armbench_segmentation.errors import ModelError
from armbench_segmentation.model.onnx_model import RawOutputs, SegmentationModel, cuda_unavailable_reason

NAMES = ("Object", "Tote")
CPU_CFG = ModelConfig(device="cpu", num_threads=1)


def _batch(n, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return SegmentationModel.to_input(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_dynamic_model_reads_io(tiny_model):
    m = SegmentationModel(tiny_model(), CPU_CFG, NAMES)
    assert (m.input_name, m.input_hw, m.static_batch) == ("images", None, None)
    assert (m.num_classes, m.num_mask_coeffs, m.has_embedding) == (2, 32, True)
    out = m.run(_batch(3))
    assert isinstance(out, RawOutputs)
    assert out.detections.shape == (3, 64, 39) and out.protos.shape == (3, 32, 16, 16)
    assert out.embedding.shape == (3, 3) and out.detections.dtype == np.float32
    # dynamic in height/width too
    assert m.run(_batch(1, size=96)).protos.shape == (1, 32, 24, 24)


def test_static_model_splits_batches(tiny_model):
    m = SegmentationModel(tiny_model(static=True), CPU_CFG, NAMES)
    assert m.input_hw == (64, 64) and m.static_batch == 1
    batch = _batch(3)
    out = m.run(batch)
    assert out.detections.shape == (3, 64, 39)
    single = m.run(batch[1:2])
    np.testing.assert_array_equal(out.detections[1], single.detections[0])
    np.testing.assert_array_equal(out.protos[2], m.run(batch[2:3]).protos[0])
    with pytest.raises(ValueError, match="64x64"):
        m.run(_batch(1, size=96))


def test_symbolic_detection_width_is_probed(tiny_model):
    m = SegmentationModel(tiny_model(symbolic_width=True), CPU_CFG, NAMES)
    assert (m.num_classes, m.num_mask_coeffs) == (2, 32)
    with pytest.raises(ModelError, match="3 classes"):
        SegmentationModel(tiny_model(symbolic_width=True, nc=3), CPU_CFG, NAMES)


def test_model_without_embedding_and_other_names(tiny_model):
    m = SegmentationModel(tiny_model(embedding=False, names=("dets", "protos", "e")), CPU_CFG, NAMES)
    assert not m.has_embedding
    out = m.run(_batch(2))
    assert out.embedding is None and out.detections.shape == (2, 64, 39)


def test_other_class_count_is_refused_with_clear_message(tiny_model):
    with pytest.raises(ModelError) as err:
        SegmentationModel(tiny_model(nc=3), CPU_CFG, NAMES)
    msg = str(err.value)
    assert "3 classes" in msg and "2 class names" in msg and "['Object', 'Tote']" in msg


def test_nm_derived_from_protos(tiny_model):
    m = SegmentationModel(tiny_model(nm=8), CPU_CFG, NAMES)
    assert (m.num_classes, m.num_mask_coeffs) == (2, 8)


def test_missing_and_unreadable_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist.*--model"):
        SegmentationModel(tmp_path / "nope.onnx", CPU_CFG, NAMES)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match="cannot load ONNX model.*ARMBENCH_MODEL"):
        SegmentationModel(bad, CPU_CFG, NAMES)


def test_auto_device_is_silent_on_cpu_machine(tiny_model, capfd, caplog):
    path = tiny_model()
    with caplog.at_level(logging.DEBUG):
        m = SegmentationModel(path, ModelConfig(device="auto", num_threads=1), NAMES)
        m.run(_batch(1))
    err = capfd.readouterr()
    if cuda_unavailable_reason() is None:
        pytest.skip("CUDA usable here: the CPU-silence check applies to machines without CUDA")
    assert m.providers == ["CPUExecutionProvider"]
    assert "CUDA" not in err.err + err.out
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_cuda_demanded_but_impossible(tiny_model, capfd):
    if cuda_unavailable_reason() is None:
        pytest.skip("CUDA usable here")
    with pytest.raises(ModelError, match="'cuda'.*cannot be used"):
        SegmentationModel(tiny_model(), ModelConfig(device="cuda"), NAMES)
    assert "onnxruntime" not in capfd.readouterr().err


def test_bad_device_value(tiny_model):
    with pytest.raises(ModelError, match="auto', 'cpu' or 'cuda'"):
        SegmentationModel(tiny_model(), ModelConfig(device="gpu"), NAMES)


def test_sha256_and_threads(tiny_model):
    import hashlib

    path = tiny_model()
    m = SegmentationModel(path, ModelConfig(device="cpu", num_threads=2), NAMES)
    assert m.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.providers == ["CPUExecutionProvider"]


def test_intra_op_spinning_off_by_default(tiny_model):
    from armbench_segmentation.config import load_settings

    path = tiny_model()
    assert load_settings(env={}).model.intra_op_spinning is False
    key = "session.intra_op.allow_spinning"
    m = SegmentationModel(path, ModelConfig(device="cpu", num_threads=2), NAMES)
    assert m.session.get_session_options().get_session_config_entry(key) == "0"
    m = SegmentationModel(path, ModelConfig(device="cpu", num_threads=2, intra_op_spinning=True), NAMES)
    assert m.session.get_session_options().get_session_config_entry(key) == "1"


def test_to_input():
    img = np.full((2, 4, 5, 3), 255, np.uint8)
    img[:, :, :, 1] = 0
    x = SegmentationModel.to_input(img)
    assert x.shape == (2, 3, 4, 5) and x.dtype == np.float32
    assert np.allclose(x[:, 0], 1.0) and np.allclose(x[:, 1], 0.0)
    assert SegmentationModel.to_input(img[0]).shape == (1, 3, 4, 5)
    with pytest.raises(ValueError):
        SegmentationModel.to_input(np.zeros((4, 5), np.uint8))


def test_class_names_none_accepts_any_count(tiny_model):
    m = SegmentationModel(tiny_model(nc=3), CPU_CFG, None)
    assert m.num_classes == 3 and m.class_names == ("class0", "class1", "class2")

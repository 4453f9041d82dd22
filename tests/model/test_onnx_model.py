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


# ---------------------------------------------------------------------- class order (ONNX metadata 'names')
def test_metadata_names_in_configured_order_change_nothing(tiny_model, caplog):
    plain = SegmentationModel(tiny_model(), CPU_CFG, NAMES)
    with caplog.at_level(logging.WARNING):
        named = SegmentationModel(tiny_model(metadata={"names": "{0: 'Object', 1: 'Tote'}"}), CPU_CFG, NAMES)
        lower = SegmentationModel(tiny_model(metadata={"names": "['object', 'tote']"}), CPU_CFG, NAMES)
    assert caplog.records == []
    assert named.model_class_names == ("Object", "Tote") and named.class_permutation is None
    assert lower.model_class_names == ("object", "tote") and lower.class_permutation is None
    batch = _batch(2)
    np.testing.assert_array_equal(named.run(batch).detections, plain.run(batch).detections)
    assert named.session is not None


def test_metadata_names_permuted_are_remapped_and_raw_session_refused(tiny_model, caplog):
    """Same weights, metadata saying channel 0 is Tote: run() must give the reference
    detections with the two class columns swapped; everything else untouched."""
    reference = SegmentationModel(tiny_model(), CPU_CFG, NAMES)
    with caplog.at_level(logging.WARNING):
        swapped = SegmentationModel(tiny_model(metadata={"names": "{0: 'Tote', 1: 'Object'}"}), CPU_CFG, NAMES)
    assert swapped.class_permutation == (1, 0) and swapped.class_names == NAMES
    assert len(caplog.records) == 1
    assert "['Tote', 'Object']" in caplog.text and "['Object', 'Tote']" in caplog.text
    batch = _batch(3)
    ref, got = reference.run(batch), swapped.run(batch)
    expected = ref.detections.copy()
    expected[..., [5, 6]] = ref.detections[..., [6, 5]]
    np.testing.assert_array_equal(got.detections, expected)
    np.testing.assert_array_equal(got.protos, ref.protos)
    np.testing.assert_array_equal(got.embedding, ref.embedding)
    # the raw session (what the Tensorleap integration returns) cannot be remapped: refused
    with pytest.raises(ModelError) as err:
        swapped.session
    msg = str(err.value)
    assert "['Tote', 'Object']" in msg and "['Object', 'Tote']" in msg and "data.class_names" in msg and "re-export" in msg


def test_metadata_three_classes_permutation(tiny_model):
    names = ("Object", "Tote", "Box")
    reference = SegmentationModel(tiny_model(nc=3), CPU_CFG, names)
    model = SegmentationModel(tiny_model(nc=3, metadata={"names": "{0: 'Box', 1: 'Object', 2: 'Tote'}"}), CPU_CFG, names)
    assert model.class_permutation == (1, 2, 0)  # configured Object = model channel 1, Tote = 2, Box = 0
    batch = _batch(1)
    ref, got = reference.run(batch).detections, model.run(batch).detections
    for j, channel in enumerate((1, 2, 0)):
        np.testing.assert_array_equal(got[..., 5 + j], ref[..., 5 + channel])


def test_metadata_names_other_set_is_refused(tiny_model):
    with pytest.raises(ModelError) as err:
        SegmentationModel(tiny_model(metadata={"names": "{0: 'cat', 1: 'dog'}"}), CPU_CFG, NAMES)
    assert "['cat', 'dog']" in str(err.value) and "['Object', 'Tote']" in str(err.value)


def test_metadata_names_are_never_evaluated(tiny_model, tmp_path, caplog):
    marker = tmp_path / "pwned"
    hostile = f"__import__('pathlib').Path({str(marker)!r}).touch() or {{0: 'Tote', 1: 'Object'}}"
    with caplog.at_level(logging.WARNING):
        m = SegmentationModel(tiny_model(metadata={"names": hostile}), CPU_CFG, NAMES)
    assert not marker.exists()  # literal_eval, not eval
    assert m.class_permutation is None and m.model_class_names is None and "not a dict" in caplog.text
    for bad in ("{1: 'Object', 2: 'Tote'}", "{0: 'Object', 1: 3}", "'Object'", "[]"):
        assert SegmentationModel(tiny_model(metadata={"names": bad}), CPU_CFG, NAMES).class_permutation is None


def test_class_names_none_adopts_metadata_names(tiny_model):
    m = SegmentationModel(tiny_model(nc=3, metadata={"names": "{0: 'a', 1: 'b', 2: 'c'}"}), CPU_CFG, None)
    assert m.class_names == ("a", "b", "c") and m.class_permutation is None


@pytest.mark.e2e
def test_shipped_model_with_swapped_metadata_decodes_in_configured_order(tiny_dataset, tmp_path):
    """The shipped export with its 'names' rewritten to {0: 'Tote', 1: 'Object'} (a real file):
    after the remap, decode sees exactly the classes the unmodified model gives, swapped back."""
    import onnx

    from armbench_segmentation.config import DEFAULT_MODEL_PATH, DataConfig
    from armbench_segmentation.data.coco import ArmbenchDataset
    from armbench_segmentation.model.decode import decode

    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip(f"shipped model {DEFAULT_MODEL_PATH} absent")
    proto = onnx.load(str(DEFAULT_MODEL_PATH))
    names = {p.key: p for p in proto.metadata_props}
    assert names["names"].value == "{0: 'Object', 1: 'Tote'}"
    names["names"].value = "{0: 'Tote', 1: 'Object'}"  # lie about the order: channel 0 is now "Tote"
    swapped_path = tmp_path / "swapped.onnx"
    onnx.save(proto, str(swapped_path))

    cfg = ModelConfig(device="cpu", num_threads=2)
    original = SegmentationModel(DEFAULT_MODEL_PATH, cfg, NAMES)
    swapped = SegmentationModel(swapped_path, cfg, NAMES)
    assert original.class_permutation is None and swapped.class_permutation == (1, 0)
    ds = ArmbenchDataset(tiny_dataset.root, DataConfig(val_size=None))
    image = ds.load(next(s for s in ds.samples("val") if s.sample_id == "val_a")).image
    batch = SegmentationModel.to_input(image)
    ref, got = original.run(batch), swapped.run(batch)
    ref_pred = decode(ref.detections[0], ref.protos[0], (640, 640), cfg)
    # the model reads channel 0 as Object; a file claiming channel 0 is Tote, remapped to the
    # configured order, reports the swapped class for the very same boxes
    got_pred = decode(got.detections[0], got.protos[0], (640, 640), cfg)
    assert len(ref_pred) > 0
    np.testing.assert_array_equal(got_pred.boxes, ref_pred.boxes)
    np.testing.assert_array_equal(got_pred.class_ids, 1 - ref_pred.class_ids)
    np.testing.assert_array_equal(got_pred.masks, ref_pred.masks)
    with pytest.raises(ModelError, match=r"\['Tote', 'Object'\]"):
        swapped.session


# ---------------------------------------------------------------------- onnxruntime telemetry
def _fresh_home_run(code: str, tmp_path, name: str):
    """Run ``code`` in a new Python with an empty HOME (and XDG_CACHE_HOME unset) and without
    ORT_DISABLE_TELEMETRY inherited from this process; return (HOME files, completed process)."""
    import os
    import subprocess
    import sys

    home = tmp_path / name
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")), proc


def test_loading_a_model_leaves_no_onnxruntime_telemetry_files(tiny_model, tmp_path):
    path = tiny_model()
    control, _ = _fresh_home_run(
        f"import onnxruntime as o; o.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])", tmp_path, "control")
    if not any(p.endswith("deviceid") for p in control):
        pytest.skip(f"this onnxruntime build writes no telemetry files (HOME after a plain session: {control})")
    assert ".cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db" in control  # the premise: on by default
    code = ("import numpy as np\n"
            "from armbench_segmentation.config import ModelConfig\n"
            "from armbench_segmentation.model.onnx_model import SegmentationModel\n"
            "import onnxruntime\n"  # a later import elsewhere (as code-loader does) finds the switch already set
            f"m = SegmentationModel({str(path)!r}, ModelConfig(device='auto', num_threads=1), ('Object', 'Tote'))\n"
            "m.run(np.zeros((1, 3, 64, 64), np.float32))\n")
    files, proc = _fresh_home_run(code, tmp_path, "project")
    assert files == [] and "telemetry" not in proc.stderr


def test_onnxruntime_imported_first_is_reported(tmp_path):
    files, proc = _fresh_home_run("import logging; logging.basicConfig(); import onnxruntime\n"
                                  "from armbench_segmentation.model.onnx_model import import_onnxruntime\n"
                                  "import_onnxruntime(); import_onnxruntime()", tmp_path, "late")
    assert proc.stderr.count("ORT_DISABLE_TELEMETRY=1 in the environment") == 1  # once, saying the fix


# ---------------------------------------------------------------------- the CUDA path on a machine without CUDA
def test_cuda_provider_that_fails_to_load_falls_back_to_the_same_cpu_path(tiny_model, monkeypatch, capfd, caplog):
    """The branch taken where a GPU driver is present: the real onnxruntime is asked for the
    CUDA provider (only the driver probe is told "a GPU is here"). On a machine where the
    provider cannot load, 'auto' runs on CPU with ONE warning and the same outputs as 'cpu';
    'cuda' is refused in one line; onnxruntime's own provider-load errors stay off stderr."""
    from armbench_segmentation.model import onnx_model

    ort = onnx_model.import_onnxruntime()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime build ({ort.get_device()}) has no CUDA provider to fail")
    if onnx_model._cuda_driver_has_device()[0]:
        pytest.skip("a GPU is usable here: the fallback applies to machines without one")
    monkeypatch.setattr(onnx_model, "_cuda_driver_has_device", lambda: (True, ""))
    path = tiny_model()
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        auto = SegmentationModel(path, ModelConfig(device="auto", num_threads=1), NAMES)
    err = capfd.readouterr()
    if auto.on_cuda:  # pragma: no cover - libraries present after all
        pytest.skip("the CUDA provider loaded: nothing to fall back from")
    assert auto.providers == ["CPUExecutionProvider"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "CUDA provider failed to load" in warnings[0] and "running on CPU" in warnings[0]
    assert "onnxruntime-gpu[cuda,cudnn]" in warnings[0]
    assert "libcu" not in err.err and "LoadLibrary" not in err.err and "Failed to load" not in err.err
    cpu = SegmentationModel(path, CPU_CFG, NAMES)
    batch = _batch(3)
    a, b = auto.run(batch), cpu.run(batch)
    np.testing.assert_array_equal(a.detections, b.detections)
    np.testing.assert_array_equal(a.protos, b.protos)
    with pytest.raises(ModelError) as exc:
        SegmentationModel(path, ModelConfig(device="cuda"), NAMES)
    msg = str(exc.value)
    assert "model.device is 'cuda': a GPU is present but onnxruntime's CUDA provider failed to load" in msg
    assert "--device cpu/auto" in msg and "\n" not in msg


def test_dynamic_export_runs_a_batch_in_one_session_call(tiny_model, monkeypatch):
    """Real batching: a dynamic export gets the whole batch in one run; a static batch-1 export one run per image."""
    dynamic = SegmentationModel(tiny_model(), CPU_CFG, NAMES)
    static = SegmentationModel(tiny_model(static=True), CPU_CFG, NAMES)
    for model, expected in ((dynamic, [4]), (static, [1, 1, 1, 1])):
        calls = []
        real = model._session.run

        def counting(names, feeds, _real=real, _calls=calls):
            _calls.append(len(next(iter(feeds.values()))))
            return _real(names, feeds)

        monkeypatch.setattr(model._session, "run", counting, raising=False)
        assert len(model.run(_batch(4))) == 4
        assert calls == expected

"""The streaming runner: every sample stored once, resume, corrupt images, interrupts, run keys.

Uses real components: the tiny ARMBench-layout dataset (tests/conftest.py), the real COCO
loader, ONNX Runtime on a tiny YOLOv5-seg-shaped graph built here (``build_model``; its
outputs depend on the image), the real decode/metrics/store. The shipped model is used in
tests/commands/test_analyze.py (skipped when absent).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from armbench_segmentation.analysis.runner import (
    dataset_identity,
    default_load_workers,
    default_process_workers,
    open_run,
    run_key_for,
    run_samples,
    selected_samples,
)
from armbench_segmentation.analysis.store import ResultsStore
from armbench_segmentation.config import load_settings

NM = 32


# ---------------------------------------------------------------------------- helpers (also used by sibling tests)
def build_model(path: Path, size: int = 64, work_channels: int = 0, seed: int = 0) -> Path:
    """A YOLOv5-seg-shaped ONNX export (dynamic batch, input S x S with S = ``size``) whose
    outputs depend on the image.

    detections (N, A, 39), A = 3 anchors x (S/8)^2 + (S/16)^2 + (S/32)^2 cells as in a real
    export (the YOLOv5 loss checks it); rows 0-2 hold two Objects and one Tote at fixed
    fractions of S, every other row has objectness 0. Object 0 gets
    wider and object 1 less confident on brighter images. protos (N, 32, S/4, S/4): channels
    0-2 positive except on bright regions. embedding (N, 8 + work_channels). ``work_channels``
    adds a 3x3 convolution on the input, only to make inference take measurable time.
    """
    rng = np.random.default_rng(seed)
    a, c = 3 * sum((size // s) ** 2 for s in (8, 16, 32)), 5 + 2 + NM
    const = np.zeros((1, a, c), np.float32)
    frac = np.zeros((1, a, c), np.float32)
    for i, (box, cls, obj) in enumerate([((0.3, 0.35, 0.25, 0.25), 0, 0.9), ((0.65, 0.45, 0.3, 0.2), 0, 0.7),
                                         ((0.5, 0.5, 0.9, 0.75), 1, 0.8)]):
        frac[0, i, :4] = box
        const[0, i, 4] = obj
        const[0, i, 5 + cls] = 0.9
        const[0, i, 7 + i] = 1.0  # mask coefficient selecting proto channel i
    bright_frac = np.zeros((1, a, c), np.float32)
    bright_frac[0, 0, 2] = 0.2
    bright_score = np.zeros((1, a, c), np.float32)
    bright_score[0, 1, 4] = -0.5
    proto_bias = np.full((1, NM, 1, 1), -6.0, np.float32)
    proto_bias[0, :3] = 3.0
    proto_gain = np.zeros((1, NM, 1, 1), np.float32)
    proto_gain[0, :3] = -4.0
    inits = [
        numpy_helper.from_array(const, "const"), numpy_helper.from_array(frac, "frac"),
        numpy_helper.from_array(bright_frac, "bright_frac"), numpy_helper.from_array(bright_score, "bright_score"),
        numpy_helper.from_array(proto_bias, "proto_bias"), numpy_helper.from_array(proto_gain, "proto_gain"),
        numpy_helper.from_array(rng.normal(size=(8, 3, 1, 1)).astype(np.float32), "w_emb"),
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "n11"),
        numpy_helper.from_array(np.array([3], np.int64), "i3"), numpy_helper.from_array(np.array([4], np.int64), "i4"),
    ]
    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Slice", ["shape", "i3", "i4"], ["s_int"]),  # (1,) input width S
        helper.make_node("Cast", ["s_int"], ["s"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["images"], ["mean4"], axes=[1, 2, 3], keepdims=1),  # (N,1,1,1)
        helper.make_node("Reshape", ["mean4", "n11"], ["mean"]),  # (N,1,1)
        helper.make_node("Mul", ["mean", "bright_frac"], ["bf"]),
        helper.make_node("Add", ["frac", "bf"], ["frac_b"]),
        helper.make_node("Mul", ["frac_b", "s"], ["px"]),
        helper.make_node("Mul", ["mean", "bright_score"], ["bs"]),
        helper.make_node("Add", ["const", "px"], ["o1"]),
        helper.make_node("Add", ["o1", "bs"], ["output0"]),  # (N,A,C)
        helper.make_node("AveragePool", ["images"], ["p4"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("ReduceMean", ["p4"], ["g4"], axes=[1], keepdims=1),  # (N,1,h,w)
        helper.make_node("Mul", ["g4", "proto_gain"], ["pg"]),
        helper.make_node("Add", ["pg", "proto_bias"], ["output1"]),  # (N,NM,h,w)
        helper.make_node("Conv", ["p4", "w_emb"], ["e4"]),
        helper.make_node("GlobalAveragePool", ["e4"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["emb8"]),
    ]
    if work_channels:
        inits.append(numpy_helper.from_array(rng.normal(size=(work_channels, 3, 3, 3)).astype(np.float32) * 0.1, "w_work"))
        nodes += [helper.make_node("Conv", ["images", "w_work"], ["work"], pads=[1, 1, 1, 1]),
                  helper.make_node("GlobalAveragePool", ["work"], ["wgap"]),
                  helper.make_node("Flatten", ["wgap"], ["wflat"]),
                  helper.make_node("Concat", ["emb8", "wflat"], ["embedding"], axis=1)]
    else:
        nodes.append(helper.make_node("Identity", ["emb8"], ["embedding"]))
    outputs = [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", a, c]),
               helper.make_tensor_value_info("output1", TensorProto.FLOAT, ["batch", NM, "h4", "w4"]),
               helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 8 + work_channels])]
    graph = helper.make_graph(
        nodes, "tiny_yolo_seg",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def make_settings(dataset_root: Path, model_path: Path, **overrides):
    """Settings for tests: every image of each split, 64-px model input, CPU, 1 thread, no env."""
    values = {"data.path": str(dataset_root), "model.path": str(model_path), "data.image_size": 64,
              "data.train_size": "all", "data.val_size": "all", "data.unlabeled_size": "all",
              "model.device": "cpu", "model.num_threads": 1}
    values.update(overrides)
    return load_settings(overrides=values, env={})


def open_all(settings, store_path: Path, resume: bool = True):
    from armbench_segmentation.data.coco import ArmbenchDataset
    from armbench_segmentation.model.onnx_model import SegmentationModel

    dataset = ArmbenchDataset(settings.data.path, settings.data)
    model = SegmentationModel(settings.model.path, settings.model, settings.data.class_names)
    store = ResultsStore(store_path)
    open_run(store, dataset, model, settings, resume=resume)
    return dataset, model, store


def snapshot(store: ResultsStore) -> dict:
    """Everything stored per finished sample: row, embedding, predictions."""
    frame = store.frame()
    emb = store.embeddings(frame)
    preds = {(split, sid): p for split in ("train", "val", "unlabeled") for sid, _i, _f, p in store.predictions(split)}
    out = {}
    for i, rec in enumerate(frame.to_dict("records")):
        key = (rec["split"], rec["sample_id"])
        row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()}
        out[key] = (json.dumps(row, sort_keys=True, default=str), emb[i].tobytes(), json.dumps(preds[key]))
    return out


@pytest.fixture
def setup(tiny_dataset, tmp_path):
    model_path = build_model(tmp_path / "tiny.onnx")
    return tiny_dataset, make_settings(tiny_dataset.root, model_path), tmp_path


# ---------------------------------------------------------------------------- tests
def test_every_sample_stored_once(setup):
    tiny, settings, tmp = setup
    dataset, model, store = open_all(settings, tmp / "r.sqlite")
    summary = run_samples(dataset, model, store, settings, progress=False)
    total = sum(tiny.expected["images"].values())
    assert (summary.selected, summary.computed, summary.errors, summary.already_finished) == (total, total, 0, 0)
    frame = store.frame()
    assert len(frame) == total
    assert frame.groupby("split").size().to_dict() == tiny.expected["images"]
    assert frame.loc[frame["split"] == "unlabeled", "loss"].isna().all()
    assert frame.loc[frame["split"] != "unlabeled", "loss"].notna().all()
    assert store.embeddings(frame).shape == (total, 8)
    assert set(store.write_counts().values()) == {1}
    # a second run computes nothing
    again = run_samples(dataset, model, store, settings, progress=False)
    assert (again.computed, again.already_finished) == (0, total)
    assert set(store.write_counts().values()) == {1}


def test_resume_after_partial_run_equals_uninterrupted_run(setup):
    tiny, settings, tmp = setup
    total = sum(tiny.expected["images"].values())
    dataset, model, full = open_all(settings, tmp / "full.sqlite")
    run_samples(dataset, model, full, settings, progress=False)

    dataset, model, part = open_all(settings, tmp / "part.sqlite")
    first = run_samples(dataset, model, part, settings, progress=False, max_samples=3)
    assert first.stopped_early and first.computed == 3 and len(part.finished()) == 3
    second = run_samples(dataset, model, part, settings, progress=False)
    assert (second.computed, second.already_finished) == (total - 3, 3)
    assert set(part.write_counts().values()) == {1}  # nothing finished was computed again
    assert snapshot(part) == snapshot(full)


def test_keyboard_interrupt_keeps_finished_samples(setup):
    tiny, settings, tmp = setup
    total = sum(tiny.expected["images"].values())
    dataset, model, store = open_all(settings, tmp / "r.sqlite")
    real_run, calls = model.run, []

    def run_then_interrupt(batch):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_run(batch)

    model.run = run_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        run_samples(dataset, model, store, settings, progress=False)
    assert len(store.finished()) == 3  # the three inferred before the interrupt were saved
    model.run = real_run
    rest = run_samples(dataset, model, store, settings, progress=False)
    assert rest.computed == total - 3 and set(store.write_counts().values()) == {1}


def test_corrupt_and_missing_images_are_reported_and_skipped(setup, caplog):
    tiny, settings, tmp = setup
    total = sum(tiny.expected["images"].values())
    (tiny.root / "images" / "train_c.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tiny.root / "images" / "test_b.jpg").unlink()
    dataset, model, store = open_all(settings, tmp / "r.sqlite")
    with caplog.at_level(logging.WARNING, logger="armbench_segmentation.analysis.runner"):
        summary = run_samples(dataset, model, store, settings, progress=False)
    assert (summary.computed, summary.errors) == (total - 2, 2)
    errors = store.errors()
    assert sorted(errors["sample_id"]) == ["test_b", "train_c"]
    assert sorted(errors["file_name"]) == ["test_b.jpg", "train_c.jpg"]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "train_c" in logged and "train_c.jpg" in logged and "test_b.jpg" in logged
    assert len(store.frame()) == total - 2
    # errors are retried on the next run (the file may have been fixed); finished ones are not
    again = run_samples(dataset, model, store, settings, progress=False)
    assert (again.computed, again.errors, again.already_finished) == (0, 2, total - 2)


def test_run_key_changes_with_model_config_and_data(setup):
    tiny, settings, tmp = setup
    dataset, model, store = open_all(settings, tmp / "r.sqlite")
    identity = dataset_identity(dataset, store)
    base = run_key_for(model, settings, identity)
    assert store.run_key == base

    # settings that do not change per-sample results keep the key
    same = make_settings(tiny.root, settings.model.path, **{"model.batch_size": 4, "model.num_threads": 2,
                                                            "data.train_size": 1, "analysis.n_clusters": 3})
    assert run_key_for(model, same, identity) == base
    # a metric or decode parameter changes it
    other_cfg = make_settings(tiny.root, settings.model.path, **{"metrics.ioa_threshold": 0.7})
    assert run_key_for(model, other_cfg, identity) != base
    # other model weights change it
    from armbench_segmentation.model.onnx_model import SegmentationModel

    other_model = SegmentationModel(build_model(tmp / "other.onnx", seed=1), settings.model, settings.data.class_names)
    assert run_key_for(other_model, settings, identity) != base
    # edited annotations change it (the file hash cache notices the new size/mtime)
    val = tiny.json("val.json")
    val["annotations"] = val["annotations"][:-1]
    tiny.write_json("val.json", val)
    assert run_key_for(model, settings, dataset_identity(dataset, store)) != base


def test_changed_config_recomputes_in_a_new_run(setup):
    tiny, settings, tmp = setup
    total = sum(tiny.expected["images"].values())
    dataset, model, store = open_all(settings, tmp / "r.sqlite")
    run_samples(dataset, model, store, settings, progress=False)
    changed = make_settings(tiny.root, settings.model.path, **{"model.conf_threshold": 0.6})
    dataset, model, store2 = open_all(changed, tmp / "r.sqlite")
    assert store2.run_key != store.run_key
    summary = run_samples(dataset, model, store2, changed, progress=False)
    assert summary.computed == total and summary.already_finished == 0


def test_no_resume_recomputes(setup):
    tiny, settings, tmp = setup
    total = sum(tiny.expected["images"].values())
    dataset, model, store = open_all(settings, tmp / "r.sqlite")
    run_samples(dataset, model, store, settings, progress=False)
    dataset, model, store = open_all(settings, tmp / "r.sqlite", resume=False)
    assert store.finished() == set()
    assert run_samples(dataset, model, store, settings, progress=False).computed == total


def test_batches_and_selection_order(setup):
    tiny, settings, tmp = setup
    batched = make_settings(tiny.root, settings.model.path, **{"model.batch_size": 3})
    dataset, model, store = open_all(batched, tmp / "r.sqlite")
    commits = []
    summary = run_samples(dataset, model, store, batched, progress=False, commit_every=2, on_commit=commits.append)
    keys = [(s.split, s.sample_id) for s in selected_samples(dataset)]
    assert summary.computed == len(keys)
    assert list(zip(store.frame()["split"], store.frame()["sample_id"])) == keys
    assert len(commits) >= 4 and commits == sorted(commits)  # small transactions as it goes


def test_unexpected_errors_are_recorded_then_abort_when_systematic(setup, monkeypatch, caplog):
    from armbench_segmentation.analysis import runner

    tiny, settings, tmp = setup
    total = sum(tiny.expected["images"].values())
    real = runner.process_sample

    def flaky(loaded, *args):
        if loaded.sample.sample_id == "val_a":
            raise ZeroDivisionError("bug for this sample")
        return real(loaded, *args)

    monkeypatch.setattr(runner, "process_sample", flaky)
    dataset, model, store = open_all(settings, tmp / "r.sqlite")
    with caplog.at_level(logging.ERROR, logger="armbench_segmentation.analysis.runner"):
        summary = run_samples(dataset, model, store, settings, progress=False)
    assert (summary.computed, summary.errors) == (total - 1, 1)
    assert store.errors()["error"].tolist() == ["internal error: ZeroDivisionError: bug for this sample"]
    assert "Traceback" in caplog.text and "val_a" in caplog.text

    def broken(*args):
        raise ZeroDivisionError("bug everywhere")

    monkeypatch.setattr(runner, "process_sample", broken)
    monkeypatch.setattr(runner, "_INTERNAL_ERROR_LIMIT", 2)
    dataset, model, store = open_all(settings, tmp / "r2.sqlite")
    with pytest.raises(RuntimeError, match="failed with internal errors"):
        run_samples(dataset, model, store, settings, progress=False)
    assert store.counts()  # what failed before the abort is recorded, the store is usable


def test_worker_processes_give_identical_results(setup):
    tiny, settings, tmp = setup
    dataset, model, inline = open_all(settings, tmp / "inline.sqlite")
    run_samples(dataset, model, inline, settings, progress=False, process_workers=0)
    (tiny.root / "images" / "test_a.jpg").write_bytes(b"corrupt")
    dataset, model, pooled = open_all(settings, tmp / "pooled.sqlite")
    summary = run_samples(dataset, model, pooled, settings, progress=False, process_workers=2, commit_every=2)
    assert (summary.computed, summary.errors) == (sum(tiny.expected["images"].values()) - 1, 1)
    expected = {k: v for k, v in snapshot(inline).items() if k != ("unlabeled", "test_a")}
    assert snapshot(pooled) == expected
    assert pooled.errors()["sample_id"].tolist() == ["test_a"]


def test_metrics_run_with_one_blas_thread_and_the_limit_is_restored(setup, monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from armbench_segmentation.analysis import runner

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    seen = []
    real = runner.process_sample
    monkeypatch.setattr(runner, "process_sample", lambda *a, **k: seen.append(blas_threads()) or real(*a, **k))
    tiny, settings, tmp = setup
    dataset, model, store = open_all(settings, tmp / "r.sqlite")
    summary = run_samples(dataset, model, store, settings, progress=False)
    assert summary.errors == 0 and len(seen) == summary.computed > 0
    assert all(set(threads) <= {1} for threads in seen)  # busy-waiting BLAS workers would take the model's cores
    assert blas_threads() == before


@pytest.mark.parametrize("cores, loaders, processes", [(1, 2, 0), (2, 2, 0), (4, 2, 0), (8, 4, 4), (16, 8, 8),
                                                        (64, 8, 8)])
def test_worker_defaults_follow_the_cores(cores, loaders, processes):
    """A 2-core machine keeps 2 decode threads and no metric processes; a 16-core GPU machine
    gets 8 decode threads (batches of 16 need more than two decoders) and 8 metric processes."""
    assert default_load_workers(cores) == loaders
    assert default_process_workers(cores) == processes

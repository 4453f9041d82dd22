"""``armbench analyze --engine ray`` against a real local Ray cluster (2 CPUs).

The reference is the local engine's own output on the same dataset: ``samples.csv`` (and
``errors.csv``, ``instances.csv``, the COCO predictions) must be byte-identical after

* a Ray worker process that really dies mid-run (``os._exit`` on a chosen sample, first
  attempt only, through ``ARMBENCH_RAY_FAULT_FILE``): Ray restarts the actor and runs its
  task again;
* the driver killed with SIGKILL after some samples were committed, then the same command
  again: it sends only the samples not stored and ends with the same tables.

The dataset is written by ``armbench synth`` at a reduced image size, with one image
truncated (an error row in both engines); the model is the tiny YOLOv5-seg-shaped export of
``test_runner.build_model`` (real onnxruntime). Every command runs as a real ``armbench``
subprocess joining the cluster this module starts (``ray.init`` here; shut down at the end).
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from armbench_segmentation.analysis.ray_engine import FAULT_ENV, INSTALL_HINT, RayOptions, connect, disconnect
from armbench_segmentation.errors import ArmbenchError

from test_runner import build_model  # noqa: E402  (sibling test module, same folder)

ROOT = Path(__file__).resolve().parents[2]
COMPARED = ("samples.csv", "errors.csv", "instances.csv", "predictions_train.json", "predictions_val.json",
            "predictions_unlabeled.json")
BROKEN = "val"  # split of the truncated image
CONFIG = ("data:\n  train_size: all\n  val_size: all\n  unlabeled_size: all\n  image_size: 64\n"
          "model:\n  device: cpu\nanalysis:\n  n_clusters: 2\n  label_budget: 2\n")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMBENCH_")}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def _armbench(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "armbench_segmentation.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A synthetic dataset (one truncated image), the tiny model, a config, and the local
    engine's outputs on them (the reference)."""
    base = tmp_path_factory.mktemp("ray")
    data = base / "synth"
    proc = _armbench("synth", "--out", str(data), "--n-train", "10", "--n-val", "10", "--n-unlabeled", "10",
                     "--width", "160", "--height", "128", "--workers", "1", "--no-progress", env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    val = json.loads((data / "val.json").read_text())
    broken = data / "images" / val["images"][3]["file_name"]
    broken.write_bytes(broken.read_bytes()[:200])  # truncated JPEG: an error row, not a stop
    model = build_model(base / "tiny.onnx", size=64, work_channels=16)
    config = base / "config.yaml"
    config.write_text(CONFIG)
    common = ["--dataset", str(data), "--model", str(model), "--config", str(config), "--no-progress", "--json"]
    local = base / "local"
    proc = _armbench("analyze", *common, "--out", str(local), env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["samples"]["errors"] == 1 and summary["samples"]["computed"] == 29  # the reference is non-trivial
    return {"base": base, "common": common, "local": local, "broken": broken.stem}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs for this module; its address and the environment its
    drivers need (the auth token; the fault file the workers read, via the raylet's env)."""
    pytest.importorskip("ray", reason=f"the Ray extra is not installed ({INSTALL_HINT})")
    fault = tmp_path_factory.mktemp("fault") / "fault.json"
    saved = {k: os.environ.get(k) for k in (FAULT_ENV, "RAY_AUTH_TOKEN")}
    os.environ.update({FAULT_ENV: str(fault), "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    temp = Path("/tmp") / f"rt-{secrets.token_hex(3)}"  # short: Ray's socket paths must fit in 107 bytes
    import ray

    try:
        assert connect(RayOptions(workers=2, temp_dir=str(temp)))  # the engine's own local cluster
        env = _env(RAY_AUTH_TOKEN=os.environ["RAY_AUTH_TOKEN"])
        yield {"address": ray.get_runtime_context().gcs_address, "env": env, "fault": fault}
    finally:
        disconnect()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def _arm_fault(fault: Path, sample_id: str, kind: str = "crash_on") -> None:
    """The next worker to meet ``sample_id`` dies (``crash_on``) or sleeps a minute
    (``stall_on``), once: it renames ``fault`` to ``<fault>.done`` first."""
    Path(f"{fault}.done").unlink(missing_ok=True)
    fault.write_text(json.dumps({kind: sample_id, "seconds": 60}))


def _assert_same_outputs(reference: Path, out: Path) -> None:
    for name in COMPARED:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs from the local engine's"


def _stored(store: Path, status: str | None = None) -> int:
    """Rows committed in the results store (of one status), read as another process would."""
    if not store.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
        try:
            sql = "SELECT COUNT(*) FROM samples" + (" WHERE status = ?" if status else "")
            return conn.execute(sql, (status,) if status else ()).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet
        return 0


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_results_match_the_local_engine(setup, cluster):
    out = setup["base"] / "ray-worker-killed"
    with open(setup["local"] / "samples.csv", newline="") as fh:
        victim = [r["sample_id"] for r in csv.DictReader(fh) if r["split"] == "val"][5]  # mid-run
    _arm_fault(cluster["fault"], victim)
    proc = _armbench("analyze", *setup["common"], "--out", str(out), "--engine", "ray", "--ray-address",
                     cluster["address"], "--ray-workers", "2", env=cluster["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not cluster["fault"].exists() and Path(f"{cluster['fault']}.done").exists(), (
        "the worker never reached the crash: nothing was tested")
    summary = json.loads(proc.stdout)["samples"]
    assert (summary["computed"], summary["errors"], summary["already_finished"]) == (29, 1, 0)
    _assert_same_outputs(setup["local"], out)


@pytest.mark.slow
def test_a_killed_driver_resumes_and_ends_like_the_local_engine(setup, cluster):
    out = setup["base"] / "ray-driver-killed"
    store = out / "results.sqlite"
    argv = [sys.executable, "-m", "armbench_segmentation.cli", "analyze", *setup["common"], "--out", str(out),
            "--engine", "ray", "--ray-address", cluster["address"], "--ray-workers", "2"]
    with open(setup["local"] / "samples.csv", newline="") as fh:
        stalled = [r["sample_id"] for r in csv.DictReader(fh)][20]
    _arm_fault(cluster["fault"], stalled, "stall_on")  # holds one worker: the run cannot end before the kill
    driver = subprocess.Popen(argv, env=cluster["env"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while (_stored(store) < 4 or cluster["fault"].exists()) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == -signal.SIGKILL, f"the driver ended before it was killed:\n{err[-3000:]}"
    kept, kept_ok = _stored(store), _stored(store, "ok")
    assert 4 <= kept < 30, f"{kept} samples stored when the driver was killed: not mid-run"
    assert Path(f"{cluster['fault']}.done").exists()  # the stalled sample was never stored

    proc = subprocess.run(argv, env=cluster["env"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)["samples"]
    # only the samples not stored ok are sent again (an error row is retried, as locally)
    assert (summary["already_finished"], summary["computed"], summary["errors"]) == (kept_ok, 29 - kept_ok, 1)
    _assert_same_outputs(setup["local"], out)


def _local_parts(setup):
    from armbench_segmentation.analysis.runner import dataset_identity
    from armbench_segmentation.analysis.store import ResultsStore
    from armbench_segmentation.config import load_settings
    from armbench_segmentation.data.coco import ArmbenchDataset
    from armbench_segmentation.model.onnx_model import SegmentationModel

    settings = load_settings(setup["base"] / "config.yaml", env={},
                             overrides={"data.path": str(setup["base"] / "synth"),
                                        "model.path": str(setup["base"] / "tiny.onnx")})
    dataset = ArmbenchDataset(settings.data.path, settings.data)
    model = SegmentationModel(settings.model.path, settings.model, settings.data.class_names)
    with ResultsStore(setup["base"] / "identity.sqlite") as store:
        identity = dataset_identity(dataset, store)
    return settings, dataset, model, identity


@pytest.mark.slow
def test_a_worker_that_does_not_see_the_model_file_gets_its_bytes(setup, cluster):
    """A SampleWorker actor given a model path its node lacks: without a source it says so
    (the driver then sends the bytes); with a ModelBytes actor it computes the same outcome
    as the local runner's steps, and leaves no temporary model file behind."""
    import tempfile

    import ray

    from armbench_segmentation.analysis.pipeline import split_raw
    from armbench_segmentation.analysis.ray_engine import ModelBytes, SampleWorker
    from armbench_segmentation.analysis.runner import _compute, _load

    settings, dataset, model, identity = _local_parts(setup)
    absent = str(setup["base"] / "elsewhere" / "tiny.onnx")
    before = set(Path(tempfile.gettempdir()).glob("armbench-model-*"))
    worker = ray.remote(SampleWorker)
    blind = worker.remote(settings, str(dataset.root), identity, absent, model.sha256, None, 1)
    error, _, needs_model = ray.get(blind.ready.remote())
    assert needs_model and "not visible" in error
    source = ray.remote(ModelBytes).remote(Path(model.path).read_bytes())
    fed = worker.remote(settings, str(dataset.root), identity, absent, model.sha256, source, 1)
    assert ray.get(fed.ready.remote())[0] is None
    sample = dataset.samples("val")[0]
    got = ray.get(fed.process.remote(0, sample))
    item = _load(dataset, 0, sample)
    expected = _compute(item.loaded, split_raw(model.run(model.to_input(item.loaded.image[None])))[0], model,
                        settings, item.annotations)
    assert got[0] == expected[0] == "ok"
    assert got[1] == expected[1] and got[3] == expected[3] and got[4] == expected[4]  # row, predictions, facts
    assert got[2].tobytes() == expected[2].tobytes()  # embedding
    assert set(Path(tempfile.gettempdir()).glob("armbench-model-*")) == before
    for actor in (blind, source, fed):
        ray.kill(actor)


@pytest.mark.slow
def test_a_worker_that_sees_another_dataset_refuses_to_start(setup, cluster):
    import ray

    from armbench_segmentation.analysis.ray_engine import SampleWorker

    settings, dataset, model, identity = _local_parts(setup)
    other = {**identity, "val.json": "0" * 64}
    worker = ray.remote(SampleWorker).remote(settings, str(dataset.root), other, str(model.path), model.sha256, None, 1)
    error, where, needs_model = ray.get(worker.ready.remote())
    assert "val.json on this worker differs from the driver's copy" in error and not needs_model
    assert str(os.getpid()) not in where  # it ran in a worker process
    ray.kill(worker)


@pytest.mark.slow
def test_a_sample_whose_worker_dies_past_the_retries_is_an_error_row_the_next_run_redoes(setup, cluster, tmp_path):
    """No retries allowed: the worker killed on the victim takes it (and any sample queued
    behind it on that worker) down as error rows naming the death; the next run computes
    them and the store ends equal to the local runner's, row for row."""
    from armbench_segmentation.analysis.ray_engine import run_samples_ray
    from armbench_segmentation.analysis.runner import open_run, run_samples
    from armbench_segmentation.analysis.store import ResultsStore

    settings, dataset, model, _ = _local_parts(setup)
    with ResultsStore(tmp_path / "local.sqlite") as store:
        open_run(store, dataset, model, settings)
        run_samples(dataset, model, store, settings, progress=False)
        expected, expected_errors = store.frame(), store.errors()
    victim = dataset.samples("train")[4].sample_id
    _arm_fault(cluster["fault"], victim)
    with ResultsStore(tmp_path / "ray.sqlite") as store:
        open_run(store, dataset, model, settings)
        first = run_samples_ray(dataset, model, store, settings, progress=False,
                                options=RayOptions(workers=2, max_task_retries=0))
        assert not cluster["fault"].exists() and Path(f"{cluster['fault']}.done").exists()
        died = {sid: msg for _, sid, msg in first.error_samples if "Ray worker processing this sample died" in msg}
        assert victim in died and len(died) <= 2 and all("died 1 times" in m for m in died.values())
        assert first.errors == len(died) + 1  # + the truncated image
        second = run_samples_ray(dataset, model, store, settings, progress=False, options=RayOptions(workers=2))
        assert second.already_finished == first.computed and second.errors == 1
        assert store.frame().equals(expected)
        assert store.errors().equals(expected_errors)


# ---------------------------------------------------------------------------- fast checks (no cluster)
def test_options_are_checked():
    with pytest.raises(ArmbenchError, match="workers must be an integer >= 1"):
        RayOptions(workers=0)
    with pytest.raises(ArmbenchError, match="in_flight_per_worker"):
        RayOptions(in_flight_per_worker=0)
    assert RayOptions(workers=None).workers is None


def test_missing_ray_extra_is_one_actionable_line(tmp_path):
    """Ray made unimportable in a fresh interpreter: one line saying how to install it, no traceback."""
    code = ("import sys; sys.modules['ray'] = None  # what `import ray` meets without the extra\n"
            "from armbench_segmentation.cli import main\n"
            f"sys.exit(main(['analyze', '--engine', 'ray', '--out', {str(tmp_path / 'out')!r}, '--no-progress']))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'armbench-segmentation[ray]'" in proc.stderr and "poetry install --extras ray" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # failed before any work


@pytest.mark.parametrize("flags, message", [
    (["--ray-workers", "2"], "--ray-address and --ray-workers need --engine ray"),
    (["--ray-address", "auto"], "--ray-address and --ray-workers need --engine ray"),
    (["--engine", "ray", "--workers", "2"], "with --engine ray use --ray-workers"),
    (["--engine", "ray", "--ray-workers", "0"], "--ray-workers must be >= 1, got 0"),
])
def test_ray_flags_are_checked_before_any_work(tmp_path, flags, message):
    proc = _armbench("analyze", *flags, "--out", str(tmp_path / "out"), env=_env(), timeout=120)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()

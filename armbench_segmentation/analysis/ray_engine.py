"""``armbench analyze --engine ray``: the per-sample work fanned out on a Ray cluster.

The same steps as the local runner (``analysis.runner``), only placed elsewhere:

* the driver (this process) selects the unfinished samples (``runner.pending_samples``),
  owns the results store and commits results as they arrive, through the local runner's
  own writer (``runner._Writer``: error rows, the internal-error limit, commits every few
  samples or half second, the progress bar);
* each Ray worker is an actor holding one ``SegmentationModel`` (loaded once, one intra-op
  thread by default, numpy's BLAS on one thread) and the dataset; per sample it runs the
  runner's load step (``runner._load``), the model, and the runner's compute step
  (``runner._compute`` -> ``pipeline.process_sample``) and sends back the outcome (row,
  embedding, compact predictions, facts) - never the image.

What a run survives:

* a worker process that dies (killed, out of memory, a crash in native code): Ray restarts
  the actor (model loaded again) and runs its unfinished tasks again
  (``max_restarts``/``max_task_retries``, system failures only: an exception raised by our
  code is not retried). A sample that keeps killing its worker past the retries is stored
  as an error row naming the failure (retried by the next run, like every error row);
* the driver killed: what was committed stays; the rerun sends only the samples not yet
  stored (the run key does not depend on the engine, so local and Ray runs resume each
  other);
* a bad sample (missing/corrupt image): an error row, exactly as the local engine stores it.

Bounded memory: at most ``workers x in_flight_per_worker`` samples are in flight; results
are taken with ``ray.wait`` in completion order and stored under their sample key, so the
store's content does not depend on the order they finish in.

How the model reaches the workers: a worker uses the file at the driver's path when it sees
the same file there (same SHA-256); workers that do not are started again with a small
actor holding the file's bytes (through Ray's object store), write them to a private
temporary file, open the session and remove the file. The dataset is read by
the workers from ``data.path``, which must be on storage every node sees (NFS, a mounted
bucket, the same path on every node); each worker checks that its COCO files hash like the
driver's and refuses to start otherwise.

No telemetry: Ray's usage statistics are switched off (``RAY_USAGE_STATS_ENABLED=0``, set
before Ray is imported). A cluster started for the run (no ``--ray-address``) has no
dashboard, runs in Ray's single-machine mode (every server on 127.0.0.1, no lookup of the
machine's outward address), gives its processes a private HOME (see ``connect``: Ray's
usage module would otherwise query cloud metadata services) and keeps its authentication
token in the environment instead of ``~/.ray/auth_token``; tests/e2e/test_ray_no_network.py
checks under strace that it talks to loopback addresses only. An existing cluster is the
operator's: set ``RAY_USAGE_STATS_ENABLED=0`` on its nodes before ``ray start``.

``ARMBENCH_RAY_FAULT_FILE`` (tests only): a JSON file ``{"crash_on": sample_id}``; the
worker that meets that sample renames the file to ``<file>.done`` and ends its process
(``os._exit``), so a real worker death happens exactly once, mid-run.
``{"stall_on": sample_id, "seconds": S}`` makes it sleep instead (a driver killed
meanwhile is certainly mid-run).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from armbench_segmentation.analysis.runner import (
    RunSummary,
    _load,
    _Writer,
    _compute,
    _worker_init,
    pending_samples,
)
from armbench_segmentation.analysis.store import ResultsStore, sha256_file
from armbench_segmentation.config import Settings
from armbench_segmentation.errors import ArmbenchError
from armbench_segmentation.splits import SPLITS

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'armbench-segmentation[ray]' (or, in a checkout: poetry install --extras ray)"
FAULT_ENV = "ARMBENCH_RAY_FAULT_FILE"
# Ray's switches set before it is imported: no usage statistics sent anywhere.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
# ... and for a cluster started for the run (one node, this machine): Ray's single-machine
# mode, whose node address is the loopback one. Without it Ray looks up the machine's
# outward address (a UDP connect towards 8.8.8.8) and its servers listen on that interface.
LOCAL_CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray.

    Attributes:
        address: an existing cluster (``ray://host:10001``, ``host:6379`` or ``auto``); None
            starts a local cluster for this run (``$RAY_ADDRESS`` is used when set).
        workers: actors (one model each); None = the cluster's CPUs / ``threads_per_worker``.
        threads_per_worker: onnxruntime intra-op threads per worker (and CPUs it reserves).
        in_flight_per_worker: samples queued per worker (2 hides the round trip).
        max_task_retries: times a task is run again after its worker died.
        temp_dir: Ray's session folder for a local cluster (Ray's default /tmp/ray when None;
            keep it short: Ray's socket paths must fit in 107 bytes).
    """

    address: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    in_flight_per_worker: int = 2
    max_task_retries: int = 3
    temp_dir: str | None = None

    def __post_init__(self) -> None:
        for name, low in (("workers", 1), ("threads_per_worker", 1), ("in_flight_per_worker", 1),
                          ("max_task_retries", 0)):
            value = getattr(self, name)
            if value is None and name == "workers":
                continue
            if not isinstance(value, int) or value < low:
                raise ArmbenchError(f"Ray option {name} must be an integer >= {low}, got {value!r}")


def wants_local_cluster(address: str | None) -> bool:
    """Whether a run with ``address`` (None: $RAY_ADDRESS) starts its own one-node cluster."""
    return not (address or os.environ.get("RAY_ADDRESS"))


def import_ray(local_cluster: bool = False) -> Any:
    """``ray``, with its usage statistics off (and, with ``local_cluster``, in single-machine
    mode; both are read when Ray is imported); an ``ArmbenchError`` saying how to install it."""
    import sys

    os.environ.update(RAY_ENV)
    if local_cluster and "ray" not in sys.modules:
        for key, value in LOCAL_CLUSTER_ENV.items():
            os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError as exc:
        raise ArmbenchError(f"--engine ray needs the optional Ray extra, which cannot be imported ({exc}); install "
                            f"it with: {INSTALL_HINT}") from None
    return ray


# ---------------------------------------------------------------------------- the worker
def _fault_if_asked(sample_id: str) -> None:
    """Test-only fault injection (see the module docstring), on the first attempt only: a
    real process death (``crash_on``) or a stall of ``seconds`` (``stall_on``)."""
    path = os.environ.get(FAULT_ENV)
    if not path:
        return
    try:
        fault = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return
    if sample_id not in (fault.get("crash_on"), fault.get("stall_on")):
        return
    try:
        os.replace(path, f"{path}.done")  # only the first attempt
    except OSError:
        return  # another worker won the race
    if fault.get("crash_on") == sample_id:
        os._exit(17)
    time.sleep(float(fault.get("seconds", 60)))


class ModelBytes:
    """A Ray actor holding the model file's bytes, for workers on nodes that do not see the
    driver's file (created only then; workers restarted after a crash fetch them again)."""

    def __init__(self, data: bytes):
        self.data = data

    def get(self) -> bytes:
        return self.data


class _ModelNotVisible(Exception):
    pass


class SampleWorker:
    """One Ray actor: the model (loaded once) and the dataset, processing one sample per call.

    Never raises from ``__init__`` (``ready`` reports a setup problem in one line) or from
    ``process`` for a sample's own problems (those come back as error outcomes, exactly as
    the local runner's steps return them).

    Args:
        model_source: None, or a ``ModelBytes`` actor to fetch the model from when this node
            does not see ``model_path`` with the driver's SHA-256.
    """

    def __init__(self, settings: Settings, dataset_root: str, dataset_files: dict[str, str], model_path: str,
                 model_sha256: str, model_source: Any, threads: int):
        self.error: str | None = None
        self.needs_model = False
        try:
            _worker_init()  # numpy's BLAS on one thread, as in the local runner's metrics
            self._setup(settings, dataset_root, dataset_files, model_path, model_sha256, model_source, threads)
        except _ModelNotVisible:
            self.needs_model = True
            self.error = f"the model file {model_path} is not visible on this node"
        except ArmbenchError as exc:
            self.error = str(exc)
        except Exception as exc:  # reported by ready() with the node it happened on
            self.error = f"{type(exc).__name__}: {exc}"

    def _setup(self, settings: Settings, dataset_root: str, dataset_files: dict[str, str], model_path: str,
               model_sha256: str, model_source: Any, threads: int) -> None:
        from armbench_segmentation.data.coco import ArmbenchDataset
        from armbench_segmentation.model.onnx_model import SegmentationModel

        self.settings = settings.replace({"model.num_threads": threads})  # not part of the run key
        root = Path(dataset_root)
        for name, digest in dataset_files.items():
            path = root / name
            if not path.is_file():
                raise ArmbenchError(f"{path} does not exist on this worker: the dataset must be on storage every "
                                    "Ray node sees, at the same path (data.path)")
            if sha256_file(path) != digest:
                raise ArmbenchError(f"{path} on this worker differs from the driver's copy (SHA-256): every Ray node "
                                    "must see the same dataset files")
        self.dataset = ArmbenchDataset(root, self.settings.data)
        path = Path(model_path)
        if path.is_file() and sha256_file(path) == model_sha256:
            self.model = SegmentationModel(path, self.settings.model, self.settings.data.class_names)
        elif model_source is None:
            raise _ModelNotVisible()
        else:  # this node does not see the driver's file: its bytes, through the object store
            import ray

            tmp = tempfile.mkdtemp(prefix="armbench-model-")
            try:
                path = Path(tmp) / Path(model_path).name
                path.write_bytes(ray.get(model_source.get.remote()))
                self.model = SegmentationModel(path, self.settings.model, self.settings.data.class_names)
                _ = self.model.sha256  # read while the file exists (cached); the session holds the graph
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if self.model.sha256 != model_sha256:  # pragma: no cover - the object store returned other bytes
            raise ArmbenchError(f"the model received by the worker does not match {model_path}")

    def ready(self) -> tuple[str | None, str, bool]:
        """(setup error or None, where this worker runs (host and pid), whether it only
        lacks the model file)."""
        import socket

        return self.error, f"{socket.gethostname()} pid {os.getpid()}", self.needs_model

    def process(self, seq: int, sample: Any) -> tuple:
        """One sample through the local runner's steps -> its outcome tuple (see ``runner._compute``)."""
        from armbench_segmentation.analysis.pipeline import split_raw

        _fault_if_asked(sample.sample_id)
        item = _load(self.dataset, seq, sample)
        if item.internal is not None:
            return "internal", item.error or "internal error", item.internal
        if item.error is not None:
            return "sample", item.error
        raw = self.model.run(self.model.to_input(item.loaded.image[None]))  # (1, 3, S, S)
        return _compute(item.loaded, split_raw(raw)[0], self.model, self.settings, item.annotations)


# ---------------------------------------------------------------------------- the cluster
def connect(options: RayOptions) -> bool:
    """Join ``options.address`` (or $RAY_ADDRESS), or start a local cluster of
    ``workers x threads_per_worker`` CPUs (default: this machine's). Returns whether this
    call connected (the caller then calls ``ray.shutdown()``); False when Ray was already
    initialised (that connection is used as it is)."""
    ray = import_ray(wants_local_cluster(options.address))
    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                  configure_logging=True)
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        try:
            ray.init(address=address, **common)
        except Exception as exc:  # ConnectionError, a bad address, a version mismatch...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArmbenchError(f"cannot join the Ray cluster at {address}: {first}. Start one with "
                                "`ray start --head` (see README, Scale) or leave --ray-address out to run a "
                                "local one") from None
        return True
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        # Ray's token authentication stays on; the token lives in the environment of this
        # run's processes instead of a file written into ~/.ray.
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    cpus = (options.workers or _cpu_count()) * options.threads_per_worker
    # The cluster's processes (started now, inheriting the environment) get a private HOME
    # holding an empty ~/ray_bootstrap_config.yaml: Ray's usage module, which runs even with
    # usage statistics off and no dashboard, otherwise asks the cloud metadata services
    # (169.254.169.254, metadata.google.internal) which cloud it is on. It also keeps
    # whatever Ray's processes write under ~ out of the user's HOME (removed by disconnect).
    global _CLUSTER_HOME
    _CLUSTER_HOME = tempfile.mkdtemp(prefix="armbench-ray-home-")
    (Path(_CLUSTER_HOME) / "ray_bootstrap_config.yaml").write_text("{}\n")
    home = os.environ.get("HOME")
    os.environ["HOME"] = _CLUSTER_HOME
    try:
        ray.init(num_cpus=cpus, _node_ip_address="127.0.0.1", _temp_dir=options.temp_dir, **common)
    finally:
        if home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = home
    return True


_CLUSTER_HOME: str | None = None  # the private HOME of a cluster started by connect()


def disconnect() -> None:
    """``ray.shutdown()`` after :func:`connect` returned True (a cluster it started stops)."""
    global _CLUSTER_HOME
    import ray

    ray.shutdown()
    if _CLUSTER_HOME is not None:
        shutil.rmtree(_CLUSTER_HOME, ignore_errors=True)
        _CLUSTER_HOME = None


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _start_workers(ray: Any, options: RayOptions, settings: Settings, dataset: Any, model: Any,
                   identity: dict[str, str], keep_alive: list[Any]) -> list[Any]:
    """The actors, each ready (model loaded, dataset checked). Workers that do not see the
    model file are started again with a ``ModelBytes`` actor, which ``keep_alive`` holds for
    the whole run (an actor restarted after a crash fetches the bytes again)."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    n = options.workers or max(1, cpus // options.threads_per_worker)
    if n * options.threads_per_worker > cpus:
        logger.warning("%d Ray workers x %d threads ask for more than the cluster's %d CPUs; the rest wait for "
                       "free CPUs", n, options.threads_per_worker, cpus)
    actor = ray.remote(num_cpus=options.threads_per_worker, max_restarts=-1,
                       max_task_retries=options.max_task_retries)(SampleWorker)

    def start(source: Any) -> Any:
        return actor.remote(settings, str(dataset.root), identity, str(model.path), model.sha256, source,
                            options.threads_per_worker)

    def check(group: list[Any]) -> list[tuple[str | None, str, bool]]:
        try:
            return ray.get([w.ready.remote() for w in group])
        except ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArmbenchError(f"the Ray workers did not start: {first}") from None

    workers = [start(None) for _ in range(n)]
    reports = check(workers)
    blind = [i for i, (_, _, needs_model) in enumerate(reports) if needs_model]
    if blind:
        logger.info("%d Ray workers do not see %s: sending them its bytes", len(blind), model.path)
        source = ray.remote(num_cpus=0, max_restarts=0)(ModelBytes).remote(Path(model.path).read_bytes())
        keep_alive.append(source)
        for i in blind:
            ray.kill(workers[i])
            workers[i] = start(source)
        for i, report in zip(blind, check([workers[i] for i in blind])):
            reports[i] = report
    for error, where, _ in reports:
        if error is not None:
            raise ArmbenchError(f"a Ray worker ({where}) cannot start: {error}")
    logger.info("%d Ray workers ready (%d thread(s) each)", n, options.threads_per_worker)
    return workers


# ---------------------------------------------------------------------------- the driver
def run_samples_ray(
    dataset: Any,
    model: Any,
    store: ResultsStore,
    settings: Settings,
    *,
    options: RayOptions = RayOptions(),
    splits: Sequence[str] = SPLITS,
    max_samples: int | None = None,
    progress: bool = True,
    commit_every: int = 16,
    commit_seconds: float = 0.5,
    on_commit: Callable[[int], None] | None = None,
) -> RunSummary:
    """``runner.run_samples`` with the per-sample work on Ray workers: the same selection,
    store content and summary (``options`` replaces the local prefetch/worker settings).
    ``store`` must have its run selected (``open_run``).

    Raises:
        ArmbenchError: Ray missing, the cluster unreachable, a worker unable to start (the
            dataset or model not visible there). ``KeyboardInterrupt`` is re-raised after
            the finished samples were committed.
    """
    from armbench_segmentation.analysis.runner import dataset_identity

    if max_samples is not None and max_samples < 0:
        raise ValueError(f"max_samples must be >= 0 or None, got {max_samples}")
    ray = import_ray(wants_local_cluster(options.address))
    t0 = time.monotonic()
    summary = RunSummary(run_key=store._require_run())
    todo = pending_samples(dataset, store, summary, splits, max_samples)
    if not todo:
        summary.elapsed_s = time.monotonic() - t0
        return summary
    if int(settings.model.batch_size) > 1:
        logger.info("the Ray engine runs one image per task (model.batch_size=%d is used by the local engine only)",
                    settings.model.batch_size)
    identity = dataset_identity(dataset, store)
    connected = connect(options)
    bar = None
    workers: list[Any] = []
    refs: list[Any] = []  # held until the end of the run (see _start_workers)
    try:
        workers = _start_workers(ray, options, settings, dataset, model, identity, refs)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=f"analyzing on {len(workers)} Ray workers", unit="img",
                       dynamic_ncols=True, smoothing=0.1)
        writer = _Writer(store, model, settings, summary, bar, commit_every, commit_seconds, on_commit)
        _drive(ray, workers, todo, writer, options)
    except KeyboardInterrupt:
        summary.interrupted = True
        logger.warning("interrupted: saving the finished samples; run again to resume")
        raise
    finally:
        if bar is not None:
            bar.close()
        for w in workers:
            try:
                ray.kill(w)
            except Exception:  # pragma: no cover - the cluster is already gone
                pass
        refs.clear()
        if connected:
            disconnect()
        summary.elapsed_s = time.monotonic() - t0
    if summary.errors:
        logger.warning("%d samples could not be processed (stored with status 'error'; see errors.csv)", summary.errors)
    return summary


def _drive(ray: Any, workers: list[Any], todo: list[tuple[int, Any]], writer: _Writer, options: RayOptions) -> None:
    """Keep every worker ``in_flight_per_worker`` samples busy; store outcomes as they come."""
    from armbench_segmentation.analysis.runner import _Loaded

    pending = iter(todo)
    in_flight: dict[Any, tuple[int, _Loaded]] = {}  # ObjectRef -> (worker index, sample)

    def submit(index: int) -> bool:
        nxt = next(pending, None)
        if nxt is None:
            return False
        seq, sample = nxt
        in_flight[workers[index].process.remote(seq, sample)] = (index, _Loaded(seq, sample))
        return True

    try:
        for index in range(len(workers)):
            for _ in range(options.in_flight_per_worker):
                submit(index)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=writer.commit_seconds)
            for ref in ready:
                index, item = in_flight.pop(ref)
                writer._finish(item, _outcome(ray, ref, item, options))
                submit(index)
            if writer._buffer and (len(writer._buffer) >= writer.commit_every
                                   or time.monotonic() - writer._last_commit >= writer.commit_seconds):
                writer._flush()
    finally:
        writer._flush()  # whatever finished is committed, whatever happens next (the caller kills the workers)


def _outcome(ray: Any, ref: Any, item: Any, options: RayOptions) -> tuple:
    """The worker's outcome; a worker that died more often than ``max_task_retries`` on this
    sample gives an error row (the next run tries it again). Any other failure stops the run."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayActorError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ("sample", f"the Ray worker processing this sample died {options.max_task_retries + 1} times "
                          f"({first}); the next run tries it again")
    except ray.exceptions.RayTaskError as exc:
        s = item.sample
        raise RuntimeError(f"a Ray worker failed on sample {s.sample_id} (split {s.split}): "
                           f"{exc.cause if getattr(exc, 'cause', None) is not None else exc}") from None

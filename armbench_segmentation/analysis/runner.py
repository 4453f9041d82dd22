"""Stream every selected sample through load -> model -> process_sample -> store.

Three stages overlap, each with bounded buffers so memory stays flat whatever the
dataset size:

1. a small thread pool decodes and letterboxes images a few samples ahead
   (``dataset.load``; OpenCV releases the GIL),
2. the calling thread runs the ONNX model on batches of ``settings.model.batch_size``,
3. one worker thread decodes predictions, computes metrics and writes to the store,
   one SQLite transaction per small batch of samples.

Resume: samples already finished (status ok) in the store under the same run key are
skipped; a missing/corrupt image is logged with its sample id and file and stored as
status ``error`` (retried on the next run, in case the file was fixed). An interrupt
(Ctrl-C) or a kill leaves every committed sample intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from armbench_segmentation.analysis.pipeline import compact_predictions, process_sample, split_raw
from armbench_segmentation.analysis.store import (
    STATUS_ERROR,
    STATUS_OK,
    ResultsStore,
    StoredSample,
    make_run_key,
)
from armbench_segmentation import package_version
from armbench_segmentation.config import Settings
from armbench_segmentation.errors import SampleError
from armbench_segmentation.splits import SPLITS

logger = logging.getLogger(__name__)

# Bump when the meaning or computation of a result row changes: it is part of the run key,
# so results of an older pipeline are recomputed instead of mixed with new ones.
# 2: the metrics run with numpy's BLAS on one thread (single_threaded_blas): the mask decode's
#    float32 matmul rounds differently than multi-threaded OpenBLAS (unc_mask_entropy moved by
#    ~1e-10 relative on the synthetic totes), and no longer depends on the machine's core count.
# 3: one per-sample evaluation for both faces (metrics.sample_evaluation): ``loss`` is the
#    YOLOv5-seg loss (was 1 - F1, now ``error_rate``), per-sample facts are stored.
# 4: image statistics (brightness, contrast, colorfulness) accumulated in float64 over exact
#    integer images instead of float32 copies: values move by ~1e-7 relative.
PIPELINE_VERSION = 4
_INTERNAL_ERROR_LIMIT = 10  # abort when more than this many samples failed on a bug ...
_INTERNAL_ERROR_SHARE = 0.5  # ... and they are more than this share of the samples processed


@dataclass
class RunSummary:
    """What a call to :func:`run_samples` did."""

    run_key: str
    selected: int = 0  # samples in the current selection (all splits)
    already_finished: int = 0  # skipped: finished by an earlier run
    computed: int = 0  # processed and stored ok by this call
    errors: int = 0  # stored as status=error by this call
    interrupted: bool = False
    stopped_early: bool = False  # max_samples reached
    elapsed_s: float = 0.0
    error_samples: list[tuple[str, str, str]] = field(default_factory=list)  # (split, sample_id, message), first 20

    @property
    def rate(self) -> float:
        done = self.computed + self.errors
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0


# ---------------------------------------------------------------------------- run keys
def dataset_identity(dataset: Any, store: ResultsStore, splits: Sequence[str] = SPLITS) -> dict[str, str]:
    """{COCO file name: sha256} of the splits' files (hashes cached in the store)."""
    out = {}
    for split in splits:
        path = dataset.split_path(split)
        out[path.name] = store.file_sha256(path)
    return out


def run_key_for(model: Any, settings: Settings, identity: dict[str, str]) -> str:
    config = f"{settings.fingerprint()}/max_instances={settings.data.max_instances}/pipeline={PIPELINE_VERSION}"
    return make_run_key(model.sha256, config, json.dumps(identity, sort_keys=True))


def run_info(model: Any, settings: Settings, identity: dict[str, str], dataset: Any) -> dict[str, Any]:
    """Provenance stored with the run (shown in exports and the dashboard)."""
    return {"model_path": str(model.path), "model_sha256": model.sha256, "settings_fingerprint": settings.fingerprint(),
            "pipeline_version": PIPELINE_VERSION, "package_version": package_version(), "dataset_root": str(dataset.root),
            "dataset_files": identity, "settings": settings.to_dict()}


def open_run(store: ResultsStore, dataset: Any, model: Any, settings: Settings, resume: bool = True) -> str:
    """Compute the run key, select the run in ``store`` (reset it when ``resume`` is False)."""
    identity = dataset_identity(dataset, store)
    key = run_key_for(model, settings, identity)
    store.start_run(key, run_info(model, settings, identity, dataset))
    if not resume:
        removed = store.reset_run()
        if removed:
            logger.info("--no-resume: discarded %d stored samples of run %s", removed, key)
    return key


def selected_samples(dataset: Any, splits: Sequence[str] = SPLITS) -> list[Any]:
    """The current selection, split by split, in each split's (seeded) order."""
    return [s for split in splits for s in dataset.samples(split)]


# ---------------------------------------------------------------------------- the runner
@dataclass
class _Loaded:
    seq: int
    sample: Any
    loaded: Any = None
    annotations: list | None = None
    error: str | None = None
    internal: str | None = None  # traceback of an unexpected exception while loading


def _load(dataset: Any, seq: int, sample: Any) -> _Loaded:
    try:
        loaded = dataset.load(sample)
        return _Loaded(seq, sample, loaded, dataset.annotations(sample))
    except SampleError as exc:
        return _Loaded(seq, sample, error=str(exc))
    except Exception as exc:  # a bug or an unforeseen data problem: counted like processing bugs
        return _Loaded(seq, sample, error=f"internal error: {type(exc).__name__}: {exc}", internal=traceback.format_exc())


@dataclass(frozen=True)
class _ModelInfo:
    """What process_sample needs from the model, picklable for worker processes."""

    input_hw: tuple[int, int] | None


def _compute(loaded: Any, raw: Any, model: Any, settings: Settings, annotations: list | None) -> tuple:
    """process_sample + compact predictions; never raises (runs in a worker process too).

    Returns ("ok", row, embedding, predictions, facts) | ("sample", message) | ("internal", message, traceback).
    """
    try:
        result = process_sample(loaded, raw, model, settings, annotations)
        return ("ok", result.row, result.embedding, compact_predictions(result.predictions, loaded.letterbox),
                result.facts)
    except SampleError as exc:
        return "sample", str(exc)
    except Exception as exc:  # a bug for this sample: recorded, the run goes on (not forever)
        return "internal", f"internal error: {type(exc).__name__}: {exc}", traceback.format_exc()


@contextlib.contextmanager
def single_threaded_blas():
    """numpy's BLAS (OpenBLAS) limited to one thread inside the block.

    The per-sample metrics run next to the model: a multi-threaded BLAS call (the loss's and
    the mask decode's small matmuls) gains nothing there, and OpenBLAS's idle workers
    busy-wait after every call, taking the cores ONNX Runtime is using (measured on 2
    cores: the YOLOv5-seg loss cost 15 ms of CPU per sample multi-threaded, 3.7 ms on one
    thread). A no-op without ``threadpoolctl`` (installed with scikit-learn).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _worker_init() -> None:
    """Process workers: one BLAS thread each (see ``single_threaded_blas``), for their lifetime."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return
    threadpool_limits(limits=1, user_api="blas")


def _usable_cores(cpu_count: int | None = None) -> int:
    if cpu_count is not None:
        return int(cpu_count)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_process_workers(cpu_count: int | None = None) -> int:
    """Worker processes for per-sample metrics: none on small machines (the GIL-free parts
    already overlap with inference there), else up to 8."""
    n = _usable_cores(cpu_count)
    return 0 if n <= 4 else min(8, n // 2)


def default_load_workers(cpu_count: int | None = None) -> int:
    """Threads decoding images ahead of the model (JPEG decode and resizing release the GIL):
    2 on small machines, else up to 8, so that a GPU taking batches of 16 is not fed by two
    decoders (~80 img/s each); at most ``prefetch`` of them are busy at once."""
    n = _usable_cores(cpu_count)
    return 2 if n <= 4 else min(8, n // 2)


class _Writer(threading.Thread):
    """Stage 3: process_sample + compact predictions (here, or in ``pool`` worker processes)
    and store writes, in sample order."""

    def __init__(self, store: ResultsStore, model: Any, settings: Settings, summary: RunSummary, bar: Any,
                 commit_every: int, commit_seconds: float, on_commit: Callable[[int], None] | None,
                 pool: Any = None, pool_size: int = 0):
        super().__init__(name="analysis-writer", daemon=True)
        self.inbox: queue.Queue = queue.Queue(maxsize=max(4, 2 * settings.model.batch_size, pool_size))
        self.pool, self.window = pool, max(1, 2 * pool_size)
        self._in_flight: deque = deque()  # (item, future) in sample order
        self.store, self.model, self.settings, self.summary, self.bar = store, model, settings, summary, bar
        self.commit_every, self.commit_seconds, self.on_commit = commit_every, commit_seconds, on_commit
        self.failure: BaseException | None = None
        self._buffer: list[StoredSample] = []
        self._last_commit = time.monotonic()
        self._internal_errors = 0

    def run(self) -> None:
        try:
            while True:
                item = self.inbox.get()
                if item is None:
                    break
                self._submit(*item)
                while self._in_flight and (len(self._in_flight) >= self.window or self._in_flight[0][1].done()):
                    self._finish(*self._in_flight.popleft())
                if len(self._buffer) >= self.commit_every or time.monotonic() - self._last_commit >= self.commit_seconds:
                    self._flush()
            while self._in_flight:
                self._finish(*self._in_flight.popleft())
            self._flush()
        except BaseException as exc:  # surfaced in the main thread
            self.failure = exc
            try:
                self._flush()
            except BaseException:  # pragma: no cover - store unusable; nothing more to save
                pass

    def _flush(self) -> None:
        if not self._buffer:
            return
        n = self.store.put_samples(self._buffer)
        self._buffer = []
        self._last_commit = time.monotonic()
        if self.on_commit is not None:
            self.on_commit(self.summary.computed + self.summary.errors)
        logger.debug("committed %d samples", n)

    def _error(self, item: _Loaded, message: str) -> None:
        s = item.sample
        logger.warning("skipping sample %s (split %s, file %s): %s", s.sample_id, s.split, s.file_name, message)
        self._buffer.append(StoredSample(split=s.split, sample_id=s.sample_id, status=STATUS_ERROR, error=message,
                                         image_id=int(s.image_id), file_name=s.file_name, seq=item.seq))
        self.summary.errors += 1
        if len(self.summary.error_samples) < 20:
            self.summary.error_samples.append((s.split, s.sample_id, message))

    def _internal(self, item: _Loaded, message: str, trace: str, exc: BaseException | None = None) -> None:
        s = item.sample
        self._internal_errors += 1
        logger.error("internal error on sample %s (split %s, file %s):\n%s", s.sample_id, s.split, s.file_name, trace)
        self._error(item, message)
        done = self.summary.computed + self.summary.errors
        if self._internal_errors > _INTERNAL_ERROR_LIMIT and self._internal_errors > _INTERNAL_ERROR_SHARE * done:
            raise RuntimeError(f"{self._internal_errors} of {done} samples failed with internal errors "
                               f"(last: {message}); stopping. See the log above.") from exc

    def _submit(self, item: _Loaded, raw: Any) -> None:
        if item.internal is not None:
            outcome: Any = ("internal", item.error or "internal error", item.internal)
        elif item.error is not None:
            outcome = ("sample", item.error)
        elif self.pool is None:
            outcome = _compute(item.loaded, raw, self.model, self.settings, item.annotations)
        else:
            info = _ModelInfo(getattr(self.model, "input_hw", None))
            outcome = self.pool.submit(_compute, item.loaded, raw, info, self.settings, item.annotations)
            item = dataclasses.replace(item, loaded=None)  # the worker has its copy; free ours
        if isinstance(outcome, Future):
            self._in_flight.append((item, outcome))
        elif self._in_flight:  # keep sample order behind pending results
            done: Future = Future()
            done.set_result(outcome)
            self._in_flight.append((item, done))
        else:
            self._finish(item, outcome)

    def _finish(self, item: _Loaded, outcome: Any) -> None:
        if isinstance(outcome, Future):
            outcome = outcome.result()  # a broken pool raises here: surfaced as the run's failure
        s = item.sample
        kind = outcome[0]
        if kind == "ok":
            _, row, embedding, preds, facts = outcome
            self._buffer.append(StoredSample(
                split=s.split, sample_id=s.sample_id, status=STATUS_OK, row=row, embedding=embedding,
                predictions=preds, facts=facts, image_id=int(s.image_id), file_name=s.file_name, seq=item.seq))
            self.summary.computed += 1
        elif kind == "sample":
            self._error(item, outcome[1])
        else:
            self._internal(item, outcome[1], outcome[2])
        if self.bar is not None:
            self.bar.update(1)
            if self.summary.errors:
                self.bar.set_postfix(errors=self.summary.errors, refresh=False)


def pending_samples(dataset: Any, store: ResultsStore, summary: RunSummary, splits: Sequence[str] = SPLITS,
                    max_samples: int | None = None) -> list[tuple[int, Any]]:
    """The selected samples not finished in ``store`` (its run selected), as ``(seq, sample)``
    in split order, at most ``max_samples``; counted into ``summary`` (selected,
    already_finished, stopped_early). Every engine (local, ``analysis.ray_engine``) starts here."""
    finished = store.finished()
    todo: list[tuple[int, Any]] = []
    for split in splits:
        for seq, sample in enumerate(dataset.samples(split)):
            summary.selected += 1
            if (split, sample.sample_id) in finished:
                summary.already_finished += 1
            else:
                todo.append((seq, sample))
    del finished
    if max_samples is not None and len(todo) > max_samples:
        todo = todo[:max_samples]
        summary.stopped_early = True
    if summary.already_finished:
        logger.info("resuming run %s: %d of %d samples already finished, %d to compute",
                    summary.run_key, summary.already_finished, summary.selected, len(todo))
    return todo


def run_samples(
    dataset: Any,
    model: Any,
    store: ResultsStore,
    settings: Settings,
    *,
    splits: Sequence[str] = SPLITS,
    max_samples: int | None = None,
    progress: bool = True,
    prefetch: int | None = None,
    load_workers: int | None = None,
    process_workers: int | None = 0,
    commit_every: int = 16,
    commit_seconds: float = 0.5,
    on_commit: Callable[[int], None] | None = None,
) -> RunSummary:
    """Process every selected, unfinished sample of ``splits`` into ``store``.

    ``store`` must have its run selected (see :func:`open_run`).

    Args:
        max_samples: stop after this many samples were taken up by this call (tests,
            partial runs); the summary says ``stopped_early``.
        prefetch: images decoded ahead of the model (default ``2 * batch_size + 2``).
        load_workers: threads decoding images ahead of the model (None: ``default_load_workers()``).
        process_workers: worker processes computing the per-sample metrics (0: in the
            writer thread; None: ``default_process_workers()``, i.e. 0 on <= 4 cores). Use
            them when inference is much faster than the metrics (CUDA, many cores).
        commit_every / commit_seconds: a store transaction after this many samples or
            this much time, whichever comes first.
        on_commit: called after each commit with the number of samples processed so far.
    Returns:
        RunSummary. ``KeyboardInterrupt`` is re-raised after the finished samples were
        committed (``summary`` is then not returned).
    """
    if max_samples is not None and max_samples < 0:
        raise ValueError(f"max_samples must be >= 0 or None, got {max_samples}")
    t0 = time.monotonic()
    summary = RunSummary(run_key=store._require_run())
    todo = pending_samples(dataset, store, summary, splits, max_samples)
    if not todo:
        summary.elapsed_s = time.monotonic() - t0
        return summary

    batch_size = max(1, int(settings.model.batch_size))
    prefetch = prefetch or 2 * batch_size + 2
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="analyzing", unit="img", dynamic_ncols=True, smoothing=0.1)
    if process_workers is None:
        process_workers = default_process_workers()
    proc_pool = None
    if process_workers > 0:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        proc_pool = ProcessPoolExecutor(max_workers=process_workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_init)
    writer = _Writer(store, model, settings, summary, bar, commit_every, commit_seconds, on_commit,
                     pool=proc_pool, pool_size=process_workers)
    writer.start()
    if load_workers is None:
        load_workers = default_load_workers()
    pool = ThreadPoolExecutor(max_workers=max(1, load_workers), thread_name_prefix="analysis-load")
    pending: deque[Future] = deque()
    it = iter(todo)

    def refill() -> None:
        while len(pending) < prefetch:
            nxt = next(it, None)
            if nxt is None:
                return
            pending.append(pool.submit(_load, dataset, *nxt))

    def send(item: Any) -> None:
        while True:  # a bounded put that notices a dead writer
            if writer.failure is not None:
                raise writer.failure
            if not writer.is_alive():  # pragma: no cover - it only ends after None or a failure
                raise RuntimeError("the analysis writer thread ended unexpectedly")
            try:
                writer.inbox.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    blas = contextlib.ExitStack()
    try:
        blas.enter_context(single_threaded_blas())  # process-wide for OpenBLAS; restored in `finally`
        refill()
        while pending:
            batch: list[_Loaded] = []
            while pending and len(batch) < batch_size:
                item = pending.popleft().result()
                refill()
                if item.error is not None or item.internal is not None:
                    send((item, None))
                else:
                    batch.append(item)
            if not batch:
                continue
            images = np.stack([b.loaded.image for b in batch])  # (B, S, S, 3) uint8
            raw = model.run(model.to_input(images))
            for b, r in zip(batch, split_raw(raw)):
                send((b, r))
        send(None)
        writer.join()
        if writer.failure is not None:
            raise writer.failure
    except KeyboardInterrupt:
        summary.interrupted = True
        logger.warning("interrupted: saving the finished samples; run again to resume")
        raise
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if writer.is_alive():
            try:
                writer.inbox.put(None, timeout=5)  # the writer drains what was inferred, then commits
            except queue.Full:  # pragma: no cover - writer wedged
                pass
            writer.join(timeout=60)
        if proc_pool is not None:
            proc_pool.shutdown(wait=True, cancel_futures=True)
        blas.close()
        if bar is not None:
            bar.close()
        summary.elapsed_s = time.monotonic() - t0
    if summary.errors:
        logger.warning("%d samples could not be processed (stored with status 'error'; see errors.csv)", summary.errors)
    return summary

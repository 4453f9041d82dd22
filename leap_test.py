"""Local check of the Tensorleap integration: ``poetry run test``.

What it does, in order (exit status 0 only when every step passes):

1. Dataset: ``--dataset DIR`` / ``ARMBENCH_DATASET``, else the synthetic ARMBench-like
   dataset (4 train / 4 val / 4 unlabeled images at 816x683), generated once into
   ``$XDG_CACHE_HOME/armbench-segmentation/leap-test-synthetic`` (``~/.cache`` by default).
   Model: ``--model FILE`` / ``ARMBENCH_MODEL`` / ``model.path`` (the shipped export).
2. Imports the entry file (``entryFile`` of leap.yaml, or ``--entry FILE``) and runs its
   ``@tensorleap_integration_test`` on ``--samples`` (default 3) samples of every split:
   the decorated functions validate their own inputs and outputs, then the body is re-run
   in mapping mode and ``leap_binder.check()`` runs.
3. Replays what the platform does with the connections the integration test recorded:
   encoders per sample, the model, then every registered loss, metric and latent space on
   batches of 2 and 1 samples with float16 inputs (the platform's storage type; set
   ``TL_DISABLE_ENGINE_FLOAT16_SIMULATION=true`` to turn that off), and every visualizer
   per sample. Asserts one finite value (or a documented None) per sample for every loss
   and metric, the encoder shapes, valid Leap objects and scalar metadata; for the instance
   metrics one 1-D value array per GT object of the batch, NaN only where undefined.
3b. Element instances: per labeled sample, the instance count and each ``ElementInstance``
   (the object's model-frame mask equals its ``gt_masks`` row, typed scalar metadata); the
   false-positive instances (as many as ``matching.fp``, valid for code-loader).
4. ``LeapLoader(<absolute path>, <entry>).check_dataset()`` in a fresh interpreter (what the
   platform runs first); asserts ``is_valid`` and that the element-instance metadata is
   registered (``has_element_instances``).
5. leap.yaml: entry file, the requirements file and every project module the entry imports
   (found statically through the import graph and at run time in step 4) are matched by
   ``include`` and not by ``exclude`` (leap-cli's doublestar glob semantics; ``leap_bundle.py``);
   ``pythonVersion`` is a platform image id (``py311``); the bundle ships exactly one
   requirements file, ``tensorleap_requirements.txt``, and it pins exactly the distributions
   the closure imports (and their locked dependencies), as poetry.lock gives them.
6. Telemetry: no ``~/.tensorleap`` appeared (``TL_DISABLE_ANALYTICS`` is set before
   code_loader is imported).

What it cannot check: the platform's own build (its image installing the requirements file;
``tests/test_leap_platform_requirements.py`` installs it into a fresh venv here) and its model
import of the ONNX file; both run only after ``leap push``.
"""

import os

os.environ.setdefault("TL_DISABLE_ANALYTICS", "1")  # before code_loader is imported anywhere
os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple  # noqa: E402

import numpy as np  # noqa: E402

from leap_bundle import PLATFORM_REQUIREMENTS, check_leap_yaml, check_requirements, read_leap_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent
SYNTH_SPLITS = (4, 4, 4)  # train, val, unlabeled
SYNTH_SIZE = (816, 683)  # width, height: ARMBench's 2448x2048 at 1/3
SYNTH_SEED = 0
MIN_METADATA_FIELDS = 20
RESULT_TAG = "@@LEAP_TEST_RESULT@@"

log = logging.getLogger("leap_test")


# ============================================================================ reporting
@dataclass
class Step:
    name: str
    ok: bool = True
    seconds: float = 0.0
    lines: List[str] = field(default_factory=list)


class Report:
    def __init__(self) -> None:
        self.steps: List[Step] = []
        self.failures: List[str] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Step]:
        step = Step(name)
        self.steps.append(step)
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            yield step
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the run fails
            self.fail(step, f"{name}: {_describe(exc)}")
            traceback.print_exc()
        finally:
            step.seconds = time.perf_counter() - start

    def fail(self, step: Step, message: str) -> None:
        step.ok = False
        self.failures.append(message)
        print(f"   FAIL {message}", flush=True)

    @property
    def ok(self) -> bool:
        return not self.failures and all(s.ok for s in self.steps)


_ENTRY_FILE: Optional[Path] = None


def _describe(exc: BaseException) -> str:
    """The error, with the innermost entry-file function it went through (the registered function)."""
    where = ""
    for e in (exc, exc.__cause__, exc.__context__):
        if e is None or _ENTRY_FILE is None:
            continue
        frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == _ENTRY_FILE]
        if frames:
            where = f" [in {_ENTRY_FILE.stem}.{frames[-1].name}, line {frames[-1].lineno}]"
            break
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}{where}"


# ============================================================================ dataset and model
def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "armbench-segmentation" / "leap-test-synthetic"


def synthetic_dataset(folder: Path) -> Path:
    """The small synthetic dataset, generated unless a complete one with the same parameters exists."""
    from armbench_segmentation.data import synth

    marker_path = folder / synth.MARKER_FILE
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = {}
    wanted = {"train": SYNTH_SPLITS[0], "val": SYNTH_SPLITS[1], "test": SYNTH_SPLITS[2]}
    if (marker.get("complete") and marker.get("splits") == wanted and marker.get("seed") == SYNTH_SEED
            and (marker.get("width"), marker.get("height")) == SYNTH_SIZE):
        return folder
    print(f"   generating the synthetic dataset into {folder}", flush=True)
    synth.generate_dataset(folder, *SYNTH_SPLITS, seed=SYNTH_SEED, width=SYNTH_SIZE[0], height=SYNTH_SIZE[1],
                           workers=1, progress=False)
    return folder


def _import_entry(path: Path):
    """Import the entry file as module ``leap_binder`` (its real name when it is the project's)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


# ============================================================================ registered functions
@dataclass
class Registered:
    """Handlers the entry module registered, by kind."""

    inputs: list
    ground_truths: list
    metadata: list  # the entry's own (code-loader's builtin instance metadata left out)
    losses: list
    metrics: list
    visualizers: list
    latent_spaces: list
    prediction_types: list
    instance_metrics: list = field(default_factory=list)
    instance_masks: list = field(default_factory=list)
    false_positives: list = field(default_factory=list)

    def names(self) -> List[Tuple[str, str]]:
        out = [("preprocess", "tensorleap_preprocess"), ("preprocess_unlabeled", "tensorleap_unlabeled_preprocess")]
        out += [(h.name, "input_encoder") for h in self.inputs]
        out += [(h.name, "gt_encoder") for h in self.ground_truths]
        out += [(h.name, "metadata") for h in self.metadata]
        out += [(f"{p.name} (channel_dim={p.channel_dim}, {len(p.labels)} labels)", "prediction_type")
                for p in self.prediction_types]
        out += [(h.custom_loss_handler_data.name, "custom_loss") for h in self.losses]
        out += [(h.metric_handler_data.name, "custom_metric") for h in self.metrics]
        out += [(h.metric_handler_data.name, "custom_instances_metric") for h in self.instance_metrics]
        out += [(h.name, "instances_masks_encoder") for h in self.instance_masks]
        out += [(h.name, "false_positive_instances_encoder") for h in self.false_positives]
        out += [(f"{h.visualizer_handler_data.name} ({h.visualizer_handler_data.type.name})", "custom_visualizer")
                for h in self.visualizers]
        out += [(h.name, f"custom_latent_space ({h.computed_at.value})") for h in self.latent_spaces]
        return out


#: metadata code-loader registers itself for element instances (not the entry's)
BUILTIN_METADATA = "builtin_instance_"


def registered_handlers(module) -> Registered:
    from code_loader import leap_binder as binder

    sc = binder.setup_container

    def ours(fn) -> bool:
        return getattr(fn, "__module__", None) == module.__name__

    return Registered(
        inputs=list(sc.inputs), ground_truths=list(sc.ground_truths),
        metadata=[h for h in sc.metadata if not h.name.startswith(BUILTIN_METADATA)],
        losses=[h for h in sc.custom_loss_handlers if ours(h.function)],
        metrics=[h for h in sc.metrics if ours(h.function)],
        visualizers=[h for h in sc.visualizers if ours(h.function)],
        latent_spaces=list(sc.custom_latent_spaces.values()),
        prediction_types=list(sc.prediction_types),
        instance_metrics=[h for h in sc.instance_metrics if ours(h.function)],
        instance_masks=list(sc.instance_masks),
        false_positives=[sc.false_positive_instances] if sc.false_positive_instances is not None else [],
    )


def image_ids(module, resp) -> List[str]:
    """A response's image sample ids (the element-instance ids code-loader appends left out)."""
    instances = getattr(resp, "instance_to_sample_ids_mappings", None) or {}
    return [sid for sid in resp.sample_ids if sid not in instances]


CONNECTION_TYPES = {"custom_loss": "CustomLoss", "custom_metric": "Metric", "custom_visualizer": "Visualizer",
                    "custom_latent_space": "CustomLatentSpace"}


def connections_by_name() -> Dict[Tuple[str, str], Any]:
    """(kind, registered name) -> the first NodeConnection the integration test recorded for it."""
    from code_loader import leap_binder as binder

    kinds = {v: k for k, v in CONNECTION_TYPES.items()}
    instance_metrics = {h.metric_handler_data.name for h in binder.setup_container.instance_metrics}
    out: Dict[Tuple[str, str], Any] = {}
    for c in binder.mapping_connections:
        if c.node is None or c.node_inputs is None or c.node.type.value not in kinds:
            continue
        kind = kinds[c.node.type.value]
        if kind == "custom_metric" and c.node.name in instance_metrics:  # same node type as a metric
            kind = "custom_instances_metric"
        out.setdefault((kind, c.node.name), c)
    return out


# ============================================================================ value checks
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def check_values(name: str, values: Any, batch: int, labeled: bool) -> Tuple[List[str], int]:
    """Problems of one metric/loss output column (one value per sample) and its None count."""
    problems: List[str] = []
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            return [f"{name}: expected a 1-D array of {batch} values, got shape {values.shape}"], 0
        values = values.tolist()
    if not isinstance(values, list):
        return [f"{name}: expected a list or 1-D array, got {type(values).__name__}"], 0
    if len(values) != batch:
        problems.append(f"{name}: {len(values)} values for a batch of {batch} samples (one value per sample expected)")
    nones = 0
    for v in values:
        if v is None:
            nones += 1
        elif not _is_number(v):
            problems.append(f"{name}: value {v!r} of type {type(v).__name__} is not a number or None")
        elif not math.isfinite(float(v)):
            if labeled:
                problems.append(f"{name}: non-finite value {v!r} on a labeled sample")
            else:
                nones += 1
    return problems, nones


def check_instance_values(name: str, value: Any, batch: int, n_objects: Sequence[int]) -> List[str]:
    """Problems of an instance metric's output: ``{k: (batch,) array}`` for k = 0 .. the most
    GT objects of a sample of the batch, a finite value for each object (NaN allowed only
    where the value is undefined: no match) and NaN past a sample's last object."""
    if not isinstance(value, dict):
        return [f"{name}: expected a dict {{instance index: array}}, got {type(value).__name__}"]
    problems = []
    if sorted(value) != list(range(max(n_objects, default=0))):
        problems.append(f"{name}: keys {sorted(value)[:8]} for samples with {list(n_objects)} GT objects")
    for k, v in value.items():
        v = np.asarray(v)
        if v.ndim != 1 or len(v) != batch or not np.issubdtype(v.dtype, np.floating):
            problems.append(f"{name}[{k}]: expected ({batch},) floats, got {v.dtype} {v.shape}")
            continue
        for b, n in enumerate(n_objects):
            if k >= n and not np.isnan(v[b]):
                problems.append(f"{name}[{k}]: sample {b} has {n} objects but a value {v[b]}")
            elif k < n and np.isinf(v[b]):
                problems.append(f"{name}[{k}]: infinite value on sample {b}")
    return problems[:5]


def check_confusion(name: str, value: Any, batch: int, class_names: Sequence[str]) -> List[str]:
    from code_loader.contract.datasetclasses import ConfusionMatrixElement
    from code_loader.contract.enums import ConfusionMatrixValue

    if not isinstance(value, list) or len(value) != batch:
        return [f"{name}: expected a list of {batch} per-sample lists, got {type(value).__name__} "
                f"of length {len(value) if isinstance(value, list) else '-'}"]
    problems = []
    for row in value:
        if not isinstance(row, list):
            problems.append(f"{name}: per-sample entry is {type(row).__name__}, expected a list")
            continue
        for e in row:
            if not isinstance(e, ConfusionMatrixElement):
                problems.append(f"{name}: element of type {type(e).__name__}")
            elif (e.label not in class_names or not isinstance(e.expected_outcome, ConfusionMatrixValue)
                  or not 0.0 <= float(e.predicted_probability) <= 1.0):
                problems.append(f"{name}: invalid element {e}")
    return problems[:5]


def check_visualization(name: str, kind, result: Any) -> List[str]:
    from code_loader.contract.enums import LeapDataType
    from code_loader.contract.visualizer_classes import (LeapImage, LeapImageMask, LeapImageWithBBox,
                                                         LeapImageWithHeatmap)

    expected = {LeapDataType.Image: LeapImage, LeapDataType.ImageMask: LeapImageMask,
                LeapDataType.ImageWithBBox: LeapImageWithBBox, LeapDataType.ImageWithHeatmap: LeapImageWithHeatmap}
    cls = expected.get(kind)
    if cls is None:
        return []
    if not isinstance(result, cls):
        return [f"{name}: returned {type(result).__name__}, expected {cls.__name__}"]
    problems = []
    image = result.image if isinstance(result, (LeapImageMask, LeapImageWithHeatmap)) else result.data
    if image.ndim != 3 or image.shape[2] not in (1, 3) or image.size == 0:
        problems.append(f"{name}: image of shape {image.shape}")
    elif np.issubdtype(image.dtype, np.floating) and (not np.isfinite(image).all() or image.max() > 255 or image.min() < 0):
        problems.append(f"{name}: float image outside [0, 255]")
    if isinstance(result, LeapImageMask):
        if result.mask.shape != image.shape[:2]:
            problems.append(f"{name}: mask {result.mask.shape} vs image {image.shape[:2]}")
        if result.mask.size and int(result.mask.max()) >= len(result.labels):
            problems.append(f"{name}: mask value {int(result.mask.max())} but {len(result.labels)} labels")
    if isinstance(result, LeapImageWithBBox):
        for b in result.bounding_boxes:
            coords = [b.x, b.y, b.width, b.height]
            if not all(math.isfinite(v) and -1e-6 <= v <= 1 + 1e-6 for v in coords) or not isinstance(b.label, str):
                problems.append(f"{name}: bounding box {b} is not centre-relative in [0, 1]")
                break
    if isinstance(result, LeapImageWithHeatmap):
        if result.heatmaps.ndim != 3 or result.heatmaps.shape[1:] != image.shape[:2]:
            problems.append(f"{name}: heatmaps {result.heatmaps.shape} vs image {image.shape[:2]}")
        elif not np.isfinite(result.heatmaps).all():
            problems.append(f"{name}: non-finite heatmap")
        if len(result.labels) != len(result.heatmaps):
            problems.append(f"{name}: {len(result.heatmaps)} heatmaps, {len(result.labels)} labels")
    return problems


def check_metadata(name: str, value: Any, types: Dict[str, Any]) -> List[str]:
    if not isinstance(value, dict):
        return [f"{name}: expected a flat dict of scalars, got {type(value).__name__}"]
    problems = []
    if len(value) < MIN_METADATA_FIELDS:
        problems.append(f"{name}: {len(value)} fields, at least {MIN_METADATA_FIELDS} expected")
    for k, v in value.items():
        if v is None:
            if k not in types:
                problems.append(f"{name}_{k}: None without a metadata_type")
        elif isinstance(v, float) and not math.isfinite(v):
            problems.append(f"{name}_{k}: {v} (use None)")
        elif not isinstance(v, (int, float, str, bool)):
            problems.append(f"{name}_{k}: {type(v).__name__} is not a scalar")
    return problems


# ============================================================================ step 2: integration test
def _print_trace(exc: BaseException) -> None:
    """A traceback for a bug; none for an input problem the project names itself (an
    ArmbenchError: its one-line message, reported once by the caller, says it all)."""
    from armbench_segmentation.errors import ArmbenchError

    if not isinstance(exc, ArmbenchError):
        traceback.print_exception(exc)


def run_integration_test(module, report: Report, step, n_samples: int) -> Dict[str, Any]:
    responses = list(module.preprocess()) + [module.preprocess_unlabeled()]
    excluded = getattr(module, "excluded_samples", dict)()
    for sid, problem in excluded.items():  # named once, against the sample that has the problem
        step.lines.append(f"excluded from the preprocess: {problem}")
    by_split = {}
    for resp in responses:
        split = resp.data["split"]
        by_split[split] = resp
        ids = image_ids(module, resp)[:n_samples]
        if len(ids) < n_samples:
            report.fail(step, f"split {split!r} has {len(ids)} samples, {n_samples} needed")
        for sid in ids:
            sink = io.StringIO()
            start = time.perf_counter()
            try:
                with contextlib.redirect_stdout(sink):
                    module.integration_test(sid, resp)
            except Exception as exc:  # noqa: BLE001
                print(sink.getvalue(), end="")
                _print_trace(exc)
                report.fail(step, f"integration_test({sid!r}, {split}): {_describe(exc)}")
                continue
            step.lines.append(f"{split:9s} {sid}: ok ({time.perf_counter() - start:.1f} s)")
    return by_split


# ============================================================================ step 3: platform replay
def _func_name(handler) -> str:
    fn = getattr(handler, "function", handler)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', '?')}"


def _batched(encoded: List[Dict[str, np.ndarray]], name: str) -> np.ndarray:
    return np.stack([e[name] for e in encoded])


def _source(node, batch: List[Dict[str, np.ndarray]]) -> np.ndarray:
    """The batched array a recorded connection feeds from (an encoder or a model output)."""
    from code_loader.contract.mapping import NodeMappingType

    t = node.type
    if t in (NodeMappingType.GroundTruth, NodeMappingType.Input) or t.name.startswith("Input"):
        return _batched(batch, node.name)
    if t.name.startswith("Prediction"):
        return _batched(batch, f"__prediction{t.name[len('Prediction'):]}")
    raise ValueError(f"unsupported connection source {t}")


def _needs_gt(conn) -> bool:
    from code_loader.contract.mapping import NodeMappingType

    return any(n.type == NodeMappingType.GroundTruth for n in conn.node_inputs.values())


def replay(module, registered: Registered, responses: Dict[str, Any], report: Report, step, n_samples: int,
           summary: Dict[str, Dict[str, Any]], wiring_known: bool) -> None:
    from code_loader.utils import simulate_engine_float16_downcast

    connections = connections_by_name()
    kinds = ([("custom_loss", h.custom_loss_handler_data.name, h) for h in registered.losses]
             + [("custom_metric", h.metric_handler_data.name, h) for h in registered.metrics]
             + [("custom_instances_metric", h.metric_handler_data.name, h) for h in registered.instance_metrics]
             + [("custom_latent_space", h.name, h) for h in registered.latent_spaces]
             + [("custom_visualizer", h.visualizer_handler_data.name, h) for h in registered.visualizers])
    for kind, name, _ in kinds:
        if (kind, name) not in connections and wiring_known:
            report.fail(step, f"{kind} '{name}' is registered but the integration test never calls it")
    if not wiring_known:
        step.lines.append("only the functions the integration test reached are replayed (it failed)")

    class_names = list(module._settings().data.class_names)
    k = module.max_instances()
    size = int(module._settings().data.image_size)
    expected_shapes = {"image": (3, size, size), "gt_boxes": (k, 6), "gt_masks": (k, size, -(-size // 8))}
    model = module.load_model()

    for split, resp in responses.items():
        labeled = split != "unlabeled"
        ids = image_ids(module, resp)[:n_samples]
        encoded = []
        for sid in ids:
            enc: Dict[str, np.ndarray] = {}
            for h in registered.inputs + (registered.ground_truths if labeled else []):
                try:
                    enc[h.name] = value = np.asarray(h.function(sid, resp))
                except Exception as exc:  # noqa: BLE001
                    report.fail(step, f"encoder '{h.name}' on {split}/{sid}: {_describe(exc)}")
                    continue
                want = expected_shapes.get(h.name)
                if value.dtype != np.float32 or (want is not None and value.shape != want):
                    report.fail(step, f"encoder '{h.name}' on {split}/{sid}: {value.dtype} {value.shape}, "
                                      f"expected float32 {want}")
                elif h.name == "image" and not (0.0 <= value.min() and value.max() <= 1.0):
                    report.fail(step, f"encoder 'image' on {split}/{sid}: values outside [0, 1]")
                elif h.name == "gt_boxes" and not np.isin(np.unique(value[..., 5]), [0.0, 1.0]).all():
                    report.fail(step, f"encoder 'gt_boxes' on {split}/{sid}: valid flags not 0/1")
                elif h.name == "gt_masks" and not (np.array_equal(value, np.rint(value)) and value.min() >= 0
                                                   and value.max() <= 255 and np.array_equal(
                                                       value, value.astype(np.float16).astype(np.float32))):
                    report.fail(step, f"encoder 'gt_masks' on {split}/{sid}: packed mask values not integers "
                                      f"in [0, 255] (not exact in float16)")
            if not labeled:
                for h in registered.ground_truths:  # what the local check sees: an empty array
                    value = np.asarray(h.function(sid, resp))
                    if value.size != 0 or value.dtype != np.float32:
                        report.fail(step, f"encoder '{h.name}' on unlabeled {sid}: {value.dtype} {value.shape}, "
                                          f"expected an empty float32 array")
            for h in registered.metadata:
                try:
                    meta = h.function(sid, resp)
                except Exception as exc:  # noqa: BLE001
                    report.fail(step, f"metadata '{h.name}' on {split}/{sid}: {_describe(exc)}")
                    continue
                for p in check_metadata(h.name, meta, h.metadata_type or {}):
                    report.fail(step, f"metadata on {split}/{sid}: {p}")
                summary.setdefault(f"metadata '{h.name}'", {"fields": len(meta) if isinstance(meta, dict) else 0})
            image = enc.get(registered.inputs[0].name)
            if image is None:
                continue
            try:
                outputs = model.run(None, {model.get_inputs()[0].name: image[None]})
            except Exception as exc:  # noqa: BLE001
                report.fail(step, f"model on {split}/{sid}: {_describe(exc)}")
                continue
            enc.update({f"__prediction{i}": np.asarray(o)[0] for i, o in enumerate(outputs)})
            encoded.append(enc)
        if not encoded:
            continue

        source, needs_gt = _source, _needs_gt
        # losses, metrics, latent spaces: batches of 2 (and a last batch of 1), float16 like the engine
        batches = [encoded[i:i + 2] for i in range(0, len(encoded), 2)]
        for kind, name, handler in kinds:
            conn = connections.get((kind, name))
            if conn is None or kind == "custom_visualizer" or (not labeled and needs_gt(conn)):
                continue
            stats = summary.setdefault(f"{kind} '{name}'", {"calls": 0, "values": {}, "nones": {}, "seconds": 0.0,
                                                            "samples": 0})
            for batch in batches:
                b = len(batch)
                try:
                    kwargs = {arg: simulate_engine_float16_downcast(source(node, batch))
                              for arg, node in conn.node_inputs.items()}
                    t0 = time.perf_counter()
                    result = handler.function(**kwargs)
                    stats["seconds"] += time.perf_counter() - t0
                    stats["samples"] += b
                except Exception as exc:  # noqa: BLE001
                    _print_trace(exc)
                    report.fail(step, f"{kind} '{name}' ({_func_name(handler)}) on {split}, batch of {b}: "
                                      f"{_describe(exc)}")
                    continue
                stats["calls"] += 1
                problems: List[str] = []
                if kind == "custom_instances_metric":
                    n_objects = [int((e["gt_boxes"][:, 5] > 0.5).sum()) for e in batch]
                    problems += check_instance_values(name, result, b, n_objects)
                    stats["values"].setdefault("objects", []).extend(n_objects)
                elif kind == "custom_latent_space":
                    r = np.asarray(result)
                    if r.ndim != 2 or len(r) != b or not np.isfinite(r).all() or r.shape[1] > 4096:
                        problems.append(f"{name}: expected finite (batch={b}, d<=4096), got {r.dtype} {r.shape}")
                    stats["values"].setdefault("dim", []).append(r.shape[-1] if r.ndim else 0)
                elif name == "confusion_matrix" or (isinstance(result, list) and result and isinstance(result[0], list)):
                    problems += check_confusion(name, result, b, class_names)
                    stats["values"].setdefault("elements", []).extend(len(r) for r in result if isinstance(r, list))
                else:
                    columns = result if isinstance(result, dict) else {name: result}
                    for key, values in columns.items():
                        p, nones = check_values(f"{name}.{key}" if key != name else name, values, b, labeled)
                        problems += p
                        if not p:
                            stats["values"].setdefault(key, []).extend(
                                float(v) for v in np.asarray(values, dtype=object).tolist() if _is_number(v)
                                and math.isfinite(float(v)))
                            stats["nones"][key] = stats["nones"].get(key, 0) + nones
                for p in problems[:3] + ([f"... and {len(problems) - 3} more"] if len(problems) > 3 else []):
                    report.fail(step, f"{kind} '{name}' ({_func_name(handler)}) on {split}, batch of {b}: {p}")

        # visualizers: one sample at a time, with a batch axis of 1, float32
        for kind, name, handler in kinds:
            conn = connections.get((kind, name))
            if conn is None or kind != "custom_visualizer" or (not labeled and needs_gt(conn)):
                continue
            stats = summary.setdefault(f"{kind} '{name}'", {"calls": 0, "seconds": 0.0})
            for enc in encoded:
                try:
                    kwargs = {arg: source(node, [enc]) for arg, node in conn.node_inputs.items()}
                    t0 = time.perf_counter()
                    result = handler.function(**kwargs)
                    stats["seconds"] += time.perf_counter() - t0
                except Exception as exc:  # noqa: BLE001
                    _print_trace(exc)
                    report.fail(step, f"{kind} '{name}' ({_func_name(handler)}) on {split}: {_describe(exc)}")
                    continue
                stats["calls"] += 1
                for p in check_visualization(name, handler.visualizer_handler_data.type, result):
                    report.fail(step, f"{kind} '{name}' ({_func_name(handler)}) on {split}: {p}")
        step.lines.append(f"{split:9s} {len(encoded)} samples replayed")


# ============================================================================ step 3b: element instances
def check_element_instances(module, responses: Dict[str, Any], report: Report, step, n_samples: int) -> None:
    """Per labeled sample: the preprocess lists ``<sample id>_<k>`` for each of the length
    encoder's objects; each ``ElementInstance`` carries the (S, S) model-frame mask of GT row k
    (equal to the decoded ``gt_masks`` row) and the declared scalar metadata; None only past
    the sample's last decoded object."""
    from code_loader import leap_binder as binder
    from code_loader.contract.datasetclasses import ElementInstance

    from armbench_segmentation.codecs import unpack_mask_bits

    sc = binder.setup_container
    if not sc.instance_masks:
        step.lines.append("no element instances registered")
        return
    length = getattr(module, "gt_instance_count")
    declared = dict(getattr(module, "INSTANCE_METADATA_TYPES", {}))
    size = int(module._settings().data.image_size)
    n_instances = 0
    for split, resp in responses.items():
        mapping = resp.sample_ids_to_instance_mappings or {}
        if split == "unlabeled":
            if mapping:
                report.fail(step, f"the unlabeled split has element instances: {list(mapping)[:3]}")
            continue
        for sid in image_ids(module, resp)[:n_samples]:
            n = length(sid, resp)
            if mapping.get(sid) != [f"{sid}_{k}" for k in range(n)]:
                report.fail(step, f"{split}/{sid}: preprocess instance ids {mapping.get(sid)} for {n} objects")
            boxes, masks = np.asarray(module.gt_boxes(sid, resp)), np.asarray(module.gt_masks(sid, resp))
            valid = np.flatnonzero(boxes[:, 5] > 0.5)
            gt_masks = unpack_mask_bits(masks[valid], size)  # (G, S, S)
            if n < len(valid):
                report.fail(step, f"{split}/{sid}: {n} element instances for {len(valid)} GT objects")
            for k in range(n):
                inst = None
                for handler in sc.instance_masks:
                    inst = handler.function(sid, resp, k)
                if k >= len(valid):
                    if inst is not None:
                        report.fail(step, f"{split}/{sid}: instance {k} past the last of {len(valid)} GT objects")
                    continue
                if not isinstance(inst, ElementInstance):
                    report.fail(step, f"{split}/{sid}: instance {k} is {type(inst).__name__}, expected ElementInstance")
                    continue
                n_instances += 1
                mask = np.asarray(inst.mask)
                if mask.dtype != np.float32 or mask.shape != (size, size) \
                        or not np.array_equal(mask > 0.5, gt_masks[k]):
                    report.fail(step, f"{split}/{sid}: instance {k} mask {mask.dtype} {mask.shape} is not GT row {k}")
                meta = inst.instance_metadata or {}
                if declared and sorted(meta) != sorted(declared):
                    report.fail(step, f"{split}/{sid}: instance {k} metadata keys {sorted(meta)}, declared "
                                      f"{sorted(declared)}")
                for key, value in meta.items():
                    if value is None and key not in declared:
                        report.fail(step, f"{split}/{sid}: instance {k} metadata {key} is None without a type")
                    elif value is not None and (not isinstance(value, (int, float, str, bool))
                                                or (isinstance(value, float) and not math.isfinite(value))):
                        report.fail(step, f"{split}/{sid}: instance {k} metadata {key}={value!r} is not a scalar")
    step.lines.append(f"{n_instances} element instances checked (masks = gt_masks rows; metadata "
                      f"{', '.join(declared) or '-'})")
    if sc.false_positive_instances is not None:
        step.lines += check_false_positives(module, responses, report, step, n_samples)


def _predictions(model, image: np.ndarray) -> Dict[str, np.ndarray]:
    """One sample's model outputs by prediction-type name (what the false-positive encoder gets)."""
    from code_loader import leap_binder as binder

    outputs = model.run(None, {model.get_inputs()[0].name: image[None]})
    return {pt.name: np.asarray(o)[0] for pt, o in zip(binder.setup_container.prediction_types, outputs)}


def check_false_positives(module, responses: Dict[str, Any], report: Report, step, n_samples: int) -> List[str]:
    """Per labeled sample: as many false-positive instances as the ``matching`` metric's ``fp``,
    each valid for code-loader (instance metrics registered, floats), an (S, S) mask and the
    declared metadata keys; none for an unlabeled sample."""
    from code_loader import LeapLoader
    from code_loader import leap_binder as binder

    sc = binder.setup_container
    handler = sc.false_positive_instances
    matching = next((h for h in sc.metrics if h.metric_handler_data.name == "matching"), None)
    names = {h.metric_handler_data.name for h in sc.instance_metrics}
    declared = dict(getattr(module, "FP_METADATA_TYPES", {}))
    size = int(module._settings().data.image_size)
    model = module.load_model()
    total = 0
    for split, resp in responses.items():
        for sid in image_ids(module, resp)[:n_samples]:
            image = np.asarray(module.input_image(sid, resp))
            preds = _predictions(model, image)
            fps = handler.function(sid, resp, preds)
            if split == "unlabeled":
                if fps:
                    report.fail(step, f"{split}/{sid}: {len(fps)} false-positive instances without GT")
                continue
            try:
                LeapLoader._validate_false_positive_instances(fps, names)
            except Exception as exc:  # noqa: BLE001
                report.fail(step, f"{split}/{sid}: false-positive instances: {_describe(exc)}")
                continue
            total += len(fps)
            if matching is not None:
                boxes, masks = module.gt_boxes(sid, resp)[None], module.gt_masks(sid, resp)[None]
                fp = matching.function(preds["detections"][None], preds["prototypes"][None], boxes, masks)["fp"][0]
                if len(fps) != fp:
                    report.fail(step, f"{split}/{sid}: {len(fps)} false-positive instances, matching.fp = {fp}")
            for inst in fps:
                mask = np.asarray(inst.mask)
                if mask.shape != (size, size) or mask.dtype != np.float32 or not np.isin(mask, (0.0, 1.0)).all():
                    report.fail(step, f"{split}/{sid}: false positive {inst.name}: mask {mask.dtype} {mask.shape}")
                if declared and sorted(inst.instance_metadata or {}) != sorted(declared):
                    report.fail(step, f"{split}/{sid}: false positive {inst.name}: metadata keys "
                                      f"{sorted(inst.instance_metadata or {})}, declared {sorted(declared)}")
    return [f"{total} false-positive instances checked (one per unmatched prediction, as matching.fp counts)"]


def float16_effect(module, registered: Registered, responses: Dict[str, Any], n_samples: int) -> List[str]:
    """How float16 storage changes decoding, F1 and the loss on the labeled samples
    (informational). Detections are paired by box IoU: near-tied scores may reorder them."""
    from code_loader.utils import simulate_engine_float16_downcast as f16

    from armbench_segmentation.metrics.overlap import box_iou, mask_overlaps

    model = module.load_model()
    n_same = n_total = 0
    ious: List[float] = []
    d_score = d_loss = d_f1 = 0.0
    for split in ("train", "val"):
        resp = responses.get(split)
        for sid in image_ids(module, resp)[:n_samples] if resp is not None else []:
            enc = {h.name: np.asarray(h.function(sid, resp)) for h in registered.inputs + registered.ground_truths}
            image = enc[registered.inputs[0].name]
            det, protos = (np.asarray(o)[0] for o in model.run(None, {model.get_inputs()[0].name: image[None]})[:2])
            p32 = module._evaluation(det, protos).predictions
            p16 = module._evaluation(f16(det), f16(protos)).predictions
            n_total += 1
            n_same += len(p32) == len(p16)
            if len(p32) and len(p16):
                j = box_iou(p32.boxes, p16.boxes).argmax(axis=1)  # (N,) closest float16 detection
                d_score = max(d_score, float(np.abs(p32.scores - p16.scores[j]).max()))
                ious += mask_overlaps(p32.masks, p16.masks[j]).iou.diagonal().tolist()
            gt32 = (det, protos, enc["gt_boxes"], enc["gt_masks"])
            gt16 = (f16(det), f16(protos), f16(enc["gt_boxes"]), f16(enc["gt_masks"]))
            e32, e16 = module._evaluation(*gt32), module._evaluation(*gt16)
            l32, l16 = e32.losses["total"], e16.losses["total"]
            d_loss = max(d_loss, abs(l16 - l32) / max(abs(l32), 1e-12))
            d_f1 = max(d_f1, abs(e32.matching.f1 - e16.matching.f1))
    iou_text = f"mask IoU of paired detections min {min(ious):.3f} mean {np.mean(ious):.4f}" if ious else "no detections"
    return [f"float16 storage vs float32 ({n_total} labeled samples): same detection count in {n_same}; {iou_text}; "
            f"max |d score| {d_score:.2g}; max |d F1| {d_f1:.2g}; loss total max rel. diff {d_loss:.2g}"]


# ============================================================================ parity: dump and compare
DUMP_FORMAT = 1


def _plain(value: Any) -> Any:
    """A metric/metadata value -> a JSON scalar (None for NaN / undefined)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dump_values(module, registered: Registered, responses: Dict[str, Any], n_samples: Optional[int],
                report: Report, step) -> Dict[str, Any]:
    """What the Tensorleap face computes, per sample: the wired losses and metrics (one sample
    at a time, float32: the platform's float16 storage is left out so the computation itself is
    compared) and the metadata. Names: ``<function>`` for a single value, ``<function>.<key>``
    for a dict output (metadata: ``<metadata name>.<key>``)."""
    connections = connections_by_name()
    model = module.load_model()
    wired = [("custom_loss", h.custom_loss_handler_data.name, h) for h in registered.losses] + \
            [("custom_metric", h.metric_handler_data.name, h) for h in registered.metrics]
    instance_wired = [(h.metric_handler_data.name, h) for h in registered.instance_metrics]
    samples: Dict[str, Any] = {}
    for split, resp in responses.items():
        labeled = split != "unlabeled"
        ids = image_ids(module, resp) if n_samples is None else image_ids(module, resp)[:n_samples]
        for sid in ids:
            try:
                enc = {h.name: np.asarray(h.function(sid, resp))
                       for h in registered.inputs + (registered.ground_truths if labeled else [])}
                outputs = model.run(None, {model.get_inputs()[0].name: enc[registered.inputs[0].name][None]})
                enc.update({f"__prediction{i}": np.asarray(o)[0] for i, o in enumerate(outputs)})
                values: Dict[str, Any] = {}
                for kind, name, handler in wired:
                    conn = connections.get((kind, name))
                    if conn is None or name == "confusion_matrix" or (not labeled and _needs_gt(conn)):
                        continue
                    result = handler.function(**{arg: _source(node, [enc]) for arg, node in conn.node_inputs.items()})
                    if isinstance(result, dict):
                        values.update({f"{name}.{k}": _plain(v[0]) for k, v in result.items()})
                    else:
                        values[name] = _plain(np.asarray(result).reshape(-1)[0])
                for h in registered.metadata:
                    meta = h.function(sid, resp)
                    values.update({f"{h.name}.{k}": _plain(v) for k, v in meta.items()} if isinstance(meta, dict)
                                  else {h.name: _plain(meta)})
                instances = _dump_instances(module, registered, instance_wired, connections, enc, sid, resp) \
                    if labeled else []
                false_positives = []
                for handler in registered.false_positives if labeled else []:
                    preds = {pt.name: enc[f"__prediction{i}"] for i, pt in enumerate(registered.prediction_types)}
                    false_positives = [{**{f"meta.{k}": _plain(v) for k, v in (i.instance_metadata or {}).items()},
                                        **{k: _plain(v) for k, v in (i.instance_metrics or {}).items()}}
                                       for i in handler.function(sid, resp, preds)]
            except Exception as exc:  # noqa: BLE001
                report.fail(step, f"dump of {split}/{sid}: {_describe(exc)}")
                continue
            samples[sid] = {"split": split, "values": values, "instances": instances,
                            "false_positives": false_positives}
    return {"format": DUMP_FORMAT, "float16_simulation": False,
            "engine_columns": dict(getattr(module, "ENGINE_COLUMNS", {})),
            "instance_columns": dict(getattr(module, "INSTANCE_ENGINE_COLUMNS", {})),
            "fp_instance_columns": dict(getattr(module, "FP_INSTANCE_COLUMNS", {})), "samples": samples}


def _dump_instances(module, registered: Registered, wired, connections, enc, sid: str, resp) -> List[Dict[str, Any]]:
    """Per element instance of a labeled sample: its metadata (``meta.<key>``) and every wired
    instance metric (``<name>``) as the platform computes them, one object at a time."""
    from code_loader import leap_binder as binder

    metrics = {}
    for name, handler in wired:
        conn = connections.get(("custom_instances_metric", name))
        if conn is not None:
            metrics[name] = handler.function(**{arg: _source(node, [enc]) for arg, node in conn.node_inputs.items()})
    out = []
    for k in range(module.gt_instance_count(sid, resp)):
        inst = None
        for handler in binder.setup_container.instance_masks:
            inst = handler.function(sid, resp, k)
        if inst is None:
            continue
        row: Dict[str, Any] = {"index": k}
        row.update({f"meta.{key}": _plain(v) for key, v in (inst.instance_metadata or {}).items()})
        row.update({name: _plain(float(v[k][0])) if k in v else None for name, v in metrics.items()})
        out.append(row)
    return out


def _csv_value(text: str) -> Any:
    """A samples.csv cell -> None, a number, a bool or the string (a formula-neutralising
    leading quote removed)."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        pass
    from armbench_segmentation.analysis.exports import FORMULA_PREFIXES

    if text.startswith("'") and text[1:2] and text[1] in FORMULA_PREFIXES:
        return text[1:]
    return text


def _same(dumped: Any, engine: Any, tolerance: float) -> bool:
    if dumped is None or engine is None:
        return dumped is None and engine is None
    if isinstance(dumped, str) or isinstance(engine, str):
        return str(dumped) == str(engine)
    if isinstance(dumped, (bool, int)) and not isinstance(dumped, float):
        return float(dumped) == float(engine)  # counts and flags: exactly
    return math.isclose(float(dumped), float(engine), rel_tol=tolerance, abs_tol=tolerance)


def compare_dump(dump: Dict[str, Any], samples_csv: Path, tolerance: float = 1e-6) -> Tuple[int, int, List[str]]:
    """Differences between a dump and ``armbench analyze``'s samples.csv.

    Every dumped name must have its engine column (``engine_columns``); counts, flags and
    strings must be equal, floats within ``tolerance`` (relative or absolute), None where the
    engine has an empty cell. Returns (samples compared, values compared, problems).
    """
    import csv

    with open(samples_csv, newline="", encoding="utf-8") as f:
        rows = {(r["split"], _csv_value(r["sample_id"])): r for r in csv.DictReader(f)}
    prefixes = dump.get("engine_columns", {})
    problems: List[str] = []
    n_values = 0
    for sid, entry in dump["samples"].items():
        row = rows.get((entry["split"], sid))
        if row is None:
            problems.append(f"{entry['split']}/{sid}: not in {samples_csv}")
            continue
        for name, value in entry["values"].items():
            function, _, key = name.partition(".")
            if function not in prefixes:
                problems.append(f"{sid}: {name} has no engine column (ENGINE_COLUMNS lacks {function!r})")
                continue
            column = prefixes[function] + key if key else prefixes[function]
            if column not in row and key in row:  # an identity field (e.g. split): one column, no prefix
                column = key
            if column not in row:
                problems.append(f"{sid}: {name} -> column {column!r} is not in {samples_csv.name}")
                continue
            n_values += 1
            engine = _csv_value(row[column])
            if not _same(value, engine, tolerance):
                problems.append(f"{entry['split']}/{sid}: {name} = {value!r} on the Tensorleap face, "
                                f"{column} = {engine!r} in {samples_csv.name}")
    instances_csv = samples_csv.with_name("instances.csv")
    if any(e.get("instances") for e in dump["samples"].values()):
        n, p = compare_instances(dump, instances_csv, rows, tolerance)
        n_values += n
        problems += p
    return len(dump["samples"]), n_values, problems


def compare_instances(dump: Dict[str, Any], instances_csv: Path, sample_rows: Dict[Any, Dict[str, str]],
                      tolerance: float = 1e-6) -> Tuple[int, List[str]]:
    """The dump's element instances against the GT rows of ``armbench analyze``'s
    instances.csv: the same objects per sample; each instance's metadata ``meta.<key>`` equals
    the column ``key`` (``tote_color``: the sample's ``meta_tote_color``), each instance metric
    its ``instance_columns`` column (``matched_score``: the ``score`` of the prediction row the
    GT row's ``matched_index`` names). Returns (values compared, problems)."""
    import csv

    if not instances_csv.is_file():
        return 0, [f"{instances_csv} is missing: the dump has element instances to compare"]
    with open(instances_csv, newline="", encoding="utf-8") as f:
        engine: Dict[Tuple[Any, Any, str], Dict[int, Dict[str, str]]] = {}
        for r in csv.DictReader(f):
            engine.setdefault((r["split"], _csv_value(r["sample_id"]), r["kind"]), {})[int(r["index"])] = r
    columns = dump.get("instance_columns", {})
    fp_columns = dump.get("fp_instance_columns", {})
    problems: List[str] = []
    n_values = 0

    def same(split, sid, label, name, value, cell, where):
        nonlocal n_values
        if cell is None:
            problems.append(f"{split}/{sid}{label}: {name} -> {where} not found")
            return
        n_values += 1
        if not _same(value, _csv_value(cell), tolerance):
            problems.append(f"{split}/{sid}{label}: {name} = {value!r} on the Tensorleap face, "
                            f"{where} = {_csv_value(cell)!r} in {instances_csv.name}")

    def meta_cell(row, sample_row, key):
        """An instance's metadata value: its own instances.csv column, else the sample's meta_ column."""
        return (row.get(key), key) if key in row else (sample_row.get(f"meta_{key}"), f"meta_{key}")

    for sid, entry in dump["samples"].items():
        split, dumped = entry["split"], entry.get("instances") or []
        if split == "unlabeled":
            continue
        sample_row = sample_rows.get((split, sid), {})
        pred_all = engine.get((split, sid, "pred"), {})
        engine_fps = [pred_all[i] for i in sorted(pred_all) if _csv_value(pred_all[i]["false_positive"]) is True]
        fps = entry.get("false_positives") or []
        if "false_positives" in entry and len(fps) != len(engine_fps):
            problems.append(f"{split}/{sid}: {len(fps)} false-positive instances on the Tensorleap face, "
                            f"{len(engine_fps)} prediction rows with false_positive in {instances_csv.name}")
        elif "false_positives" in entry:
            for inst, row in zip(fps, engine_fps):
                label = f" pred#{row['index']}"
                for name, value in inst.items():
                    if name.startswith("meta."):
                        same(split, sid, label, name, value, *meta_cell(row, sample_row, name[len("meta."):]))
                    elif name in fp_columns:
                        same(split, sid, label, name, value, row.get(fp_columns[name]), fp_columns[name])
        gt_rows, pred_rows = engine.get((split, sid, "gt"), {}), engine.get((split, sid, "pred"), {})
        if sorted(i["index"] for i in dumped) != sorted(gt_rows):
            problems.append(f"{split}/{sid}: element instances {[i['index'] for i in dumped]} on the Tensorleap "
                            f"face, GT rows {sorted(gt_rows)} in {instances_csv.name}")
            continue
        for inst in dumped:
            row = gt_rows[inst["index"]]
            for name, value in inst.items():
                if name == "index":
                    continue
                if name.startswith("meta."):
                    cell, where = meta_cell(row, sample_row, name[len("meta."):])
                elif columns.get(name) == "matched_score":
                    matched = _csv_value(row["matched_index"])
                    cell = "" if matched is None else pred_rows.get(int(matched), {}).get("score")
                    where = f"score of prediction {matched}"
                elif name in columns and columns[name] in row:
                    cell, where = row[columns[name]], columns[name]
                else:
                    problems.append(f"{split}/{sid}: instance value {name} has no instances.csv column")
                    continue
                same(split, sid, f"#{inst['index']}", name, value, cell, where)
    return n_values, problems


def run_compare(dump_path: str, samples_csv: str) -> int:
    dump = json.loads(Path(dump_path).read_text(encoding="utf-8"))
    n_samples, n_values, problems = compare_dump(dump, Path(samples_csv))
    splits: Dict[str, int] = {}
    for entry in dump["samples"].values():
        splits[entry["split"]] = splits.get(entry["split"], 0) + 1
    print(f"parity: {n_samples} samples ({', '.join(f'{k} {v}' for k, v in splits.items())}), {n_values} values "
          f"compared, {len(problems)} differences")
    for p in problems[:40]:
        print(f"  - {p}")
    if len(problems) > 40:
        print(f"  ... and {len(problems) - 40} more")
    return 0 if problems == [] and n_values > 0 else 1


# ============================================================================ step 4: check_dataset
CHECK_DATASET = r"""
import json, os, sys
os.environ.setdefault("TL_DISABLE_ANALYTICS", "1")
code_dir, entry, project = sys.argv[1], sys.argv[2], os.path.realpath(sys.argv[3])
from code_loader import LeapLoader
result = LeapLoader(code_dir, entry).check_dataset()
modules = sorted({os.path.realpath(m.__file__) for m in list(sys.modules.values())
                  if isinstance(getattr(m, "__file__", None), str)
                  and os.path.realpath(m.__file__).startswith(project + os.sep)})
failed = [{"name": p.name, "display": p.display} for p in result.payloads if not p.is_passed]
setup = result.setup
print(TAG + json.dumps({"is_valid": bool(result.is_valid), "general_error": result.general_error,
                        "failed": failed, "payloads": len(result.payloads), "modules": modules,
                        "payload_names": [p.name for p in result.payloads],
                        "has_element_instances": bool(getattr(setup, "has_element_instances", False)),
                        "metadata": [m.name for m in getattr(setup, "metadata", None) or []],
                        "print_log": (result.print_log or "")[-3000:]}, default=str))
"""


def check_dataset(entry: Path, step) -> Dict[str, Any]:
    code = CHECK_DATASET.replace("TAG", repr(RESULT_TAG))
    proc = subprocess.run([sys.executable, "-c", code, str(entry.parent.resolve()), entry.name, str(ROOT)],
                          capture_output=True, text=True, env=dict(os.environ), timeout=900)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)), None)
    if proc.returncode != 0 or line is None:
        sys.stdout.write(proc.stdout[-4000:])
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"check_dataset subprocess failed with exit status {proc.returncode}")
    return json.loads(line[len(RESULT_TAG):])


# ============================================================================ step 5: leap.yaml
def check_bundle(config: Dict[str, Any], runtime_modules: Sequence[str], step, report: Report) -> None:
    failures, lines = check_leap_yaml(config, runtime_modules, ROOT)
    requirements = ROOT / PLATFORM_REQUIREMENTS
    entry = ROOT / str(config.get("entryFile", "leap_binder.py"))
    if requirements.is_file() and entry.is_file():
        more, more_lines = check_requirements(requirements.read_text(encoding="utf-8"), entry, ROOT)
        failures, lines = failures + more, lines + more_lines
    for message in failures:
        report.fail(step, message)
    step.lines += lines


# ============================================================================ main
def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="poetry run test", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", help="ARMBench-layout folder (default: ARMBENCH_DATASET, else the synthetic one)")
    parser.add_argument("--model", help="ONNX export (default: ARMBENCH_MODEL, else model.path)")
    parser.add_argument("--entry", help="entry file (default: leap.yaml entryFile)")
    parser.add_argument("--samples", default="3", help="samples per split (default 3; 'all' with --dump)")
    parser.add_argument("--dump", metavar="FILE", help="also write what the Tensorleap face computes per sample "
                        "(sample id -> loss/metric/metadata name -> value) as JSON")
    parser.add_argument("--compare", nargs=2, metavar=("DUMP", "SAMPLES_CSV"),
                        help="compare a --dump file with samples.csv of `armbench analyze` on the same data and "
                             "settings, then exit (0: identical)")
    parser.add_argument("-v", "--verbose", action="store_true", help="INFO logging")
    return parser.parse_args(argv)


def _summarize(summary: Dict[str, Dict[str, Any]]) -> List[str]:
    lines = []
    for name, stats in summary.items():
        if "values" in stats:
            parts = []
            for key, values in stats["values"].items():
                nones = stats.get("nones", {}).get(key, 0)
                mean = f"{np.mean(values):.3g}" if values else "-"
                parts.append(f"{key}={mean}" + (f" ({nones} None)" if nones else ""))
            shown = ", ".join(parts[:6]) + (f", ... {len(parts) - 6} more" if len(parts) > 6 else "")
            per = 1000 * stats["seconds"] / max(stats["samples"], 1)
            lines.append(f"{name}: {stats['calls']} batches, {per:.0f} ms/sample; means: {shown}")
        elif "fields" in stats:
            lines.append(f"{name}: {stats['fields']} scalar fields per sample")
        else:
            lines.append(f"{name}: {stats['calls']} samples, {1000 * stats['seconds'] / max(stats['calls'], 1):.0f} ms/sample")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    global _ENTRY_FILE
    args = _parse(argv)
    if args.compare:
        return run_compare(*args.compare)
    if args.samples != "all" and not (args.samples.isdigit() and int(args.samples) > 0):
        print(f"poetry run test: error: --samples must be a positive integer or 'all', got {args.samples!r}",
              file=sys.stderr)
        return 2
    if args.samples == "all" and not args.dump:
        print("poetry run test: error: --samples all needs --dump FILE (the checks run on a few samples)",
              file=sys.stderr)
        return 2
    dump_n = None if args.samples == "all" else int(args.samples)
    args.samples = 3 if args.samples == "all" else int(args.samples)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    report = Report()
    telemetry_dir = Path.home() / ".tensorleap"
    telemetry_existed = telemetry_dir.exists()
    module = registered = responses = None
    summary: Dict[str, Dict[str, Any]] = {}
    runtime_modules: List[str] = []
    config: Dict[str, Any] = {}

    with report.step("setup") as step:
        config = read_leap_yaml()
        entry = Path(args.entry).resolve() if args.entry else (ROOT / str(config.get("entryFile", "leap_binder.py")))
        _ENTRY_FILE = entry.resolve()
        if args.dataset:
            os.environ["ARMBENCH_DATASET"] = str(Path(args.dataset).resolve())
        elif not os.environ.get("ARMBENCH_DATASET"):
            os.environ["ARMBENCH_DATASET"] = str(synthetic_dataset(_cache_dir()))
        if args.model:
            os.environ["ARMBENCH_MODEL"] = str(Path(args.model).resolve())
        from armbench_segmentation.config import load_settings

        model_path = load_settings().model.path
        if not Path(model_path).is_file():
            raise FileNotFoundError(f"model {model_path} not found: pass --model FILE or set ARMBENCH_MODEL")
        step.lines += [f"entry   {entry}", f"dataset {os.environ['ARMBENCH_DATASET']}", f"model   {model_path}"]

    if report.ok:
        with report.step("import entry file") as step:
            module = _import_entry(_ENTRY_FILE)
            registered = registered_handlers(module)
            step.lines += [f"{kind:34s} {name}" for name, kind in registered.names()]

    integration_ok = False
    if module is not None:
        with report.step(f"integration test ({args.samples} samples per split)") as step:
            responses = run_integration_test(module, report, step, args.samples)
            from code_loader.inner_leap_binder import leapbinder_decorators as decorators

            for w in decorators._get_stored_warnings():
                report.fail(step, f"code_loader warning: {w['message']}")
            for param, info in decorators._get_param_default_warnings().items():
                report.fail(step, f"code_loader warning: {param} defaulted to {info['default_value']!r} in "
                                  f"{sorted(info['funcs'])}; set it explicitly")
            integration_ok = step.ok

    if module is not None and responses:
        with report.step("platform replay (batches of 2 and 1, float16 inputs)") as step:
            replay(module, registered, responses, report, step, args.samples, summary, integration_ok)
            step.lines += _summarize(summary)
            try:
                step.lines += float16_effect(module, registered, responses, args.samples)
            except Exception as exc:  # noqa: BLE001 - informational only
                step.lines.append(f"float16 effect not measured: {_describe(exc)}")

    if module is not None and responses:
        with report.step("element instances") as step:
            check_element_instances(module, responses, report, step, args.samples)

    if module is not None and responses and args.dump:
        with report.step("parity dump (float32, one sample at a time)") as step:
            dump = dump_values(module, registered, responses, dump_n, report, step)
            Path(args.dump).write_text(json.dumps(dump, indent=1, allow_nan=False), encoding="utf-8")
            step.lines.append(f"{len(dump['samples'])} samples -> {args.dump}; compare with "
                              f"`python leap_test.py --compare {args.dump} RUN_DIR/samples.csv`")

    if module is not None:
        with report.step("LeapLoader.check_dataset()") as step:
            result = check_dataset(_ENTRY_FILE, step)
            runtime_modules = result["modules"]
            step.lines.append(f"is_valid={result['is_valid']}, {result['payloads']} payloads, "
                              f"has_element_instances={result['has_element_instances']}")
            if hasattr(module, "gt_instance") and not (
                    result["has_element_instances"]
                    and any(n.startswith("builtin_instance_extra_metadata") for n in result["payload_names"])):
                report.fail(step, "check_dataset: the element instances are not registered (has_element_instances "
                                  f"{result['has_element_instances']}, payloads {result['payload_names'][:12]})")
            if not result["is_valid"]:
                for f in result["failed"]:
                    report.fail(step, f"check_dataset: '{f['name']}' failed: {json.dumps(f['display'])[:800]}")
                if result["general_error"]:
                    report.fail(step, f"check_dataset: {result['general_error'][:1500]}")
                if not result["failed"] and not result["general_error"]:
                    report.fail(step, "check_dataset: is_valid is False")

    with report.step("leap.yaml covers the entry's imports") as step:
        check_bundle(config, runtime_modules, step, report)

    with report.step("telemetry off") as step:
        if not telemetry_existed and telemetry_dir.exists():
            report.fail(step, f"{telemetry_dir} was created: code_loader telemetry ran (TL_DISABLE_ANALYTICS not set early)")
        else:
            step.lines.append(f"TL_DISABLE_ANALYTICS={os.environ.get('TL_DISABLE_ANALYTICS')!r}; "
                              f"{telemetry_dir} {'untouched' if telemetry_existed else 'not created'}")

    total = time.perf_counter() - start
    print("\n" + "=" * 78)
    print("Tensorleap integration check")
    for s in report.steps:
        print(f"[{'PASS' if s.ok else 'FAIL'}] {s.name} ({s.seconds:.1f} s)")
        for line in s.lines:
            print(f"       {line}")
    if report.failures:
        print(f"\n{len(report.failures)} failure(s):")
        for f in report.failures:
            print(f"  - {f}")
    print(f"\n{'PASSED' if report.ok else 'FAILED'} in {total:.1f} s")
    sys.stdout.flush()
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

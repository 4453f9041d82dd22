"""The ONNX Runtime session around a YOLO segmentation export: loading, I/O checks, provider choice.

Standard YOLOv5-seg and Ultralytics YOLOv8/YOLO11-seg exports are accepted: static
(1x3x640x640) or dynamic in batch/height/width, with or without an extra ``embedding``
output. Outputs are told apart by rank (3-D detections, 4-D prototypes ``(N, nm, h, w)``,
2-D embedding ``(N, D)``), with the usual names (``output0``, ``output1``, ``embedding``)
only breaking ties. The detections' layout, YOLOv5's ``(N, A, 5 + nc + nm)`` or
Ultralytics' channel-first, anchor-free ``(N, 4 + nc + nm, A)``, is detected from the
shapes and the ONNX metadata (``model.layout.detect_layout``); ``RawOutputs.layout`` carries
it to the decode.

Provider choice (``ModelConfig.device``):
  * ``"cpu"``: CPU only.
  * ``"cuda"``: CUDA demanded; a ``ModelError`` says why when it cannot load.
  * ``"auto"``: CUDA only when it can actually run here (the ``onnxruntime-gpu`` build
    offers it, a CUDA driver and a GPU are present, and the session really gets the CUDA
    provider); otherwise CPU, without ONNX Runtime's loud "missing CUDA libraries" log.
    Where a GPU is present but the CUDA provider cannot load, one warning and the CPU
    session (the same ``run`` path, same outputs; tested with the real onnxruntime-gpu on a
    machine without CUDA libraries).

Batching: a dynamic export runs the whole batch it is given (``model.batch_size`` images
from the engine) in one session call, on CPU and CUDA alike; a static export runs in chunks
of its fixed batch. I/O binding is not used: every output is post-processed on the CPU, so
``session.run`` already makes the copies binding would (input host-to-device, each output
device-to-host); binding pays with device-side post-processing, which this project does not
have. (No GPU was available to measure either choice.)

Class order: a standard YOLOv5 export stores its class names in the ONNX metadata
(``names``, a dict repr such as ``{0: 'Object', 1: 'Tote'}``, read with
``ast.literal_eval``). Names equal to the configured ones in another order are remapped
by ``SegmentationModel.run`` (one warning with both orders), so decode, loss and the
analysis see the configured order; the raw ``session`` (which the Tensorleap integration
returns, and the platform runs the file itself) is then refused with a ``ModelError``.
Other names are refused; absent or unreadable names leave the configured order as is.

Telemetry: onnxruntime's official builds start a telemetry client when they are first
imported (a device id and an event queue under ``~/.cache/Microsoft/DeveloperTools``,
DNS lookups of Microsoft's collector). ``ORT_DISABLE_TELEMETRY=1`` in the environment
before that import is the only switch that stops all of it (``disable_telemetry_events()``
after the import stops neither the files nor the lookups), so it is set (unless the user
set it) when this module is imported and again before every ``import onnxruntime`` here.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import hashlib
import io
import logging
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from armbench_segmentation.config import ModelConfig
from armbench_segmentation.errors import ModelError
from armbench_segmentation.model.layout import ACCEPTED, HeadLayout, LayoutError, detect_layout

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_ORT_DEFAULT_SEVERITY = 2  # onnxruntime's own default (warning)
_FIX = "point --model (or ARMBENCH_MODEL, or model.path in the config) at a YOLOv5-seg or YOLOv8/YOLO11-seg ONNX export"
PROBE_SIZE = 256  # blank probe input (pixels) when output sizes are symbolic: A = 1344 anchors for YOLOv8
TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"
MAX_NAMES_METADATA = 100_000  # characters of the 'names' metadata parsed at most

# onnxruntime already imported by someone else, without the switch: too late to stop it
_ORT_IMPORTED_WITH_TELEMETRY = "onnxruntime" in sys.modules and TELEMETRY_ENV not in os.environ
os.environ.setdefault(TELEMETRY_ENV, "1")  # before the first import of onnxruntime (see module docstring)
_telemetry_warned = False


def import_onnxruntime():
    """``onnxruntime``, imported with its telemetry off (``ORT_DISABLE_TELEMETRY=1`` unless the
    environment says otherwise). When it was imported earlier without the switch, its
    non-essential events are disabled through the API and one warning says how to stop the rest."""
    global _telemetry_warned
    os.environ.setdefault(TELEMETRY_ENV, "1")
    import onnxruntime as ort

    if _ORT_IMPORTED_WITH_TELEMETRY and not _telemetry_warned:
        _telemetry_warned = True
        with contextlib.suppress(Exception):
            ort.disable_telemetry_events()
        log.warning("onnxruntime was imported before %s=1 was set, so its telemetry (a device id under "
                    "~/.cache/Microsoft/DeveloperTools, events for Microsoft's collector) runs in this process; "
                    "set %s=1 in the environment, or import armbench_segmentation before onnxruntime",
                    TELEMETRY_ENV, TELEMETRY_ENV)
    return ort


@dataclass(frozen=True)
class RawOutputs:
    """Raw model outputs of a batch.

    Attributes:
        detections: float32 in the export's ``layout``: yolov5 (N, A, 5 + nc + nm): cx, cy, w,
            h (input pixels), objectness, class scores (sigmoided), nm raw mask coefficients;
            yolov8 (N, 4 + nc + nm, A): cx, cy, w, h, class scores, coefficients, channel first.
        protos: (N, nm, h, w) float32 mask prototypes.
        embedding: (N, D) float32 or None when the export has no embedding output.
        layout: the head layout (``model.layout.HeadLayout``).
    """

    detections: np.ndarray
    protos: np.ndarray
    embedding: np.ndarray | None = None
    layout: HeadLayout = HeadLayout.YOLOV5

    def __len__(self) -> int:
        return len(self.detections)


# ---------------------------------------------------------------------------- providers
def _cuda_driver_has_device() -> tuple[bool, str]:
    """(True, "") when the CUDA driver loads and sees at least one GPU, else (False, why)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1") if os.name != "nt" else ctypes.WinDLL("nvcuda.dll")  # type: ignore[attr-defined]
    except OSError:
        return False, "no CUDA driver (libcuda) on this machine"
    try:
        if lib.cuInit(0) != 0:
            return False, "the CUDA driver failed to initialise (cuInit)"
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
            return False, "the CUDA driver sees no GPU"
    except (AttributeError, OSError) as exc:  # pragma: no cover - exotic driver builds
        return False, f"cannot query the CUDA driver: {exc}"
    return True, ""


def cuda_unavailable_reason() -> str | None:
    """None when a CUDA session is worth trying here, else why not (cheap, no ORT logs)."""
    ort = import_onnxruntime()

    if CUDA not in ort.get_available_providers():
        return f"this onnxruntime build ({ort.get_device()}) has no CUDA provider; install onnxruntime-gpu"
    ok, why = _cuda_driver_has_device()
    return None if ok else why


@contextlib.contextmanager
def _quiet_ort():
    """Silence ONNX Runtime's default logger (where provider-load failures are printed)."""
    ort = import_onnxruntime()

    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


def _preload_cuda_libraries() -> None:
    """Let onnxruntime find CUDA/cuDNN from nvidia-* wheels, if any (it prints; we don't)."""
    ort = import_onnxruntime()

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            preload()
    except Exception as exc:  # noqa: BLE001 - best effort only
        log.debug("onnxruntime.preload_dlls failed: %s", exc)


# ---------------------------------------------------------------------------- model
class SegmentationModel:
    """A YOLOv5-seg or YOLOv8/YOLO11-seg ONNX export ready to run.

    Attributes:
        path: the ONNX file.
        input_name: name of the image input.
        input_hw: (H, W) for a static-size export, None when height/width are dynamic.
        static_batch: the fixed batch size of a static export, None when dynamic.
        layout: the detections' head layout (``HeadLayout.YOLOV5`` or ``YOLOV8``).
        num_classes: nc, derived from the detections' channel count (5 + nc + nm for
            yolov5, 4 + nc + nm for yolov8).
        num_mask_coeffs: nm, the prototype channel count.
        has_embedding: whether the export has a 2-D embedding output.
        providers: the providers the session really uses.
        class_names: the configured class names (the order every output of ``run`` is in).
        model_class_names: the names in the model's ONNX metadata, in its channel order;
            None when it has none (or none readable).
        class_permutation: None when the model's class channels are in configured order,
            else ``perm`` with model channel ``perm[j]`` = configured class ``j`` (``run``
            applies it).
        session: the raw ``onnxruntime.InferenceSession`` (model class order; refused when
            that is not the configured order).
    """

    def __init__(self, path: Path | str, config: ModelConfig, class_names: Sequence[str] | None):
        """``class_names``: the configured classes; the model must predict exactly that many.
        None accepts any class count (tools and benchmarks) and names them from the model's
        metadata, else ``class{i}``."""
        ort = import_onnxruntime()

        self.path = Path(path).expanduser()
        self.config = config
        self.class_names = None if class_names is None else tuple(class_names)
        if not self.path.is_file():
            raise ModelError(f"model file {self.path} does not exist; {_FIX}")
        if not os.access(self.path, os.R_OK):
            raise ModelError(f"model file {self.path} is not readable; fix its permissions or {_FIX}")

        device = str(config.device).strip().lower()
        if device not in ("auto", "cpu", "cuda"):
            raise ModelError(f"model.device must be 'auto', 'cpu' or 'cuda', got {config.device!r}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if config.num_threads is not None:
            if int(config.num_threads) < 0:
                raise ModelError(f"model.num_threads must be >= 0 (0 = onnxruntime default), got {config.num_threads}")
            options.intra_op_num_threads = int(config.num_threads)
        # Spinning workers keep their cores between ops and between runs. The CLI decodes,
        # letterboxes and computes metrics on the same cores meanwhile: on the 2-core machine
        # (shared, load 9-10) spinning cost 70-100 ms more CPU per image in the analysis engine
        # and even made inference alone slower (368-392 vs 295-317 ms CPU/image).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.intra_op_spinning else "0")
        self.model_class_names: tuple[str, ...] | None = None
        self.class_permutation: tuple[int, ...] | None = None
        self._session = self._create_session(ort, options, device)
        self.providers = list(self._session.get_providers())
        self._inspect_io()
        self._match_class_names()

    # ------------------------------------------------------------------ session
    @property
    def session(self):
        """The raw ``onnxruntime.InferenceSession``: its outputs are in the model's class order.

        Raises:
            ModelError: the model's class order (ONNX metadata) differs from the configured
                one. ``run`` remaps it; raw outputs (the Tensorleap integration feeds them
                straight to its metrics, and the platform runs the uploaded file) cannot be.
        """
        if self.class_permutation is not None:
            raise ModelError(
                f"{self.path}: the model's classes are in the order {list(self.model_class_names or ())} (ONNX metadata "
                f"'names') but data.class_names is {list(self.class_names or ())}. armbench's own commands remap them, "
                f"but the raw onnxruntime session (the Tensorleap integration, which the platform runs on the uploaded "
                f"file) would read the classes swapped. Fix: set data.class_names to "
                f"{list(self.model_class_names or ())}, or re-export the model with its classes in the order "
                f"{list(self.class_names or ())}"
            )
        return self._session

    def _open(self, ort, options, providers: list[str]):
        try:
            return ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"cannot load ONNX model {self.path}: {msg}; {_FIX}") from None

    def _create_session(self, ort, options, device: str):
        if device == "cpu":
            return self._open(ort, options, [CPU])
        why = cuda_unavailable_reason()
        if why is not None:
            if device == "cuda":
                raise ModelError(f"model.device is 'cuda' but CUDA cannot be used: {why}. Use --device cpu/auto or ARMBENCH_DEVICE=auto")
            log.debug("CUDA not used: %s", why)
            return self._open(ort, options, [CPU])
        _preload_cuda_libraries()
        with _quiet_ort():
            session = self._open(ort, options, [CUDA, CPU])
        if CUDA in session.get_providers():
            return session
        message = ("a GPU is present but onnxruntime's CUDA provider failed to load (CUDA/cuDNN libraries "
                   "matching this onnxruntime-gpu build are missing; pip install 'onnxruntime-gpu[cuda,cudnn]' "
                   "brings them)")
        if device == "cuda":
            raise ModelError(f"model.device is 'cuda': {message}. Install them, or use --device cpu/auto")
        log.warning("%s; running on CPU", message)
        return session

    def _inspect_io(self) -> None:
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            got = [(i.name, i.shape) for i in inputs]
            raise ModelError(f"{self.path}: expected one image input (N, 3, H, W), got {got}; {_FIX}")
        inp = inputs[0]
        self.input_name = inp.name
        n, c, h, w = inp.shape
        if isinstance(c, int) and c != 3:
            raise ModelError(f"{self.path}: the input {inp.name!r} has {c} channels, expected 3 (RGB)")
        self.static_batch = n if isinstance(n, int) and n > 0 else None
        self.input_hw = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None

        outputs = self._session.get_outputs()
        by_rank: dict[int, list] = {}
        for o in outputs:
            by_rank.setdefault(len(o.shape), []).append(o)
        described = [(o.name, o.shape) for o in outputs]

        def pick(rank: int, preferred: str, what: str, required: bool):
            cands = by_rank.get(rank, [])
            if not cands:
                if required:
                    raise ModelError(f"{self.path}: no {rank}-D {what} output; outputs are {described}. "
                                     f"Accepted: {ACCEPTED}; {_FIX}")
                return None
            if len(cands) == 1:
                return cands[0]
            named = [o for o in cands if o.name == preferred]
            if len(named) == 1:
                return named[0]
            raise ModelError(f"{self.path}: several {rank}-D outputs {[o.name for o in cands]} and none named "
                             f"{preferred!r}; cannot tell which is the {what}")

        det, proto = pick(3, "output0", "detections", True), pick(4, "output1", "mask prototypes", True)
        emb = pick(2, "embedding", "embedding", False)
        def concrete(d):
            return d if isinstance(d, int) and d > 0 else None

        nm, det_shape = concrete(proto.shape[1]), [concrete(d) for d in det.shape]
        if nm is None or (det_shape[1] is None and det_shape[2] is None):
            # e.g. yolov5's dynamic export names both detection axes ('anchors', 'Concatoutput0_dim_2'): run once to see them
            nm, det_shape = self._probe_shapes(det.name, proto.name)
        names = self._metadata_class_names()
        metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        try:
            self.layout, nc = detect_layout(det_shape, nm, metadata, None if names is None else len(names))
        except LayoutError as exc:
            raise ModelError(f"{self.path}: {exc}; {_FIX}") from None
        if self.class_names is None:
            names = self._metadata_class_names()
            self.class_names = names if names is not None and len(names) == nc else tuple(f"class{i}" for i in range(nc))
        if nc != len(self.class_names):
            raise ModelError(
                f"{self.path} predicts {nc} classes but {len(self.class_names)} class names are configured "
                f"(data.class_names = {list(self.class_names)}). Use a model trained for these classes "
                f"(e.g. the shipped models/armbench-yolov5s-seg.onnx) or set data.class_names to the model's {nc} names"
            )
        self.num_classes = nc
        self.num_mask_coeffs = nm
        self._out_names = [det.name, proto.name] + ([emb.name] if emb is not None else [])
        self.has_embedding = emb is not None
        self.embedding_dim = emb.shape[1] if emb is not None and isinstance(emb.shape[1], int) else None

    def _metadata_class_names(self) -> tuple[str, ...] | None:
        """The class names of the ONNX metadata ``names`` in channel order, or None (absent,
        or unreadable: then one warning). Parsed with ``ast.literal_eval`` only: a dict
        ``{0: 'a', 1: 'b'}`` with keys 0..n-1, or a list/tuple of names. Read once."""
        if "_names_read" not in self.__dict__:
            self._names_read = self._read_metadata_class_names()
        return self._names_read

    def _read_metadata_class_names(self) -> tuple[str, ...] | None:
        raw = self._session.get_modelmeta().custom_metadata_map.get("names")
        if raw is None:
            return None
        value = None
        if len(raw) <= MAX_NAMES_METADATA:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                value = None
        if isinstance(value, dict) and all(isinstance(k, int) and not isinstance(k, bool) for k in value) \
                and sorted(value) == list(range(len(value))):
            names = [value[i] for i in range(len(value))]
        elif isinstance(value, (list, tuple)):
            names = list(value)
        else:
            names = None
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            shown = raw if len(raw) <= 200 else raw[:200] + "..."
            log.warning("%s: ONNX metadata 'names' is not a dict {index: name} or a list of names (%r); class "
                        "names not checked against data.class_names", self.path, shown)
            return None
        return tuple(names)

    def _match_class_names(self) -> None:
        """Check the metadata class names against the configured ones: same order (or none):
        nothing to do; a permutation: ``class_permutation`` and one warning; else ModelError."""
        names = self._metadata_class_names()
        if names is None:
            return
        configured = tuple(self.class_names or ())
        if len(names) != self.num_classes:
            log.warning("%s: ONNX metadata 'names' lists %d classes but the outputs have %d; class names not checked",
                        self.path, len(names), self.num_classes)
            return
        self.model_class_names = names
        model_folded = [n.casefold() for n in names]
        conf_folded = [n.casefold() for n in configured]
        if model_folded == conf_folded:
            return
        if sorted(model_folded) != sorted(conf_folded) or len(set(conf_folded)) != len(conf_folded):
            raise ModelError(
                f"{self.path} predicts the classes {list(names)} (ONNX metadata 'names', in model order) but "
                f"data.class_names is {list(configured)}. Use a model trained for these classes (e.g. the shipped "
                f"models/armbench-yolov5s-seg.onnx) or set data.class_names to the model's names"
            )
        self.class_permutation = tuple(model_folded.index(c) for c in conf_folded)
        log.warning("%s: the model's classes are in the order %s (ONNX metadata 'names'), data.class_names is %s: "
                    "class channels are remapped to the configured order", self.path, list(names), list(configured))

    def _probe_shapes(self, det_name: str, proto_name: str) -> tuple[int, list[int]]:
        """(nm, detection shape) from one run on a blank input (symbolic output dims)."""
        h, w = self.input_hw or (PROBE_SIZE, PROBE_SIZE)
        blank = np.zeros((self.static_batch or 1, 3, h, w), np.float32)
        try:
            det, proto = self._session.run([det_name, proto_name], {self.input_name: blank})
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types
            raise ModelError(f"{self.path}: output sizes are symbolic and a probe run on a blank {h}x{w} "
                             f"input failed: {str(exc).strip().splitlines()[0]}") from None
        if det.ndim != 3 or proto.ndim != 4:
            raise ModelError(f"{self.path}: probe run gave detections {det.shape} and protos {proto.shape}")
        return int(proto.shape[1]), [int(d) for d in det.shape]

    # ------------------------------------------------------------------ info
    @cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of the model file (read in 1 MiB chunks)."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    @property
    def on_cuda(self) -> bool:
        return CUDA in self.providers

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (f"SegmentationModel({self.path.name}, nc={self.num_classes}, nm={self.num_mask_coeffs}, "
                f"input_hw={self.input_hw}, embedding={self.has_embedding}, providers={self.providers})")

    # ------------------------------------------------------------------ running
    @staticmethod
    def to_input(images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB (or one (H, W, 3) image) -> (N, 3, H, W) float32 in 0..1."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"expected (N, H, W, 3) RGB images, got shape {images.shape}")
        out = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)  # (N, 3, H, W)
        if images.dtype == np.uint8:
            out *= np.float32(1 / 255)
        return out

    def run(self, batch: np.ndarray) -> RawOutputs:
        """Run N letterboxed images.

        Args:
            batch: (N, 3, H, W) float32 in 0..1 (see ``to_input``).
        Returns:
            RawOutputs with N rows, class scores in configured order (``class_permutation``).
            A static batch-1 export is run once per image.
        """
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a (N, 3, H, W) batch, got shape {batch.shape}; use SegmentationModel.to_input")
        if self.input_hw is not None and tuple(batch.shape[2:]) != tuple(self.input_hw):
            raise ValueError(f"this model takes {self.input_hw[0]}x{self.input_hw[1]} inputs (static export), "
                             f"got {batch.shape[2]}x{batch.shape[3]}; set data.image_size to {self.input_hw[0]}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n = len(batch)
        if n == 0:
            raise ValueError("empty batch")
        step = self.static_batch or n
        if n % step:  # fixed batch > 1: pad the last chunk, drop the padding rows afterwards
            batch = np.concatenate([batch, np.zeros((step - n % step, *batch.shape[1:]), np.float32)])
        parts = [self._session.run(self._out_names, {self.input_name: batch[i : i + step]}) for i in range(0, len(batch), step)]
        outs = [(np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k])[:n] for k in range(len(self._out_names))]
        emb = outs[2].astype(np.float32, copy=False) if self.has_embedding else None
        det = outs[0].astype(np.float32, copy=False)
        if self.class_permutation is not None:  # model class order -> configured order (in place: det is ours)
            perm, first = list(self.class_permutation), self.layout.box_channels
            if self.layout is HeadLayout.YOLOV5:
                scores = det[..., first : first + self.num_classes]  # (N, A, nc) view
                scores[...] = scores[..., perm]
            else:
                scores = det[:, first : first + self.num_classes]  # (N, nc, A) view
                scores[...] = scores[:, perm]
        return RawOutputs(det, outs[1].astype(np.float32, copy=False), emb, self.layout)

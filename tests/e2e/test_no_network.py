"""No network and no stray files: the commands that load the model, traced with strace.

Each command runs in a fresh interpreter under ``strace -f`` with a fresh, empty HOME (no
XDG_CACHE_HOME, none of this process's ORT_DISABLE_TELEMETRY / TL_DISABLE_ANALYTICS /
ARMBENCH_* variables: the command's own defaults are what is tested) and must

* make no ``connect``/``sendto``/``sendmsg`` to an AF_INET/AF_INET6 address (onnxruntime's
  telemetry resolves its collector host this way; code-loader's posts Mixpanel),
* leave nothing in HOME but the project's documented cache ``~/.cache/armbench-segmentation``
  (onnxruntime would add ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/{deviceid,
  onnxruntime.db}``, code-loader ``~/.tensorleap``),
* read image files only from the dataset and write them only into the output folder.

strace is installed by ``make browser`` (apt); without it these tests are skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("ARMBENCH_MODEL") or ROOT / "models" / "armbench-yolov5s-seg.onnx")
STRACE = shutil.which("strace")
CACHE = Path(".cache") / "armbench-segmentation"  # relative to HOME: the only folder allowed there
SYSCALLS = "socket,connect,sendto,sendmsg,open,openat,creat,mkdir,mkdirat"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DROPPED_ENV = ("ORT_DISABLE_TELEMETRY", "TL_DISABLE_ANALYTICS", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(STRACE is None, reason="strace is not installed (apt-get install strace; `make browser` does it)"),
    pytest.mark.skipif(not MODEL.is_file(), reason=f"model {MODEL} absent (the shipped export, or ARMBENCH_MODEL)"),
]

_CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<name>\w+)\((?P<args>.*)$")
_PATH_ARG = re.compile(r'^(?:AT_FDCWD, |\d+, )?"(?P<path>(?:[^"\\]|\\.)*)"(?:\.\.\.)?, (?P<flags>[A-Z_|0-9]+)')


@dataclass
class Trace:
    network: list[str] = field(default_factory=list)  # connect/sendto/sendmsg lines with an inet address
    image_reads: list[Path] = field(default_factory=list)
    image_writes: list[Path] = field(default_factory=list)
    opened: list[Path] = field(default_factory=list)  # every path opened, not failed with ENOENT
    made_dirs: list[Path] = field(default_factory=list)


def _parse(text: str, cwd: Path) -> Trace:
    trace = Trace()
    for line in text.splitlines():
        m = _CALL.match(line)
        if not m:
            continue  # "<... resumed>" halves and signals: the address/path is in the first half
        name, args = m["name"], m["args"]
        if name in ("connect", "sendto", "sendmsg"):
            if "AF_INET" in args:  # AF_INET and AF_INET6; AF_UNIX / AF_NETLINK are local
                trace.network.append(line)
            continue
        p = _PATH_ARG.match(args)
        if p is None or re.search(r"= -1 ENOENT", args):
            continue
        path = Path(p["path"])
        path = path if path.is_absolute() else cwd / path
        if name in ("mkdir", "mkdirat"):
            trace.made_dirs.append(path)
            continue
        trace.opened.append(path)
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            writes = name == "creat" or any(f in p["flags"] for f in ("O_WRONLY", "O_RDWR", "O_CREAT"))
            (trace.image_writes if writes else trace.image_reads).append(path)
    return trace


def _strace_works(tmp_path: Path) -> None:
    probe = subprocess.run([STRACE, "-f", "-qq", "-o", str(tmp_path / "probe.strace"), "-e", "trace=openat", "true"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here (ptrace not permitted?): {probe.stderr.strip()[:200]}")


def _run_traced(argv: list[str], tmp_path: Path, name: str, timeout: int) -> tuple[subprocess.CompletedProcess, Trace, Path]:
    """``argv`` under ``strace -f`` with a fresh HOME; returns (process, trace, HOME)."""
    _strace_works(tmp_path)
    home, cwd = tmp_path / f"home-{name}", tmp_path / f"cwd-{name}"
    home.mkdir()
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV and not k.startswith("ARMBENCH_")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    log = tmp_path / f"{name}.strace"
    proc = subprocess.run([STRACE, "-f", "-qq", "-s", "512", "-o", str(log), "-e", f"trace={SYSCALLS}", *argv],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, _parse(log.read_text(errors="replace"), cwd), home


def _home_entries(home: Path) -> list[Path]:
    return sorted(p.relative_to(home) for p in home.rglob("*"))


def _assert_clean(trace: Trace, home: Path, dataset: Path, out: Path, output: str) -> None:
    assert trace.network == [], f"network syscalls to inet addresses:\n" + "\n".join(trace.network[:10])
    allowed = (Path(".cache"), CACHE)
    stray = [p for p in _home_entries(home) if p not in allowed and not p.is_relative_to(CACHE)]
    assert stray == [], f"new files/folders in HOME outside ~/{CACHE}: {[str(p) for p in stray[:10]]}\n{output[-2000:]}"
    made = [p for p in trace.made_dirs if p.is_relative_to(home) and not (home / CACHE).is_relative_to(p)
            and not p.is_relative_to(home / CACHE)]
    assert made == [], f"folders made in HOME outside ~/{CACHE} (even if removed later): {made[:10]}"
    images = dataset.resolve() / "images"
    outside = [p for p in trace.image_reads if not p.resolve().is_relative_to(images)]
    assert outside == [], f"image files opened outside the dataset images folder: {outside[:10]}"
    misplaced = [p for p in trace.image_writes if not p.resolve().is_relative_to(out.resolve())]
    assert misplaced == [], f"image files written outside the output folder {out}: {misplaced[:10]}"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "armbench_segmentation.cli", *args]


def test_predict_makes_no_network_calls_and_no_stray_files(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    proc, trace, home = _run_traced(
        _cli("predict", "--dataset", str(tiny_dataset.root), "--model", str(MODEL), "--out", str(out / "val.json"),
             "--device", "cpu", "--val-size", "all"), tmp_path, "predict", timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert MODEL.resolve() in [p.resolve() for p in trace.opened], "the model was never opened: nothing was tested"
    assert {p.name for p in trace.image_reads} >= {"val_a.jpg", "val_portrait.jpg"}  # the trace does see image reads
    _assert_clean(trace, home, tiny_dataset.root, out, output)


def test_analyze_makes_no_network_calls_and_writes_only_its_cache(tiny_dataset, tmp_path):
    """Without --out, analyze writes into the documented cache: the one folder allowed in HOME."""
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  train_size: all\n  val_size: all\n  unlabeled_size: all\n"
                      "model:\n  device: cpu\n  num_threads: 1\nanalysis:\n  n_clusters: 2\n  label_budget: 2\n")
    proc, trace, home = _run_traced(
        _cli("analyze", "--no-progress", "--dataset", str(tiny_dataset.root), "--model", str(MODEL),
             "--config", str(config)), tmp_path, "analyze", timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert MODEL.resolve() in [p.resolve() for p in trace.opened], "the model was never opened: nothing was tested"
    runs = home / CACHE / "runs"
    assert runs.is_dir() and any(runs.rglob("dashboard.html")), f"no run under {runs}:\n{output[-2000:]}"
    _assert_clean(trace, home, tiny_dataset.root, home / CACHE, output)


def test_leap_test_makes_no_network_calls_and_no_stray_files(tiny_dataset, tmp_path):
    """``python leap_test.py`` (code-loader + the raw onnxruntime session, and a fresh
    interpreter for LeapLoader.check_dataset) on one sample per split. Its own verdict is
    test_leap_integration's business; here the model must have been loaded at least."""
    out = tmp_path / "unused-out"
    proc, trace, home = _run_traced(
        [sys.executable, str(ROOT / "leap_test.py"), "--dataset", str(tiny_dataset.root), "--model", str(MODEL),
         "--samples", "1"], tmp_path, "leap_test", timeout=600)
    output = proc.stdout + proc.stderr
    assert MODEL.resolve() in [p.resolve() for p in trace.opened], (
        f"leap_test.py never opened the model (exit {proc.returncode}):\n{output[-3000:]}")
    _assert_clean(trace, home, tiny_dataset.root, out, output)


IDLE_S = 14  # onnxruntime 1.31 resolved its collector ~9 s after the import; the commands above end sooner


def test_model_kept_loaded_makes_no_network_calls(tmp_path):
    """A session kept open past the moment onnxruntime's uploader starts (the CLI runs above
    are too short to reach it), next to a control: plain onnxruntime without the switch."""
    project = ("import time\n"
               "from armbench_segmentation.config import ModelConfig\n"
               "from armbench_segmentation.model.onnx_model import SegmentationModel\n"
               f"SegmentationModel({str(MODEL)!r}, ModelConfig(device='cpu', num_threads=1), ('Object', 'Tote'))\n"
               f"time.sleep({IDLE_S})\n")
    control = ("import time, onnxruntime as ort\n"
               f"ort.InferenceSession({str(MODEL)!r}, providers=['CPUExecutionProvider'])\n"
               f"time.sleep({IDLE_S})\n")
    _strace_works(tmp_path)
    runs = {}
    for name, code in (("project", project), ("control", control)):  # both at once: one idle wait
        home, log = tmp_path / f"home-{name}", tmp_path / f"{name}.strace"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        env.update(HOME=str(home), PYTHONPATH=str(ROOT))
        runs[name] = (subprocess.Popen([STRACE, "-f", "-qq", "-s", "512", "-o", str(log), "-e", f"trace={SYSCALLS}",
                                        sys.executable, "-c", code], cwd=tmp_path, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), home, log)
    results = {}
    for name, (proc, home, log) in runs.items():
        output, _ = proc.communicate(timeout=IDLE_S + 120)
        assert proc.returncode == 0, output[-3000:]
        results[name] = (_parse(log.read_text(errors="replace"), tmp_path), home, output)
    trace, home, output = results["project"]
    _assert_clean(trace, home, tmp_path / "no-dataset", tmp_path / "no-output", output)
    control, control_home, _ = results["control"]
    if not control.network and not _home_entries(control_home):
        pytest.skip("control: this onnxruntime build made no telemetry files or lookups, so the check above proves little")
    assert control.network or _home_entries(control_home)  # the detector sees telemetry when it is on


def test_trace_parser_flags_what_onnxruntime_telemetry_does(tmp_path):
    """The detector itself, on the lines strace printed for onnxruntime 1.31's telemetry
    (DNS lookup of its collector) and for ordinary local activity."""
    cwd = tmp_path
    text = "\n".join([
        '5704  connect(7, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16 <unfinished ...>',
        '5703  connect(8, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT (No such file or directory)',
        '5710  sendto(9, "x", 1, 0, {sa_family=AF_INET6, sin6_port=htons(443)}, 28) = 1',
        '5704  <... connect resumed>)            = 0',
        '5711  openat(AT_FDCWD, "/data/ds/images/a.jpg", O_RDONLY|O_CLOEXEC) = 3',
        '5711  openat(AT_FDCWD, "crops/0001_a_0.jpg", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 4',
        '5711  openat(AT_FDCWD, "/etc/b.png", O_RDONLY) = -1 ENOENT (No such file or directory)',
        '5711  mkdir("/home/u/.cache/Microsoft", 0777) = 0',
    ])
    trace = _parse(text, cwd)
    assert len(trace.network) == 2 and "10.255.255.53" in trace.network[0] and "AF_INET6" in trace.network[1]
    assert trace.image_reads == [Path("/data/ds/images/a.jpg")]
    assert trace.image_writes == [cwd / "crops" / "0001_a_0.jpg"]
    assert trace.made_dirs == [Path("/home/u/.cache/Microsoft")]

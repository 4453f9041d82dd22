"""The package as a user installs it: its wheel's dependency markers, a clean venv where
onnxruntime-gpu has no wheel, and a runtime that never needs ``onnx``.

``test_wheel_installs_with_cpu_onnxruntime`` (slow) builds the project's wheel with
poetry-core, as ``pip wheel`` does, checks with ``packaging.markers`` which onnxruntime
build its ``Requires-Dist`` selects on macOS arm64, Linux aarch64, Linux x86_64 and
Windows, then installs it into a fresh ``python -m venv`` the way Linux aarch64 gets it:
the wheel without its dependencies, plus the runtime pins of poetry.lock whose markers select
them there (``onnxruntime``, the CPU build, instead of ``onnxruntime-gpu``). From that venv alone
(no PYTHONPATH, nothing of the source tree importable) ``armbench --version``, ``armbench
synth`` and ``armbench predict`` with the shipped model run, and the predictions equal those
of the development venv (onnxruntime-gpu's CPU provider).

Wheels come from Poetry's artifact cache when it has them (offline after ``make
install``); the others (poetry-core, the CPU onnxruntime) are downloaded once with ``pip
download`` into pytest's cache folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = ROOT / "models" / "armbench-yolov5s-seg.onnx"

# packaging.markers environments of the platforms the install must work on
PLATFORMS = {
    "macos-arm64": {"sys_platform": "darwin", "platform_machine": "arm64", "platform_system": "Darwin"},
    "linux-aarch64": {"sys_platform": "linux", "platform_machine": "aarch64", "platform_system": "Linux"},
    "linux-x86_64": {"sys_platform": "linux", "platform_machine": "x86_64", "platform_system": "Linux"},
    "windows-amd64": {"sys_platform": "win32", "platform_machine": "AMD64", "platform_system": "Windows"},
}
EXPECTED_RUNTIME = {"macos-arm64": "onnxruntime", "linux-aarch64": "onnxruntime", "linux-x86_64": "onnxruntime-gpu",
                    "windows-amd64": "onnxruntime-gpu"}


def _environment(platform: str, extra: str = "") -> dict[str, str]:
    from packaging.markers import default_environment

    return {**default_environment(), **PLATFORMS[platform], "extra": extra}


def _selected(requires: list[str], platform: str, extra: str = "") -> set[str]:
    """Canonical names of the distributions ``Requires-Dist`` asks for on ``platform``."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = _environment(platform, extra)
    out = set()
    for line in requires:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            out.add(canonicalize_name(req.name))
    return out


# ---------------------------------------------------------------------------- wheels
def _pip(*args: str, python: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    if python is not None:
        cmd += ["--python", str(python)]
    r = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"pip {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def _wheelhouse(folder: Path, pins: list[str]) -> Path:
    """A flat folder of wheels for ``pins`` (``name==version``) and poetry-core: links to
    Poetry's cached artifacts, the rest downloaded once."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    folder.mkdir(parents=True, exist_ok=True)
    poetry_cache = Path(os.environ.get("POETRY_CACHE_DIR", Path.home() / ".cache" / "pypoetry")) / "artifacts"
    for wheel in poetry_cache.rglob("*.whl") if poetry_cache.is_dir() else ():
        link = folder / wheel.name
        if not link.exists():
            link.symlink_to(wheel)
    have = set()
    for wheel in folder.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        have.add((canonicalize_name(name), str(version)))
    missing = []
    for pin in pins:
        name, version = pin.split("==")
        if (canonicalize_name(name), version) not in have:
            missing.append(pin)
    if not any(name == "poetry-core" for name, _ in have):
        missing.append("poetry-core>=1.9")
    if missing:
        _pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(folder), *missing)
    return folder


def _lock_pins(platform: str) -> list[str]:
    """``name==version`` of every runtime package of poetry.lock (group main, not an extra's)
    whose lock markers select it on ``platform`` with this interpreter: what a plain
    ``poetry install --only main`` installs there."""
    import tomllib

    from packaging.markers import Marker

    env = _environment(platform)
    lock = tomllib.loads((ROOT / "poetry.lock").read_text())
    pins = []
    for package in lock["package"]:
        if "main" not in package.get("groups", ["main"]) or package.get("optional", False):
            continue
        marker = package.get("markers")
        if isinstance(marker, dict):  # per-group markers
            marker = marker.get("main")
        if marker and not Marker(marker).evaluate(env):
            continue
        pins.append(f"{package['name']}=={package['version']}")
    return pins


def _build_wheel(wheelhouse: Path, dist: Path) -> Path:
    _pip("wheel", "--no-deps", "--no-index", "--find-links", str(wheelhouse), "--wheel-dir", str(dist), str(ROOT))
    (wheel,) = dist.glob("armbench_segmentation-*.whl")
    return wheel


def _metadata(wheel: Path) -> tuple[str, list[str]]:
    """(Version, [Requires-Dist ...]) of a wheel's METADATA."""
    from email.parser import Parser

    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(z.read(name).decode("utf-8"))
    return meta["Version"], meta.get_all("Requires-Dist") or []


# ---------------------------------------------------------------------------- the tests
@pytest.mark.slow
def test_wheel_installs_with_cpu_onnxruntime(tmp_path, request):
    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"shipped model {SHIPPED_MODEL} absent")
    # what Linux aarch64 installs (its onnxruntime is the CPU build); installed here on x86_64
    pins = _lock_pins("linux-aarch64")
    names = {pin.split("==")[0] for pin in pins}
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names and "onnx" not in names, sorted(names)
    assert "onnxruntime-gpu" in {pin.split("==")[0] for pin in _lock_pins("linux-x86_64")}
    wheelhouse = _wheelhouse(Path(request.config.cache.mkdir("armbench-install-wheels")), pins)
    wheel = _build_wheel(wheelhouse, tmp_path / "dist")

    # 1. the markers: the CPU build where onnxruntime-gpu has no wheels, never both, no onnx
    version, requires = _metadata(wheel)
    for platform, runtime in EXPECTED_RUNTIME.items():
        chosen = _selected(requires, platform)
        assert {"onnxruntime", "onnxruntime-gpu"} & chosen == {runtime}, (platform, sorted(chosen))
        assert "onnx" not in chosen and "ray" not in chosen, (platform, sorted(chosen))
        assert "ray" in _selected(requires, platform, extra="ray")

    # 2. a clean venv as on macOS / Linux aarch64: the wheel + the lock's pins, CPU onnxruntime
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    reqs = tmp_path / "requirements-aarch64.txt"
    reqs.write_text("\n".join(pins) + "\n")
    _pip("install", "--no-index", "--find-links", str(wheelhouse), "--no-deps", str(wheel), python=python)
    _pip("install", "--no-index", "--find-links", str(wheelhouse), "-r", str(reqs), python=python, timeout=600)
    # every dependency is satisfied except the one this platform cannot have
    check = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "check"], capture_output=True,
                           text=True, timeout=120)
    problems = [line for line in check.stdout.splitlines() if line.strip()]
    assert all("onnxruntime-gpu" in line for line in problems), problems

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARMBENCH_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()

    def run(*argv: str) -> subprocess.CompletedProcess:
        r = subprocess.run([str(venv / "bin" / "armbench"), *argv], capture_output=True, text=True, env=env,
                           cwd=work, timeout=300)
        assert r.returncode == 0, f"armbench {' '.join(argv)}:\n{r.stdout}\n{r.stderr}"
        return r

    assert run("--version").stdout == f"armbench {version}\n"
    probe = subprocess.run([str(python), "-c", (
        "import importlib.metadata as m, importlib.util as u, armbench_segmentation as a, onnxruntime as o, json\n"
        "def has(n):\n"
        "    try: m.version(n); return True\n"
        "    except m.PackageNotFoundError: return False\n"
        "print(json.dumps({'pkg': a.__file__, 'ort': o.__file__, 'cpu': has('onnxruntime'), 'gpu': has('onnxruntime-gpu'),"
        " 'onnx': u.find_spec('onnx') is not None, 'providers': o.get_available_providers()}))")],
        capture_output=True, text=True, env=env, cwd=work, timeout=120)
    assert probe.returncode == 0, probe.stderr
    info = json.loads(probe.stdout)
    assert info["pkg"].startswith(str(venv)) and info["ort"].startswith(str(venv))  # nothing from the source tree
    assert info["cpu"] and not info["gpu"] and not info["onnx"]
    assert info["providers"][-1] == "CPUExecutionProvider"

    # 3. the commands work from that venv alone: synthetic totes, then the shipped model on them
    data = work / "totes"
    run("synth", "--out", str(data), "--n-train", "1", "--n-val", "2", "--n-unlabeled", "1", "--width", "640",
        "--height", "512", "--workers", "1", "--no-progress")
    preds = work / "preds.json"
    printed = run("predict", "--dataset", str(data), "--model", str(SHIPPED_MODEL), "--split", "val", "--out",
                  str(preds), "-q").stdout
    assert "predict: 2 images" in printed
    clean = json.loads(preds.read_text())

    # the same predictions as the development venv's (its onnxruntime-gpu package, CPU provider)
    ref = tmp_path / "ref.json"
    dev_env = {**env, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "armbench_segmentation.cli", "predict", "--dataset", str(data), "--model",
                        str(SHIPPED_MODEL), "--split", "val", "--out", str(ref), "-q", "--device", "cpu"],
                       capture_output=True, text=True, env=dev_env, cwd=work, timeout=300)
    assert r.returncode == 0, r.stderr
    expected = json.loads(ref.read_text())
    assert len(clean) == len(expected) > 0
    for a, b in zip(clean, expected):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-3)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=0.5)


def test_runtime_never_imports_onnx(tmp_path, tiny_dataset):
    """``onnx`` is a dev/tools dependency: a whole ``armbench analyze`` (model, metrics,
    map, exports, dashboard) runs without importing it, though it is installed here."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        pytest.skip("onnx is not installed: nothing could import it")
    spec = importlib.util.spec_from_file_location("_runner_helpers", ROOT / "tests" / "analysis" / "test_runner.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    model = helpers.build_model(tmp_path / "m.onnx")  # built here, with onnx; the subprocess only runs it
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  image_size: 64\n  train_size: all\n  val_size: all\n  unlabeled_size: all\n"
                      "model:\n  device: cpu\n  num_threads: 1\nanalysis:\n  n_clusters: 2\n  label_budget: 2\n")
    code = (
        "import sys\n"
        "from armbench_segmentation import cli\n"
        "rc = cli.main(sys.argv[1:])\n"
        "assert rc == 0, rc\n"
        "import leap_binder\n"  # the Tensorleap face's runtime too
        "print('ONNX-MODULES', sorted(m for m in sys.modules if m == 'onnx' or m.startswith('onnx.')))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMBENCH_")}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code, "analyze", "-q", "--dataset", str(tiny_dataset.root), "--model",
                        str(model), "--config", str(config), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ONNX-MODULES []" in r.stdout, r.stdout
    assert (tmp_path / "out" / "dashboard.html").is_file()

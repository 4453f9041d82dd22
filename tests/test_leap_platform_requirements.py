"""The Tensorleap bundle's requirements: one lean file for exactly the entry's import closure.

* ``leap_bundle.platform_requirements`` on a hand-made project and lock with a known answer
  (lazy imports inside functions found, standard library and project modules skipped, the
  lock's dependencies followed with their markers, optional ones and unused packages left out).
* The shipped ``tensorleap_requirements.txt``: in sync with poetry.lock and the entry
  (``tools/sync_requirements.py --check``), none of the engine-only distributions; its
  markers, evaluated by ``packaging`` for the platform's Linux x86_64 and aarch64 images,
  select onnxruntime-gpu on one and onnxruntime on the other, and every selected pin has a
  wheel for that image among the files poetry.lock records (psutil 5.x on aarch64 excepted:
  built from its sdist there).
* ``check_requirements`` names each kind of disagreement (a missing pin, a pin nothing
  imports, a version other than the lock's).
* ``slow``: a fresh ``python -m venv`` gets only that file installed (wheels from Poetry's
  artifact cache when present, else the index), then, from a folder holding only the bundle
  files (leap.yaml's include minus exclude), the entry imports, registers its handlers,
  ``LeapLoader.check_dataset()`` is valid on the tiny dataset, and the integration test runs
  one sample of each split with the shipped model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import leap_bundle  # noqa: E402

SHIPPED = ROOT / leap_bundle.PLATFORM_REQUIREMENTS
ENGINE_ONLY = ("pandas", "pyarrow", "plotly", "scikit-learn", "scipy", "onnx", "flask", "opentsne", "ray", "tqdm",
               "torch")
#: the platform's base images: CPython 3.11 on Linux, glibc of a recent Debian/Ubuntu
MAX_GLIBC = (2, 35)
#: pins without a wheel for the image, installed from their sdist there
SOURCE_BUILDS = {"x86_64": [], "aarch64": ["psutil"]}


def _environment(machine: str) -> dict:
    from packaging.markers import default_environment

    return {**default_environment(), "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
            "platform_machine": machine, "python_version": "3.11", "python_full_version": "3.11.9",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def _selected(text: str, machine: str) -> dict[str, str]:
    """{canonical name: version} of the pins whose markers hold on that image."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = _environment(machine)
    out = {}
    for line in leap_bundle.parse_requirements(text).values():
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            (spec,) = req.specifier
            assert spec.operator == "==", line
            out[canonicalize_name(req.name)] = spec.version
    return out


# ---------------------------------------------------------------------------- known answer
MINI_LOCK = '''
[[package]]
name = "numpy"
version = "2.0.0"
groups = ["main"]

[[package]]
name = "PyYAML"
version = "6.0.1"
groups = ["main"]

[[package]]
name = "requests"
version = "2.32.0"
groups = ["main"]

[package.dependencies]
urllib3 = {version = ">=1.26", markers = "python_version >= \\"3.8\\""}
idna = ">=2.5"
PySocks = {version = ">=1.5.6", optional = true, markers = "extra == \\"socks\\""}

[[package]]
name = "urllib3"
version = "2.2.0"
groups = ["main"]

[[package]]
name = "idna"
version = "3.7"
groups = ["main"]

[[package]]
name = "PySocks"
version = "1.7.1"
groups = ["main"]

[[package]]
name = "pandas"
version = "2.2.0"
groups = ["main"]

[[package]]
name = "pytest"
version = "8.0.0"
groups = ["dev"]
'''


def test_platform_requirements_known_answer(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "entry.py").write_text("import os\nimport numpy as np\nfrom pkg import a\n")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text(textwrap.dedent("""
        from . import b
        import json

        def load(path):
            import yaml  # lazy: still needed on the platform
            return yaml.safe_load(path)
    """))
    (tmp_path / "pkg" / "b.py").write_text("from requests import get\nimport pkg.a\n")
    (tmp_path / "unused.py").write_text("import pandas\n")  # not imported by the entry
    lock = tmp_path / "poetry.lock"
    lock.write_text(MINI_LOCK)

    text, info = leap_bundle.platform_requirements(tmp_path / "entry.py", tmp_path, lock)
    assert info["modules"] == {"numpy": ["numpy"], "requests": ["requests"], "yaml": ["pyyaml"]}
    assert info["unprovided"] == {}
    pins = [line for line in text.splitlines() if not line.startswith("#")]
    assert pins == ["idna==3.7", "numpy==2.0.0", "PyYAML==6.0.1", "requests==2.32.0",
                    'urllib3==2.2.0 ; python_version >= "3.8"']
    assert leap_bundle.check_requirements(text, tmp_path / "entry.py", tmp_path, lock)[0] == []

    (tmp_path / "pkg" / "b.py").write_text("import requests\nimport leftpad\n")  # nothing in the lock provides it
    failures, _ = leap_bundle.check_requirements(text, tmp_path / "entry.py", tmp_path, lock)
    assert any("leftpad is imported by pkg/b.py" in f for f in failures), failures


# ---------------------------------------------------------------------------- the shipped file
def test_shipped_file_is_in_sync_and_lean():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "sync_requirements.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
    pins = leap_bundle.parse_requirements(SHIPPED.read_text(encoding="utf-8"))
    imported = {"code-loader", "numpy", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu", "pycocotools",
                "pyyaml"}
    assert imported <= set(pins)
    assert not set(ENGINE_ONLY) & set(pins)
    config = leap_bundle.read_leap_yaml()
    files = leap_bundle.bundle_files(ROOT, config)
    assert [f for f in files if f in leap_bundle.REQUIREMENTS_FILES] == [leap_bundle.PLATFORM_REQUIREMENTS]
    assert "poetry.lock" not in files and "pyproject.toml" not in files


@pytest.mark.parametrize("machine, runtime, other", [("x86_64", "onnxruntime-gpu", "onnxruntime"),
                                                     ("aarch64", "onnxruntime", "onnxruntime-gpu")])
def test_markers_and_wheels_for_each_platform_image(machine, runtime, other):
    from packaging.utils import canonicalize_name, parse_wheel_filename

    selected = _selected(SHIPPED.read_text(encoding="utf-8"), machine)
    assert runtime in selected and other not in selected
    assert {"code-loader", "numpy", "opencv-python-headless", "pycocotools", "pyyaml", "protobuf"} <= set(selected)
    lock = leap_bundle._lock_packages(leap_bundle.LOCK)
    source_builds = []
    for name, version in selected.items():
        pkg = lock[name]
        assert pkg["version"] == version
        ok = []
        for entry in pkg.get("files", []):
            if not entry["file"].endswith(".whl"):
                continue
            _, _, _, tags = parse_wheel_filename(entry["file"])
            for tag in tags:
                py_ok = tag.interpreter in ("py3", "py2.py3", "cp311") or (
                    tag.abi == "abi3" and tag.interpreter.startswith("cp3") and int(tag.interpreter[3:]) <= 11)
                abi_ok = tag.abi in ("none", "abi3", "cp311")
                plat = tag.platform
                plat_ok = plat == "any" or (plat.endswith("_" + machine) and (
                    plat.startswith("manylinux2014") or (plat.startswith("manylinux_") and tuple(
                        int(v) for v in plat.split("_")[1:3]) <= MAX_GLIBC)))
                if py_ok and abi_ok and plat_ok:
                    ok.append(entry["file"])
        if not ok:
            assert any(e["file"].endswith(".tar.gz") for e in pkg.get("files", [])), \
                f"{canonicalize_name(name)}=={version}: neither a wheel for CPython 3.11 on Linux {machine} nor an sdist"
            source_builds.append(name)
    # psutil 5.x (code-loader pins psutil < 6) has no Linux aarch64 wheel: the aarch64 image
    # builds it from its sdist (README, Tensorleap section). Anything else would be news.
    assert source_builds == SOURCE_BUILDS[machine]


def test_check_requirements_names_each_disagreement():
    text = SHIPPED.read_text(encoding="utf-8")
    entry = ROOT / "leap_binder.py"
    assert leap_bundle.check_requirements(text, entry)[0] == []
    dropped = "\n".join(line for line in text.splitlines() if not line.lower().startswith("pyyaml=="))
    failures, _ = leap_bundle.check_requirements(dropped, entry)
    assert any("lacks pyyaml" in f.lower() and "yaml" in f for f in failures), failures
    failures, _ = leap_bundle.check_requirements(text + "pandas==2.3.3\n", entry)
    assert any("pandas==2.3.3, which nothing the entry imports needs" in f for f in failures), failures
    changed = text.replace("numpy==", "numpy==0.", 1)
    failures, _ = leap_bundle.check_requirements(changed, entry)
    assert any("poetry.lock gives 'numpy==" in f for f in failures), failures
    assert failures[-1] == "regenerate it: python tools/sync_requirements.py"


# ---------------------------------------------------------------------------- fresh venv
def _wheel_dirs(pins: dict[str, str]) -> tuple[list[str], bool]:
    """Poetry artifact-cache folders holding a wheel of each selected pin (for --find-links),
    and whether every pin was found there (then the install is offline: --no-index)."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    cache = Path(os.environ.get("POETRY_CACHE_DIR") or Path.home() / ".cache" / "pypoetry") / "artifacts"
    found: dict[str, str] = {}
    for wheel in cache.rglob("*.whl") if cache.is_dir() else []:
        try:
            name, version, _, _ = parse_wheel_filename(wheel.name)
        except ValueError:
            continue
        if pins.get(canonicalize_name(name)) == str(version):
            found.setdefault(canonicalize_name(name), str(wheel.parent))
    return sorted(set(found.values())), set(found) == set(pins)


FRESH = r"""
import json, os, sys
from pathlib import Path
here = Path.cwd().resolve()
import leap_binder
from code_loader import leap_binder as binder
import armbench_segmentation
assert Path(armbench_segmentation.__file__).resolve().is_relative_to(here), armbench_segmentation.__file__
sc = binder.setup_container
responses = {r.data["split"]: r for r in leap_binder.preprocess()}
responses["unlabeled"] = leap_binder.preprocess_unlabeled()
ran = []
if os.environ.get("ARMBENCH_MODEL"):
    for split, resp in responses.items():
        sid = leap_binder.image_ids(resp)[0]
        leap_binder.integration_test(sid, resp)
        ran.append(f"{split}/{sid}")
heavy = sorted(m for m in ("pandas", "pyarrow", "plotly", "sklearn", "scipy", "onnx", "flask") if m in sys.modules)
print(json.dumps({
    "metrics": sorted(h.metric_handler_data.name for h in sc.metrics if h.function.__module__ == "leap_binder"),
    "instance_metrics": sorted(h.metric_handler_data.name for h in sc.instance_metrics),
    "instance_masks": [h.name for h in sc.instance_masks],
    "images": {k: len(leap_binder.image_ids(r)) for k, r in responses.items()},
    "instances": sum(len(v) for r in responses.values() for v in (r.sample_ids_to_instance_mappings or {}).values()),
    "integration_test": ran, "heavy": heavy}))
"""
#: what the platform runs first, in its own interpreter (LeapLoader executes the entry itself)
CHECK = r"""
import json
from pathlib import Path
from code_loader import LeapLoader
result = LeapLoader(str(Path.cwd().resolve()), "leap_binder.py").check_dataset()
print(json.dumps({"is_valid": bool(result.is_valid), "error": result.general_error,
                  "failed": [p.name for p in result.payloads if not p.is_passed],
                  "has_element_instances": bool(result.setup and result.setup.has_element_instances)}))
"""


@pytest.mark.slow
def test_fresh_venv_with_only_the_lean_file_runs_the_bundle(tmp_path, tiny_dataset):
    text = SHIPPED.read_text(encoding="utf-8")
    pins = _selected(text, os.uname().machine)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    links, offline = _wheel_dirs(pins)
    cmd = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--only-binary", ":all:",
           "-r", str(SHIPPED)] + [a for d in links for a in ("--find-links", d)] + (["--no-index"] if offline else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, timeout=120).stdout
    installed = {leap_bundle._canonical(line.split("==")[0]) for line in freeze.splitlines() if "==" in line}
    assert installed == set(pins), (sorted(installed - set(pins)), sorted(set(pins) - installed))

    bundle = tmp_path / "bundle"
    for rel in leap_bundle.bundle_files(ROOT):
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, bundle / rel)
    assert (bundle / "leap_binder.py").is_file() and not (bundle / "leap_test.py").exists()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home"),
           "TL_DISABLE_ANALYTICS": "1", "MPLBACKEND": "Agg", "ARMBENCH_DATASET": str(tiny_dataset.root)}
    model = ROOT / "models" / "armbench-yolov5s-seg.onnx"
    if model.is_file():
        env["ARMBENCH_MODEL"] = str(model)
    (tmp_path / "home").mkdir()
    results = []
    for script in (FRESH, CHECK):
        proc = subprocess.run([str(py), "-E", "-s", "-c", script], cwd=bundle, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    result, check = results
    assert check["is_valid"] and check["error"] is None and check["failed"] == [], check
    assert check["has_element_instances"]
    assert result["heavy"] == []
    assert "matching" in result["metrics"] and "instance_iou" in result["instance_metrics"]
    assert result["instance_masks"] == ["gt_instances"]
    assert result["images"] == {"train": 3, "val": 2, "unlabeled": 3}
    assert result["instances"] == 6 + 0 + 4 + 3 + 2  # annotations of the classes per labeled image
    if model.is_file():
        assert len(result["integration_test"]) == 3
    assert not (tmp_path / "home" / ".tensorleap").exists()

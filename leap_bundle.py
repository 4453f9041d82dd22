"""What leap-cli bundles, and what the entry file needs bundled: ``leap_test.py``'s step 5.

* leap-cli's doublestar glob semantics: :func:`glob_match`, :func:`bundled`.
* :func:`import_closure`: the project files an entry file imports, found statically.
* :func:`read_leap_yaml` and :func:`check_leap_yaml`: every file the entry imports (statically
  and at run time), the entry itself and :data:`REQUIRED_FILES` are matched by ``include`` and
  not by ``exclude``; heavy files are not; ``pythonVersion`` is a platform image id; exactly one
  requirements file (:data:`PLATFORM_REQUIREMENTS`) is bundled.
* :func:`bundle_files`: the files ``leap push`` uploads (include minus exclude).
* :func:`platform_requirements` and :func:`check_requirements`: the lean requirements file of
  the bundle, pinned from ``poetry.lock`` for exactly the third-party imports of the entry's
  closure (and what those need), with the lock's environment markers.

A helper of ``leap_test.py`` only: it lives beside it at the repository root, is not imported
by the entry file, so leap.yaml does not bundle it. It does not import code_loader.
"""

import ast
import functools
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent
LEAP_YAML = ROOT / "leap.yaml"
LOCK = ROOT / "poetry.lock"
#: the requirements files leap-cli accepts at the bundle root (``pkg/code/utils.go``
#: ``RequirementsFiles``); it uploads whichever are bundled and does not choose among them.
REQUIREMENTS_FILES = ("pyproject.toml", "requirements.txt", "tensorleap_requirements.txt")
#: the one the bundle ships: the lean file for the platform (``tools/sync_requirements.py``)
PLATFORM_REQUIREMENTS = "tensorleap_requirements.txt"
REQUIRED_FILES = (PLATFORM_REQUIREMENTS, "armbench_segmentation/default_config.yaml")
#: leap-cli matches ``pythonVersion`` against the platform's base-image ids (py38 ... py312);
#: anything else is silently replaced by the server's default image.
PYTHON_VERSION_ID = re.compile(r"py3(8|9|1[0-2])")
NOT_BUNDLED = ("models/armbench-yolov5s-seg.onnx", "tests/conftest.py", "tools/finetune.py",
               "armbench_segmentation/dataset/train.json", ".venv/bin/python")


def _expand_braces(pattern: str) -> List[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [x for alt in m.group(1).split(",") for x in _expand_braces(pattern[:m.start()] + alt + pattern[m.end():])]


def _segment_regex(segment: str) -> "re.Pattern[str]":
    out, i = "", 0
    while i < len(segment):
        c = segment[i]
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = segment.find("]", i + 1)
            if j < 0:
                out += re.escape(c)
            else:
                body = segment[i + 1:j]
                out += "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]"
                i = j
        elif c == "\\" and i + 1 < len(segment):
            i += 1
            out += re.escape(segment[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def _match_segments(pat: List[str], parts: List[str]) -> bool:
    if not pat:
        return not parts
    if pat[0] == "**":
        return any(_match_segments(pat[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and bool(_segment_regex(pat[0]).match(parts[0])) and _match_segments(pat[1:], parts[1:])


def glob_match(pattern: str, path: str) -> bool:
    """doublestar semantics (leap-cli): ``**`` spans directories, ``*``/``?`` stay in one, ``{a,b}``."""
    pattern = pattern.replace("\\", "/").lstrip("./") if pattern.startswith("./") else pattern.replace("\\", "/")
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    return any(_match_segments([s for s in p.split("/") if s], parts) for p in _expand_braces(pattern))


def bundled(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    included = any(glob_match(p, path) for p in (include or ["**"]))
    return included and not any(glob_match(p, path) for p in exclude or [])


def _module_file(name: str, root: Path) -> Optional[Path]:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_closure(entry: Path, root: Path) -> List[Path]:
    """Project files the entry imports, transitively (every import statement, lazy ones
    inside functions included), plus the ``__init__.py`` of every package on the way."""
    seen: Dict[Path, None] = {}
    todo = [entry.resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen[path] = None
        rel_pkg = path.relative_to(root).parent.parts if path.is_relative_to(root) else ()
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        names: List[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = list(rel_pkg)[: len(rel_pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                names.append(base)
                names += [f"{base}.{a.name}" if base else a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the package __init__ files on the way, then the module
                found = _module_file(".".join(parts[:i]), root)
                if found is not None and found.resolve() not in seen:
                    todo.append(found.resolve())
    return sorted(p for p in seen if p.is_relative_to(root))


def _third_party(name: str, root: Path) -> Optional[str]:
    """The top-level module of an absolute import that is neither the standard library nor a
    project file (None for those)."""
    top = name.split(".")[0]
    if not top or top in sys.stdlib_module_names or top == "__future__" or _module_file(top, root) is not None:
        return None
    return top


def external_imports(files: Iterable[Path], root: Path) -> Dict[str, List[str]]:
    """``{top-level module: [project files importing it]}`` for every third-party import of
    ``files`` (lazy imports inside functions included)."""
    out: Dict[str, List[str]] = {}
    for path in files:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = _third_party(name, root)
                rel = Path(path).resolve().relative_to(root).as_posix()
                if top is not None and rel not in out.setdefault(top, []):
                    out[top].append(rel)
    return out


def bundle_files(root: Path = ROOT, config: Optional[Dict[str, Any]] = None) -> List[str]:
    """The files ``leap push`` uploads: every file under ``root`` matched by ``include`` and not
    by ``exclude`` (POSIX paths relative to ``root``), plus the entry file."""
    config = read_leap_yaml(root / "leap.yaml") if config is None else config
    include, exclude = list(config.get("include") or []), list(config.get("exclude") or [])
    pruned = [p[:-3] for p in exclude if p.endswith("/**")]
    out = []
    for folder, dirs, names in os.walk(root):
        rel_dir = Path(folder).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirs[:] = [d for d in dirs if not any(glob_match(p, rel_dir + d) for p in pruned)]
        out += [rel_dir + n for n in names if bundled(rel_dir + n, include, exclude)]
    entry = config.get("entryFile")
    if entry and entry not in out and (root / entry).is_file():
        out.append(entry)
    return sorted(out)


# ---------------------------------------------------------------------------- requirements
def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_packages(lock_path: Path) -> Dict[str, Dict[str, Any]]:
    import tomllib

    lock = tomllib.loads(Path(lock_path).read_text(encoding="utf-8"))
    return {_canonical(p["name"]): p for p in lock["package"] if "main" in p.get("groups", ["main"])}


def _lock_marker(pkg: Dict[str, Any]) -> Optional[str]:
    markers = pkg.get("markers")
    return markers.get("main") if isinstance(markers, dict) else markers


@functools.lru_cache(maxsize=1)
def _installed_modules() -> Dict[str, List[str]]:
    from importlib.metadata import packages_distributions

    return dict(packages_distributions())


def module_distributions(module: str, lock: Dict[str, Dict[str, Any]]) -> List[str]:
    """The locked runtime distributions that provide import ``module``: those the installed
    environment names for it (``importlib.metadata.packages_distributions``) and the one named
    like it (``onnxruntime`` beside the installed ``onnxruntime-gpu``: the lock's markers pick
    one per platform)."""
    names = {_canonical(d) for d in _installed_modules().get(module, [])} | {_canonical(module)}
    return sorted(n for n in names if n in lock)


def _and(a: Optional[str], b: Optional[str]) -> Optional[str]:
    if not a or not b:
        return a or b
    return a if a == b else f"({a}) and ({b})"


def platform_requirements(entry: Path, root: Path = ROOT, lock_path: Path = LOCK) -> Tuple[str, Dict[str, Any]]:
    """The lean requirements file of the bundle and what it was made from.

    Roots: the locked distributions of every third-party module the entry's import closure
    imports (:func:`module_distributions`), with the lock's own markers (the onnxruntime /
    onnxruntime-gpu split). Then what they depend on in the lock (optional dependencies left
    out), each with the markers of the paths that reach it (``or`` of paths, ``and`` along a
    path; unconditional as soon as one path is). Returns ``(text, {"modules": {module:
    [distributions]}, "unprovided": {module: [files]}, "pins": {distribution: line}})``.
    """
    lock = _lock_packages(lock_path)
    imports = external_imports(import_closure(entry, root), root)
    modules = {m: module_distributions(m, lock) for m in sorted(imports)}
    paths: Dict[str, List[Optional[str]]] = {}  # distribution -> marker of each path reaching it
    todo = [(d, _lock_marker(lock[d])) for ds in modules.values() for d in ds]
    while todo:
        name, marker = todo.pop()
        seen = paths.setdefault(name, [])
        if marker in seen or None in seen:
            continue
        seen.append(marker)
        for dep, spec in (lock[name].get("dependencies") or {}).items():
            spec = spec if isinstance(spec, dict) else {"version": spec}
            if spec.get("optional") or _canonical(dep) not in lock:
                continue
            todo.append((_canonical(dep), _and(marker, spec.get("markers"))))
    pins = {}
    for name in sorted(paths):
        markers = paths[name]
        line = f"{lock[name]['name']}=={lock[name]['version']}"
        if None not in markers:
            line += " ; " + (markers[0] if len(markers) == 1 else " or ".join(f"({m})" for m in sorted(markers)))
        pins[name] = line
    header = ("# The Tensorleap platform's requirements: exactly what leap_binder.py's import closure needs,\n"
              "# pinned from poetry.lock. Generated by tools/sync_requirements.py; do not edit by hand.\n"
              "# The local install uses poetry.lock (make install).\n")
    text = header + "".join(line + "\n" for line in pins.values())
    info = {"modules": modules, "unprovided": {m: imports[m] for m, ds in modules.items() if not ds}, "pins": pins}
    return text, info


def parse_requirements(text: str) -> Dict[str, str]:
    """``{canonical name: line}`` of a pinned requirements text (comments and blanks skipped)."""
    out = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            out[_canonical(re.split(r"[=<>!~;\[ ]", line, maxsplit=1)[0])] = line
    return out


def check_requirements(text: str, entry: Path, root: Path = ROOT, lock_path: Path = LOCK,
                       name: str = PLATFORM_REQUIREMENTS) -> Tuple[List[str], List[str]]:
    """(failures, summary lines): the bundled requirements ``text`` against the entry's import
    closure and the lock. Fails on a third-party module the closure imports that no locked
    distribution provides, one whose distribution is not pinned, a pin nothing imported needs,
    and a pin that differs from the lock's version or markers."""
    wanted, info = platform_requirements(entry, root, lock_path)
    want, have = info["pins"], parse_requirements(text)
    failures = [f"{m} is imported by {', '.join(files)} but no runtime distribution in poetry.lock provides it"
                for m, files in info["unprovided"].items()]
    for module, dists in info["modules"].items():
        failures += [f"{name} lacks {d} (provides {module}, imported by the entry's closure)"
                     for d in dists if d not in have]
    needed = {d for ds in info["modules"].values() for d in ds}
    failures += [f"{name} lacks {want[d]} (a dependency of the imported distributions)"
                 for d in want if d not in have and d not in needed]
    failures += [f"{name} pins {have[d]}, which nothing the entry imports needs" for d in have if d not in want]
    failures += [f"{name} has {have[d]!r}, poetry.lock gives {want[d]!r}" for d in have if d in want
                 and have[d] != want[d]]
    if failures:
        failures.append(f"regenerate it: python tools/sync_requirements.py")
    lines = [f"{name}: {len(have)} pins for {len(info['modules'])} imported modules "
             f"({', '.join(info['modules'])}){' = the lock' if not failures else ''}"]
    return failures, lines


def read_leap_yaml(path: Path = LEAP_YAML) -> Dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping")
    return data


def _is_environment(rel: Path) -> bool:
    """Installed packages (a virtualenv inside the project), not project code."""
    return "site-packages" in rel.parts or "dist-packages" in rel.parts or rel.parts[0].startswith(".")



def check_leap_yaml(config: Dict[str, Any], runtime_modules: Sequence[str],
                    root: Path = ROOT) -> Tuple[List[str], List[str]]:
    """(failures, summary lines) of leap.yaml ``config`` for a project at ``root``.

    ``runtime_modules``: files imported at run time (``check_dataset`` in a fresh
    interpreter); those outside ``root`` or in an environment inside it are ignored."""
    failures: List[str] = []
    include, exclude = list(config.get("include") or []), list(config.get("exclude") or [])
    entry = config.get("entryFile")
    if not entry or not (root / entry).is_file():
        return [f"leap.yaml entryFile {entry!r} does not exist in {root}"], []
    version = config.get("pythonVersion")
    if not isinstance(version, str) or not PYTHON_VERSION_ID.fullmatch(version):
        failures.append(f"leap.yaml pythonVersion is {version!r}: use a platform image id (py38 ... py312, "
                        f"this project: py311); leap-cli silently uses the server's default image otherwise")
    shipped = [f for f in REQUIREMENTS_FILES if bundled(f, include, exclude) and (root / f).is_file()]
    if shipped != [PLATFORM_REQUIREMENTS]:
        failures.append(f"leap.yaml bundles the requirements files {shipped}: ship exactly {PLATFORM_REQUIREMENTS} "
                        f"(leap-cli uploads every one of {list(REQUIREMENTS_FILES)} it finds)")
    static = [p.relative_to(root).as_posix() for p in import_closure(root / entry, root)]
    runtime = [Path(m).relative_to(root).as_posix() for m in runtime_modules
               if Path(m).is_relative_to(root) and not _is_environment(Path(m).relative_to(root))]
    needed = sorted(set(static) | set(runtime) | {entry, *REQUIRED_FILES})
    missing = [p for p in needed if not bundled(p, include, exclude)]
    failures += [f"leap.yaml does not bundle {p} (imported or read by {entry})" for p in missing]
    failures += [f"{p} is missing" for p in REQUIRED_FILES if not (root / p).is_file()]
    failures += [f"leap.yaml would bundle {bad}" for bad in NOT_BUNDLED if bundled(bad, include, exclude)]
    line = (f"{len(needed)} files needed by {entry} ({len(static)} by the import graph, "
            f"{len(runtime)} imported at run time): all bundled" if not missing else
            f"{len(missing)} of {len(needed)} needed files not bundled")
    lines = [line]
    unused = [f for f in bundle_files(root, config) if f.endswith(".py") and f not in needed]
    if unused:  # harmless on the platform, but not what a lean bundle ships: add them to exclude
        lines.append(f"bundled but never imported by {entry} ({len(unused)}; exclude them): {', '.join(unused)}")
    return failures, lines

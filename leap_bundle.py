"""What leap-cli bundles, and what the entry file needs bundled: ``leap_test.py``'s step 5.

* leap-cli's doublestar glob semantics: :func:`glob_match`, :func:`bundled`.
* :func:`import_closure`: the project files an entry file imports, found statically.
* :func:`read_leap_yaml` and :func:`check_leap_yaml`: every file the entry imports (statically
  and at run time), the entry itself and :data:`REQUIRED_FILES` are matched by ``include`` and
  not by ``exclude``; heavy files are not.

A helper of ``leap_test.py`` only: it lives beside it at the repository root, is not imported
by the entry file, so leap.yaml does not bundle it. It does not import code_loader.
"""

import ast
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent
LEAP_YAML = ROOT / "leap.yaml"
REQUIRED_FILES = ("requirements.txt", "armbench_segmentation/default_config.yaml")
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
    if str(config.get("pythonVersion")) != "3.11":
        failures.append(f"leap.yaml pythonVersion is {config.get('pythonVersion')!r}, expected '3.11'")
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
    return failures, [line]

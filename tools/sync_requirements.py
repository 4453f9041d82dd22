"""Write the requirements files from poetry.lock, or check they are in sync.

* ``tensorleap_requirements.txt``: the Tensorleap bundle's one requirements file, which the
  platform installs on its own Linux images (x86_64 and aarch64). It pins, from the lock,
  exactly the distributions the entry file's import closure imports and what they depend on,
  with the lock's environment markers (onnxruntime-gpu where it has wheels, onnxruntime
  elsewhere); ``leap_bundle.platform_requirements`` makes it, ``leap_test.py`` checks the
  bundled one against the closure.
* ``requirements.txt``: the full runtime lock export (every runtime pin, markers kept) for a
  pip install of the local engine without Poetry; not bundled.

    python tools/sync_requirements.py          # rewrite both
    python tools/sync_requirements.py --check  # exit 1 and show the diff if one is out of sync
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import leap_bundle  # noqa: E402

LOCK_EXPORT = "requirements.txt"
HEADER = "# Generated from poetry.lock by tools/sync_requirements.py; do not edit by hand.\n"


def render_lock_export(lock_path: Path = leap_bundle.LOCK) -> str:
    """Every runtime (``main`` group) package of the lock, pinned, with its markers."""
    lock = tomllib.loads(lock_path.read_text())
    lines = []
    for pkg in sorted(lock["package"], key=lambda p: p["name"].lower()):
        if "main" not in pkg.get("groups", ["main"]):
            continue
        line = f"{pkg['name']}=={pkg['version']}"
        markers = pkg.get("markers")
        if isinstance(markers, dict):
            markers = markers.get("main")
        if markers:
            line += f" ; {markers}"
        lines.append(line)
    return HEADER + "\n".join(lines) + "\n"


def render_platform(lock_path: Path = leap_bundle.LOCK) -> str:
    """The lean platform file (``leap_bundle.platform_requirements`` of leap.yaml's entry)."""
    config = leap_bundle.read_leap_yaml(ROOT / "leap.yaml")
    text, info = leap_bundle.platform_requirements(ROOT / config["entryFile"], ROOT, lock_path)
    if info["unprovided"]:
        raise SystemExit("no runtime distribution in poetry.lock provides " +
                         "; ".join(f"{m} (imported by {', '.join(f)})" for m, f in info["unprovided"].items()))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, do not write")
    args = parser.parse_args(argv)
    status = 0
    for name, wanted in ((leap_bundle.PLATFORM_REQUIREMENTS, render_platform()), (LOCK_EXPORT, render_lock_export())):
        target = ROOT / name
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if not args.check:
            from armbench_segmentation.codecs import atomic_write_text

            atomic_write_text(target, wanted)
            print(f"{name}: {len(leap_bundle.parse_requirements(wanted))} pins")
        elif current != wanted:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), wanted.splitlines(True), name,
                                                       "from poetry.lock"))
            print(f"{name} is out of sync with poetry.lock (and the entry's imports): run "
                  f"`python tools/sync_requirements.py`", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

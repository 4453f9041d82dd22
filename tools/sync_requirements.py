"""Write requirements.txt from poetry.lock (runtime group only), or check it is in sync.

The Tensorleap bundle installs from a root requirements.txt; Poetry installs from
poetry.lock. This keeps the two identical:

    python tools/sync_requirements.py          # rewrite requirements.txt
    python tools/sync_requirements.py --check  # exit 1 and show the diff if out of sync
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = "# Generated from poetry.lock by tools/sync_requirements.py; do not edit by hand.\n"


def render(lock_path: Path = ROOT / "poetry.lock") -> str:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, do not write")
    args = parser.parse_args(argv)
    wanted = render()
    target = ROOT / "requirements.txt"
    current = target.read_text() if target.exists() else ""
    if args.check:
        if current != wanted:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), wanted.splitlines(True), "requirements.txt", "from poetry.lock"))
            print("requirements.txt is out of sync with poetry.lock: run `python tools/sync_requirements.py`", file=sys.stderr)
            return 1
        return 0
    target.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())

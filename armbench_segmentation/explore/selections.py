"""Named selections of a run: ``RUN_DIR/selections/<name>.json`` and their exports.

A selection is a list of (split, sample_id) samples of ONE run with its provenance::

    {"name": ..., "created": "2026-12-02T01:02:03Z", "run_key": ..., "model": "<file name>",
     "model_sha256": ..., "filter": {what the page was showing}, "count": n,
     "samples": [{"split": "val", "sample_id": "..."}, ...]}

Names are user strings: :func:`check_name` allows ASCII letters, digits, ``_`` and ``-``, 1
to ``MAX_NAME`` characters, starting and ending with a letter or digit; so a name is always
one plain file name inside ``selections/`` (no separator, no dot), the same one
``labeling.safe_name`` keeps, and ``<name>.json`` never looks like an export. Files are
written atomically (``codecs.atomic_write_text``); the ids CSV through
``analysis.exports.write_csv`` (spreadsheet formulas neutralised).

Exports: ``<name>.ids.csv`` here; the COCO subset with pre-labels and the Label Studio tasks
through ``analysis.labeling.write_selection_exports`` when that module is installed.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from armbench_segmentation.codecs import atomic_write_text, json_default
from armbench_segmentation.errors import ArmbenchError

FOLDER = "selections"
MAX_NAME = 64
MAX_FILTER_CHARS = 4000
_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?")


class SelectionError(ArmbenchError):
    """A bad selection name or content (the message says what is allowed)."""


def check_name(name: Any) -> str:
    """The name when it is a valid selection name, else SelectionError saying what is allowed."""
    rule = (f"a selection name is 1-{MAX_NAME} characters: letters a-z A-Z, digits, _ and -, starting and ending "
            f"with a letter or digit (e.g. dark-totes_2)")
    if not isinstance(name, str) or len(name) > MAX_NAME or not _NAME_RE.fullmatch(name):
        raise SelectionError(rule)
    return name


def folder(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER


def path_of(run_dir: Path, name: str, suffix: str = ".json") -> Path:
    """``selections/<name><suffix>``, checked to stay inside ``selections/``."""
    base = folder(run_dir)
    path = base / f"{check_name(name)}{suffix}"
    if path.parent != base or path.name.startswith("."):  # belt and braces after check_name
        raise SelectionError(f"selection name {name!r} does not give a file inside {FOLDER}/")
    return path


def _clean_filter(value: Any) -> dict:
    """The page's description of its filter: a JSON object, kept only if small."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SelectionError("the selection's filter must be a JSON object")
    text = json.dumps(value, default=str)
    if len(text) > MAX_FILTER_CHARS:
        raise SelectionError(f"the selection's filter description is over {MAX_FILTER_CHARS} characters")
    return json.loads(text)


def save(run: Any, name: str, keys: Iterable[tuple[str, str]], filter_desc: Any = None,
         overwrite: bool = False) -> dict:
    """Write a selection of ``run`` (an ``ExploreRun``); every key must be a sample of the run.

    Raises:
        SelectionError: bad name, unknown sample, empty selection, or the name exists and
            ``overwrite`` is False.
    """
    path = path_of(run.run_dir, name)
    samples, seen = [], set()
    for key in keys:
        if not (isinstance(key, (list, tuple)) and len(key) == 2 and all(isinstance(v, str) for v in key)):
            raise SelectionError("each selected sample must be a [split, sample_id] pair of strings")
        split, sid = key
        if not run.has(split, sid):
            raise SelectionError(f"sample {sid!r} of split {split!r} is not in this run")
        if (split, sid) not in seen:
            seen.add((split, sid))
            samples.append({"split": split, "sample_id": sid})
    if not samples:
        raise SelectionError("the selection is empty; select samples on the map first")
    if path.exists() and not overwrite:
        raise SelectionError(f"a selection named {name!r} exists; choose another name or overwrite it")
    record = {
        "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "run_key": run.run_key,
        "model": run.meta_model(), "model_sha256": run.info.get("model_sha256"),
        "filter": _clean_filter(filter_desc), "count": len(samples), "samples": samples,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1, default=json_default, ensure_ascii=False))
    return record


def load(run: Any, name: str) -> dict:
    """A stored selection; SelectionError when absent, unreadable or of another run."""
    path = path_of(run.run_dir, name)
    if not path.is_file():
        raise SelectionError(f"no selection named {name!r}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        samples = [(str(s["split"]), str(s["sample_id"])) for s in record["samples"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SelectionError(f"selection file {FOLDER}/{path.name} is unreadable ({type(exc).__name__}); "
                             f"delete it and save the selection again") from None
    if record.get("run_key") != run.run_key:
        raise SelectionError(f"selection {name!r} belongs to run {record.get('run_key')}, not to this run "
                             f"{run.run_key}")
    record["samples"] = [{"split": sp, "sample_id": sid} for sp, sid in samples if run.has(sp, sid)]
    return record


def names(run_dir: Path) -> list[str]:
    """Valid selection names stored in the run folder, sorted."""
    base = folder(run_dir)
    if not base.is_dir():
        return []
    out = []
    for p in base.glob("*.json"):
        stem = p.name[: -len(".json")]
        try:
            out.append(check_name(stem))
        except SelectionError:
            continue
    return sorted(out)


def labeling_available() -> bool:
    """True when ``analysis.labeling.write_selection_exports`` is there (COCO and Label Studio)."""
    try:
        from armbench_segmentation.analysis import labeling  # noqa: F401
    except ImportError:
        return False
    return hasattr(labeling, "write_selection_exports")


def export(run: Any, name: str) -> dict[str, str]:
    """Write the selection's exports beside it; returns {kind: path relative to the run folder}.

    ``ids``: ``<name>.ids.csv`` (split, sample_id, file_name, image_id), always. ``coco``
    and ``label_studio`` through ``analysis.labeling.write_selection_exports`` when installed
    (it rewrites ``<name>.ids.csv`` itself then) and the run's dataset is available.
    """
    import pandas as pd

    from armbench_segmentation.analysis.exports import write_csv

    record = load(run, name)
    keys = [(s["split"], s["sample_id"]) for s in record["samples"]]
    out_dir = folder(run.run_dir)
    paths: dict[str, Path] = {}
    if labeling_available() and run.dataset is not None:
        from armbench_segmentation.analysis.labeling import write_selection_exports

        written = write_selection_exports(out_dir, run.store, run.dataset, keys, name)
        paths.update({str(k): Path(v) for k, v in written.items()})
    if "ids" not in paths:
        rows = [run.frame.iloc[run.index[k]] for k in keys]
        table = pd.DataFrame({
            "split": [k[0] for k in keys], "sample_id": [k[1] for k in keys],
            "file_name": [r.get("file_name") for r in rows], "image_id": [r.get("image_id") for r in rows],
        })
        paths["ids"] = write_csv(table, path_of(run.run_dir, name, ".ids.csv"))
    root = run.run_dir.resolve()
    return {k: Path(p).resolve().relative_to(root).as_posix() for k, p in paths.items()}


def exported(run: Any, name: str) -> dict[str, Path]:
    """The export files of a selection that exist: {kind: absolute path} (for downloads)."""
    suffixes = {"ids": ".ids.csv", "coco": ".coco.json", "label_studio": ".label_studio.json",
                "label_config": ".label_config.xml"}
    out = {}
    for kind, suffix in suffixes.items():
        p = path_of(run.run_dir, name, suffix)
        if p.is_file():
            out[kind] = p
    return out

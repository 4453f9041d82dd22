"""Helpers shared by the CLI sub-commands: settings flags, output paths, opening the dataset."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from armbench_segmentation.config import Settings, load_settings
from armbench_segmentation.errors import ArmbenchError
from armbench_segmentation.splits import SPLITS

# flag dest -> dotted settings key
SETTINGS_FLAGS: dict[str, str] = {
    "dataset": "data.path",
    "model": "model.path",
    "train_size": "data.train_size",
    "val_size": "data.val_size",
    "unlabeled_size": "data.unlabeled_size",
}


def add_settings_arguments(parser: argparse.ArgumentParser, model: bool = True, sizes: bool = True) -> None:
    """Add ``--config``, ``--dataset``, ``--model`` and the split size flags.

    Every flag defaults to None (= not given), so the environment, the user config file
    and the packaged defaults apply in that order when a flag is absent.
    """
    group = parser.add_argument_group("settings (flag > environment > --config file > defaults)")
    group.add_argument("--config", metavar="FILE", default=None,
                       help="YAML settings file (default: $ARMBENCH_CONFIG or ~/.config/armbench-segmentation/config.yaml)")
    group.add_argument("--dataset", metavar="DIR", default=None,
                       help="ARMBench mix-object-tote folder (images/, train.json, val.json, test.json); env ARMBENCH_DATASET")
    if model:
        group.add_argument("--model", metavar="PATH", default=None, help="YOLOv5-seg or YOLOv8/YOLO11-seg ONNX model (default: the shipped one); env ARMBENCH_MODEL")
    if sizes:
        for split in SPLITS:
            group.add_argument(f"--{split}-size", metavar="N", default=None,
                               help=f"images taken from the {split} split: an integer or 'all'")


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted overrides for the flags that were given (None = not given)."""
    return {key: getattr(args, dest) for dest, key in SETTINGS_FLAGS.items() if getattr(args, dest, None) is not None}


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None,
                       extra: Mapping[str, Any] | None = None, flags: Mapping[str, str] | None = None) -> Settings:
    """Settings with precedence flag > environment > user file > packaged defaults.

    Args:
        args: parsed arguments from a parser given :func:`add_settings_arguments`.
        env: environment mapping (default ``os.environ``).
        extra: more dotted overrides from command-specific flags (None values ignored).
        flags: dotted key -> the flag that set it in ``extra`` (named in error messages).
    Raises:
        ConfigError: a bad value anywhere, with its source (file, variable or flag).
    """
    overrides = settings_overrides(args)
    overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
    sources = {key: "--" + dest.replace("_", "-") for dest, key in SETTINGS_FLAGS.items()}
    sources.update(flags or {})
    return load_settings(config_path=getattr(args, "config", None), overrides=overrides,
                         env=os.environ if env is None else env, override_sources=sources)


def check_output_path(path: str | os.PathLike, kind: str, flag: str = "--out") -> Path:
    """Check, before any work, that ``path`` can be written as a ``kind`` ("dir" or "file").

    A folder path must be an existing folder or creatable; a file path must not be a folder
    and its folder must exist or be creatable. The nearest existing ancestor must be a
    writable folder (tested by creating and removing a temporary file there). Nothing is
    created.

    Returns:
        the path, ``~`` expanded.
    Raises:
        ArmbenchError: one line naming the flag, the path, what is wrong and the fix.
    """
    if kind not in ("dir", "file"):
        raise ValueError(f"kind must be 'dir' or 'file', got {kind!r}")
    p = Path(os.path.expanduser(str(path)))
    noun = "folder" if kind == "dir" else "file"
    if kind == "dir" and p.exists() and not p.is_dir():
        raise ArmbenchError(f"{flag} {p} exists and is not a folder; choose a folder path")
    if kind == "file":
        if p.is_dir():
            raise ArmbenchError(f"{flag} {p} is a folder; give a file path, e.g. {p / 'predictions.json'}")
        if p.exists() and not p.is_file():
            raise ArmbenchError(f"{flag} {p} exists and is not a regular file; choose another file path")
    ancestor = p if kind == "dir" else p.parent
    while not ancestor.exists():
        if ancestor.is_symlink():
            raise ArmbenchError(f"{flag} {p}: {ancestor} is a broken symbolic link; fix it or choose another {noun}")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ArmbenchError(f"{flag} {p} cannot be created: {ancestor} is a file, not a folder; choose another {noun}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".armbench-write-test-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ArmbenchError(f"{flag} {p} is not writable ({ancestor}: {exc.strerror or exc}); "
                            f"choose a {noun} you can write to") from None
    return p


def open_dataset(settings: Settings):
    """The ArmbenchDataset at ``settings.data.path``.

    Raises:
        DatasetError: missing/incomplete folder, with where to put ARMBench and how to use
            the synthetic dataset instead.
    """
    from armbench_segmentation.data.coco import ArmbenchDataset

    return ArmbenchDataset(settings.data.path, settings.data)

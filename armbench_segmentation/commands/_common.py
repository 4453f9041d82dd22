"""Helpers shared by the CLI sub-commands: settings flags and opening the dataset."""

from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

from armbench_segmentation.config import Settings, load_settings

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
        group.add_argument("--model", metavar="PATH", default=None, help="YOLOv5s-seg ONNX model; env ARMBENCH_MODEL")
    if sizes:
        for split in ("train", "val", "unlabeled"):
            group.add_argument(f"--{split}-size", metavar="N", default=None,
                               help=f"images taken from the {split} split: an integer or 'all'")


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted overrides for the flags that were given (None = not given)."""
    return {key: getattr(args, dest) for dest, key in SETTINGS_FLAGS.items() if getattr(args, dest, None) is not None}


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None,
                       extra: Mapping[str, Any] | None = None) -> Settings:
    """Settings with precedence flag > environment > user file > packaged defaults.

    Args:
        args: parsed arguments from a parser given :func:`add_settings_arguments`.
        env: environment mapping (default ``os.environ``).
        extra: more dotted overrides from command-specific flags (None values ignored).
    Raises:
        ConfigError: a bad value anywhere, with its source.
    """
    overrides = settings_overrides(args)
    overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
    return load_settings(config_path=getattr(args, "config", None), overrides=overrides,
                         env=os.environ if env is None else env)


def open_dataset(settings: Settings):
    """The ArmbenchDataset at ``settings.data.path``.

    Raises:
        DatasetError: missing/incomplete folder, with where to put ARMBench and how to use
            the synthetic dataset instead.
    """
    from armbench_segmentation.data.coco import ArmbenchDataset

    return ArmbenchDataset(settings.data.path, settings.data)

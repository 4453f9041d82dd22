"""armbench-segmentation: YOLOv5s-seg failure analysis for ARMBench tote images."""

from __future__ import annotations

DISTRIBUTION = "armbench-segmentation"


def package_version() -> str:
    """The installed distribution's version, or ``"unknown (not installed)"`` (a source
    checkout that was never installed). Read on call, never at import time."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return package_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

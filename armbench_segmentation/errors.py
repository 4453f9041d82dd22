"""Exceptions the project raises on purpose. The CLI prints them without a traceback."""

from __future__ import annotations


class ArmbenchError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class DatasetError(ArmbenchError):
    """The dataset folder or one of its COCO files is missing or malformed."""


class SampleError(ArmbenchError):
    """One sample cannot be used (missing/corrupt image, path outside the dataset...).

    Runs over many samples catch this, report it with the sample id and go on.
    """

    def __init__(self, sample_id: str, message: str):
        super().__init__(f"sample {sample_id!r}: {message}")
        self.sample_id = sample_id


class ModelError(ArmbenchError):
    """The ONNX model cannot be loaded or does not match the configuration."""


class ConfigError(ArmbenchError):
    """A configuration file, environment variable or flag has a bad value."""

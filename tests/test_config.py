"""Settings: defaults < user file < environment < flags; bad values are ConfigError."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from armbench_segmentation import config as config_module
from armbench_segmentation.commands._common import add_settings_arguments, settings_from_args
from armbench_segmentation.config import DEFAULT_DATASET_DIR, load_settings
from armbench_segmentation.errors import ConfigError


@pytest.fixture(autouse=True)
def no_user_config(monkeypatch, tmp_path):
    """Never read the developer's ~/.config file."""
    monkeypatch.setattr(config_module, "USER_CONFIG_PATH", tmp_path / "no-such-user-config.yaml")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults():
    s = load_settings(env={})
    assert s.data.path == DEFAULT_DATASET_DIR
    assert s.data.class_names == ("Object", "Tote")
    assert (s.data.train_size, s.data.val_size, s.data.unlabeled_size) == (1000, 1000, 1000)
    assert s.data.image_size == 640 and s.data.seed == 0 and s.data.max_instances is None
    assert s.metrics.small_area_fraction == 0.005 and s.metrics.ioa_threshold == 0.8


def test_precedence_defaults_file_env_flags(tmp_path):
    cfg = write(tmp_path, "data:\n  train_size: 10\n  val_size: 11\n  unlabeled_size: 12\n  path: /from/file\n")
    s = load_settings(cfg, env={})
    assert (s.data.train_size, s.data.val_size, s.data.unlabeled_size) == (10, 11, 12)
    assert s.data.path == Path("/from/file")
    env = {"ARMBENCH_VAL_SIZE": "21", "ARMBENCH_UNLABELED_SIZE": "22", "ARMBENCH_DATASET": "/from/env"}
    s = load_settings(cfg, env=env)
    assert (s.data.train_size, s.data.val_size, s.data.unlabeled_size) == (10, 21, 22)
    assert s.data.path == Path("/from/env")
    s = load_settings(cfg, overrides={"data.unlabeled_size": 32, "data.path": "/from/flag", "data.val_size": None}, env=env)
    assert (s.data.train_size, s.data.val_size, s.data.unlabeled_size) == (10, 21, 32)
    assert s.data.path == Path("/from/flag")


def test_config_file_from_environment(tmp_path):
    cfg = write(tmp_path, "data:\n  seed: 5\n")
    assert load_settings(env={"ARMBENCH_CONFIG": str(cfg)}).data.seed == 5


def test_cli_flags_through_common_helpers(tmp_path):
    cfg = write(tmp_path, "data:\n  train_size: 10\n  val_size: 11\nmodel:\n  path: /file/model.onnx\n")
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    args = parser.parse_args(["--config", str(cfg), "--train-size", "all", "--dataset", str(tmp_path)])
    s = settings_from_args(args, env={"ARMBENCH_VAL_SIZE": "7", "ARMBENCH_TRAIN_SIZE": "8"})
    assert s.data.train_size is None  # flag 'all' beats env 8 and file 10
    assert s.data.val_size == 7  # env beats file
    assert s.data.path == tmp_path
    assert s.model.path == Path("/file/model.onnx")
    args = parser.parse_args(["--model", "/flag/m.onnx", "--unlabeled-size", "3"])
    s = settings_from_args(args, env={"ARMBENCH_MODEL": "/env/m.onnx"})
    assert s.model.path == Path("/flag/m.onnx") and s.data.unlabeled_size == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"overrides": {"data.train_size": "many"}}, "train_size"),
        ({"overrides": {"data.train_size": -1}}, "train_size"),
        ({"overrides": {"data.nonsense": 1}}, "unknown key data.nonsense"),
        ({"overrides": {"bogus.key": 1}}, "unknown section"),
        ({"overrides": {"metrics.ioa_threshold": 2}}, "ioa_threshold"),
        ({"overrides": {"metrics.ioa_threshold": "high"}}, "number"),
        ({"overrides": {"metrics.segmentation_classes": ["Box"]}}, "Box"),
        ({"overrides": {"data.seed": "x"}}, "integer"),
        ({"env": {"ARMBENCH_VAL_SIZE": "lots"}}, "val_size"),
    ],
)
def test_bad_values(kwargs, match):
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError, match=match):
        load_settings(**kwargs)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml", env={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "data: [unclosed"), env={})
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"), env={})
    with pytest.raises(ConfigError, match="unknown key data.colour"):
        load_settings(write(tmp_path, "data:\n  colour: red\n"), env={})


def test_settings_frozen_and_fingerprint():
    a, b = load_settings(env={}), load_settings(env={})
    with pytest.raises(Exception):
        a.data.seed = 3  # type: ignore[misc]
    assert a.fingerprint() == b.fingerprint()
    assert a.replace({"metrics.ioa_threshold": 0.7}).fingerprint() != a.fingerprint()
    assert a.replace({"data.path": "/else"}).fingerprint() == a.fingerprint()  # location is not a result input

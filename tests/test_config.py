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


# ---------------------------------------------------------------------------- declared rules
@pytest.mark.parametrize("source, key, value, expected_error", [
    # key, bad value, the message must name the valid values and the value's origin
    ("flag", "model.conf_threshold", 7, "model.conf_threshold must be a number in [0, 1], got 7 (from --conf-threshold)"),
    ("flag", "model.conf_threshold", 1.5, "in [0, 1], got 1.5 (from --conf-threshold)"),
    ("flag", "model.conf_threshold", -0.1, "in [0, 1], got -0.1"),
    ("flag", "model.conf_threshold", "nan", "in [0, 1], got 'nan'"),
    ("file", "model.iou_threshold", 2, "model.iou_threshold must be a number in [0, 1], got 2 (from "),
    ("file", "model.max_detections", 0, "model.max_detections must be an integer >= 1, got 0"),
    ("file", "model.batch_size", 2.5, "model.batch_size must be an integer >= 1, got 2.5"),
    ("file", "model.device", "gpu", "model.device must be one of ['auto', 'cpu', 'cuda'], got 'gpu'"),
    ("env", "model.device", "tpu", "got 'tpu' (from environment variable ARMBENCH_DEVICE)"),
    ("env", "model.num_threads", "-2", "model.num_threads must be an integer >= 0 or null"),
    ("file", "model.intra_op_spinning", "maybe", "model.intra_op_spinning must be true or false"),
    ("file", "model.intra_op_spinning", 2, "must be true or false"),
    ("file", "data.reduced_decode", "ture", "data.reduced_decode must be true or false"),
    ("file", "data.image_size", 0, "data.image_size must be an integer in [32, 8192], got 0"),
    ("file", "data.seed", -1, "data.seed must be an integer >= 0, got -1"),
    ("file", "data.max_instances", 0, "data.max_instances must be an integer >= 1 or null"),
    ("file", "data.class_names", [], "data.class_names must be a non-empty list of distinct names"),
    ("file", "data.class_names", ["Object", "Object"], "distinct names"),
    ("file", "analysis.n_clusters", -3, "analysis.n_clusters must be an integer >= 1, got -3"),
    ("file", "analysis.n_clusters", True, "analysis.n_clusters must be an integer >= 1, got True"),
    ("file", "analysis.projection", "mds", "analysis.projection must be one of ['pca', 'tsne', 'umap'], got 'mds'"),
    ("file", "analysis.clustering", "dbscan", "analysis.clustering must be one of ['hdbscan', 'kmeans'], got 'dbscan'"),
    ("file", "analysis.label_strategy", "random", "analysis.label_strategy must be one of ['combined', 'count', "),
    ("file", "analysis.prune_keep_fraction", 0, "analysis.prune_keep_fraction must be a number in (0, 1], got 0"),
    ("file", "analysis.label_budget", -1, "analysis.label_budget must be an integer >= 0, got -1"),
    ("file", "analysis.gallery_size", 0, "analysis.gallery_size must be an integer >= 1, got 0"),
    ("file", "metrics.match_iou", 0, "metrics.match_iou must be a number in (0, 1], got 0"),
    ("file", "metrics.small_area_fraction", 1.5, "metrics.small_area_fraction must be a number in [0, 1]"),
])
def test_every_rule_rejects_with_range_value_and_source(tmp_path, source, key, value, expected_error):
    import yaml

    section, name = key.split(".")
    env_var = {v: k for k, v in config_module.ENV_OVERRIDES.items()}.get(key)
    kwargs: dict = {"env": {}}
    if source == "flag":
        kwargs.update(overrides={key: value}, override_sources={key: "--conf-threshold"})
    elif source == "env":
        kwargs["env"] = {env_var: str(value)}
    else:
        kwargs["config_path"] = write(tmp_path, yaml.safe_dump({section: {name: value}}))
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)
    message = str(info.value)
    assert expected_error in message
    if source == "file":
        assert f"(from {tmp_path / 'cfg.yaml'})" in message


@pytest.mark.parametrize("key, value, expected", [
    ("model.intra_op_spinning", "yes", True), ("model.intra_op_spinning", "OFF", False),
    ("model.intra_op_spinning", 1, True), ("data.reduced_decode", "false", False),
    ("model.conf_threshold", "0.001", 0.001), ("model.conf_threshold", 0, 0.0), ("model.conf_threshold", 1, 1.0),
    ("model.batch_size", "4", 4), ("model.batch_size", 4.0, 4), ("data.train_size", 0, 0),
    ("data.train_size", "ALL", None), ("model.num_threads", None, None), ("model.device", " CUDA ", "cuda"),
    ("analysis.projection", "UMAP", "umap"), ("data.class_names", "Object,Tote", ("Object", "Tote")),
])
def test_valid_values_are_converted(key, value, expected):
    s = load_settings(overrides={key: value}, env={})
    section, name = key.split(".")
    got = getattr(getattr(s, section), name)
    assert got == expected and type(got) is type(expected)


def test_every_setting_has_a_rule_and_the_defaults_pass_it():
    import dataclasses

    from armbench_segmentation.config import _SECTIONS

    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert "rule" in f.metadata, f"{section}.{f.name} has no declared rule"
    load_settings(env={})  # the packaged YAML satisfies every rule


def test_choices_come_from_the_registries():
    from armbench_segmentation.analysis.clustering import CLUSTERERS
    from armbench_segmentation.analysis.projection import PROJECTIONS
    from armbench_segmentation.analysis.selection import LABEL_STRATEGIES

    r = config_module.rules()
    assert r["analysis.projection"].choice_names() == tuple(sorted(PROJECTIONS))
    assert r["analysis.clustering"].choice_names() == tuple(sorted(CLUSTERERS))
    assert r["analysis.label_strategy"].choice_names() == tuple(sorted(LABEL_STRATEGIES))


def test_flag_names_reach_the_message_through_the_command_helpers(tmp_path):
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    with pytest.raises(ConfigError, match=r"data.train_size must be an integer >= 0 or 'all'.*got '-4' \(from --train-size\)"):
        settings_from_args(parser.parse_args(["--train-size", "-4"]), env={})
    with pytest.raises(ConfigError, match=r"\(from --conf-threshold\)"):
        settings_from_args(parser.parse_args([]), env={}, extra={"model.conf_threshold": 7.0},
                           flags={"model.conf_threshold": "--conf-threshold"})

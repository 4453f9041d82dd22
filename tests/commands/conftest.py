"""Fixtures shared by the command tests."""

from __future__ import annotations

import os

import pytest

import armbench_segmentation.config as config_module


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No ARMBENCH_* variables, no user config, cache under tmp_path; cwd = an empty folder."""
    for k in list(os.environ):
        if k.startswith("ARMBENCH_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(config_module, "USER_CONFIG_PATH", tmp_path / "home" / "no-config.yaml")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd

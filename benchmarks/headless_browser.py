"""The headless Chromium the browser tests use (``tests/e2e/conftest.py: start_browser``), for
the browser benchmarks (bench_explorer, bench_dashboard): one way to start it, not a copy."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_CONFTEST = Path(__file__).resolve().parent.parent / "tests" / "e2e" / "conftest.py"
_NAME = "_armbench_e2e_conftest"


def start_browser():
    """``(driver, profile_dir)`` from the e2e tests' own ``start_browser``."""
    module = sys.modules.get(_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(_NAME, _CONFTEST)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module
        spec.loader.exec_module(module)
    return module.start_browser()

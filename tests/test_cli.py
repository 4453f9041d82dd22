"""``armbench``'s error contract: bad input gives one line and exit 1, a bug gives its
traceback plus one line saying it is a bug (exit 3). Real subprocesses: what a user sees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _armbench(tmp_path, *argv, prelude: str = ""):
    """Run the CLI in a fresh interpreter; ``prelude`` runs first (to install a test command)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMBENCH_")}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    code = prelude + "\nimport sys\nfrom armbench_segmentation import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


# A throw-away command module registered under cli.COMMANDS: the only way to make the real
# main() meet a genuine bug and an unexpected OSError.
PRELUDE = """
import sys, types
from armbench_segmentation import cli
m = types.ModuleType("armbench_test_command")
def add_arguments(p):
    p.add_argument("--raise", dest="what", default="bug")
def run(args):
    if args.what == "bug":
        return {}["missing key"]  # a genuine bug
    if args.what == "oserror":
        raise PermissionError(13, "Permission denied", "/data/x/results.sqlite")
    from armbench_segmentation.errors import SampleError
    raise SampleError("tote_17", "image file images/tote_17.jpg is truncated; re-download it")
m.add_arguments, m.run = add_arguments, run
sys.modules["armbench_test_command"] = m
cli.COMMANDS["boom"] = ("armbench_test_command", "test")
"""


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_expected_error_is_one_line_without_traceback(tmp_path):
    r = _armbench(tmp_path, "info", "--dataset", str(tmp_path / "nowhere"))
    assert r.returncode == 1
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("armbench info: error: ") and str(tmp_path / "nowhere") in lines[0]
    assert "Traceback" not in r.stderr


def test_bad_setting_is_one_line(tmp_path):
    r = _armbench(tmp_path, "predict", "--out", str(tmp_path / "p.json"), "--conf-threshold", "1.5")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert _error_lines(r.stderr) == ["armbench predict: error: model.conf_threshold must be a number in [0, 1], "
                                      "got 1.5 (from --conf-threshold)"]


def test_sample_error_names_the_sample_and_the_fix(tmp_path):
    r = _armbench(tmp_path, "boom", "--raise", "sample", prelude=PRELUDE)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert _error_lines(r.stderr) == ["armbench boom: error: sample 'tote_17': image file images/tote_17.jpg is "
                                      "truncated; re-download it"]


def test_os_error_is_one_line_naming_the_file(tmp_path):
    r = _armbench(tmp_path, "boom", "--raise", "oserror", prelude=PRELUDE)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "/data/x/results.sqlite" in lines[0] and "Permission denied" in lines[0]


def test_a_bug_keeps_its_traceback_and_says_it_is_a_bug(tmp_path):
    r = _armbench(tmp_path, "boom", prelude=PRELUDE)
    assert r.returncode == 3
    assert "Traceback (most recent call last)" in r.stderr and "KeyError: 'missing key'" in r.stderr
    last = _error_lines(r.stderr)[-1]
    assert last.startswith("armbench boom: internal error: this is a bug in armbench") and "report it" in last


@pytest.mark.parametrize("argv", [["synth", "--out", "/proc/version", "--n-train", "1"],
                                  ["analyze", "--out", "/proc/version/sub"]])
def test_output_under_a_system_file_is_one_line(tmp_path, argv):
    r = _armbench(tmp_path, *argv)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(_error_lines(r.stderr)) == 1 and "--out /proc/version" in r.stderr

"""``armbench``'s error contract: bad input gives one line and exit 1, a bug gives its
traceback plus one line saying it is a bug (exit 3). Real subprocesses: what a user sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from armbench_segmentation import package_version

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


# ---------------------------------------------------------------------------- --version, -v/-q
def test_version_is_the_installed_distributions(tmp_path):
    from importlib import metadata

    r = _armbench(tmp_path, "--version")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout == f"armbench {metadata.version('armbench-segmentation')}\n"


# A command that logs at every level, prints its result and reports whether progress is on.
TALK = """
import logging, sys, types
from armbench_segmentation import cli
m = types.ModuleType("armbench_talk_command")
def add_arguments(p):
    p.add_argument("--no-progress", action="store_true")
def run(args):
    log = logging.getLogger("armbench_segmentation.talk")
    log.debug("note-debug"); log.info("note-info"); log.warning("note-warning"); log.error("note-error")
    print(f"result no_progress={args.no_progress}")
    return 0
m.add_arguments, m.run = add_arguments, run
sys.modules["armbench_talk_command"] = m
cli.COMMANDS["talk"] = ("armbench_talk_command", "test")
"""


@pytest.mark.parametrize("argv, shown, no_progress", [
    (["talk"], {"warning", "error"}, False),
    (["-v", "talk"], {"info", "warning", "error"}, False),
    (["talk", "--verbose"], {"info", "warning", "error"}, False),
    (["-vv", "talk"], {"debug", "info", "warning", "error"}, False),
    (["talk", "-v", "-v"], {"debug", "info", "warning", "error"}, False),
    (["-q", "talk"], {"error"}, True),
    (["talk", "--quiet"], {"error"}, True),
    (["-q", "talk", "--no-progress"], {"error"}, True),
    (["talk", "--no-progress"], {"warning", "error"}, True),
])
def test_log_level_and_progress_follow_the_flags(tmp_path, argv, shown, no_progress):
    r = _armbench(tmp_path, *argv, prelude=TALK)
    assert r.returncode == 0, r.stderr
    # the result is printed whatever the level; the log goes to stderr
    assert r.stdout == f"result no_progress={no_progress}\n"
    logged = {level for level in ("debug", "info", "warning", "error") if f"note-{level}" in r.stderr}
    assert logged == shown


def test_verbose_and_quiet_together_are_refused(tmp_path):
    r = _armbench(tmp_path, "talk", "-v", "-q", prelude=TALK)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


# ---------------------------------------------------------------------------- analyze: --json, serve line
def _analysis_inputs(tmp_path: Path, root: Path) -> list[str]:
    """The tiny ARMBench-layout dataset at ``root`` (tests/conftest.py) and the image-dependent
    tiny YOLOv5-seg-shaped model of tests/analysis/test_runner.py, at 64 px."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_runner_helpers", ROOT / "tests" / "analysis" / "test_runner.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    model = helpers.build_model(tmp_path / "m.onnx")
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  image_size: 64\n  train_size: all\n  val_size: all\n  unlabeled_size: all\n"
                      "model:\n  device: cpu\n  num_threads: 1\nanalysis:\n  n_clusters: 2\n  label_budget: 2\n")
    return ["--dataset", str(root), "--model", str(model), "--config", str(config)]


def test_analyze_json_is_the_only_thing_on_stdout(tmp_path, tiny_dataset):
    import pandas as pd

    out = tmp_path / "run dir"
    r = _armbench(tmp_path, "analyze", *_analysis_inputs(tmp_path, tiny_dataset.root), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)  # the whole of stdout is one JSON document
    assert summary["version"] == package_version()
    assert summary["out_dir"] == str(out) and summary["serve"] == f"armbench serve '{out}'"
    assert summary["samples"] == {**summary["samples"], "selected": 8, "analysed": 8, "computed": 8,
                                  "already_finished": 0, "errors": 0, "stopped_early": False}
    assert summary["samples"]["rate_img_per_s"] > 0
    # every output path exists, the dashboard among them
    assert summary["files"]["samples_csv"] == str(out / "samples.csv")
    assert summary["dashboard"] == str(out / "dashboard.html")
    assert all(Path(p).exists() for p in summary["files"].values())
    # the per-split figures are those of the written table (read here independently)
    table = pd.read_csv(out / "samples.csv")
    for split, part in table.groupby("split"):
        stats = summary["splits"][split]
        assert stats["samples"] == len(part)
        if split == "unlabeled":
            assert stats["totals"] == {} and stats["means"] == {}
            continue
        assert stats["totals"]["tp"] == part["tp"].sum() and stats["totals"]["fn"] == part["fn"].sum()
        assert stats["means"]["ap"] == pytest.approx(part["ap"].mean())
    assert summary["insights"]["clusters"] == 2 and summary["insights"]["label_picks"] == 2
    assert summary["insights"]["prune_keep"] + summary["insights"]["prune_drop"] == (table["split"] == "train").sum()
    # the warning about the tiny dataset's degenerate polygon still reaches stderr
    assert "degenerate" in r.stderr

    # a rerun resumes: nothing computed, all from earlier runs
    again = json.loads(_armbench(tmp_path, "analyze", *_analysis_inputs(tmp_path, tiny_dataset.root), "--out", str(out), "--json").stdout)
    assert again["samples"]["computed"] == 0 and again["samples"]["already_finished"] == 8


def test_analyze_text_ends_with_the_serve_command_and_quiet_hides_warnings(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    r = _armbench(tmp_path, "analyze", *_analysis_inputs(tmp_path, tiny_dataset.root), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"explore:  armbench serve {out}"
    assert f"dashboard: {out / 'dashboard.html'}" in r.stdout
    assert "WARNING" in r.stderr and "analyzing" in r.stderr  # default: warnings and the progress bar

    q = _armbench(tmp_path, "analyze", *_analysis_inputs(tmp_path, tiny_dataset.root), "--out", str(tmp_path / "run2"), "-q")
    assert q.returncode == 0, q.stderr
    assert q.stderr == ""  # no warning, no progress bar
    assert q.stdout.splitlines()[-1] == f"explore:  armbench serve {tmp_path / 'run2'}"

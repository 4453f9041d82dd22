"""``armbench serve`` on bad input: one clear line on stderr, exit code 1, no traceback."""

from __future__ import annotations

import socket

import pytest

from armbench_segmentation import cli


def _one_line_error(capsys, argv) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("armbench serve: error: ")
    return err


def test_missing_run_folder(capsys, tmp_path):
    err = _one_line_error(capsys, ["serve", str(tmp_path / "nope")])
    assert "does not exist" in err and "armbench analyze" in err


def test_folder_that_is_not_a_run(capsys, tmp_path):
    (tmp_path / "samples.parquet").write_bytes(b"")
    err = _one_line_error(capsys, ["serve", str(tmp_path)])
    assert "has no results.sqlite" in err
    assert not (tmp_path / "results.sqlite").exists()  # nothing created in the folder


def test_damaged_table_and_run_json(capsys, tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    (copy / "samples.parquet").write_bytes(b"PAR1 truncated")
    assert "samples.parquet is unreadable" in _one_line_error(capsys, ["serve", str(copy)])
    (copy / "run.json").write_text("{")
    assert "run.json is unreadable" in _one_line_error(capsys, ["serve", str(copy)])


def test_damaged_store(capsys, tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    for side in copy.glob("results.sqlite-*"):
        side.unlink()
    (copy / "results.sqlite").write_bytes(b"not a database" * 100)
    err = _one_line_error(capsys, ["serve", str(copy)])
    assert "results.sqlite is damaged (moved aside to results.sqlite.corrupt-" in err
    assert list(copy.glob("results.sqlite.corrupt-*"))  # renamed, never deleted


@pytest.mark.parametrize("port", ["-1", "70000"])
def test_bad_port(capsys, tiny_run, port):
    assert "--port must be in 0..65535" in _one_line_error(capsys, ["serve", str(tiny_run), "--port", port])


def test_port_in_use(capsys, tiny_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        err = _one_line_error(capsys, ["serve", str(tiny_run), "--port", str(s.getsockname()[1])])
    assert "cannot listen on 127.0.0.1" in err and "choose another --port" in err

"""ResultsStore: round trips, resume bookkeeping, atomic batches, artifacts, run keys."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from armbench_segmentation.analysis.store import (
    ResultsStore,
    StoredSample,
    make_run_key,
)


def _ok(split, sid, seq, value, dim=4):
    return StoredSample(split=split, sample_id=sid, status="ok", seq=seq, image_id=seq + 1,
                        file_name=f"{sid}.jpg", row={"loss": value, "tp": np.int64(seq), "flag": True,
                                                     "nan_field": float("nan"), "name": sid},
                        embedding=np.full(dim, value, np.float32),
                        predictions=[{"class_index": 0, "score": 0.9, "bbox": [1, 2, 3, 4],
                                      "segmentation": {"size": [8, 8], "counts": "abc"}}])


@pytest.fixture
def store(tmp_path):
    s = ResultsStore(tmp_path / "results.sqlite")
    s.start_run("run-a", {"model_sha256": "m"})
    yield s
    s.close()


def test_round_trip_frame_embeddings_predictions(store):
    store.put_samples([_ok("val", "b", 1, 0.5), _ok("train", "a", 0, 0.25), _ok("val", "a", 0, 0.75)])
    frame = store.frame()
    assert list(frame["split"]) == ["train", "val", "val"]
    assert list(frame["sample_id"]) == ["a", "a", "b"]
    assert frame["nan_field"].isna().all()  # NaN never stored as a number: JSON null
    assert frame["tp"].tolist() == [0, 0, 1]
    emb = store.embeddings(frame)
    assert emb.dtype == np.float32 and emb.shape == (3, 4)
    np.testing.assert_array_equal(emb[:, 0], [0.25, 0.75, 0.5])
    # other key forms, order follows the keys
    np.testing.assert_array_equal(store.embeddings(["val/b", ("train", "a")])[:, 0], [0.5, 0.25])
    preds = list(store.predictions("val"))
    assert [p[0] for p in preds] == ["a", "b"] and preds[0][3][0]["score"] == 0.9
    with pytest.raises(KeyError, match="nope"):
        store.embeddings([("val", "nope")])
    assert store.sample_predictions("val", "b")[0]["bbox"] == [1, 2, 3, 4]
    assert store.sample_predictions("val", "nope") is None
    assert len(list(store.predictions("val", chunk=1))) == 2  # streamed in chunks


def test_frame_restricted_to_keys(store):
    store.put_samples([_ok("train", f"s{i}", i, i / 10) for i in range(5)])
    frame = store.frame(keys=[("train", "s3"), ("train", "s1"), ("train", "missing")])
    assert frame["sample_id"].tolist() == ["s3", "s1"]


def test_errors_are_not_finished_and_retries_overwrite(store):
    store.put_samples([StoredSample("train", "bad", "error", error="corrupt jpeg", file_name="bad.jpg"),
                       _ok("train", "good", 0, 0.1)])
    assert store.finished() == {("train", "good")}
    assert store.errors()["error"].tolist() == ["corrupt jpeg"]
    assert store.counts() == {"train": {"ok": 1, "error": 1}}
    assert len(store.frame()) == 1
    store.put_samples([_ok("train", "bad", 1, 0.2)])  # fixed image, retried
    assert store.finished() == {("train", "good"), ("train", "bad")}
    assert store.write_counts()[("train", "bad")] == 2
    assert store.write_counts()[("train", "good")] == 1


def test_runs_are_separate_and_reset(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path, run_key="one") as s:
        s.put_samples([_ok("train", "a", 0, 0.1)])
    with ResultsStore(path, run_key="two") as s:
        assert s.finished() == set()
        s.put_samples([_ok("train", "b", 0, 0.1)])
        assert s.runs() == ["one", "two"]
    with ResultsStore(path, run_key="one") as s:
        assert s.finished() == {("train", "a")}
        assert s.reset_run() == 1
        assert s.finished() == set()


def test_batch_is_atomic(store):
    bad = StoredSample("train", "x", "ok", row={"arr": object()})
    with pytest.raises(TypeError, match="arr"):
        store.put_samples([_ok("train", "a", 0, 0.1), bad])
    assert store.finished() == set()


def test_artifacts_round_trip(store):
    assert store.get_artifact("projection", "k") is None
    xy = np.arange(6, dtype=np.float32).reshape(3, 2)
    store.put_artifact("projection", "k", xy)
    np.testing.assert_array_equal(store.get_artifact("projection", "k"), xy)
    store.put_artifact("clusters", "k", {"labels": np.array([1, 2]), "k": 2})
    assert store.get_artifact("clusters", "k") == {"labels": [1, 2], "k": 2}
    store.put_artifact("blob", "k", b"\x00\x01")
    assert store.get_artifact("blob", "k") == b"\x00\x01"


def test_run_key_changes_with_each_input():
    base = make_run_key("model", "config", "data")
    assert base == make_run_key("model", "config", "data")
    assert len({base, make_run_key("model2", "config", "data"), make_run_key("model", "config2", "data"),
                make_run_key("model", "config", "data2")}) == 4
    with pytest.raises(ValueError, match="model_sha256"):
        make_run_key("", "config", "data")


def test_file_sha256_cache_notices_changes(store, tmp_path):
    f = tmp_path / "train.json"
    f.write_text("{}")
    first = store.file_sha256(f)
    assert store.file_sha256(f) == first
    f.write_text('{"images": []}')
    os.utime(f, ns=(1, 1))  # a different mtime and size
    assert store.file_sha256(f) != first


_WRITER = """
import sys
import numpy as np
from armbench_segmentation.analysis.store import ResultsStore, StoredSample
s = ResultsStore(sys.argv[1], run_key="k")
for i in range(100_000):
    s.put_samples([StoredSample("train", f"s{i}", "ok", seq=i, row={"tp": i, "loss": float(i)},
                                embedding=np.full(4, float(i), np.float32))])
    if i == 20:
        print("ready", flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_writes_keeps_committed_rows(tmp_path):
    path = tmp_path / "k.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)  # let it write some more, then kill it mid-transaction
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    with ResultsStore(path, run_key="k") as s:
        frame = s.frame()
        n = len(frame)
        assert n > 20
        # every committed row is whole: consecutive ids, embedding matches the row
        assert sorted(frame["tp"]) == list(range(n))
        emb = s.embeddings(frame)
        assert all(math.isclose(e, v) for e, v in zip(emb[:, 0], frame["loss"]))


# ---------------------------------------------------------------------------- damaged files
def _filled_store(path, n=300):
    with ResultsStore(path) as s:
        s.start_run("run-a")
        s.put_samples([_ok("train", f"s{i:04d}", i, i / n, dim=64) for i in range(n)])
    assert n < 300 or path.stat().st_size > 50_000  # several pages, so a cut lands inside the data


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())


def _header_only(path):
    path.write_bytes(path.read_bytes()[:60])


def _foreign_schema(path):
    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, title TEXT)")
    conn.execute("INSERT INTO photos VALUES (1, 'holiday')")
    conn.commit()
    conn.close()


def _foreign_samples_table(path):
    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE samples (id INTEGER, label TEXT)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("damage", [_truncate, _random_bytes, _header_only, _foreign_schema, _foreign_samples_table])
def test_damaged_store_is_moved_aside_and_replaced(tmp_path, caplog, damage):
    path = tmp_path / "results.sqlite"
    _filled_store(path)
    damage(path)
    damaged_bytes = path.read_bytes()
    (tmp_path / "results.sqlite-wal").write_bytes(b"stale wal")
    with caplog.at_level("WARNING", logger="armbench_segmentation.analysis.store"):
        store = ResultsStore(path)
    moved = store.moved_to
    assert moved is not None and moved.parent == tmp_path and moved.name.startswith("results.sqlite.corrupt-")
    assert moved.read_bytes() == damaged_bytes  # kept byte for byte, never deleted
    assert (tmp_path / (moved.name + "-wal")).read_bytes() == b"stale wal"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and str(moved) in warnings[0]
    # a fresh, working store in its place
    store.start_run("run-a")
    assert store.finished() == set()
    store.put_samples([_ok("val", "x", 0, 0.5)])
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM samples").fetchone()[0] == 1
    conn.close()


def test_two_damaged_stores_in_one_second_get_distinct_names(tmp_path):
    path = tmp_path / "results.sqlite"
    names = set()
    for _ in range(2):
        _random_bytes(path)
        from armbench_segmentation.analysis.store import move_aside

        names.add(move_aside(path, stamp="20990101T000000Z").name)
    assert len(names) == 2 and len(list(tmp_path.glob("results.sqlite.corrupt-*"))) == 2


def test_healthy_store_and_empty_file_are_kept(tmp_path, caplog):
    path = tmp_path / "results.sqlite"
    _filled_store(path, n=5)
    with caplog.at_level("WARNING"):
        with ResultsStore(path) as s:
            s.start_run("run-a")
            assert len(s.finished()) == 5 and s.moved_to is None
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")  # what sqlite3.connect leaves before the first write: a new store
    with ResultsStore(empty) as s:
        assert s.moved_to is None
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_other_schema_version_is_a_clear_error_not_moved(tmp_path):
    from armbench_segmentation.errors import ArmbenchError

    path = tmp_path / "results.sqlite"
    _filled_store(path, n=2)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ArmbenchError, match="schema version 99"):
        ResultsStore(path)
    assert path.is_file() and not list(tmp_path.glob("*.corrupt-*"))

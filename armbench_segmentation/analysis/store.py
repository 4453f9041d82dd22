"""The results store: one row per (run, split, sample) in SQLite, surviving a crash.

A *run key* names everything a per-sample result depends on: the model weights
(sha256), the settings that change per-sample results (``settings.fingerprint()``) and
the dataset identity (sha256 of the COCO files). Results of different runs live side by
side in one file; a finished sample of a run is never computed again (resume), a new
model, config or dataset gives a new run key and so a fresh computation.

Durability: WAL journal, one transaction per small batch of samples. A process killed
at any point (SIGKILL included) leaves every committed sample intact and no partial
row: SQLite transactions are atomic. ``synchronous=NORMAL`` keeps commits cheap; a
power cut may lose the last few commits, never the database's consistency.

Damage: opening a file that is not an SQLite database, a malformed one (``PRAGMA
quick_check`` fails) or one holding another program's tables moves it aside -- renamed
to ``results.sqlite.corrupt-<UTC timestamp>`` with its ``-wal``/``-shm`` files, never
deleted -- logs one warning naming both files and starts a fresh store, so the run
recomputes everything.

Schema (``SCHEMA_VERSION`` 2; a version-1 file gains the ``facts`` column when opened)::

    meta(key TEXT PK, value TEXT)                        schema_version, created
    runs(run_key TEXT PK, created REAL, info TEXT)       info: JSON (model sha256, fingerprint,
                                                         settings, dataset identity, versions)
    samples(run_key, split, sample_id  -- PK
            seq INTEGER            position in the split's sample list when computed
            image_id INTEGER, file_name TEXT
            status TEXT            'ok' | 'error'
            error TEXT             message for status='error', else NULL
            row TEXT               JSON object of scalars (None, bool, int, float, str)
            embedding BLOB         float32 little-endian, embedding_dim values (NULL on error)
            embedding_dim INTEGER
            predictions BLOB       zlib(JSON list of {class_index, score, bbox xywh, segmentation RLE})
                                   at ORIGINAL resolution (NULL on error)
            facts BLOB             zlib(JSON of SampleEvaluation.facts(): involved instances per
                                   error kind, hard-region window, instance rows; NULL on error)
            writes INTEGER         times this row was written (1 unless recomputed)
            updated REAL)          unix time of the last write
    artifacts(run_key, name, key -- PK, kind TEXT 'json'|'bytes'|'npy', value BLOB, created REAL)
    file_hashes(path TEXT PK, size INTEGER, mtime_ns INTEGER, sha256 TEXT)   cache for dataset identity
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from armbench_segmentation.codecs import json_default
from armbench_segmentation.errors import ArmbenchError
from armbench_segmentation.splits import SPLITS

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
STATUS_OK = "ok"
STATUS_ERROR = "error"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (run_key TEXT PRIMARY KEY, created REAL NOT NULL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    run_key TEXT NOT NULL,
    split TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    seq INTEGER,
    image_id INTEGER,
    file_name TEXT,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error TEXT,
    row TEXT,
    embedding BLOB,
    embedding_dim INTEGER,
    predictions BLOB,
    facts BLOB,
    writes INTEGER NOT NULL DEFAULT 1,
    updated REAL NOT NULL,
    PRIMARY KEY (run_key, split, sample_id)
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_key TEXT NOT NULL,
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('json', 'bytes', 'npy')),
    value BLOB NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_key, name, key)
);
CREATE TABLE IF NOT EXISTS file_hashes (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL);
"""

# table -> columns this code reads and writes (a table lacking one is another program's)
_COLUMNS: dict[str, frozenset[str]] = {
    "meta": frozenset({"key", "value"}),
    "runs": frozenset({"run_key", "created", "info"}),
    "samples": frozenset({"run_key", "split", "sample_id", "seq", "image_id", "file_name", "status", "error", "row",
                          "embedding", "embedding_dim", "predictions", "writes", "updated"}),
    "artifacts": frozenset({"run_key", "name", "key", "kind", "value", "created"}),
    "file_hashes": frozenset({"path", "size", "mtime_ns", "sha256"}),
}
# sqlite error codes that mean "the file is damaged", not "it cannot be opened now"
_DAMAGE_CODES = {"SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_FORMAT"}
_DAMAGE_WORDS = ("file is not a database", "malformed", "corrupt")
SIDE_FILES = ("-wal", "-shm", "-journal")


class DamagedStoreError(Exception):
    """The store file is not a usable results store (internal: it is moved aside)."""


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    if any(name.startswith(code) for code in _DAMAGE_CODES):
        return True
    text = str(exc).lower()
    return any(word in text for word in _DAMAGE_WORDS)


def move_aside(path: Path, stamp: str | None = None) -> Path:
    """Rename ``path`` (and its ``-wal``/``-shm``/``-journal`` files) to
    ``<name>.corrupt-<stamp>[-wal|...]`` next to it; never deletes. Returns the new path."""
    path = Path(path)
    stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(Path(str(target) + side).exists() for side in ("",) + SIDE_FILES):
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for side in SIDE_FILES:  # side files first: a crash between renames leaves no orphaned WAL
        src = Path(str(path) + side)
        if src.exists():
            src.rename(str(target) + side)
    path.rename(target)
    return target


# ---------------------------------------------------------------------------- run keys
def make_run_key(model_sha256: str, settings_fingerprint: str, dataset_identity: str) -> str:
    """The key under which a run's results are stored: changes when the model weights,
    the result-relevant settings or the dataset's COCO files change."""
    for name, value in (("model_sha256", model_sha256), ("settings_fingerprint", settings_fingerprint),
                        ("dataset_identity", dataset_identity)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    text = json.dumps([SCHEMA_VERSION, model_sha256, settings_fingerprint, dataset_identity])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------- records
@dataclass(frozen=True)
class StoredSample:
    """What the runner writes for one sample (see the module docstring for columns)."""

    split: str
    sample_id: str
    status: str
    row: Mapping[str, Any] | None = None
    embedding: np.ndarray | None = None
    predictions: list[dict] | None = None
    facts: Mapping[str, Any] | None = None
    image_id: int | None = None
    file_name: str | None = None
    error: str | None = None
    seq: int | None = None

    def __post_init__(self) -> None:
        if self.status not in (STATUS_OK, STATUS_ERROR):
            raise ValueError(f"status must be 'ok' or 'error', got {self.status!r}")
        if self.status == STATUS_OK and self.row is None:
            raise ValueError(f"sample {self.sample_id!r}: status 'ok' needs a row")


SampleKey = tuple[str, str]  # (split, sample_id)


def _clean_scalar(value: Any, key: str) -> Any:
    """JSON-safe scalar: numpy scalars -> Python, NaN/inf -> None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"row field {key!r} must be a scalar (None, bool, int, float, str), got {type(value).__name__}")


def clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _clean_scalar(v, k) for k, v in row.items()}


def _key_list(sample_keys: Any) -> list[SampleKey]:
    """Accept a DataFrame with split/sample_id columns, (split, sample_id) pairs, or
    "split/sample_id" strings."""
    if hasattr(sample_keys, "columns"):
        frame = sample_keys
        if not {"split", "sample_id"} <= set(frame.columns):
            raise ValueError("a frame passed as sample_keys needs 'split' and 'sample_id' columns")
        return list(zip(frame["split"].astype(str), frame["sample_id"].astype(str)))
    out: list[SampleKey] = []
    for k in sample_keys:
        if isinstance(k, str):
            if "/" not in k:
                raise ValueError(f"sample key {k!r} must be 'split/sample_id' or a (split, sample_id) pair")
            split, sid = k.split("/", 1)
            out.append((split, sid))
        else:
            split, sid = k
            out.append((str(split), str(sid)))
    return out


# ---------------------------------------------------------------------------- the store
class ResultsStore:
    """Embedded, crash-safe results of analysis runs (see the module docstring).

    Usage::

        store = ResultsStore(out_dir / "results.sqlite")
        store.start_run(make_run_key(model.sha256, settings.fingerprint(), identity), info)
        store.put_samples([...])        # runner
        frame = store.frame()            # one row per finished sample of the run
        emb = store.embeddings(frame)    # (n, D) float32 aligned with the frame rows

    Thread-safe: one connection guarded by a lock (the runner writes from a worker thread).
    """

    def __init__(self, path: str | Path, run_key: str | None = None):
        self.path = Path(path)
        self.moved_to: Path | None = None  # where a damaged file found at ``path`` was moved
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArmbenchError(f"cannot create the folder of the results store {self.path}: "
                                f"{exc.strerror or exc}; choose another --out folder") from None
        if self.path.exists() and not self.path.is_file():
            raise ArmbenchError(f"results store {self.path} exists and is not a file; move it away or choose "
                                f"another --out folder")
        self._lock = threading.RLock()
        try:
            self._conn = self._open()
        except DamagedStoreError as exc:
            self.moved_to = move_aside(self.path)
            logger.warning("results store %s is damaged (%s): moved it to %s and starting a fresh store "
                           "(every sample is computed again)", self.path, exc, self.moved_to)
            try:
                self._conn = self._open()
            except DamagedStoreError as again:  # pragma: no cover - a fresh file cannot be damaged
                raise ArmbenchError(f"cannot create a results store at {self.path}: {again}") from None
        self.run_key: str | None = None
        if run_key is not None:
            self.start_run(run_key)

    def _open(self) -> sqlite3.Connection:
        """Connect, check the file, create the schema. DamagedStoreError when the file is
        not a results store; ArmbenchError when it cannot be opened (permissions, locked)."""
        if self.path.is_file() and self.path.stat().st_size > 0:
            self._check_file()
        try:
            conn = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise ArmbenchError(f"cannot open the results store {self.path}: {exc}; check the permissions "
                                f"of the --out folder or choose another") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))
            elif not str(row[0]).strip().isdigit():
                raise DamagedStoreError(f"schema_version is {row[0]!r}, not a number")
            elif int(row[0]) == 1:  # version 1 lacks the facts column; its rows stay readable
                conn.execute("ALTER TABLE samples ADD COLUMN facts BLOB")
                conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise ArmbenchError(f"results store {self.path} has schema version {row[0]}, this version of "
                                    f"armbench reads {SCHEMA_VERSION}; use another --out folder, or the armbench "
                                    f"version that wrote it")
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_damage(exc):
                raise DamagedStoreError(str(exc)) from None
            raise ArmbenchError(f"cannot use the results store {self.path}: {exc}"
                                + ("; another armbench process may be using this --out folder"
                                   if "locked" in str(exc).lower() else "")) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_file(self) -> None:
        """DamagedStoreError unless the file holds this store's tables intact.

        Read through a read-only connection: closing a writable one would checkpoint and
        delete the ``-wal`` file, which must move aside with a damaged database.
        """
        try:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
        except sqlite3.Error:
            return  # cannot even be opened read-only: the writable open reports why
        try:
            self._check(conn)
        except sqlite3.DatabaseError as exc:
            if _is_damage(exc):
                raise DamagedStoreError(str(exc)) from None
            if isinstance(exc, sqlite3.OperationalError) and "locked" not in str(exc).lower():
                return  # e.g. read-only access needs files it cannot create: the writable open decides
            raise ArmbenchError(f"cannot use the results store {self.path}: {exc}"
                                + ("; another armbench process may be using this --out folder"
                                   if "locked" in str(exc).lower() else "")) from None
        finally:
            conn.close()

    @staticmethod
    def _check(conn: sqlite3.Connection) -> None:
        """DamagedStoreError unless ``conn`` is empty or holds this store's tables intact."""
        t0 = time.perf_counter()
        result = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
        if result != ["ok"]:
            raise DamagedStoreError("quick_check: " + "; ".join(str(r) for r in result)[:300])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        tables = {t for t in tables if not t.startswith("sqlite_")}
        if tables and not tables & set(_COLUMNS):
            raise DamagedStoreError(f"it holds other tables ({', '.join(sorted(tables)[:5])}), not a results store")
        for table in tables & set(_COLUMNS):
            columns = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            missing = _COLUMNS[table] - columns
            if missing:
                raise DamagedStoreError(f"table {table} lacks columns {sorted(missing)}")
        logger.debug("results store checked in %.3f s", time.perf_counter() - t0)

    # ------------------------------------------------------------------ plumbing
    class _Tx:
        def __init__(self, store: "ResultsStore"):
            self.store = store

        def __enter__(self) -> sqlite3.Cursor:
            self.store._lock.acquire()
            self.cur = self.store._conn.cursor()
            self.cur.execute("BEGIN IMMEDIATE")
            return self.cur

        def __exit__(self, exc_type, exc, tb) -> None:
            try:
                if exc_type is None:
                    self.cur.execute("COMMIT")
                else:
                    self.cur.execute("ROLLBACK")
            finally:
                self.cur.close()
                self.store._lock.release()

    def _transaction(self) -> "ResultsStore._Tx":
        return ResultsStore._Tx(self)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _require_run(self) -> str:
        if self.run_key is None:
            raise RuntimeError("no run selected: call store.start_run(run_key, info) first")
        return self.run_key

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ runs
    def start_run(self, run_key: str, info: Mapping[str, Any] | None = None) -> None:
        """Select (and register) the run that every later call reads and writes."""
        if not run_key:
            raise ValueError("run_key must be a non-empty string")
        with self._transaction() as cur:
            cur.execute("INSERT OR IGNORE INTO runs VALUES (?, ?, ?)",
                        (run_key, time.time(), json.dumps(dict(info or {}), default=json_default, sort_keys=True)))
        self.run_key = run_key

    def run_info(self, run_key: str | None = None) -> dict[str, Any]:
        rows = self._query("SELECT info FROM runs WHERE run_key=?", (run_key or self._require_run(),))
        return json.loads(rows[0][0]) if rows else {}

    def runs(self) -> list[str]:
        return [r[0] for r in self._query("SELECT run_key FROM runs ORDER BY created")]

    def reset_run(self) -> int:
        """Forget every sample and artifact of the current run (``--no-resume``). Returns rows removed."""
        key = self._require_run()
        with self._transaction() as cur:
            n = cur.execute("DELETE FROM samples WHERE run_key=?", (key,)).rowcount
            cur.execute("DELETE FROM artifacts WHERE run_key=?", (key,))
        return n

    # ------------------------------------------------------------------ dataset identity
    def file_sha256(self, path: Path) -> str:
        """sha256 of a file, cached by (path, size, mtime) so big COCO files hash once."""
        path = Path(path).resolve()
        st = path.stat()
        rows = self._query("SELECT size, mtime_ns, sha256 FROM file_hashes WHERE path=?", (str(path),))
        if rows and rows[0][0] == st.st_size and rows[0][1] == st.st_mtime_ns:
            return rows[0][2]
        digest = sha256_file(path)
        with self._transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)",
                        (str(path), st.st_size, st.st_mtime_ns, digest))
        return digest

    # ------------------------------------------------------------------ samples
    def put_samples(self, samples: Iterable[StoredSample]) -> int:
        """Write a batch of samples in ONE transaction (all or nothing). Returns the count."""
        key = self._require_run()
        now = time.time()
        params = []
        for s in samples:
            emb_blob, dim = None, None
            if s.embedding is not None:
                emb = np.ascontiguousarray(np.asarray(s.embedding, dtype="<f4").reshape(-1))
                emb_blob, dim = emb.tobytes(), int(emb.size)
            preds = None if s.predictions is None else zlib.compress(json.dumps(s.predictions).encode(), 6)
            facts = None if s.facts is None else zlib.compress(
                json.dumps(s.facts, allow_nan=False, default=json_default).encode(), 6)
            row = None if s.row is None else json.dumps(clean_row(s.row), allow_nan=False)
            params.append((key, s.split, s.sample_id, s.seq, s.image_id, s.file_name, s.status, s.error,
                           row, emb_blob, dim, preds, facts, now))
        if not params:
            return 0
        with self._transaction() as cur:
            cur.executemany(
                """INSERT INTO samples (run_key, split, sample_id, seq, image_id, file_name, status, error,
                                        row, embedding, embedding_dim, predictions, facts, updated)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (run_key, split, sample_id) DO UPDATE SET
                       seq=excluded.seq, image_id=excluded.image_id, file_name=excluded.file_name,
                       status=excluded.status, error=excluded.error, row=excluded.row,
                       embedding=excluded.embedding, embedding_dim=excluded.embedding_dim,
                       predictions=excluded.predictions, facts=excluded.facts, updated=excluded.updated,
                       writes=samples.writes + 1""",
                params,
            )
        return len(params)

    def finished(self, split: str | None = None) -> set[SampleKey]:
        """Keys of samples finished successfully in the current run."""
        key = self._require_run()
        sql = "SELECT split, sample_id FROM samples WHERE run_key=? AND status='ok'"
        params: tuple = (key,)
        if split is not None:
            sql += " AND split=?"
            params = (key, split)
        return {(r[0], r[1]) for r in self._query(sql, params)}

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {"ok": n, "error": m}} for the current run."""
        out: dict[str, dict[str, int]] = {}
        for split, status, n in self._query(
                "SELECT split, status, COUNT(*) FROM samples WHERE run_key=? GROUP BY split, status",
                (self._require_run(),)):
            out.setdefault(split, {"ok": 0, "error": 0})[status] = n
        return out

    def _ordered(self, rows: list[tuple], keys: list[SampleKey] | None, key_of=lambda r: (r[0], r[1])) -> list[tuple]:
        if keys is None:
            rank = {s: i for i, s in enumerate(SPLITS)}
            return sorted(rows, key=lambda r: (rank.get(r[0], len(rank)), r[0], r[2] if r[2] is not None else -1, r[1]))
        by_key = {key_of(r): r for r in rows}
        return [by_key[k] for k in keys if k in by_key]

    def frame(self, keys: Any = None, splits: Sequence[str] | None = None):
        """One row per finished (status ok) sample of the current run, as a DataFrame.

        Args:
            keys: restrict to (and order by) these samples: a frame with split/sample_id,
                (split, sample_id) pairs or "split/sample_id" strings. Unfinished keys are
                left out. Default: every finished sample, ordered by split then sample order.
            splits: restrict to these splits.
        Columns: ``split``, ``sample_id`` first, then the row fields (missing fields and
        JSON nulls are None/NaN in pandas, never a made-up number).
        """
        import pandas as pd

        key_list = None if keys is None else _key_list(keys)
        rows = self._query("SELECT split, sample_id, seq, row FROM samples WHERE run_key=? AND status='ok'",
                           (self._require_run(),))
        if splits is not None:
            rows = [r for r in rows if r[0] in set(splits)]
        rows = self._ordered(rows, key_list)
        records = []
        for split, sid, _seq, row in rows:
            rec = json.loads(row)
            rec["split"], rec["sample_id"] = split, sid
            records.append(rec)
        if not records:
            return pd.DataFrame(columns=["split", "sample_id"])
        names: dict[str, None] = {"split": None, "sample_id": None}
        for rec in records:
            names.update(dict.fromkeys(rec))
        return pd.DataFrame({name: _column([rec.get(name) for rec in records]) for name in names})

    def embeddings(self, sample_keys: Any) -> np.ndarray:
        """(n, D) float32 embeddings aligned with ``sample_keys`` (e.g. ``store.frame()``).

        Raises KeyError naming the first sample without an embedding.
        """
        keys = _key_list(sample_keys)
        if not keys:
            return np.zeros((0, 0), np.float32)
        run = self._require_run()
        wanted = set(keys)
        found: dict[SampleKey, np.ndarray] = {}
        with self._lock:
            cur = self._conn.execute(
                "SELECT split, sample_id, embedding, embedding_dim FROM samples "
                "WHERE run_key=? AND status='ok' AND embedding IS NOT NULL", (run,))
            for split, sid, blob, dim in cur:
                k = (split, sid)
                if k in wanted:
                    found[k] = np.frombuffer(blob, dtype="<f4", count=dim)
        dims = {v.size for v in found.values()}
        if len(dims) > 1:
            raise ValueError(f"embeddings of the run have different sizes {sorted(dims)}; the store is inconsistent")
        out = np.empty((len(keys), dims.pop() if dims else 0), np.float32)
        for i, k in enumerate(keys):
            if k not in found:
                raise KeyError(f"no embedding stored for sample {k[1]!r} of split {k[0]!r} in run {run}")
            out[i] = found[k]
        return out

    def predictions(self, split: str, chunk: int = 256) -> Iterator[tuple[str, int | None, str | None, list[dict]]]:
        """Yield (sample_id, image_id, file_name, predictions) for finished samples of a split,
        in sample order, streaming (``chunk`` rows in memory at a time). Predictions are at
        original resolution (see ``pipeline.compact_predictions``)."""
        with self._lock:
            cur = self._conn.execute(
                "SELECT sample_id, image_id, file_name, predictions FROM samples "
                "WHERE run_key=? AND split=? AND status='ok' ORDER BY seq, sample_id", (self._require_run(), split))
        while True:
            with self._lock:
                rows = cur.fetchmany(chunk)
            if not rows:
                return
            for sid, image_id, file_name, blob in rows:
                yield sid, image_id, file_name, ([] if blob is None else json.loads(zlib.decompress(blob)))

    def sample_predictions(self, split: str, sample_id: str) -> list[dict] | None:
        """One finished sample's stored predictions (None when it is not finished)."""
        rows = self._query("SELECT predictions FROM samples WHERE run_key=? AND split=? AND sample_id=? "
                           "AND status='ok'", (self._require_run(), split, sample_id))
        if not rows:
            return None
        return [] if rows[0][0] is None else json.loads(zlib.decompress(rows[0][0]))

    def sample_facts(self, split: str, sample_id: str) -> dict[str, Any] | None:
        """One finished sample's stored facts (``SampleEvaluation.facts()``); None when the
        sample is not finished or was stored without facts."""
        rows = self._query("SELECT facts FROM samples WHERE run_key=? AND split=? AND sample_id=? "
                           "AND status='ok'", (self._require_run(), split, sample_id))
        if not rows or rows[0][0] is None:
            return None
        return json.loads(zlib.decompress(rows[0][0]))

    def facts(self, chunk: int = 256) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
        """Yield (split, sample_id, facts) for every finished sample of the run in split and
        sample order, streaming (``chunk`` rows in memory at a time)."""
        order = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(SPLITS))
        with self._lock:
            cur = self._conn.execute(
                f"SELECT split, sample_id, facts FROM samples WHERE run_key=? AND status='ok' "
                f"ORDER BY CASE split {order} ELSE {len(SPLITS)} END, seq, sample_id", (self._require_run(),))
        while True:
            with self._lock:
                rows = cur.fetchmany(chunk)
            if not rows:
                return
            for split, sid, blob in rows:
                yield split, sid, (None if blob is None else json.loads(zlib.decompress(blob)))

    def errors(self):
        """DataFrame (split, sample_id, file_name, error) of samples that failed in the current run."""
        import pandas as pd

        rows = self._query("SELECT split, sample_id, seq, file_name, error FROM samples "
                           "WHERE run_key=? AND status='error'", (self._require_run(),))
        rows = self._ordered(rows, None)
        return pd.DataFrame([(r[0], r[1], r[3], r[4]) for r in rows],
                            columns=["split", "sample_id", "file_name", "error"])

    def write_counts(self) -> dict[SampleKey, int]:
        """How many times each sample of the run was written (1 = computed once)."""
        return {(r[0], r[1]): r[2] for r in self._query(
            "SELECT split, sample_id, writes FROM samples WHERE run_key=?", (self._require_run(),))}

    # ------------------------------------------------------------------ artifacts
    def put_artifact(self, name: str, key: str, value: Any) -> None:
        """Cache a derived result of the current run (projection, clusters, ...).

        ``value``: bytes (kept as is), a numpy array (kept exactly, .npy), or anything
        JSON-serialisable. ``key`` should encode what the value depends on (parameters,
        sample keys hash) so a changed input misses the cache.
        """
        if isinstance(value, (bytes, bytearray, memoryview)):
            kind, blob = "bytes", bytes(value)
        elif isinstance(value, np.ndarray):
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            kind, blob = "npy", buf.getvalue()
        else:
            kind, blob = "json", json.dumps(value, default=json_default).encode()
        with self._transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?)",
                        (self._require_run(), name, key, kind, blob, time.time()))

    def get_artifact(self, name: str, key: str) -> Any:
        """The cached value, or None when absent (bytes, np.ndarray or the JSON value)."""
        rows = self._query("SELECT kind, value FROM artifacts WHERE run_key=? AND name=? AND key=?",
                           (self._require_run(), name, key))
        if not rows:
            return None
        kind, blob = rows[0]
        if kind == "bytes":
            return bytes(blob)
        if kind == "npy":
            return np.load(io.BytesIO(blob), allow_pickle=False)
        return json.loads(blob)


def _column(values: list[Any]) -> Any:
    """Typed pandas column from JSON scalars, None kept as missing: ints -> Int64, bools ->
    boolean, numbers -> float64 (NaN), otherwise object."""
    import pandas as pd

    kinds = {type(v) for v in values if v is not None}
    if kinds == {int}:
        return pd.array(values, dtype="Int64")
    if kinds == {bool}:
        return pd.array(values, dtype="boolean")
    if kinds and kinds <= {int, float}:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return pd.array(values, dtype=object)

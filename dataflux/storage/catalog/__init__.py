"""The DuckDB catalog: versions, their shards, runs, rejects, the item ledger, the model-call cache, trainings.

A version is built as a *draft*, one committed partition at a time: `commit_partition` records the
partition's shard, rejects and ledger items in one transaction, so a crash leaves a partition either
wholly recorded or not at all, and a resumed run (which skips `committed_partitions`) cannot record it
twice. `finalize` re-hashes every shard, fixes the version's `manifest_sha256` and `content_sha256`, and
makes the version immutable; `shard_paths` hands out a finalized version's files only after checking
them again.

Concurrency: DuckDB lets one process write a database file at a time. The catalog therefore opens a
connection per operation and closes it straight after (a few ms), so a pipeline writing and a CLI or
notebook reading can take turns; within a process a lock serialises operations on one file, and an
operation that finds the file locked by another process retries until `lock_timeout_s`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import duckdb

from dataflux.home import dataflux_home
from dataflux.storage import integrity
from dataflux.storage.shards import (
    ShardInfo,
    read_shard,
    shard_path,
)

SCHEMA_VERSION = 1


class CatalogError(Exception):
    """Something the catalog refuses to do; the message says what and how to proceed."""


class VersionNotFound(CatalogError, LookupError):
    pass


class VersionNotFinalized(CatalogError):
    pass


class VersionImmutable(CatalogError):
    pass


class PartitionAlreadyCommitted(CatalogError):
    pass


class QueryRefused(CatalogError):
    """A user's SQL statement was refused or failed (dataflux.storage.sql_sandbox); one-line message."""


class CatalogReadOnly(CatalogError):
    pass


def default_catalog_path() -> Path:
    return dataflux_home() / "catalog.duckdb"


def default_shard_root() -> Path:
    return dataflux_home() / "shards"


_DDL = [
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)""",
    """CREATE TABLE IF NOT EXISTS versions (
        version_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        name TEXT,
        status TEXT NOT NULL CHECK (status IN ('draft', 'finalized')),
        parent TEXT,
        config_sha256 TEXT,
        created_at TIMESTAMP,
        finalized_at TIMESTAMP,
        manifest_sha256 TEXT,
        content_sha256 TEXT,
        n_rows BIGINT,
        notes JSON)""",
    """CREATE TABLE IF NOT EXISTS shards (
        version_id TEXT NOT NULL,
        partition_key TEXT NOT NULL,
        path TEXT,              -- NULL: the partition was processed and produced no rows
        rows BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        sha256 TEXT,
        run_id TEXT,
        created_at TIMESTAMP,
        PRIMARY KEY (version_id, partition_key))""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        version_id TEXT,
        flow_run_id TEXT,
        started_at TIMESTAMP,
        ended_at TIMESTAMP,
        status TEXT,
        counts JSON)""",
    """CREATE TABLE IF NOT EXISTS rejects (
        version_id TEXT NOT NULL,
        partition_key TEXT NOT NULL,
        run_id TEXT,
        source TEXT,
        source_id TEXT,
        sample_id TEXT,
        audio_sha256 TEXT,
        stage TEXT,
        reason TEXT,
        detail TEXT,
        extra JSON)""",
    """CREATE TABLE IF NOT EXISTS items (
        version_id TEXT NOT NULL,
        partition_key TEXT NOT NULL,
        source TEXT,
        source_id TEXT,
        audio_sha256 TEXT,
        n_rows BIGINT,
        status TEXT,
        planted JSON)""",
    """CREATE TABLE IF NOT EXISTS calls (
        request_sha256 TEXT PRIMARY KEY,
        step TEXT,
        model TEXT,
        response JSON,
        tokens_in BIGINT,
        tokens_out BIGINT,
        cost_usd DOUBLE,
        latency_s DOUBLE,
        created_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS trainings (
        training_id TEXT PRIMARY KEY,
        version_id TEXT,
        checkpoint TEXT,
        config JSON,
        metrics JSON,
        started_at TIMESTAMP,
        ended_at TIMESTAMP,
        status TEXT)""",
    # Common stats that need no shard reads.
    """CREATE OR REPLACE VIEW v_versions AS
        SELECT v.version_id, v.name, v.status, v.parent, v.created_at, v.finalized_at, v.n_rows,
               (SELECT count(*) FROM shards s WHERE s.version_id = v.version_id) AS n_partitions,
               (SELECT coalesce(sum(s.rows), 0) FROM shards s WHERE s.version_id = v.version_id) AS shard_rows,
               (SELECT coalesce(sum(s.bytes), 0) FROM shards s WHERE s.version_id = v.version_id) AS shard_bytes,
               (SELECT count(*) FROM rejects r WHERE r.version_id = v.version_id) AS n_rejects,
               (SELECT count(*) FROM items i WHERE i.version_id = v.version_id) AS n_items
        FROM versions v""",
    """CREATE OR REPLACE VIEW v_rejects_by_reason AS
        SELECT version_id, stage, reason, count(*) AS n FROM rejects GROUP BY ALL""",
    """CREATE OR REPLACE VIEW v_items_by_status AS
        SELECT version_id, status, count(*) AS n, sum(n_rows) AS rows FROM items GROUP BY ALL""",
    """CREATE OR REPLACE VIEW v_call_cache_by_step AS
        SELECT step, model, count(*) AS n_calls, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
               sum(cost_usd) AS cost_usd, avg(latency_s) AS mean_latency_s FROM calls GROUP BY ALL""",
]

_VERSION_COLUMNS = ("version_id", "name", "status", "parent", "config_sha256", "created_at", "finalized_at",
                    "manifest_sha256", "content_sha256", "n_rows", "notes")

# Statement types `query` accepts (DESCRIBE, SHOW, SUMMARIZE and WITH parse as SELECT).
_READ_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA"}

_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


def _file_lock(path: str) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(path, threading.RLock())


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _json_text(value: Any, what: str) -> str | None:
    """JSON column value: None stays NULL, a str must already be JSON, anything else is serialised."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError as e:
            raise CatalogError(f"{what}: not valid JSON text ({e}): {value[:80]!r}") from e
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _json_value(text: Any) -> Any:
    return json.loads(text) if isinstance(text, str) else text


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def manifest_sha256(shards: list[tuple[str, str | None, int]]) -> str:
    """sha256 over the sorted `partition_key<TAB>sha256<TAB>rows` lines of a version's partitions."""
    lines = sorted(f"{key}\t{sha or ''}\t{int(rows)}" for key, sha, rows in shards)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def content_sha256(pairs: list[tuple[str, str]]) -> str:
    """sha256 over the sorted `sample_id<TAB>row_sha256` lines: independent of shards and their order."""
    lines = sorted(f"{sid}\t{rsha}" for sid, rsha in pairs)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class Catalog:
    """The catalog in one DuckDB file (`path`, default `<dataflux home>/catalog.duckdb`).

    `read_only=True` opens every connection read-only (several readers may share the file while no
    writer holds it) and refuses all writes.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, read_only: bool = False,
                 lock_timeout_s: float = 60.0):
        self.path = Path(path) if path is not None else default_catalog_path()
        self.read_only = read_only
        self.lock_timeout_s = lock_timeout_s
        if read_only:
            if not self.path.exists():
                raise CatalogError(f"{self.path}: catalog does not exist; run the pipeline once to create it "
                                   "or point to the right file")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._transaction() as con:
                for ddl in _DDL:
                    con.execute(ddl)
                con.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                            [str(SCHEMA_VERSION)])

    def __repr__(self) -> str:
        return f"Catalog({str(self.path)!r}, read_only={self.read_only})"

    # --- connections ----------------------------------------------------------------------------

    @contextmanager
    def _connect(self, read_only: bool | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        ro = self.read_only if read_only is None else (read_only or self.read_only)
        key = str(self.path.resolve())
        with _file_lock(key):
            deadline = time.monotonic() + self.lock_timeout_s
            delay = 0.02
            while True:
                try:
                    con = duckdb.connect(str(self.path), read_only=ro)
                    break
                except duckdb.IOException as e:  # another process holds the write lock
                    if "lock" not in str(e).lower() or time.monotonic() > deadline:
                        raise CatalogError(f"{self.path}: cannot open the catalog ({e}); another process "
                                           f"has held it for over {self.lock_timeout_s:.0f} s") from e
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
            try:
                yield con
            finally:
                con.close()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self.read_only:
            raise CatalogReadOnly(f"{self.path}: catalog opened read_only=True; open it without read_only to write")
        with self._connect(read_only=False) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _fetch(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        with self._connect() as con:
            return con.execute(sql, params or []).fetchall()

    # --- versions -------------------------------------------------------------------------------

    def create_version(self, name: str | None = None, parent: str | None = None, config_sha256: str = "",
                       notes: dict[str, Any] | None = None) -> str:
        """Create a draft version; ids are `v0001-<name>`, numbered monotonically."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or "").strip("-.")
        with self._transaction() as con:
            if parent is not None:
                self._require_version(con, parent)
            seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM versions").fetchall()[0][0]
            vid = f"v{seq:04d}" + (f"-{slug}" if slug else "")
            con.execute(
                "INSERT INTO versions (version_id, seq, name, status, parent, config_sha256, created_at, notes) "
                "VALUES (?, ?, ?, 'draft', ?, ?, ?, ?)",
                [vid, seq, name, parent, config_sha256, _now(), _json_text(notes, "notes")],
            )
        return vid

    def _require_version(self, con: duckdb.DuckDBPyConnection, vid: str) -> dict[str, Any]:
        rows = con.execute(f"SELECT {', '.join(_VERSION_COLUMNS)} FROM versions WHERE version_id = ?",
                           [vid]).fetchall()
        if not rows:
            known = [r[0] for r in con.execute("SELECT version_id FROM versions ORDER BY seq").fetchall()]
            raise VersionNotFound(f"unknown version {vid!r} in catalog {self.path}; known versions: "
                                  f"{known if known else 'none (create one first)'}")
        record = dict(zip(_VERSION_COLUMNS, rows[0]))
        record["notes"] = _json_value(record["notes"])
        for k in ("created_at", "finalized_at"):
            record[k] = _iso(record[k])
        return record

    def get_version(self, vid: str) -> dict[str, Any]:
        with self._connect() as con:
            return self._require_version(con, vid)

    def list_versions(self) -> list[dict[str, Any]]:
        """Every version, oldest first, with n_partitions, shard_rows, shard_bytes, n_rejects, n_items."""
        with self._connect() as con:
            cur = con.execute(
                "SELECT v.*, x.n_partitions, x.shard_rows, x.shard_bytes, x.n_rejects, x.n_items "
                "FROM versions v JOIN v_versions x USING (version_id) ORDER BY v.seq")
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        out = []
        for r in rows:
            rec = dict(zip(cols, r))
            rec.pop("seq", None)
            rec["notes"] = _json_value(rec["notes"])
            for k in ("created_at", "finalized_at"):
                rec[k] = _iso(rec[k])
            out.append(rec)
        return out

    def committed_partitions(self, vid: str) -> set[str]:
        with self._connect() as con:
            self._require_version(con, vid)
            return {r[0] for r in con.execute("SELECT partition_key FROM shards WHERE version_id = ?",
                                              [vid]).fetchall()}

    # --- partitions -----------------------------------------------------------------------------

    def commit_partition(self, vid: str, partition_key: str, shard: ShardInfo | dict | None,
                         rejects: list[Any], items: list[dict[str, Any]], run_id: str | None) -> None:
        """Record one processed partition (its shard or None, its rejects, its ledger items) atomically.

        Refused when the version is finalized (`VersionImmutable`) or the partition is already
        committed (`PartitionAlreadyCommitted`): a resumed run must skip `committed_partitions(vid)`.
        """
        if isinstance(shard, dict):
            shard = ShardInfo(**shard)
        reject_rows = [self._reject_row(vid, partition_key, run_id, r) for r in rejects]
        item_rows = [self._item_row(vid, partition_key, it) for it in items]
        with self._transaction() as con:
            version = self._require_version(con, vid)
            if version["status"] != "draft":
                raise VersionImmutable(f"version {vid} is finalized and immutable; partition {partition_key!r} "
                                       "cannot be added. Create a new version (parent=" + repr(vid) + ") instead.")
            done = con.execute("SELECT run_id, created_at FROM shards WHERE version_id = ? AND partition_key = ?",
                               [vid, partition_key]).fetchall()
            if done:
                raise PartitionAlreadyCommitted(
                    f"partition {partition_key!r} of version {vid} was already committed (run {done[0][0]}, "
                    f"{_iso(done[0][1])}); skip it when resuming (see Catalog.committed_partitions)")
            con.execute(
                "INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [vid, partition_key, self._stored_path(shard.path) if shard else None, shard.rows if shard else 0,
                 shard.bytes if shard else 0, shard.sha256 if shard else None, run_id, _now()],
            )
            if reject_rows:
                con.executemany("INSERT INTO rejects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", reject_rows)
            if item_rows:
                con.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", item_rows)

    @staticmethod
    def _reject_row(vid: str, key: str, run_id: str | None, r: Any) -> list[Any]:
        d = dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r)
        where = f"reject {d.get('source')}/{d.get('source_id')} in partition {key!r}"
        for required in ("stage", "reason"):
            if not d.get(required):
                raise CatalogError(f"{where}: field {required!r} is empty; every reject needs a stage and reason code")
        return [vid, key, d.get("run_id", run_id), d.get("source"), d.get("source_id"), d.get("sample_id"),
                d.get("audio_sha256"), d["stage"], d["reason"], d.get("detail", ""),
                _json_text(d.get("extra") or None, f"{where}: extra")]

    @staticmethod
    def _item_row(vid: str, key: str, it: dict[str, Any]) -> list[Any]:
        where = f"ledger item {it.get('source')}/{it.get('source_id')} in partition {key!r}"
        if not it.get("source_id") and it.get("source_id") != 0:
            raise CatalogError(f"{where}: field 'source_id' is empty")
        return [vid, key, it.get("source"), str(it.get("source_id")), it.get("audio_sha256"),
                int(it.get("n_rows") or 0), it.get("status"), _json_text(it.get("planted"), f"{where}: planted")]

    def shards(self, vid: str) -> list[dict[str, Any]]:
        """The version's committed partitions, by partition_key (path None: no rows; local paths absolute)."""
        with self._connect() as con:
            self._require_version(con, vid)
            cur = con.execute("SELECT * FROM shards WHERE version_id = ? ORDER BY partition_key", [vid])
            cols = [d[0] for d in cur.description]
            records = [dict(zip(cols, r)) for r in cur.fetchall()]
        for rec in records:
            rec["path"] = self._full_path(rec["path"])
        return records

    # Shards under the catalog's directory are recorded relative to it, so a home directory (catalog
    # plus shards) can be moved or copied whole and still verifies against its own files.
    def _stored_path(self, path: str) -> str:
        if "://" in path or not os.path.isabs(path):
            return path
        rel = os.path.relpath(path, os.path.abspath(self.path.parent))
        return path if rel == ".." or rel.startswith(".." + os.sep) else rel.replace(os.sep, "/")

    def _full_path(self, stored: str | None) -> str | None:
        if stored is None or "://" in stored or os.path.isabs(stored):
            return stored
        return os.path.normpath(os.path.join(os.path.abspath(self.path.parent), stored))

    # --- runs -----------------------------------------------------------------------------------

    def record_run(self, run_id: str, version_id: str, flow_run_id: str | None = None,
                   status: str = "running", counts: dict[str, Any] | None = None) -> None:
        """Start (or restart, for a resumed run with the same id) a run of `version_id`."""
        with self._transaction() as con:
            self._require_version(con, version_id)
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, NULL, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
                "flow_run_id = excluded.flow_run_id, status = excluded.status, ended_at = NULL",
                [run_id, version_id, flow_run_id, _now(), status, _json_text(counts, f"run {run_id}: counts")],
            )

    def finish_run(self, run_id: str, status: str = "completed", counts: dict[str, Any] | None = None) -> None:
        with self._transaction() as con:
            n = con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]
            if not n:
                raise CatalogError(f"unknown run {run_id!r}; call record_run first")
            con.execute("UPDATE runs SET ended_at = ?, status = ?, counts = coalesce(?, counts) WHERE run_id = ?",
                        [_now(), status, _json_text(counts, f"run {run_id}: counts"), run_id])

    def mark_interrupted_runs(self, except_run_id: str | None = None) -> list[str]:
        """Mark every run still `running` (other than `except_run_id`) as `interrupted`; returns their ids.

        Call it only while holding the writer lock (`dataflux.storage.writer_lock`): a run holds the
        lock for its whole life, so a run still `running` when another holds it has died."""
        with self._transaction() as con:
            ids = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'running' AND run_id <> ?",
                                             [except_run_id or ""]).fetchall()]
            if ids:
                con.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running' AND run_id <> ?",
                            [except_run_id or ""])
        return ids

    def get_run(self, run_id: str) -> dict[str, Any]:
        with self._connect() as con:
            cur = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        if not rows:
            raise CatalogError(f"unknown run {run_id!r}")
        rec = dict(zip(cols, rows[0]))
        rec["counts"] = _json_value(rec["counts"])
        return {k: _iso(v) for k, v in rec.items()}

    # --- finalize / verify ----------------------------------------------------------------------

    def finalize(self, vid: str) -> dict[str, Any]:
        """Check every shard against its recorded sha256 and row count, fix the version's
        manifest_sha256 and content_sha256, and make it immutable. Returns the version record.

        Finalizing an already finalized version changes nothing and returns its record.
        """
        version = self.get_version(vid)
        if version["status"] == "finalized":
            return version
        shards = self.shards(vid)
        pairs: list[tuple[str, str]] = []
        owner: dict[str, str] = {}
        for s in shards:
            if s["path"] is None:
                continue
            table = read_shard(s["path"], s["sha256"], columns=["sample_id", "row_sha256"])
            if table.num_rows != s["rows"]:
                raise CatalogError(f"{s['path']}: holds {table.num_rows} rows but the catalog recorded {s['rows']} "
                                   f"for partition {s['partition_key']!r} of {vid}; rebuild that partition")
            for sid, rsha in zip(table.column("sample_id").to_pylist(), table.column("row_sha256").to_pylist()):
                if sid in owner:
                    raise CatalogError(f"version {vid}: sample_id {sid!r} occurs in partitions {owner[sid]!r} and "
                                       f"{s['partition_key']!r}; sample ids must be unique within a version")
                owner[sid] = s["partition_key"]
                pairs.append((sid, rsha))
        manifest = manifest_sha256([(s["partition_key"], s["sha256"], s["rows"]) for s in shards])
        content = content_sha256(pairs)
        with self._transaction() as con:
            current = self._require_version(con, vid)
            if current["status"] != "draft":
                raise VersionImmutable(f"version {vid} was finalized by another process meanwhile")
            now_shards = con.execute("SELECT partition_key, sha256, rows FROM shards WHERE version_id = ?",
                                     [vid]).fetchall()
            if manifest_sha256(now_shards) != manifest:
                raise CatalogError(f"version {vid}: partitions were committed while finalizing; finalize again "
                                   "once the run has finished")
            con.execute("UPDATE versions SET status = 'finalized', finalized_at = ?, manifest_sha256 = ?, "
                        "content_sha256 = ?, n_rows = ? WHERE version_id = ?",
                        [_now(), manifest, content, len(pairs), vid])
        integrity.make_read_only(s["path"] for s in shards)
        return self.get_version(vid)

    def verify(self, vid: str, *, cached: bool = False) -> list[dict[str, Any]]:
        """Problems with the version's files: [{partition_key, path, problem, expected, actual}], where
        problem is `missing`, `sha256_mismatch` or (finalized versions) `manifest_mismatch`. Empty: all good.

        `cached=True` skips hashing a file unchanged (size, mtime, ctime, inode) since it last matched
        (`dataflux.storage.integrity`); `dataflux verify` always hashes everything."""
        version = self.get_version(vid)
        shards = self.shards(vid)
        problems = integrity.check_shards(shards, self._verified_cache() if cached else None)
        if version["status"] == "finalized":
            actual = manifest_sha256([(s["partition_key"], s["sha256"], s["rows"]) for s in shards])
            if actual != version["manifest_sha256"]:
                problems.append({"partition_key": None, "path": str(self.path), "problem": "manifest_mismatch",
                                 "expected": version["manifest_sha256"], "actual": actual})
        return problems

    def shard_paths(self, vid: str, *, require_finalized: bool = True, verify: bool = True) -> list[str]:
        """Paths of the version's shards (by partition_key), for trainers and `datasets` loaders.

        Raises `VersionNotFinalized` for a draft (unless require_finalized=False) and
        `ChecksumMismatch` / `ShardMissing` when a file no longer matches the catalog.
        """
        version = self.get_version(vid)
        if require_finalized and version["status"] != "finalized":
            raise VersionNotFinalized(
                f"version {vid} is a draft: its content may still change. Finalize it first "
                f"(Catalog.finalize({vid!r})), or pass require_finalized=False to read a draft knowingly")
        if verify:
            problems = self.verify(vid, cached=True)
            if problems and problems[0]["problem"] == "manifest_mismatch":
                raise CatalogError(f"version {vid}: its shard list no longer hashes to the recorded manifest "
                                   f"({problems[0]['actual']} != {problems[0]['expected']}); the catalog was "
                                   "edited after finalizing: rebuild the version")
            integrity.raise_first(problems, vid)
        return [s["path"] for s in self.shards(vid) if s["path"] is not None]

    def _verified_cache(self) -> integrity.VerifiedCache:
        return integrity.VerifiedCache(integrity.cache_path(self.path))

    # --- model-call cache -----------------------------------------------------------------------

    def cache_get(self, request_sha256: str) -> dict[str, Any] | None:
        """The cached call for a request hash: {request_sha256, step, model, response, tokens_in,
        tokens_out, cost_usd, latency_s, created_at}, `response` parsed from JSON; None on a miss."""
        with self._connect() as con:
            cur = con.execute("SELECT * FROM calls WHERE request_sha256 = ?", [request_sha256])
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        if not rows:
            return None
        rec = dict(zip(cols, rows[0]))
        rec["response"] = _json_value(rec["response"])
        rec["created_at"] = _iso(rec["created_at"])
        return rec

    def cache_put(self, request_sha256: str, step: str, model: str, response: Any, tokens_in: int = 0,
                  tokens_out: int = 0, cost_usd: float = 0.0, latency_s: float = 0.0) -> bool:
        """Store a call's response under its request hash; the first stored response wins.
        Returns True when stored, False when the hash was already present."""
        with self._transaction() as con:
            before = con.execute("SELECT count(*) FROM calls WHERE request_sha256 = ?", [request_sha256]).fetchall()
            if before[0][0]:
                return False
            con.execute("INSERT INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [request_sha256, step, model, _json_text(response, f"call {request_sha256}: response"),
                         int(tokens_in), int(tokens_out), float(cost_usd), float(latency_s), _now()])
        return True

    def cache_get_many(self, request_sha256s: list[str]) -> dict[str, dict[str, Any]]:
        """`cache_get` for many hashes in one query: {hash: cached call} for the hashes found."""
        keys = sorted(set(request_sha256s))
        if not keys:
            return {}
        with self._connect() as con:
            cur = con.execute("SELECT * FROM calls WHERE request_sha256 IN (SELECT unnest(?::VARCHAR[]))", [keys])
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        out = {}
        for row in rows:
            rec = dict(zip(cols, row))
            rec["response"] = _json_value(rec["response"])
            rec["created_at"] = _iso(rec["created_at"])
            out[rec["request_sha256"]] = rec
        return out

    def cache_put_many(self, calls: list[dict[str, Any]]) -> int:
        """`cache_put` for many calls (dicts of its arguments) in one transaction; the first stored
        response of a hash wins, within the batch too. Returns how many were stored."""
        first: dict[str, dict[str, Any]] = {}
        for c in calls:
            first.setdefault(c["request_sha256"], c)
        if not first:
            return 0
        rows = list(first.values())
        columns = [
            [c["request_sha256"] for c in rows], [c["step"] for c in rows], [c["model"] for c in rows],
            [_json_text(c["response"], f"call {c['request_sha256']}: response") for c in rows],
            [int(c.get("tokens_in", 0)) for c in rows], [int(c.get("tokens_out", 0)) for c in rows],
            [float(c.get("cost_usd", 0.0)) for c in rows], [float(c.get("latency_s", 0.0)) for c in rows],
        ]
        with self._transaction() as con:
            before = con.execute("SELECT count(*) FROM calls").fetchall()[0][0]
            con.execute(
                "INSERT OR IGNORE INTO calls SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                "unnest(?::VARCHAR[]), unnest(?::VARCHAR[])::JSON, unnest(?::BIGINT[]), unnest(?::BIGINT[]), "
                "unnest(?::DOUBLE[]), unnest(?::DOUBLE[]), ?", [*columns, _now()])
            after = con.execute("SELECT count(*) FROM calls").fetchall()[0][0]
        return int(after - before)

    # --- trainings ------------------------------------------------------------------------------

    def record_training(self, training_id: str, version_id: str, checkpoint: str | None = None,
                        config: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                        status: str = "running", started_at: datetime | None = None,
                        ended_at: datetime | None = None) -> None:
        """Insert or update one training run of a version (checkpoint <- version)."""
        with self._transaction() as con:
            self._require_version(con, version_id)
            con.execute(
                "INSERT INTO trainings VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (training_id) DO UPDATE SET "
                "checkpoint = coalesce(excluded.checkpoint, trainings.checkpoint), "
                "config = coalesce(excluded.config, trainings.config), "
                "metrics = coalesce(excluded.metrics, trainings.metrics), "
                "ended_at = coalesce(excluded.ended_at, trainings.ended_at), status = excluded.status",
                [training_id, version_id, checkpoint, _json_text(config, "training config"),
                 _json_text(metrics, "training metrics"), started_at or _now(), ended_at, status],
            )

    def trainings(self, version_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM trainings" + (" WHERE version_id = ?" if version_id else "") + " ORDER BY started_at"
        with self._connect() as con:
            cur = con.execute(sql, [version_id] if version_id else [])
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        out = []
        for r in rows:
            rec = dict(zip(cols, r))
            rec["config"] = _json_value(rec["config"])
            rec["metrics"] = _json_value(rec["metrics"])
            out.append({k: _iso(v) for k, v in rec.items()})
        return out

    # --- queries and stats ----------------------------------------------------------------------

    def query(self, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run one read-only statement (SELECT / WITH / DESCRIBE / SHOW / SUMMARIZE / EXPLAIN / PRAGMA)
        on a read-only connection sealed by dataflux.storage.sql_sandbox: it reads the catalog's
        tables and the version shards, nothing else. Returns (column names, rows); raises
        `QueryRefused` (one line) for a refused or failing statement.

        A statement naming `samples` first has every finalized version's shards checked (cached),
        before the connection opens: hashing must not keep a writer waiting."""
        from dataflux.storage.sql_sandbox import refusal_message, seal

        mentions_samples = bool(_SAMPLES_WORD.search(sql))
        if mentions_samples:
            self._verify_finalized_shards()
        with self._connect(read_only=True) as con:
            try:
                statements = con.extract_statements(sql)
            except duckdb.Error as e:
                raise QueryRefused(refusal_message(e)) from None
            if len(statements) != 1:
                raise QueryRefused(f"query takes exactly one statement, got {len(statements)}")
            kind = statements[0].type.name
            if kind not in _READ_STATEMENTS:
                raise QueryRefused(f"query is read-only: {kind} statements are refused ({sql[:60]!r})")
            shard_files = self._register_samples_view(con, create=mentions_samples)
            seal(con, shard_files)
            try:
                cur = con.execute(sql, params or [])
                cols = [d[0] for d in cur.description] if cur.description else []
                return cols, cur.fetchall()
            except duckdb.Error as e:
                raise QueryRefused(refusal_message(e)) from None

    def _register_samples_view(self, con: duckdb.DuckDBPyConnection, *, create: bool = True) -> list[str]:
        """A temporary `samples` view: every version's rows with a `version_id` column, so that
        `SELECT version_id, l3, count(*) FROM samples GROUP BY ALL` works without listing shards.
        Returns the paths of all the catalog's shard files (the ones a sealed query may read)."""
        by_version: dict[str, list[str]] = {}
        rows = con.execute("SELECT s.version_id, s.path, v.status FROM shards s JOIN versions v USING (version_id) "
                           "WHERE s.path IS NOT NULL ORDER BY s.version_id, s.partition_key").fetchall()
        every = [self._full_path(stored) for _, stored, _ in rows]
        for (vid, _, status), path in zip(rows, every):
            # a finalized version's files were checked by `query`; a draft's missing files are left out
            if status == "finalized" or "://" in path or os.path.exists(path):
                by_version.setdefault(vid, []).append(path)
        if not by_version or not create:
            return every
        parts = [f"SELECT {_sql_str(vid)} AS version_id, * FROM {_read_parquet_sql(paths)}"
                 for vid, paths in by_version.items()]
        con.execute("CREATE OR REPLACE TEMP VIEW samples AS " + " UNION ALL BY NAME ".join(parts))
        return every

    def _verify_finalized_shards(self) -> None:
        """Check every finalized version's shards (cached); raise for the first damaged or missing one."""
        rows = self._fetch("SELECT s.version_id, s.partition_key, s.path, s.sha256 FROM shards s "
                           "JOIN versions v USING (version_id) WHERE s.path IS NOT NULL AND v.status = 'finalized' "
                           "ORDER BY s.version_id, s.partition_key")
        by_version: dict[str, list[dict[str, Any]]] = {}
        for vid, key, stored, sha in rows:
            by_version.setdefault(vid, []).append({"partition_key": key, "path": self._full_path(stored),
                                                   "sha256": sha})
        cache = self._verified_cache()
        for vid, shards in by_version.items():
            integrity.raise_first(integrity.check_shards(shards, cache), vid)

    def samples_relation_sql(self, vid: str, *, require_finalized: bool = False) -> str:
        """`read_parquet([...])` over the version's shards, to use in DuckDB SQL as a table."""
        finalized = self.get_version(vid)["status"] == "finalized"
        paths = self.shard_paths(vid, require_finalized=require_finalized, verify=finalized)
        if not paths:
            raise CatalogError(f"version {vid} has no shards with rows yet")
        return _read_parquet_sql(paths)

    def stats(self, vid: str) -> dict[str, Any]:
        """Figures for a version, computed by DuckDB over its shards and catalog tables (drafts too).

        Keys: version_id, status, verified (False for an unverified twin), rows, clips, rows_per_task
        (mcq/asr/caption/open_qa -> rows; rows without a task are mcq), samples_per_category (l3 ->
        question rows), questions_per_clip (mean, min, max, histogram: questions -> clips),
        categories_per_source (source -> l3 -> rows), duration_s (min_s,
        max_s, mean_s, median_s over rows; total_clip_s over distinct clips), rejects_by_reason
        ("stage/reason" -> n), items_by_status, answer_position (answer_index -> question rows), per_step
        (step -> n_calls, tokens_in, tokens_out, cost_usd, cached; a clip's calls counted once though
        every row of the clip repeats them), tokens_in, tokens_out, cost_usd (totals of per_step),
        cost_usd_rows (sum of the rows' own cost_usd, their shares of the calls), and
        when the ledger carries planted errors: planted_errors, planted_caught (of which
        planted_caught_discarded: no row asks about the leaf; planted_caught_corrected: rows ask and
        answer otherwise), clean_items, clean_rejected (clean items of a planted source with no row);
        when our own trained model answered (rows' model_correct): model_accuracy (n, accuracy,
        by_category: l3 -> {n, accuracy}).
        """
        status = self.get_version(vid)["status"]
        # A finalized version's files are checked (cached) before anything is read; a draft's are not.
        paths = self.shard_paths(vid, require_finalized=False, verify=status == "finalized")
        rel = _read_parquet_sql(paths) if paths else _EMPTY_SAMPLES
        info = self.get_version(vid)
        out: dict[str, Any] = {"version_id": vid, "status": status, "shards_verified": status == "finalized"}
        out["verified"] = (info.get("notes") or {}).get("verified", True) is not False
        with self._connect(read_only=True) as con:

            def one(sql: str, params: list[Any] | None = None) -> tuple:
                return con.execute(sql, params or []).fetchall()[0]

            def many(sql: str, params: list[Any] | None = None) -> list[tuple]:
                return con.execute(sql, params or []).fetchall()

            con.execute(f"CREATE TEMP VIEW s AS SELECT * FROM {rel}")
            if "task" not in [c[0] for c in con.execute("DESCRIBE s").fetchall()]:
                # shards written before the task column: every row is a question
                con.execute(f"CREATE OR REPLACE TEMP VIEW s AS SELECT *, NULL::VARCHAR AS task FROM {rel}")
            out["rows"], out["clips"], out["cost_usd_rows"] = one(
                "SELECT count(*), count(DISTINCT audio_sha256), coalesce(sum(cost_usd), 0) FROM s")
            out["rows_per_task"] = dict(many(
                "SELECT coalesce(task, 'mcq'), count(*) FROM s GROUP BY 1 ORDER BY 1"))
            con.execute("CREATE TEMP VIEW q AS SELECT * FROM s WHERE coalesce(task, 'mcq') = 'mcq'")
            out["samples_per_category"] = dict(many("SELECT l3, count(*) FROM q GROUP BY 1 ORDER BY 1"))
            d = one("SELECT min(duration_s), max(duration_s), avg(duration_s), median(duration_s) FROM s")
            total = one("SELECT coalesce(sum(d), 0) FROM (SELECT audio_sha256, any_value(duration_s) AS d "
                        "FROM s GROUP BY 1)")[0]
            out["duration_s"] = {"min_s": d[0], "max_s": d[1], "mean_s": d[2], "median_s": d[3],
                                 "total_clip_s": total}
            out["questions_per_clip"] = _questions_per_clip(many(
                "SELECT n, count(*) FROM (SELECT audio_sha256, count(*) AS n FROM q GROUP BY 1) GROUP BY 1 ORDER BY 1"))
            out["categories_per_source"] = {}
            for src, l3, n in many("SELECT source, l3, count(*) FROM q GROUP BY 1, 2 ORDER BY 1, 2"):
                out["categories_per_source"].setdefault(src, {})[l3] = n
            out["answer_position"] = {int(k): n for k, n in many(
                "SELECT answer_index, count(*) FROM q GROUP BY 1 ORDER BY 1")}
            out["per_step"] = {
                step: {"n_calls": n, "tokens_in": ti, "tokens_out": to, "cost_usd": c, "cached": cached}
                for step, n, ti, to, c, cached in many(_PER_STEP_SQL)
            }
            for key in ("tokens_in", "tokens_out", "cost_usd"):
                out[key] = sum(v[key] for v in out["per_step"].values())
            out["rejects_by_reason"] = {f"{st}/{r}": n for st, r, n in many(
                "SELECT stage, reason, count(*) FROM rejects WHERE version_id = ? GROUP BY 1, 2 "
                "ORDER BY 3 DESC, 1, 2", [vid])}
            out["items_by_status"] = dict(many(
                "SELECT status, count(*) FROM items WHERE version_id = ? GROUP BY 1 ORDER BY 1", [vid]))
            if "model_correct" in [d[0] for d in con.execute("SELECT * FROM s LIMIT 0").description]:
                model = _model_accuracy(many(
                    "SELECT l3, count(*), count(*) FILTER (WHERE model_correct) FROM s "
                    "WHERE model_correct IS NOT NULL GROUP BY 1 ORDER BY 1"))
                if model is not None:
                    out["model_accuracy"] = model
            n_planted = one("SELECT count(*) FROM items WHERE version_id = ? AND planted IS NOT NULL "
                            "AND planted->>'leaf' IS NOT NULL", [vid])[0]
            if n_planted:
                (out["planted_errors"], out["planted_caught"], out["planted_caught_discarded"],
                 out["planted_caught_corrected"], out["clean_items"], out["clean_rejected"]) = one(
                    _PLANTED_SQL, [vid])
                out["planted_by_leaf"] = {
                    leaf: {"planted": n, "caught": c} for leaf, n, c in many(_PLANTED_BY_LEAF_SQL, [vid])}
                for leaf, asked, lost in many(_CLEAN_BY_LEAF_SQL, [vid]):
                    out["planted_by_leaf"].setdefault(leaf, {"planted": 0, "caught": 0}).update(
                        {"clean_asked": asked, "clean_rejected": lost})
            try:
                shares: dict[str, dict[str, int]] = {}
                for leaf, level, n in many("SELECT l3, coalesce(verification, 'unrecorded'), count(*) FROM s "
                                           "GROUP BY 1, 2 ORDER BY 1, 2"):
                    shares.setdefault(leaf, {})[level] = n
                out["verification_by_leaf"] = shares
            except duckdb.BinderException:  # shards written before rows recorded their verification
                out["verification_by_leaf"] = {}
        return out


def _questions_per_clip(histogram: list[tuple[int, int]]) -> dict[str, Any]:
    """{mean, min, max, histogram: {questions: clips}} over the clips that have questions."""
    clips = sum(c for _, c in histogram)
    if not clips:
        return {"mean": 0.0, "min": 0, "max": 0, "histogram": {}}
    return {"mean": sum(n * c for n, c in histogram) / clips, "min": histogram[0][0], "max": histogram[-1][0],
            "histogram": {int(n): c for n, c in histogram}}


# A query that names the `samples` view gets it (and the checks of its finalized shards); others do not.
_SAMPLES_WORD = re.compile(r"\bsamples\b", re.IGNORECASE)


def _model_accuracy(per_category: list[tuple]) -> dict[str, Any] | None:
    """Our model's accuracy as an answerer (rows' `model_correct`): overall and per category; None
    when no row was put to it."""
    if not per_category:
        return None
    n = sum(int(t) for _, t, _ in per_category)
    right = sum(int(c) for _, _, c in per_category)
    return {"n": n, "accuracy": right / n,
            "by_category": {cat: {"n": int(t), "accuracy": int(c) / int(t)} for cat, t, c in per_category}}


def _read_parquet_sql(paths: list[str]) -> str:
    # by name: a version may hold shards written before a column (e.g. `task`) was added
    return "read_parquet([" + ", ".join(_sql_str(p) for p in paths) + "], union_by_name = true)"


# The columns `stats` needs, typed, for a version that has no shards yet.
_EMPTY_SAMPLES = (
    "(SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR AS source, NULL::VARCHAR AS source_id, "
    "NULL::VARCHAR AS audio_sha256, NULL::DOUBLE AS duration_s, NULL::VARCHAR AS l3, NULL::VARCHAR AS answer, "
    "NULL::INTEGER AS answer_index, NULL::VARCHAR AS caption_claims, NULL::DOUBLE AS cost_usd, "
    "NULL::STRUCT(step VARCHAR, backend VARCHAR, model VARCHAR, prompt_sha256 VARCHAR, params VARCHAR, "
    "seed BIGINT, tokens_in BIGINT, tokens_out BIGINT, cost_usd DOUBLE, cached BOOLEAN)[] AS calls WHERE false)"
)

# A clip's calls are repeated on each of its rows (the caption call serves every question about the
# clip), so calls are counted once per clip: distinct by clip and by everything the call records.
_PER_STEP_SQL = """
WITH c AS (
    SELECT DISTINCT audio_sha256, c.step, c.backend, c.model, c.prompt_sha256, c.params, c.seed,
           c.tokens_in, c.tokens_out, c.cost_usd, c.cached
    FROM (SELECT audio_sha256, unnest(calls) AS c FROM s)
)
SELECT step, count(*), coalesce(sum(tokens_in), 0), coalesce(sum(tokens_out), 0), coalesce(sum(cost_usd), 0),
       coalesce(sum(CASE WHEN cached THEN 1 ELSE 0 END), 0)
FROM c GROUP BY 1 ORDER BY 1
"""

# Per leaf: plants and how many no row asserts; clean items asked about the leaf (a row or a
# reject names it) and how many of them end with no row about it.
_PLANTED_BY_LEAF_SQL = """
WITH
planted AS (
    SELECT DISTINCT source, source_id, planted->>'leaf' AS leaf, planted->>'claimed' AS claimed
    FROM items WHERE version_id = $1 AND planted IS NOT NULL AND planted->>'leaf' IS NOT NULL
),
asserting AS (
    SELECT DISTINCT p.source, p.source_id, p.leaf FROM planted p
    JOIN s ON s.source = p.source AND s.source_id = p.source_id
    WHERE (s.l3 = p.leaf AND s.answer = p.claimed)
       OR (json_valid(s.caption_claims) AND json_extract_string(s.caption_claims, p.leaf) = p.claimed)
)
SELECT p.leaf, count(*), count(*) FILTER (WHERE a.source IS NULL)
FROM planted p LEFT JOIN asserting a ON a.source = p.source AND a.source_id = p.source_id AND a.leaf = p.leaf
GROUP BY 1 ORDER BY 1
"""
_CLEAN_BY_LEAF_SQL = """
WITH
clean AS (
    SELECT DISTINCT source, source_id FROM items
    WHERE version_id = $1 AND (planted IS NULL OR planted->>'leaf' IS NULL)
      AND source IN (SELECT source FROM items WHERE version_id = $1 AND planted->>'leaf' IS NOT NULL)
),
kept AS (SELECT DISTINCT source, source_id, l3 AS leaf FROM s),
asked AS (
    SELECT source, source_id, leaf FROM kept
    UNION
    SELECT source, source_id, extra->>'leaf' FROM rejects WHERE version_id = $1 AND extra->>'leaf' IS NOT NULL
)
SELECT a.leaf, count(*), count(*) FILTER (WHERE k.source IS NULL)
FROM asked a JOIN clean c ON c.source = a.source AND c.source_id = a.source_id
LEFT JOIN kept k ON k.source = a.source AND k.source_id = a.source_id AND k.leaf = a.leaf
GROUP BY 1 ORDER BY 1
"""

# Planted errors live in the item ledger as {"leaf": <leaf id>, "claimed": <wrong value>, ...}.
# A row asserts the wrong value when it answers that leaf with it, or its caption claims it.
_PLANTED_SQL = """
WITH
planted AS (
    SELECT DISTINCT source, source_id, planted->>'leaf' AS leaf, planted->>'claimed' AS claimed
    FROM items WHERE version_id = $1 AND planted IS NOT NULL AND planted->>'leaf' IS NOT NULL
),
asserting AS (
    SELECT DISTINCT p.source, p.source_id FROM planted p JOIN s ON s.source = p.source AND s.source_id = p.source_id
    WHERE (s.l3 = p.leaf AND s.answer = p.claimed)
       OR (json_valid(s.caption_claims) AND json_extract_string(s.caption_claims, p.leaf) = p.claimed)
),
answered_leaf AS (
    SELECT DISTINCT p.source, p.source_id FROM planted p JOIN s ON s.source = p.source AND s.source_id = p.source_id
    WHERE s.l3 = p.leaf
),
caught AS (
    SELECT source, source_id FROM planted EXCEPT SELECT source, source_id FROM asserting
),
clean AS (
    SELECT DISTINCT source, source_id FROM items i
    WHERE version_id = $1 AND source IN (SELECT source FROM planted)
      AND (planted IS NULL OR planted->>'leaf' IS NULL)
),
with_rows AS (SELECT DISTINCT source, source_id FROM s)
SELECT
    (SELECT count(*) FROM planted),
    (SELECT count(*) FROM caught),
    (SELECT count(*) FROM (SELECT * FROM caught EXCEPT SELECT * FROM answered_leaf)),
    (SELECT count(*) FROM (SELECT * FROM caught INTERSECT SELECT * FROM answered_leaf)),
    (SELECT count(*) FROM clean),
    (SELECT count(*) FROM (SELECT * FROM clean EXCEPT SELECT * FROM with_rows))
"""

"""Connections to the catalog's DuckDB file: short ones that take turns, and a private copy for readers.

DuckDB lets one process write a database file at a time, and a reader's open blocks a writer just
as well. The catalog therefore opens a connection per operation and closes it straight after (a
few ms), so a pipeline writing and a CLI or notebook reading take turns; within a process a lock
serialises operations on one file, and an operation that finds the file locked by another process
retries until `lock_timeout_s`. A reader that may take long (`dataflux sql`, a streamed result,
`stats` over a large version's shards) works on a copy of the catalog, or of the rows it needs, made
under one such short open (`snapshot`, `excerpt`), so it never keeps a writer waiting however long
it reads.

`connect`, `transaction`, `snapshot` and `excerpt` are the storage-level API that other parts of the catalog
and the model-call cache (`dataflux.llm.catalog_cache`) build on.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import duckdb

from dataflux.home import default_catalog_path
from dataflux.storage.catalog import health
from dataflux.storage.catalog.errors import CatalogError, CatalogReadOnly
from dataflux.storage.catalog.schema import DDL, SCHEMA_VERSION

T = TypeVar("T")

_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()

# The name the catalog file is attached under while a snapshot copies it.
_SOURCE = "dataflux_catalog_source"


def _file_lock(path: str) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(path, threading.RLock())


class CatalogFile:
    """The catalog's DuckDB file (`path`, default `<dataflux home>/catalog.duckdb`).

    `read_only=True` opens every connection read-only (several readers may share the file while no
    writer holds it) and refuses all writes. Opening for writing creates the file and its tables;
    an existing file is first checked read-only (`health`), so a damaged one is never modified.
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
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(self._key()):
            if self.path.exists():
                health.check(self.path)
            with self.transaction() as con:
                for ddl in DDL:
                    con.execute(ddl)
                con.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                            [str(SCHEMA_VERSION)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, read_only={self.read_only})"

    def _key(self) -> str:
        return str(self.path.resolve())

    def _retrying(self, open_: Callable[[], T]) -> T:
        """`open_()`, retried while another process holds the file, until `lock_timeout_s`; any other
        failure to open is explained by a read-only look at the file (`health`)."""
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.02
        while True:
            try:
                return open_()
            except duckdb.IOException as e:
                if not health.is_lock_conflict(e):
                    what = health.problem(self.path) if self.path.exists() else None
                    if what is not None:
                        raise health.damaged(self.path, what) from None
                    raise CatalogError(f"{self.path}: cannot open the catalog ({health.one_line(e)})") from None
                if time.monotonic() > deadline:
                    raise CatalogError(f"{self.path}: cannot open the catalog: another process has held it for "
                                       f"over {self.lock_timeout_s:.0f} s ({health.one_line(e)})") from e
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    @contextmanager
    def connect(self, read_only: bool | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one short operation (read-only when the catalog or `read_only` says so)."""
        ro = self.read_only if read_only is None else (read_only or self.read_only)
        with _file_lock(self._key()):
            con = self._retrying(lambda: duckdb.connect(str(self.path), read_only=ro))
            try:
                yield con
            finally:
                con.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write connection inside BEGIN/COMMIT, rolled back when the block raises."""
        if self.read_only:
            raise CatalogReadOnly(f"{self.path}: catalog opened read_only=True; open it without read_only to write")
        with self.connect(read_only=False) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to a private copy of the catalog (same name, tables and views), made while
        the file is open read-only for the moment the copy takes; the copy is deleted afterwards."""
        with tempfile.TemporaryDirectory(prefix="dataflux-catalog-") as tmp:
            con = duckdb.connect(os.path.join(tmp, self.path.name))
            try:
                copy_into = con.execute("SELECT current_database()").fetchone()[0]
                with _file_lock(self._key()):
                    self._retrying(lambda: con.execute(
                        f"ATTACH '{_escaped(self.path)}' AS {_SOURCE} (READ_ONLY)"))
                    try:
                        con.execute(f'COPY FROM DATABASE {_SOURCE} TO "{copy_into}"')
                    finally:
                        con.execute(f"DETACH {_SOURCE}")
                yield con
            finally:
                con.close()

    @contextmanager
    def excerpt(self, wheres: dict[str, str], params: list[Any]) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory connection holding the rows of catalog tables (`table name -> WHERE clause`,
        each with `params`) as tables of the same names, copied while the file is open read-only."""
        con = duckdb.connect()
        try:
            con.execute("SET enable_progress_bar = false")  # a long read would draw it on stdout
            with _file_lock(self._key()):
                self._retrying(lambda: con.execute(f"ATTACH '{_escaped(self.path)}' AS {_SOURCE} (READ_ONLY)"))
                try:
                    for table, where in wheres.items():
                        con.execute(f"CREATE TABLE {table} AS SELECT * FROM {_SOURCE}.{table} WHERE {where}", params)
                finally:
                    con.execute(f"DETACH {_SOURCE}")
            yield con
        finally:
            con.close()

    def fetch(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """All rows of one read statement, on a short connection."""
        with self.connect() as con:
            return con.execute(sql, params or []).fetchall()

    # The names the rest of the tree has long used (report, incremental, orphans, cli).
    _connect = connect
    _transaction = transaction
    _fetch = fetch


def _escaped(path: Path) -> str:
    return str(path.resolve()).replace("'", "''")

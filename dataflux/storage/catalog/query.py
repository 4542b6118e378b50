"""A user's SQL on the catalog (`dataflux sql`): one read-only statement, sandboxed, on a private copy.

Every statement runs on a snapshot of the catalog (`CatalogFile.snapshot`): the catalog file is
open read-only only for the moment the copy takes, so a long query, or a result read slowly,
never keeps a writer waiting on DuckDB's lock. The snapshot's connection is sealed by
`dataflux.storage.sql_sandbox` before the statement runs: it reads the catalog's tables and the
version shards, nothing else. A statement naming `samples` gets a view of every version's rows,
after every finalized version's shards are checked (cached).

`query` returns every row (callers that know their result is small); `stream` hands out the rows
as Arrow record batches, at most `limit` rows, and says how many rows it left out, so
`SELECT * FROM range(50000000)` runs in bounded memory.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import duckdb
import pyarrow as pa

from dataflux.storage import integrity
from dataflux.storage.catalog.connection import CatalogFile
from dataflux.storage.catalog.errors import QueryRefused
from dataflux.storage.catalog.values import read_parquet_sql, sql_str
from dataflux.storage.sql_sandbox import refusal_message, seal

# Statement types accepted (DESCRIBE, SHOW, SUMMARIZE and WITH parse as SELECT).
_READ_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA"}

# A query that names the `samples` view gets it (and the checks of its finalized shards); others do not.
_SAMPLES_WORD = re.compile(r"\bsamples\b", re.IGNORECASE)

DEFAULT_ROW_LIMIT = 10_000
BATCH_ROWS = 2_048


@dataclass
class StreamedResult:
    """The rows of one statement as Arrow record batches, cut after `limit` rows (None: no cut).
    `cut` is the number of rows left out, known once `batches()` is exhausted."""

    columns: list[str]
    limit: int | None
    _reader: pa.RecordBatchReader | None
    cut: int = 0
    shown: int = 0

    def batches(self) -> Iterator[pa.RecordBatch]:
        if self._reader is None:
            return
        try:
            for batch in self._reader:
                room = batch.num_rows if self.limit is None else max(0, self.limit - self.shown)
                if room < batch.num_rows:
                    self.cut += batch.num_rows - room
                    batch = batch.slice(0, room)
                if batch.num_rows:
                    self.shown += batch.num_rows
                    yield batch
        except duckdb.Error as e:
            raise QueryRefused(refusal_message(e)) from None


class CatalogQueries(CatalogFile):
    """`query` and `stream` (needs the version store's `_full_path` and `_verified_cache`, which the
    catalog is composed with)."""

    def query(self, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run one read-only statement (SELECT / WITH / DESCRIBE / SHOW / SUMMARIZE / EXPLAIN / PRAGMA)
        in the sandbox (see the module docstring). Returns (column names, every row); raises
        `QueryRefused` (one line) for a refused or failing statement."""
        with self._sealed(sql) as con:
            try:
                cur = con.execute(sql, params or [])
                cols = [d[0] for d in cur.description] if cur.description else []
                return cols, cur.fetchall()
            except duckdb.Error as e:
                raise QueryRefused(refusal_message(e)) from None

    @contextmanager
    def stream(self, sql: str, params: list[Any] | None = None, *, limit: int | None = DEFAULT_ROW_LIMIT,
               batch_rows: int = BATCH_ROWS) -> Iterator[StreamedResult]:
        """`query`'s statement with its rows streamed: inside the `with`, iterate `result.batches()`
        (Arrow record batches, at most `limit` rows in all; None: no limit), then read `result.cut`.
        Rows past the limit are counted, not kept, so memory stays bounded whatever the result's size."""
        with self._sealed(sql) as con:
            try:
                rel = con.sql(sql, params=params or None)
                reader = rel.to_arrow_reader(batch_rows) if rel is not None else None
            except duckdb.Error as e:
                raise QueryRefused(refusal_message(e)) from None
            columns = list(reader.schema.names) if reader is not None else []
            yield StreamedResult(columns=columns, limit=limit, _reader=reader)

    @contextmanager
    def _sealed(self, sql: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A sealed snapshot connection ready for `sql`, once it is known to be one read statement."""
        mentions_samples = bool(_SAMPLES_WORD.search(sql))
        with self.snapshot() as con:
            try:
                statements = con.extract_statements(sql)
            except duckdb.Error as e:
                raise QueryRefused(refusal_message(e)) from None
            if len(statements) != 1:
                raise QueryRefused(f"query takes exactly one statement, got {len(statements)}")
            kind = statements[0].type.name
            if kind not in _READ_STATEMENTS:
                raise QueryRefused(f"query is read-only: {kind} statements are refused ({sql[:60]!r})")
            if mentions_samples:
                self._verify_finalized_shards(con)
            shard_files = self._register_samples_view(con, create=mentions_samples)
            con.execute("SET enable_progress_bar = false")  # DuckDB would draw it into the rows on stdout
            seal(con, shard_files)
            yield con

    def _register_samples_view(self, con: duckdb.DuckDBPyConnection, *, create: bool = True) -> list[str]:
        """A temporary `samples` view: every version's rows with a `version_id` column, so that
        `SELECT version_id, l3, count(*) FROM samples GROUP BY ALL` works without listing shards.
        Returns the paths of all the catalog's shard files (the ones a sealed query may read)."""
        by_version: dict[str, list[str]] = {}
        rows = con.execute("SELECT s.version_id, s.path, v.status FROM shards s JOIN versions v USING (version_id) "
                           "WHERE s.path IS NOT NULL ORDER BY s.version_id, s.partition_key").fetchall()
        every = [self._full_path(stored) for _, stored, _ in rows]
        for (vid, _, status), path in zip(rows, every):
            # a finalized version's files were checked by `_sealed`; a draft's missing files are left out
            if status == "finalized" or "://" in path or os.path.exists(path):
                by_version.setdefault(vid, []).append(path)
        if not by_version or not create:
            return every
        parts = [f"SELECT {sql_str(vid)} AS version_id, * FROM {read_parquet_sql(paths)}"
                 for vid, paths in by_version.items()]
        con.execute("CREATE OR REPLACE TEMP VIEW samples AS " + " UNION ALL BY NAME ".join(parts))
        return every

    def _verify_finalized_shards(self, con: duckdb.DuckDBPyConnection) -> None:
        """Check every finalized version's shards (cached); raise for the first damaged or missing one."""
        rows = con.execute("SELECT s.version_id, s.partition_key, s.path, s.sha256 FROM shards s "
                           "JOIN versions v USING (version_id) WHERE s.path IS NOT NULL AND v.status = 'finalized' "
                           "ORDER BY s.version_id, s.partition_key").fetchall()
        by_version: dict[str, list[dict[str, Any]]] = {}
        for vid, key, stored, sha in rows:
            by_version.setdefault(vid, []).append({"partition_key": key, "path": self._full_path(stored),
                                                   "sha256": sha})
        cache = self._verified_cache()
        for vid, shards in by_version.items():
            integrity.raise_first(integrity.check_shards(shards, cache), vid)

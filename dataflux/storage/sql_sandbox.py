"""The sandbox a user's SQL runs in (`dataflux sql`, `Catalog.query`).

The connection is read-only and, once the views it needs are prepared, sealed: DuckDB may open
no file but the catalog itself and the version shards (`allowed_paths`), installs and loads no
extension, and refuses every later `SET`. So `read_text('/etc/shadow')`, `glob('/root/*')`,
`read_csv(...)`, `COPY ... TO`, `ATTACH`, `INSTALL`, an `https://` read and a `SET` all fail
inside DuckDB, whatever statement wraps them (`EXPLAIN ANALYZE COPY ...` included).

The settings are global to the DuckDB instance behind the catalog file; the catalog opens one
connection at a time per file in a process and closes it after the query, so the seal ends
with the query and never reaches a writer.
"""

from __future__ import annotations

import duckdb

# Order matters: extension settings and the allowed list first, then external access off, then the lock.
_SEAL = (
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET allow_community_extensions = false",
    "SET enable_external_access = false",
    "SET lock_configuration = true",
)


def _sql_list(items: list[str]) -> str:
    return "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in items) + "]"


def seal(con: duckdb.DuckDBPyConnection, readable: list[str]) -> None:
    """Lock `con` down so that only `readable` files (the version shards) can still be read.
    Views over those files must already exist: nothing can be prepared after this."""
    if any("://" in p for p in readable):
        _load_remote_reader(con)
    con.execute(f"SET allowed_paths = {_sql_list(sorted(set(readable)))}")
    for statement in _SEAL:
        con.execute(statement)


def _load_remote_reader(con: duckdb.DuckDBPyConnection) -> None:
    """Shards on an object store need DuckDB's httpfs; load it now if it is installed, since
    nothing can be loaded after the seal (never installed from here)."""
    try:
        con.execute("LOAD httpfs")
    except duckdb.Error:
        pass  # a query of remote shards then fails with DuckDB's own one-line reason


def one_line(exc: BaseException) -> str:
    """DuckDB's message without the caret drawing: its first line plus a "Did you mean" hint."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    hint = next((ln for ln in lines[1:] if ln.startswith("Did you mean")), "")
    return f"{lines[0]} {hint}".strip()


def refusal_message(exc: duckdb.Error) -> str:
    """One line for a DuckDB error, saying what the sandbox allows when access was the cause."""
    message = one_line(exc)
    if isinstance(exc, duckdb.PermissionException) or "configuration has been locked" in message:
        message += (" (dataflux sql reads only the catalog's tables and its version shards, through the "
                    "`samples` view or read_parquet of a shard; it sets nothing and loads no extension)")
    return message

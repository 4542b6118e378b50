"""Whether a catalog file is a whole DuckDB database, judged by reading it only.

A catalog can be damaged outside DuckDB: a copy cut short, another file put in its place, a disk
error. Opened for writing, such a file may be changed by DuckDB before it fails, and the damage
is then beyond diagnosis. So the catalog looks at an existing file read-only before it first opens
it for writing, and explains every open that fails for a reason other than another process's lock
in one line that names the file and what to do (`CatalogDamaged`).
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from dataflux.storage.catalog.errors import CatalogDamaged
from dataflux.storage.sql_sandbox import one_line

# DuckDB's file: a main header and two database headers of 4 KiB each, then whole blocks.
HEADER_BYTES = 3 * 4096
MAGIC_AT, MAGIC = 8, b"DUCK"


def is_lock_conflict(exc: BaseException) -> bool:
    """DuckDB refused the open because another process holds the file (not because it is damaged)."""
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


def problem(path: str | os.PathLike[str]) -> str | None:
    """What is wrong with the catalog file at `path`; None when it reads as a whole database, or
    when another process holds it (a file in use is judged by the next open)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[MAGIC_AT:MAGIC_AT + len(MAGIC)] != MAGIC:
        return f"it is not a DuckDB database ({size} bytes without DuckDB's header)"
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as exc:
        return None if is_lock_conflict(exc) else f"DuckDB cannot open it ({one_line(exc)})"
    except duckdb.Error:  # open in this process under another configuration: not the file's fault
        return None
    try:
        # used blocks, not total: free blocks at the end may lie past the file's end after a crash,
        # so only a file shorter than the blocks in use is surely cut short
        block_size, blocks = con.execute("SELECT block_size, used_blocks FROM pragma_database_size()").fetchone()
        con.execute("SELECT count(*) FROM duckdb_tables()").fetchall()
    except duckdb.Error as exc:
        return f"its contents cannot be read ({one_line(exc)})"
    finally:
        con.close()
    expected = HEADER_BYTES + int(blocks) * int(block_size)
    if size < expected:
        return f"it is cut short ({size} bytes; its header counts {blocks} blocks in use, {expected} bytes)"
    return None


def damaged(path: str | os.PathLike[str], what: str) -> CatalogDamaged:
    """The one-line error for a damaged catalog file."""
    return CatalogDamaged(f"{path}: the catalog is damaged: {what}. It was left as it is; restore it from a "
                          "backup, or move it aside and run again to start a new, empty catalog")


def check(path: str | os.PathLike[str]) -> None:
    """Raise `CatalogDamaged` when the existing catalog file at `path` is damaged; never writes."""
    what = problem(path)
    if what is not None:
        raise damaged(path, what)

"""Parquet shards: write atomically, read back only what was checksummed.

A shard is one zstd Parquet file of sample rows (`row_schema.SAMPLE_SCHEMA`, with the `datasets`
features in its metadata). Paths are local (`./x.parquet`, `/abs/x.parquet`) or URIs that
`pyarrow.fs.FileSystem.from_uri` understands (`s3://bucket/key.parquet`, `file:///...`); a caller may
also pass a pyarrow filesystem, or an fsspec one, explicitly.

Atomicity: on a local disk the file is written under a temporary name in the same directory,
fsynced, made read-only, then linked to its name, so a reader never sees half a shard. A shard is
written once: a write whose target already exists is refused (`ShardExists`), so a committed or
finalized file is never replaced. Object stores have no rename; there the object is uploaded in one
put and then read back and checksummed.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dataflux.storage.row_schema import (
    NULLABLE_COLUMNS,
    SAMPLE_SCHEMA,
    row_content_sha256,
    sample_schema_with_metadata,
)

ROW_GROUP_SIZE = 256  # rows carry audio bytes: small row groups keep readers' memory bounded
COMPRESSION = "zstd"
_CHUNK = 1 << 20


class ShardError(Exception):
    """A shard could not be written or read as the row contract requires."""


class RowSchemaError(ShardError, ValueError):
    """A row does not fit `SAMPLE_SCHEMA`; the message names the row's sample_id and the field."""

    def __init__(self, sample_id: str, field: str, problem: str):
        self.sample_id = sample_id
        self.field = field
        self.problem = problem
        super().__init__(
            f"row sample_id={sample_id!r}, field {field!r}: {problem}. "
            f"Fix the row builder so the row follows the row contract (dataflux/storage/row_schema.py)."
        )


class ChecksumMismatch(ShardError):
    """A shard's bytes do not hash to the sha256 recorded for it."""

    def __init__(self, path: str, expected: str | None, actual: str | None, hint: str = ""):
        self.path = path
        self.expected = expected
        self.actual = actual
        msg = f"{path}: sha256 is {actual}, expected {expected}"
        super().__init__(msg + (f". {hint}" if hint else ". The shard changed after it was written; "
                                "rebuild the partition or restore the file."))


class ShardMissing(ChecksumMismatch, FileNotFoundError):
    """A shard recorded in the catalog is gone."""

    def __init__(self, path: str, expected: str | None):
        ShardError.__init__(self, f"{path}: shard file is missing (expected sha256 {expected}). "
                                  "Restore the file or rebuild the partition.")
        self.path = path
        self.expected = expected
        self.actual = None


@dataclass(frozen=True)
class ShardInfo:
    """What the catalog records about one written shard."""

    path: str  # as given by the caller (local path made absolute, or the URI)
    rows: int
    bytes: int
    sha256: str


# --- filesystems -------------------------------------------------------------------------------


def _as_pyarrow_fs(filesystem: Any) -> pafs.FileSystem:
    if isinstance(filesystem, pafs.FileSystem):
        return filesystem
    # An fsspec filesystem (s3fs, gcsfs, memory, ...): wrap it so one code path serves both.
    return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))


def resolve_path(path: str, filesystem: Any = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI, or for a path on a given filesystem."""
    path = os.fspath(path)
    if filesystem is not None:
        return _as_pyarrow_fs(filesystem), path
    if "://" in path:
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def _display_path(path: str, filesystem: Any) -> str:
    if filesystem is None and "://" not in path:
        return os.path.abspath(path)
    return path


def shard_path(root: str | os.PathLike[str], version_id: str, partition_key: str, tag: str | None = None) -> str:
    """`<root>/<version_id>/<partition_key>[.<tag>].parquet`; `root` may be a local directory or a URI.

    A run passes a `tag` no other run can produce (its run id and a random token, `unique_tag`), so two
    runs, or two attempts of one partition, never write the same file."""
    root = os.fspath(root)
    name = f"{partition_key}.{tag}.parquet" if tag else f"{partition_key}.parquet"
    if "://" in root:
        return f"{root.rstrip('/')}/{version_id}/{name}"
    return os.path.join(os.path.abspath(root), version_id, name)


def unique_tag(run_id: str) -> str:
    """A file-name tag for one shard write of run `run_id`: the run id and a random token."""
    return f"{run_id}.{uuid.uuid4().hex[:8]}"


# --- rows -> table ------------------------------------------------------------------------------


def _check_row(row: dict[str, Any], index: int) -> str:
    sid = row.get("sample_id")
    label = str(sid) if sid is not None else f"<row {index} has no sample_id>"
    unknown = sorted(set(row) - set(SAMPLE_SCHEMA.names))
    if unknown:
        raise RowSchemaError(label, unknown[0], f"not a column of the row contract (unknown: {unknown})")
    for f in SAMPLE_SCHEMA:
        if f.name not in row:
            if f.name in NULLABLE_COLUMNS:
                continue
            raise RowSchemaError(label, f.name, "missing")
        if row[f.name] is None and f.name not in NULLABLE_COLUMNS:
            raise RowSchemaError(label, f.name, "is None but the column is required")
        extra = _unknown_struct_key(row[f.name], f.type, f.name)
        if extra is not None:
            raise RowSchemaError(label, f.name, f"{extra} is not part of the row contract (it would be dropped)")
    return label


def _unknown_struct_key(value: Any, t: pa.DataType, where: str) -> str | None:
    """The first dict key inside `value` that the struct type `t` does not declare, as a path."""
    if value is None:
        return None
    if pa.types.is_struct(t) and isinstance(value, dict):
        names = {t.field(i).name for i in range(t.num_fields)}
        for k in value:
            if k not in names:
                return f"{where}.{k}"
        for i in range(t.num_fields):
            found = _unknown_struct_key(value.get(t.field(i).name), t.field(i).type, f"{where}.{t.field(i).name}")
            if found:
                return found
    elif pa.types.is_list(t) and isinstance(value, (list, tuple)) and pa.types.is_struct(t.value_type):
        for i, v in enumerate(value):
            found = _unknown_struct_key(v, t.value_type, f"{where}[{i}]")
            if found:
                return found
    return None


def _locate_bad_field(row: dict[str, Any], label: str) -> RowSchemaError | None:
    for f in SAMPLE_SCHEMA:
        try:
            pa.array([row.get(f.name)], type=f.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
            return RowSchemaError(label, f.name, f"does not convert to {f.type}: {e}")
    return None


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts following the row contract) -> an Arrow table with `SAMPLE_SCHEMA` + HF metadata.

    `row_sha256` is filled in when a row leaves it empty and checked when it is given.
    Raises `RowSchemaError` naming the first offending row (by sample_id) and field.
    """
    prepared = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        label = _check_row(row, i)
        if label in seen:
            raise RowSchemaError(label, "sample_id", f"appears twice in this shard (rows {seen[label]} and {i})")
        seen[label] = i
        try:
            content = row_content_sha256(row)
        except (TypeError, ValueError) as e:
            raise (_locate_bad_field(row, label) or RowSchemaError(label, "?", str(e))) from e
        given = row.get("row_sha256")
        if given and given != content:
            raise RowSchemaError(label, "row_sha256",
                                 f"is {given} but the row's content hashes to {content}; "
                                 "compute it with dataflux.storage.row_schema.row_content_sha256")
        prepared.append({**row, "row_sha256": content})
    schema = sample_schema_with_metadata()
    try:
        return pa.Table.from_pylist(prepared, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
        for i, row in enumerate(prepared):
            bad = _locate_bad_field(row, str(row.get("sample_id", f"<row {i}>")))
            if bad is not None:
                raise bad from e
        raise ShardError(f"rows do not convert to the sample schema: {e}") from e


# --- write / read -------------------------------------------------------------------------------


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(
        table, sink, compression=COMPRESSION, row_group_size=ROW_GROUP_SIZE,
        write_statistics=True, use_dictionary=["source", "license", "split", "l0", "l1", "l2", "l3", "winner"],
    )
    return sink.getvalue().to_pybytes()


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # platforms without directory fds
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ShardExists(ShardError, FileExistsError):
    """A shard file is already at the target path: shards are written once and never rewritten."""

    def __init__(self, path: str):
        super().__init__(f"{path}: a shard already exists at this path and shards are never rewritten; "
                         "write under a new name (shard_path(..., tag=unique_tag(run_id)))")


def _write_local_atomic(path: str, data: bytes) -> None:
    """Write to a temporary name, fsync, make it read-only, then link it into place; the link fails
    when `path` exists, so an existing shard is never replaced."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    if os.path.lexists(path):
        raise ShardExists(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o444)
        _link_no_replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    _fsync_dir(directory)


def _link_no_replace(tmp: str, path: str) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise ShardExists(path) from None
    except OSError:  # a filesystem without hard links: check, then rename
        if os.path.lexists(path):
            raise ShardExists(path) from None
        os.rename(tmp, path)


def write_shard(rows: list[dict[str, Any]], path: str, *, filesystem: Any = None) -> ShardInfo:
    """Write `rows` as one zstd Parquet shard at `path`; return its size and sha256.

    `path`: local path or URI (`s3://bucket/k.parquet`); `filesystem`: optional pyarrow (or fsspec)
    filesystem, in which case `path` is a path inside it. An empty `rows` list is refused: a
    partition with no rows is committed without a shard.
    """
    if not rows:
        raise ShardError(f"{path}: no rows to write; commit the partition with shard=None instead")
    table = rows_to_table(rows)
    data = _parquet_bytes(table)
    digest = hashlib.sha256(data).hexdigest()
    fs, inner = resolve_path(path, filesystem)
    shown = _display_path(path, filesystem)
    if _is_local(fs):
        _write_local_atomic(inner, data)
    else:
        if fs.get_file_info(inner).type != pafs.FileType.NotFound:
            raise ShardExists(shown)
        parent = inner.rsplit("/", 1)[0] if "/" in inner else ""
        if parent:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(inner) as out:
            out.write(data)
        actual = file_sha256(inner, filesystem=fs)
        if actual != digest:
            raise ChecksumMismatch(shown, digest, actual,
                                   hint="The object store returned different bytes than were uploaded; retry the write.")
    return ShardInfo(path=shown, rows=table.num_rows, bytes=len(data), sha256=digest)


def file_sha256(path: str, filesystem: Any = None) -> str:
    """sha256 (hex) of a file's bytes, streamed. Raises FileNotFoundError when it does not exist."""
    fs, inner = resolve_path(path, filesystem)
    h = hashlib.sha256()
    with fs.open_input_stream(inner) as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def file_exists(path: str, filesystem: Any = None) -> bool:
    fs, inner = resolve_path(path, filesystem)
    return fs.get_file_info(inner).type == pafs.FileType.File


def read_shard(
    path: str, expected_sha256: str | None = None, *, filesystem: Any = None,
    columns: list[str] | None = None, optional: frozenset[str] | set[str] = frozenset(),
) -> pa.Table:
    """Read a shard; when `expected_sha256` is given, the table is parsed from exactly the bytes
    that were checked, and a mismatch raises `ChecksumMismatch(path, expected, actual)`.

    `optional`: columns of `columns` a shard written before they existed may lack; they come back
    as nulls of the row contract's type (the file is still read once)."""
    fs, inner = resolve_path(path, filesystem)
    shown = _display_path(path, filesystem)
    try:
        with fs.open_input_stream(inner) as f:
            data = f.read()
    except FileNotFoundError as e:
        raise ShardMissing(shown, expected_sha256) from e
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise ChecksumMismatch(shown, expected_sha256, actual)
    if columns is None or not optional:
        return pq.read_table(pa.BufferReader(data), columns=columns)
    names = set(pq.read_schema(pa.BufferReader(data)).names)
    table = pq.read_table(pa.BufferReader(data), columns=[c for c in columns if c in names or c not in optional])
    for c in columns:
        if c not in names and c in optional:
            field = SAMPLE_SCHEMA.field(c)
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(columns)

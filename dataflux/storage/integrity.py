"""Checking shards against their recorded sha256, fast enough to do on every read.

Hashing every shard on every `stats` or `sql` would make reads of a large version slow, so a
successful check is remembered in a side file next to the catalog (`<catalog>.verified.json`),
keyed by the file's path and what the filesystem says about it: size, mtime_ns, ctime_ns and inode.
Rewriting a file changes its ctime (which, unlike mtime, a user cannot set back), so a tampered
shard is hashed again and caught; an unchanged one costs one `stat`. Files on object stores are
hashed on every check.

Shards are written once, read-only (`make_read_only`), and never rewritten: a version's files can
only change by someone making them writable again.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any, Iterable

from dataflux.storage.shards import ChecksumMismatch, ShardMissing, file_exists, file_sha256


def cache_path(catalog_path: str | os.PathLike[str]) -> Path:
    return Path(os.fspath(catalog_path) + ".verified.json")


def _fingerprint(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class VerifiedCache:
    """Shards known to match their sha256: path -> [size, mtime_ns, ctime_ns, inode, sha256]."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        self.changed = False
        if path is not None:
            try:
                loaded = json.loads(path.read_text())
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}

    def knows(self, path: str, sha256: str) -> bool:
        entry = self.entries.get(path)
        fp = _fingerprint(path)
        return entry is not None and fp is not None and entry == [*fp, sha256]

    def remember(self, path: str, sha256: str) -> None:
        fp = _fingerprint(path)
        if fp is not None:
            self.entries[path] = [*fp, sha256]
            self.changed = True

    def forget(self, path: str) -> None:
        if self.entries.pop(path, None) is not None:
            self.changed = True

    def save(self) -> None:
        """Write the cache atomically; a directory readers cannot write to just means no cache."""
        if self.path is None or not self.changed:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_text(json.dumps(self.entries, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass


def check_shards(shards: Iterable[dict[str, Any]], cache: VerifiedCache | None = None) -> list[dict[str, Any]]:
    """Problems of `shards` ({partition_key, path, sha256}; path None: no rows):
    [{partition_key, path, problem: missing | sha256_mismatch, expected, actual}]. Empty: all match.
    With a `cache`, a file unchanged since it last matched is not hashed again."""
    problems = []
    for s in shards:
        path, expected = s["path"], s["sha256"]
        if path is None:
            continue
        local = "://" not in path
        if local and cache is not None and cache.knows(path, expected):
            continue
        if not file_exists(path):
            problems.append({"partition_key": s["partition_key"], "path": path, "problem": "missing",
                             "expected": expected, "actual": None})
            continue
        actual = file_sha256(path)
        if actual != expected:
            problems.append({"partition_key": s["partition_key"], "path": path, "problem": "sha256_mismatch",
                             "expected": expected, "actual": actual})
            if cache is not None:
                cache.forget(path)
        elif local and cache is not None:
            cache.remember(path, expected)
    if cache is not None:
        cache.save()
    return problems


def raise_first(problems: list[dict[str, Any]], vid: str) -> None:
    """Raise `ShardMissing` / `ChecksumMismatch` for the first problem, in one line naming the shard."""
    if not problems:
        return
    first = problems[0]
    more = f" (and {len(problems) - 1} more problem(s); `dataflux verify {vid}` lists them)" if len(problems) > 1 else ""
    hint = (f"version {vid} is damaged{more}: restore the file or rebuild the version; "
            "nothing was read from it")
    if first["problem"] == "missing":
        err = ShardMissing(first["path"], first["expected"])
        err.args = (f"{err} {hint}",)
        raise err
    raise ChecksumMismatch(first["path"], first["expected"], first["actual"], hint=hint)


def make_read_only(paths: Iterable[str | None]) -> None:
    """chmod a-w on local files (a committed or finalized shard is never written again)."""
    for path in paths:
        if path is None or "://" in path:
            continue
        try:
            mode = os.stat(path).st_mode
            os.chmod(path, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        except FileNotFoundError:
            continue

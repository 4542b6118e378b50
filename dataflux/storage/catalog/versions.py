"""Versions and their shards: drafts built one committed partition at a time, then finalized.

A version is built as a *draft*, one committed partition at a time: `commit_partition` records the
partition's shard, rejects and ledger items in one transaction, so a crash leaves a partition either
wholly recorded or not at all, and a resumed run (which skips `committed_partitions`) cannot record it
twice. `finalize` re-hashes every shard, fixes the version's `manifest_sha256` and `content_sha256`, and
makes the version immutable; `shard_paths` hands out a finalized version's files only after checking
them again.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import duckdb

from dataflux.storage import integrity
from dataflux.storage.catalog.connection import CatalogFile
from dataflux.storage.catalog.errors import (
    CatalogError,
    PartitionAlreadyCommitted,
    VersionImmutable,
    VersionNotFinalized,
    VersionNotFound,
)
from dataflux.storage.catalog.ledger import item_row, reject_row
from dataflux.storage.catalog.schema import VERSION_COLUMNS
from dataflux.storage.catalog.values import iso, json_text, json_value, now
from dataflux.storage.shards import ShardInfo, read_shard


def manifest_sha256(shards: list[tuple[str, str | None, int]]) -> str:
    """sha256 over the sorted `partition_key<TAB>sha256<TAB>rows` lines of a version's partitions."""
    lines = sorted(f"{key}\t{sha or ''}\t{int(rows)}" for key, sha, rows in shards)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def content_sha256(pairs: list[tuple[str, str]]) -> str:
    """sha256 over the sorted `sample_id<TAB>row_sha256` lines: independent of shards and their order."""
    lines = sorted(f"{sid}\t{rsha}" for sid, rsha in pairs)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class VersionStore(CatalogFile):
    """The versions, shards, rejects and ledger items of a catalog file (see the module docstring)."""

    def create_version(self, name: str | None = None, parent: str | None = None, config_sha256: str = "",
                       notes: dict[str, Any] | None = None) -> str:
        """Create a draft version; ids are `v0001-<name>`, numbered monotonically."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or "").strip("-.")
        with self.transaction() as con:
            if parent is not None:
                self._require_version(con, parent)
            seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM versions").fetchall()[0][0]
            vid = f"v{seq:04d}" + (f"-{slug}" if slug else "")
            con.execute(
                "INSERT INTO versions (version_id, seq, name, status, parent, config_sha256, created_at, notes) "
                "VALUES (?, ?, ?, 'draft', ?, ?, ?, ?)",
                [vid, seq, name, parent, config_sha256, now(), json_text(notes, "notes")],
            )
        return vid

    def _require_version(self, con: duckdb.DuckDBPyConnection, vid: str) -> dict[str, Any]:
        rows = con.execute(f"SELECT {', '.join(VERSION_COLUMNS)} FROM versions WHERE version_id = ?",
                           [vid]).fetchall()
        if not rows:
            known = [r[0] for r in con.execute("SELECT version_id FROM versions ORDER BY seq").fetchall()]
            raise VersionNotFound(f"unknown version {vid!r} in catalog {self.path}; known versions: "
                                  f"{known if known else 'none (create one first)'}")
        record = dict(zip(VERSION_COLUMNS, rows[0]))
        record["notes"] = json_value(record["notes"])
        for k in ("created_at", "finalized_at"):
            record[k] = iso(record[k])
        return record

    def get_version(self, vid: str) -> dict[str, Any]:
        with self.connect() as con:
            return self._require_version(con, vid)

    def list_versions(self) -> list[dict[str, Any]]:
        """Every version, oldest first, with n_partitions, shard_rows, shard_bytes, n_rejects, n_items."""
        with self.connect() as con:
            cur = con.execute(
                "SELECT v.*, x.n_partitions, x.shard_rows, x.shard_bytes, x.n_rejects, x.n_items "
                "FROM versions v JOIN v_versions x USING (version_id) ORDER BY v.seq")
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        out = []
        for r in rows:
            rec = dict(zip(cols, r))
            rec.pop("seq", None)
            rec["notes"] = json_value(rec["notes"])
            for k in ("created_at", "finalized_at"):
                rec[k] = iso(rec[k])
            out.append(rec)
        return out

    def committed_partitions(self, vid: str) -> set[str]:
        with self.connect() as con:
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
        reject_rows = [reject_row(vid, partition_key, run_id, r) for r in rejects]
        item_rows = [item_row(vid, partition_key, it) for it in items]
        with self.transaction() as con:
            version = self._require_version(con, vid)
            if version["status"] != "draft":
                raise VersionImmutable(f"version {vid} is finalized and immutable; partition {partition_key!r} "
                                       "cannot be added. Create a new version (parent=" + repr(vid) + ") instead.")
            done = con.execute("SELECT run_id, created_at FROM shards WHERE version_id = ? AND partition_key = ?",
                               [vid, partition_key]).fetchall()
            if done:
                raise PartitionAlreadyCommitted(
                    f"partition {partition_key!r} of version {vid} was already committed (run {done[0][0]}, "
                    f"{iso(done[0][1])}); skip it when resuming (see Catalog.committed_partitions)")
            con.execute(
                "INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [vid, partition_key, self._stored_path(shard.path) if shard else None, shard.rows if shard else 0,
                 shard.bytes if shard else 0, shard.sha256 if shard else None, run_id, now()],
            )
            if reject_rows:
                con.executemany("INSERT INTO rejects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", reject_rows)
            if item_rows:
                con.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", item_rows)

    def shards(self, vid: str) -> list[dict[str, Any]]:
        """The version's committed partitions, by partition_key (path None: no rows; local paths absolute)."""
        with self.connect() as con:
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
        with self.transaction() as con:
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
                        [now(), manifest, content, len(pairs), vid])
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

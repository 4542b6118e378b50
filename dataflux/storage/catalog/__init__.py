"""The DuckDB catalog: versions, their shards, runs, rejects, the item ledger, trainings; one file.

`Catalog` is the one entry, composed of one part per concern, each in its own module:
- `connection`: the file and its connections (short ones that take turns, and snapshots for readers);
  `health` judges a damaged file read-only and says so in one line;
- `versions`: versions and their shards, partition commits, finalize and verify;
- `ledger`: runs of the pipeline and trainings, and the rows of rejects and ledger items;
- `stats`: what a version holds, in figures;
- `query`: a user's SQL, sandboxed and streamed, on a private copy of the catalog.
The tables and views are described once, in `schema`. The model-call cache keeps its table in the
same file but is an llm concern: `dataflux.llm.catalog_cache`.
"""

from __future__ import annotations

from dataflux.home import default_catalog_path, default_shard_root
from dataflux.storage.catalog.errors import (
    CatalogDamaged,
    CatalogError,
    CatalogReadOnly,
    PartitionAlreadyCommitted,
    QueryRefused,
    VersionImmutable,
    VersionNotFinalized,
    VersionNotFound,
)
from dataflux.storage.catalog.ledger import RunLedger
from dataflux.storage.catalog.query import DEFAULT_ROW_LIMIT, CatalogQueries, StreamedResult
from dataflux.storage.catalog.schema import SCHEMA_VERSION
from dataflux.storage.catalog.stats import CatalogStats
from dataflux.storage.catalog.versions import VersionStore, content_sha256, manifest_sha256
from dataflux.storage.shards import ShardInfo, read_shard, shard_path


class Catalog(VersionStore, RunLedger, CatalogStats, CatalogQueries):
    """The catalog in one DuckDB file (`path`, default `<dataflux home>/catalog.duckdb`).

    `read_only=True` opens every connection read-only (several readers may share the file while no
    writer holds it) and refuses all writes. An existing file is checked read-only before it is
    first opened for writing: a damaged one raises `CatalogDamaged` and is left as it is.
    """


__all__ = [
    "DEFAULT_ROW_LIMIT", "SCHEMA_VERSION", "Catalog", "CatalogDamaged", "CatalogError", "CatalogReadOnly",
    "PartitionAlreadyCommitted", "QueryRefused", "ShardInfo", "StreamedResult", "VersionImmutable",
    "VersionNotFinalized", "VersionNotFound", "content_sha256", "default_catalog_path", "default_shard_root",
    "manifest_sha256", "read_shard", "shard_path",
]

"""The catalog's tables and views, created on first open: the one description of the file's schema.

The `calls` table belongs to the model-call cache (`dataflux.llm.catalog_cache`), which keeps its
rows in the catalog's file; it is created here with the rest so that a fresh catalog always has
every table and view that `dataflux sql` may name.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

DDL = [
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

VERSION_COLUMNS = ("version_id", "name", "status", "parent", "config_sha256", "created_at", "finalized_at",
                   "manifest_sha256", "content_sha256", "n_rows", "notes")

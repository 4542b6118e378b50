"""Everything a report says about one version, gathered once from the catalog and the shards.

Figures come from two places and nowhere else:
  * `Catalog.stats(vid)`: the official counts (rows, categories, answer positions, cost per step,
    rejects, planted errors caught), the same numbers `dataflux stats` prints;
  * the version's rows (every column but the audio bytes), read through pyarrow with their
    checksums verified, for what `stats` does not break down: per-clip durations, verdicts,
    rounds, corrections, sources and licences, splits.

Reading rows through pyarrow rather than DuckDB's `read_parquet` keeps `s3://` versions readable
without DuckDB's httpfs extension; DuckDB then queries the Arrow table in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from dataflux.storage.row_schema import SAMPLE_SCHEMA
from dataflux.storage.shards import read_shard

ROW_COLUMNS = [
    "sample_id", "source", "source_id", "license", "duration_s", "audio_sha256", "split",
    "l0", "l1", "l2", "l3", "answer", "answer_index", "verdict", "rounds", "corrected_from_measurement",
    "calls", "tokens_in", "tokens_out", "cost_usd", "row_sha256", "code_version", "task",
]
# Columns a shard written before they existed lacks: read as nulls (a null `task` is a question).
OPTIONAL_COLUMNS = frozenset({"task"})


@dataclass
class VersionFacts:
    """What one version holds. `rows` is an Arrow table of `ROW_COLUMNS` (one row per sample)."""

    version: dict[str, Any]
    stats: dict[str, Any] | None
    stats_error: str | None
    rows: pa.Table
    shards: list[dict[str, Any]]
    rejects: list[dict[str, Any]]  # {stage, reason, n}
    sources: list[dict[str, Any]]  # {source, license, rows, clips, items}
    clip_durations: list[float]  # one per distinct clip, seconds
    per_category: dict[str, int]  # "L0 > L1 > L2 > L3" -> question rows (task mcq)
    answer_position: dict[str, int]  # "A".."D" -> question rows
    verdicts: dict[str, int]  # "KEEP_USING_WINNER / STRONG_MATCH" -> rows
    rounds: dict[int, int]  # regeneration rounds -> rows
    corrected: int  # rows whose answer was corrected from a measurement
    splits: dict[str, int]
    per_step: dict[str, dict[str, Any]]  # step -> {n_calls, tokens_in, tokens_out, cost_usd, cached}
    models: list[dict[str, Any]]  # {step, backend, model, n_clips}
    planted: dict[str, int] = field(default_factory=dict)  # planted_errors, planted_caught, ...
    runs: list[dict[str, Any]] = field(default_factory=list)
    per_task: dict[str, int] = field(default_factory=dict)  # mcq | asr | caption | open_qa -> rows

    @property
    def version_id(self) -> str:
        return self.version["version_id"]

    @property
    def n_rows(self) -> int:
        return self.rows.num_rows

    @property
    def n_clips(self) -> int:
        return len(self.clip_durations)

    @property
    def total_cost_usd(self) -> float:
        return float(sum(s.get("cost_usd") or 0.0 for s in self.per_step.values()))

    @property
    def n_rejects(self) -> int:
        return int(sum(r["n"] for r in self.rejects))


def read_version_rows(catalog, vid: str, columns: list[str] | None = None) -> pa.Table:
    """The version's rows (drafts too), each shard checked against its recorded sha256.

    Returns an Arrow table with `columns` (default `ROW_COLUMNS`), shards in partition order.
    A version with no rows yields an empty table with the same columns.
    """
    columns = columns or ROW_COLUMNS
    tables = [read_shard(s["path"], s["sha256"], columns=columns, optional=OPTIONAL_COLUMNS)
              for s in catalog.shards(vid) if s["path"] is not None]
    if not tables:
        return pa.schema([SAMPLE_SCHEMA.field(c) for c in columns]).empty_table()
    return pa.concat_tables(tables, promote_options="default")


def catalog_rows(catalog, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    """Rows of one read-only statement on the catalog's own tables, as dicts.

    Goes through the catalog's connection handling (its lock and retry on a busy file) but not
    through `Catalog.query`, which also builds a view over every version's shards first.
    """
    with catalog._connect() as con:
        cur = con.execute(sql, params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def load_version_facts(catalog, vid: str) -> VersionFacts:
    """Gather the facts of version `vid` from `catalog` (a `dataflux.storage.catalog.Catalog`)."""
    version = catalog.get_version(vid)
    shards = catalog.shards(vid)
    rows = read_version_rows(catalog, vid)
    try:
        stats, stats_error = catalog.stats(vid), None
    except Exception as exc:  # e.g. shards on an object store DuckDB cannot reach without httpfs
        stats, stats_error = None, f"{type(exc).__name__}: {exc}"

    con = duckdb.connect()
    try:
        con.register("s", rows)

        def many(sql: str) -> list[tuple]:
            return con.execute(sql).fetchall()

        clip_durations = [float(d) for (d,) in many(
            "SELECT any_value(duration_s) FROM s GROUP BY audio_sha256 ORDER BY 1")]
        # transcripts, captions and open answers are tasks, not question categories
        per_category = {" > ".join(k): n for *k, n in many(
            "SELECT l0, l1, l2, l3, count(*) FROM s WHERE coalesce(task, 'mcq') = 'mcq' "
            "GROUP BY ALL ORDER BY 5 DESC, 1, 2, 3, 4")}
        per_task = dict(many("SELECT coalesce(task, 'mcq'), count(*) FROM s GROUP BY 1 ORDER BY 2 DESC, 1"))
        positions = dict(many("SELECT answer_index, count(*) FROM s WHERE coalesce(task, 'mcq') = 'mcq' GROUP BY 1"))
        answer_position = {"ABCD"[i]: int(positions.get(i, 0)) for i in range(4)}
        verdicts = {f"{a} / {c}": n for a, c, n in many(
            "SELECT verdict.final_action, verdict.consistency_with_caption, count(*) FROM s "
            "GROUP BY ALL ORDER BY 3 DESC, 1, 2")}
        rounds = {int(r): n for r, n in many("SELECT rounds, count(*) FROM s GROUP BY 1 ORDER BY 1")}
        corrected = int(many("SELECT count(*) FROM s WHERE corrected_from_measurement")[0][0])
        splits = dict(many("SELECT split, count(*) FROM s GROUP BY 1 ORDER BY 1"))
        models = [{"step": st, "backend": b, "model": m, "n_clips": n} for st, b, m, n in many(
            "SELECT c.step, c.backend, c.model, count(DISTINCT audio_sha256) FROM "
            "(SELECT audio_sha256, unnest(calls) AS c FROM s) GROUP BY ALL ORDER BY 1, 3")]
        row_sources = {src: (lic, n, clips) for src, lic, n, clips in many(
            "SELECT source, string_agg(DISTINCT license, '; ' ORDER BY license), count(*), "
            "count(DISTINCT audio_sha256) FROM s GROUP BY 1")}
    finally:
        con.close()

    items = {r["source"]: r["n"] for r in catalog_rows(
        catalog, "SELECT source, count(*) AS n FROM items WHERE version_id = ? GROUP BY 1", [vid])}
    sources = []
    for name in sorted(set(row_sources) | set(items)):
        lic, n, clips = row_sources.get(name, ("", 0, 0))
        sources.append({"source": name, "license": lic, "rows": int(n), "clips": int(clips),
                        "items": int(items.get(name, 0))})
    rejects = catalog_rows(catalog, "SELECT stage, reason, count(*) AS n FROM rejects WHERE version_id = ? "
                                    "GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2", [vid])
    runs = catalog_rows(catalog, "SELECT run_id, flow_run_id, status, started_at, ended_at, counts FROM runs "
                                 "WHERE version_id = ? ORDER BY started_at", [vid])
    for r in runs:
        if isinstance(r.get("counts"), str):
            r["counts"] = json.loads(r["counts"])

    per_step = dict((stats or {}).get("per_step") or {})
    planted = {k: int(stats[k]) for k in ("planted_errors", "planted_caught", "planted_caught_discarded",
                                           "planted_caught_corrected", "clean_items", "clean_rejected")
               if stats and stats.get(k) is not None}
    return VersionFacts(
        version=version, stats=stats, stats_error=stats_error, rows=rows, shards=shards, rejects=rejects,
        sources=sources, clip_durations=clip_durations, per_category=per_category,
        answer_position=answer_position, verdicts=verdicts, rounds=rounds, corrected=corrected, splits=splits,
        per_step=per_step, models=models, planted=planted, runs=runs, per_task=per_task,
    )

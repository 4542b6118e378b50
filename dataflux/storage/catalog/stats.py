"""What a version holds, in figures: rows, clips, categories, calls and their cost, rejects, and how
well the loop caught planted errors. Computed by DuckDB over the version's shards and the catalog's
ledger tables; nothing is stored.
"""

from __future__ import annotations

from typing import Any

import duckdb

from dataflux.fields import LABEL_LEAVES
from dataflux.storage.catalog.connection import CatalogFile
from dataflux.storage.catalog.errors import CatalogError
from dataflux.storage.catalog.values import read_parquet_sql


class _Reader:
    """`one`/`many` rows of a statement on one open connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def one(self, sql: str, params: list[Any] | None = None) -> tuple:
        return self.con.execute(sql, params or []).fetchall()[0]

    def many(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        return self.con.execute(sql, params or []).fetchall()


class CatalogStats(CatalogFile):
    """`stats` and the samples relation of a version (needs the version store's `get_version` and
    `shard_paths`, which the catalog is composed with)."""

    def samples_relation_sql(self, vid: str, *, require_finalized: bool = False) -> str:
        """`read_parquet([...])` over the version's shards, to use in DuckDB SQL as a table."""
        finalized = self.get_version(vid)["status"] == "finalized"
        paths = self.shard_paths(vid, require_finalized=require_finalized, verify=finalized)
        if not paths:
            raise CatalogError(f"version {vid} has no shards with rows yet")
        return read_parquet_sql(paths)

    def stats(self, vid: str) -> dict[str, Any]:
        """Figures for a version, computed by DuckDB over its shards and catalog tables (drafts too).

        Keys: version_id, status, verified (False for an unverified twin), rows, clips, rows_per_task
        (mcq/asr/caption/open_qa -> rows; rows without a task are mcq), samples_per_category (l3 ->
        question rows), questions_per_clip (mean, min, max, histogram: questions -> clips),
        categories_per_source (source -> l3 -> rows), duration_s (min_s,
        max_s, mean_s, median_s over rows; total_clip_s over distinct clips), rejects_by_reason
        ("stage/reason" -> n), items_by_status, answer_position (answer_index -> question rows), per_step
        (step -> n_calls, tokens_in, tokens_out, cost_usd, cached; a clip's calls counted once though
        every row of the clip repeats them), tokens_in, tokens_out, cost_usd (totals of per_step),
        cost_usd_rows (sum of the rows' own cost_usd, their shares of the calls), and
        when the ledger carries planted errors: planted_errors, planted_caught (of which
        planted_caught_discarded: no row asks about the leaf; planted_caught_corrected: rows ask and
        answer otherwise), clean_items, clean_rejected (clean items of a planted source with no row);
        when our own trained model answered (rows' model_correct): model_accuracy (n, accuracy,
        by_category: l3 -> {n, accuracy}); text_answerable (`_text_answerable`: question rows that
        can be answered without their audio, overall and per leaf).
        """
        status = self.get_version(vid)["status"]
        # A finalized version's files are checked (cached) before anything is read; a draft's are not.
        paths = self.shard_paths(vid, require_finalized=False, verify=status == "finalized")
        rel = read_parquet_sql(paths) if paths else _EMPTY_SAMPLES
        info = self.get_version(vid)
        out: dict[str, Any] = {"version_id": vid, "status": status, "shards_verified": status == "finalized"}
        out["verified"] = (info.get("notes") or {}).get("verified", True) is not False
        # the version's ledger rows are copied, so reading its shards never keeps a writer waiting
        with self.excerpt({"rejects": "version_id = ?", "items": "version_id = ?"}, [vid]) as con:
            q = _Reader(con)
            _samples_views(con, rel)
            _shape(q, out)
            _calls_and_ledger(q, vid, out)
            _model_and_planted(q, vid, out)
            out["text_answerable"] = _text_answerable(q)
            try:
                shares: dict[str, dict[str, int]] = {}
                for leaf, level, n in q.many("SELECT l3, coalesce(verification, 'unrecorded'), count(*) FROM s "
                                             "GROUP BY 1, 2 ORDER BY 1, 2"):
                    shares.setdefault(leaf, {})[level] = n
                out["verification_by_leaf"] = shares
                out["metadata_only_reasons"] = _metadata_only_reasons(q)
            except duckdb.BinderException:  # shards written before rows recorded their verification
                out["verification_by_leaf"] = {}
                out["metadata_only_reasons"] = {}
        return out


def _metadata_only_reasons(q: _Reader) -> dict[str, dict[str, int]]:
    """Why class-label rows stayed metadata-only: l3 -> the label check's reason -> rows (a class too
    rare to judge, one class alone); rows of a source whose labels were not checked are "not checked"."""
    out: dict[str, dict[str, int]] = {}
    for leaf, reason, n in q.many(
            "SELECT l3, coalesce(json_extract_string(facts, '$.raw.' || l3 || '_label_check'), 'not checked'), "
            "count(*) FROM s WHERE verification = 'metadata-only' AND l3 IN "
            f"({', '.join(repr(v) for v in LABEL_LEAVES.values())}) GROUP BY 1, 2 ORDER BY 1, 2"):
        out.setdefault(leaf, {})[reason] = int(n)
    return out


def _samples_views(con: duckdb.DuckDBPyConnection, rel: str) -> None:
    """`s`: the version's rows, with a `task` column even where older shards have none."""
    con.execute(f"CREATE TEMP VIEW s AS SELECT * FROM {rel}")
    if "task" not in [c[0] for c in con.execute("DESCRIBE s").fetchall()]:
        # shards written before the task column: every row is a question
        con.execute(f"CREATE OR REPLACE TEMP VIEW s AS SELECT *, NULL::VARCHAR AS task FROM {rel}")


def _shape(q: _Reader, out: dict[str, Any]) -> None:
    """Rows, clips, tasks, categories, durations, questions per clip, answer positions."""
    out["rows"], out["clips"], out["cost_usd_rows"] = q.one(
        "SELECT count(*), count(DISTINCT audio_sha256), coalesce(sum(cost_usd), 0) FROM s")
    out["rows_per_task"] = dict(q.many(
        "SELECT coalesce(task, 'mcq'), count(*) FROM s GROUP BY 1 ORDER BY 1"))
    q.con.execute("CREATE TEMP VIEW q AS SELECT * FROM s WHERE coalesce(task, 'mcq') = 'mcq'")
    out["samples_per_category"] = dict(q.many("SELECT l3, count(*) FROM q GROUP BY 1 ORDER BY 1"))
    d = q.one("SELECT min(duration_s), max(duration_s), avg(duration_s), median(duration_s) FROM s")
    total = q.one("SELECT coalesce(sum(d), 0) FROM (SELECT audio_sha256, any_value(duration_s) AS d "
                  "FROM s GROUP BY 1)")[0]
    out["duration_s"] = {"min_s": d[0], "max_s": d[1], "mean_s": d[2], "median_s": d[3], "total_clip_s": total}
    out["questions_per_clip"] = _questions_per_clip(q.many(
        "SELECT n, count(*) FROM (SELECT audio_sha256, count(*) AS n FROM q GROUP BY 1) GROUP BY 1 ORDER BY 1"))
    out["categories_per_source"] = {}
    for src, l3, n in q.many("SELECT source, l3, count(*) FROM q GROUP BY 1, 2 ORDER BY 1, 2"):
        out["categories_per_source"].setdefault(src, {})[l3] = n
    out["answer_position"] = {int(k): n for k, n in q.many(
        "SELECT answer_index, count(*) FROM q GROUP BY 1 ORDER BY 1")}


def _calls_and_ledger(q: _Reader, vid: str, out: dict[str, Any]) -> None:
    """Model calls per step and their totals; the version's rejects by reason and items by status."""
    out["per_step"] = {
        step: {"n_calls": n, "tokens_in": ti, "tokens_out": to, "cost_usd": c, "cached": cached}
        for step, n, ti, to, c, cached in q.many(_PER_STEP_SQL)
    }
    for key in ("tokens_in", "tokens_out", "cost_usd"):
        out[key] = sum(v[key] for v in out["per_step"].values())
    out["rejects_by_reason"] = {f"{st}/{r}": n for st, r, n in q.many(
        "SELECT stage, reason, count(*) FROM rejects WHERE version_id = ? GROUP BY 1, 2 "
        "ORDER BY 3 DESC, 1, 2", [vid])}
    out["items_by_status"] = dict(q.many(
        "SELECT status, count(*) FROM items WHERE version_id = ? GROUP BY 1 ORDER BY 1", [vid]))


def _model_and_planted(q: _Reader, vid: str, out: dict[str, Any]) -> None:
    """Our model's accuracy where it answered; planted errors and what became of them, where planted."""
    if "model_correct" in [d[0] for d in q.con.execute("SELECT * FROM s LIMIT 0").description]:
        model = _model_accuracy(q.many(
            "SELECT l3, count(*), count(*) FILTER (WHERE model_correct) FROM s "
            "WHERE model_correct IS NOT NULL GROUP BY 1 ORDER BY 1"))
        if model is not None:
            out["model_accuracy"] = model
    n_planted = q.one("SELECT count(*) FROM items WHERE version_id = ? AND planted IS NOT NULL "
                      "AND planted->>'leaf' IS NOT NULL", [vid])[0]
    if not n_planted:
        return
    (out["planted_errors"], out["planted_caught"], out["planted_caught_discarded"],
     out["planted_caught_corrected"], out["clean_items"], out["clean_rejected"]) = q.one(_PLANTED_SQL, [vid])
    out["planted_by_leaf"] = {
        leaf: {"planted": n, "caught": c} for leaf, n, c in q.many(_PLANTED_BY_LEAF_SQL, [vid])}
    for leaf, asked, lost in q.many(_CLEAN_BY_LEAF_SQL, [vid]):
        out["planted_by_leaf"].setdefault(leaf, {"planted": 0, "caught": 0}).update(
            {"clean_asked": asked, "clean_rejected": lost})


def _text_answerable(q: _Reader) -> dict[str, Any]:
    """Question rows answerable from their text alone (`audio_needed = false`, the audio-contribution
    filter): {asked, text_answerable, share, by_leaf: l3 -> {asked, text_answerable, share}}, where
    `asked` counts the question rows that were put to the text-only answerers (audio_needed not null).
    All zero for a version written before the column existed."""
    if "audio_needed" not in [d[0] for d in q.con.execute("SELECT * FROM q LIMIT 0").description]:
        per_leaf: list[tuple] = []
    else:
        per_leaf = q.many("SELECT l3, count(audio_needed), count(*) FILTER (WHERE NOT audio_needed) FROM q "
                          "GROUP BY 1 HAVING count(audio_needed) > 0 ORDER BY 1")

    def entry(asked: int, false: int) -> dict[str, Any]:
        return {"asked": int(asked), "text_answerable": int(false), "share": false / asked if asked else None}

    out = entry(sum(a for _, a, _ in per_leaf), sum(f for _, _, f in per_leaf))
    out["by_leaf"] = {leaf: entry(a, f) for leaf, a, f in per_leaf}
    return out


def _questions_per_clip(histogram: list[tuple[int, int]]) -> dict[str, Any]:
    """{mean, min, max, histogram: {questions: clips}} over the clips that have questions."""
    clips = sum(c for _, c in histogram)
    if not clips:
        return {"mean": 0.0, "min": 0, "max": 0, "histogram": {}}
    return {"mean": sum(n * c for n, c in histogram) / clips, "min": histogram[0][0], "max": histogram[-1][0],
            "histogram": {int(n): c for n, c in histogram}}




def _model_accuracy(per_category: list[tuple]) -> dict[str, Any] | None:
    """Our model's accuracy as an answerer (rows' `model_correct`): overall and per category; None
    when no row was put to it."""
    if not per_category:
        return None
    n = sum(int(t) for _, t, _ in per_category)
    right = sum(int(c) for _, _, c in per_category)
    return {"n": n, "accuracy": right / n,
            "by_category": {cat: {"n": int(t), "accuracy": int(c) / int(t)} for cat, t, c in per_category}}



# The columns `stats` needs, typed, for a version that has no shards yet.
_EMPTY_SAMPLES = (
    "(SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR AS source, NULL::VARCHAR AS source_id, "
    "NULL::VARCHAR AS audio_sha256, NULL::DOUBLE AS duration_s, NULL::VARCHAR AS l3, NULL::VARCHAR AS answer, "
    "NULL::INTEGER AS answer_index, NULL::VARCHAR AS caption_claims, NULL::DOUBLE AS cost_usd, "
    "NULL::STRUCT(step VARCHAR, backend VARCHAR, model VARCHAR, prompt_sha256 VARCHAR, params VARCHAR, "
    "seed BIGINT, tokens_in BIGINT, tokens_out BIGINT, cost_usd DOUBLE, cached BOOLEAN)[] AS calls WHERE false)"
)

# A clip's calls are repeated on each of its rows (the caption call serves every question about the
# clip), so calls are counted once per clip: distinct by clip and by everything the call records.
_PER_STEP_SQL = """
WITH c AS (
    SELECT DISTINCT audio_sha256, c.step, c.backend, c.model, c.prompt_sha256, c.params, c.seed,
           c.tokens_in, c.tokens_out, c.cost_usd, c.cached
    FROM (SELECT audio_sha256, unnest(calls) AS c FROM s)
)
SELECT step, count(*), coalesce(sum(tokens_in), 0), coalesce(sum(tokens_out), 0), coalesce(sum(cost_usd), 0),
       coalesce(sum(CASE WHEN cached THEN 1 ELSE 0 END), 0)
FROM c GROUP BY 1 ORDER BY 1
"""

# Per leaf: plants and how many no row asserts; clean items asked about the leaf (a row or a
# reject names it) and how many of them end with no row about it.
_PLANTED_BY_LEAF_SQL = """
WITH
planted AS (
    SELECT DISTINCT source, source_id, planted->>'leaf' AS leaf, planted->>'claimed' AS claimed
    FROM items WHERE version_id = $1 AND planted IS NOT NULL AND planted->>'leaf' IS NOT NULL
),
asserting AS (
    SELECT DISTINCT p.source, p.source_id, p.leaf FROM planted p
    JOIN s ON s.source = p.source AND s.source_id = p.source_id
    WHERE (s.l3 = p.leaf AND s.answer = p.claimed)
       OR (json_valid(s.caption_claims) AND json_extract_string(s.caption_claims, p.leaf) = p.claimed)
)
SELECT p.leaf, count(*), count(*) FILTER (WHERE a.source IS NULL)
FROM planted p LEFT JOIN asserting a ON a.source = p.source AND a.source_id = p.source_id AND a.leaf = p.leaf
GROUP BY 1 ORDER BY 1
"""
_CLEAN_BY_LEAF_SQL = """
WITH
clean AS (
    SELECT DISTINCT source, source_id FROM items
    WHERE version_id = $1 AND (planted IS NULL OR planted->>'leaf' IS NULL)
      AND source IN (SELECT source FROM items WHERE version_id = $1 AND planted->>'leaf' IS NOT NULL)
),
kept AS (SELECT DISTINCT source, source_id, l3 AS leaf FROM s),
asked AS (
    SELECT source, source_id, leaf FROM kept
    UNION
    SELECT source, source_id, extra->>'leaf' FROM rejects WHERE version_id = $1 AND extra->>'leaf' IS NOT NULL
)
SELECT a.leaf, count(*), count(*) FILTER (WHERE k.source IS NULL)
FROM asked a JOIN clean c ON c.source = a.source AND c.source_id = a.source_id
LEFT JOIN kept k ON k.source = a.source AND k.source_id = a.source_id AND k.leaf = a.leaf
GROUP BY 1 ORDER BY 1
"""

# Planted errors live in the item ledger as {"leaf": <leaf id>, "claimed": <wrong value>, ...}.
# A row asserts the wrong value when it answers that leaf with it, or its caption claims it.
_PLANTED_SQL = """
WITH
planted AS (
    SELECT DISTINCT source, source_id, planted->>'leaf' AS leaf, planted->>'claimed' AS claimed
    FROM items WHERE version_id = $1 AND planted IS NOT NULL AND planted->>'leaf' IS NOT NULL
),
asserting AS (
    SELECT DISTINCT p.source, p.source_id FROM planted p JOIN s ON s.source = p.source AND s.source_id = p.source_id
    WHERE (s.l3 = p.leaf AND s.answer = p.claimed)
       OR (json_valid(s.caption_claims) AND json_extract_string(s.caption_claims, p.leaf) = p.claimed)
),
answered_leaf AS (
    SELECT DISTINCT p.source, p.source_id FROM planted p JOIN s ON s.source = p.source AND s.source_id = p.source_id
    WHERE s.l3 = p.leaf
),
caught AS (
    SELECT source, source_id FROM planted EXCEPT SELECT source, source_id FROM asserting
),
clean AS (
    SELECT DISTINCT source, source_id FROM items i
    WHERE version_id = $1 AND source IN (SELECT source FROM planted)
      AND (planted IS NULL OR planted->>'leaf' IS NULL)
),
with_rows AS (SELECT DISTINCT source, source_id FROM s)
SELECT
    (SELECT count(*) FROM planted),
    (SELECT count(*) FROM caught),
    (SELECT count(*) FROM (SELECT * FROM caught EXCEPT SELECT * FROM answered_leaf)),
    (SELECT count(*) FROM (SELECT * FROM caught INTERSECT SELECT * FROM answered_leaf)),
    (SELECT count(*) FROM clean),
    (SELECT count(*) FROM (SELECT * FROM clean EXCEPT SELECT * FROM with_rows))
"""

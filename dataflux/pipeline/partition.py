"""One partition of one source through the closed loop, as a plain function.

`process_partition` is what a Prefect task runs (threads locally, Ray/Dask workers on a
cluster). It reads its items, analyses the audio, runs the closed loop for every clip, filters,
and writes one Parquet shard. It touches no catalog: the flow commits the returned result in
one catalog transaction, so a crash before the commit leaves nothing half-recorded and a rerun
redoes exactly the uncommitted partitions.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataflux import __version__
from dataflux.config import Config
from dataflux.records import Clip, Reject


@dataclass
class PartitionResult:
    source: str
    partition_key: str
    shard: Any  # dataflux.storage.shards.ShardInfo | None
    rejects: list[Reject]
    items: list[dict]
    counts: dict[str, int] = field(default_factory=dict)
    budget_exhausted: bool = False
    llm: dict | None = None  # the endpoint pool's counters (cumulative in this process), when models ran


def partition_key(source: str, partition: int, n_partitions: int) -> str:
    return f"{source}-p{partition:04d}-of{n_partitions:04d}"


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"dataflux-{__version__}" + (f"+{sha}" if sha else "")


def source_leaves(config: Config, source_name: str, taxonomy) -> list:
    branches = config.sources[source_name].get("taxonomy") or []
    return taxonomy.leaves_for(branches) if branches else list(taxonomy.leaves())


def source_tasks(config: Config, source_name: str) -> tuple[str, ...]:
    """The tasks a source emits (`sources.<name>.tasks`, default mcq only)."""
    from dataflux.steps.task_rows import check_tasks

    return check_tasks(config.sources[source_name].get("tasks") or ["mcq"], f"sources.{source_name}.tasks")


def use_object_store(config: Config) -> None:
    """Point pyarrow's S3 filesystem (which reads the AWS_* environment) at `storage.s3` of the config.

    Runs in every process that touches shards (the flow and each worker), so `s3://` roots work on
    any S3 API (MinIO, Ceph, moto) as well as AWS. Keys come from the environment variables the
    config names, never from the config itself.
    """
    import os

    s3 = config.data["storage"].get("s3") or {}
    if s3.get("endpoint_url"):
        os.environ["AWS_ENDPOINT_URL"] = s3["endpoint_url"]
    if s3.get("region"):
        os.environ["AWS_DEFAULT_REGION"] = os.environ["AWS_REGION"] = s3["region"]
    for field_name, target in (("access_key_env", "AWS_ACCESS_KEY_ID"), ("secret_key_env", "AWS_SECRET_ACCESS_KEY")):
        name = s3.get(field_name)
        if name and name != target:
            if name not in os.environ:
                raise ValueError(f"storage.s3.{field_name}: environment variable {name} is not set; "
                                 f"export it before running")
            os.environ[target] = os.environ[name]


def process_partition(config: Config, source_name: str, partition: int, n_partitions: int, version_id: str,
                      run_id: str, *, progress: bool = False, run_sources: list[str] | None = None) -> PartitionResult:
    """`run_sources`: every source of the run, in order, so identical audio across them is processed once."""
    use_object_store(config)
    return asyncio.run(_process_partition(config, source_name, partition, n_partitions, version_id, run_id,
                                          progress=progress, run_sources=run_sources))


async def _process_partition(config, source_name, partition, n_partitions, version_id, run_id, *, progress,
                             run_sources=None):
    from dataflux.audio.analyze import analyze_item
    from dataflux.audio.relative import add_relative_facts
    from dataflux.audio.speakers import add_speaker_facts
    from dataflux.loop import LoopConfig, LoopStats, run_clip
    from dataflux.sources.registry import open_source
    from dataflux.backends import build_steps
    from dataflux.steps.filter import FilterConfig, dedupe, quality_reject, rebalance_positions
    from dataflux.storage.row_schema import row_content_sha256
    from dataflux.storage.shards import shard_path, unique_tag, write_shard
    from dataflux.taxonomy import load_taxonomy

    key = partition_key(source_name, partition, n_partitions)
    source = open_source(config, source_name)
    taxonomy = load_taxonomy(config.data.get("taxonomy"))
    categories = source_leaves(config, source_name, taxonomy)
    filters = FilterConfig.from_dict(config.data["filters"])
    limits = {"max_seconds": float(filters.max_duration_s or 600.0),
              "min_seconds": min(0.05, float(filters.min_duration_s or 0.05))}
    survey = _survey(config, source_name, source, limits, run_sources or [source_name])
    vocab = survey.vocabulary if survey is not None else source.vocabulary()
    if config.sources[source_name]["kind"] != "demo":  # the demo's items carry leaf values only
        vocab = {**vocab, **metadata_vocabulary(source, categories, taxonomy)}
    spec = config.sources[source_name]
    if vocab:
        categories = taxonomy.with_vocabulary(categories, vocab)
    vocabularies = {c.id: list(c.values) for c in categories if c.id in taxonomy.values_from}
    leaf_ids = [c.id for c in categories]
    # The reference captioner states only what the source claims, so only claimed leaves get
    # questions and need measuring; a model captioner may describe anything, so measure all.
    claims_only = config.data["steps"]["caption"]["backend"] == "reference"
    cache = None
    from dataflux.backends import uses_models

    if uses_models(config):
        from dataflux.llm.catalog_cache import CatalogCallCache

        cache = CatalogCallCache(config.catalog_path)
    steps, pool = build_steps(config, categories, run_id=run_id, cache=cache)
    loop_cfg = LoopConfig(**config.data["loop"])

    rejects: list[Reject] = []
    items: list[dict] = []
    clips: list[Clip] = []
    llm: dict | None = None
    counts = {"items": 0, "decoded": 0, "rows": 0, "rejects": 0}

    source_items = source.iter_items(partition, n_partitions)
    if spec.get("plant_errors"):
        from dataflux.sources.planting import plant_errors

        source_items = plant_errors(list(source_items), float(spec["plant_errors"]), int(spec.get("seed", 0)))
    for obj in source_items:
        counts["items"] += 1
        if survey is not None and not isinstance(obj, Reject):
            obj = survey.settle(obj)  # a later copy of identical audio becomes its duplicate reject
        if isinstance(obj, Reject):
            rejects.append(obj)
            items.append(_ledger(obj.source, obj.source_id, obj.audio_sha256, "rejected:" + obj.reason, None))
            continue
        try:
            analysed = analyze_item(obj, _leaves_to_measure(obj, categories, claims_only), **limits,
                                    vocabularies=vocabularies)
        except Exception as e:  # one clip the analysis cannot handle must not sink its partition
            analysed = Reject(obj.source, obj.source_id, "analyze", "analysis_error", f"{type(e).__name__}: {e}")
        if isinstance(analysed, Reject):
            rejects.append(analysed)
            items.append(_ledger(obj.source, obj.source_id, analysed.audio_sha256, "rejected:" + analysed.reason,
                                 obj.meta.get("planted")))
            continue
        bad = quality_reject(analysed, filters)
        if bad is not None:
            rejects.append(bad)
            items.append(_ledger(obj.source, obj.source_id, analysed.audio_sha256, "rejected:" + bad.reason,
                                 obj.meta.get("planted")))
            continue
        counts["decoded"] += 1
        clips.append(analysed)

    add_relative_facts(clips, leaf_ids)
    for withdrawn in add_speaker_facts(clips, leaf_ids):  # a claim withdrawn, its clip kept
        rejects.append(withdrawn)
    semaphore = asyncio.Semaphore(int(config.data["run"].get("concurrency", 16)))
    loop_stats = LoopStats()
    budget_exhausted = False

    async def one(clip: Clip):
        async with semaphore:
            return await run_clip(clip, categories, steps, loop_cfg, stats=loop_stats)

    try:
        results = await asyncio.gather(*(one(c) for c in clips), return_exceptions=True)
    finally:
        if pool is not None:
            report = pool.report()
            llm = {"pid": os.getpid(), "endpoints": report["endpoints"], "spent_usd": report["spent_usd"],
                   "requests": report["requests"], "cache_hits": report["cache_hits"],
                   "calls": sum(v.get("calls", 0) for v in report["endpoints"].values())}
            await pool.aclose()
    rows: list[dict] = []
    per_clip_rows: dict[str, int] = {}
    for clip, result in zip(clips, results):
        if isinstance(result, BaseException):
            if type(result).__name__ == "BudgetExhausted":
                budget_exhausted = True
                continue
            rejects.append(Reject(clip.item.source, clip.item.source_id, "loop", "step_error",
                                  f"{type(result).__name__}: {result}", audio_sha256=clip.audio_sha256))
            continue
        clip_rows, clip_rejects = result
        if not clip_rows and not clip_rejects:
            # every category was declined as not fitting the caption: say so, never drop silently
            clip_rejects = [Reject(clip.item.source, clip.item.source_id, "generate", "no_applicable_category",
                                   f"no taxonomy leaf of {leaf_ids} fits this clip's caption",
                                   audio_sha256=clip.audio_sha256)]
        rows.extend(clip_rows)
        rejects.extend(clip_rejects)
    if budget_exhausted:
        # Nothing of this partition is committed; a later run with more budget redoes it.
        return PartitionResult(source_name, key, None, [], [], counts, budget_exhausted=True, llm=llm)

    rows, filter_rejects = dedupe(rows, filters)
    rejects.extend(filter_rejects)
    if spec.get("require") == "measured":
        rows, unmeasured = keep_measured(rows)
        rejects.extend(unmeasured)
    rows.sort(key=lambda r: r["sample_id"])
    rows, balance = rebalance_positions(rows, filters.max_position_share)
    counts["rebalanced"] = int(balance.get("moved", 0)) if isinstance(balance, dict) else 0
    tasks = source_tasks(config, source_name)
    if tasks != ("mcq",):
        from dataflux.steps.task_rows import task_rows

        extra, task_rejects = task_rows(clips, rows, tasks, categories)
        rows.extend(extra)
        rejects.extend(task_rejects)

    version = code_version()
    for row in rows:
        row["run_id"] = run_id
        row["code_version"] = version
        row["row_sha256"] = row_content_sha256(row)
        clip_key = (row["source"], row["source_id"])
        per_clip_rows[clip_key] = per_clip_rows.get(clip_key, 0) + 1
    rows.sort(key=lambda r: r["sample_id"])
    for clip in clips:
        # By the clip's own id, not its audio hash: a copy of another clip's file whose rows were all
        # dropped as duplicates holds nothing in the version and must not be `kept`.
        n = per_clip_rows.get((clip.item.source, clip.item.source_id), 0)
        items.append(_ledger(clip.item.source, clip.item.source_id, clip.audio_sha256,
                             "kept" if n else "no_rows", clip.item.meta.get("planted"), n))
    shard = None
    if rows:
        shard = write_shard(rows, shard_path(config.storage_root, version_id, key, tag=unique_tag(run_id)))
    counts["rows"] = len(rows)
    counts["rejects"] = len(rejects)
    counts.update({f"loop_{k}": int(v) for k, v in loop_stats.counts.items()})
    return PartitionResult(source_name, key, shard, rejects, items, counts, llm=llm)


def _survey(config: Config, source_name: str, source, limits: dict, run_sources: list[str]):
    """Identical audio and the option vocabulary over the run's sources (dataflux.sources.survey).
    The demo source makes distinct clips and carries no label vocabulary: nothing to survey."""
    if config.sources[source_name]["kind"] == "demo":
        return None
    from dataflux.sources.registry import open_source
    from dataflux.sources.survey import survey_source

    before = run_sources[:run_sources.index(source_name)] if source_name in run_sources else []
    before = [open_source(config, s) for s in before if config.sources[s]["kind"] != "demo"]
    return survey_source(source, before=before, **limits)


def _leaves_to_measure(item, categories: list, claims_only: bool) -> list[str]:
    """Leaves whose facts the clip needs: with the reference captioner, those it can claim (from a
    label, from the metadata field the leaf names, or from measurement); with a model captioner, all."""
    if not claims_only:
        return [c.id for c in categories]
    return [c.id for c in categories
            if c.id in item.labels or c.claimed_from == "measurement"
            or (c.claimed_from and item.labels.get(c.claimed_from) not in (None, "", []))]


MAX_OPTION_CHARS = 200  # schemas/question.schema.json: an option longer than this cannot be asked


def metadata_vocabulary(source, categories: list, taxonomy) -> dict[str, list[str]]:
    """Vocabularies of `values_from: metadata` leaves: every value the source's items carry in the
    leaf's `claimed_from` field (all partitions, so every partition offers the same options),
    ordered by language, then length (a phrase's nearest neighbours are its distractors)."""
    from dataflux.records import SourceItem
    from dataflux.steps.caption import metadata_claim
    from dataflux.taxonomy import length_order

    fields = {c.id: c.claimed_from for c in categories if taxonomy.values_from.get(c.id) == "metadata"}
    if not fields:
        return {}
    out: dict[str, set[tuple[str, str]]] = {leaf: set() for leaf in fields}
    for item in source.iter_items(0, 1):
        if not isinstance(item, SourceItem):
            continue
        language = str(item.labels.get("language") or "")
        for leaf, field_name in fields.items():
            value = metadata_claim(field_name, item.labels.get(field_name))
            if value is not None and len(value) <= MAX_OPTION_CHARS:
                out[leaf].add((language, value))
    return {leaf: [v for _, v in sorted(pairs, key=lambda p: (p[0], *length_order(p[1])))]
            for leaf, pairs in out.items() if pairs}


def keep_measured(rows: list[dict]) -> tuple[list[dict], list[Reject]]:
    """Rows a measurement verified, and a reject (reason not_measured) for each other row."""
    kept, rejects = [], []
    for r in rows:
        if r.get("verification") == "measured":
            kept.append(r)
            continue
        rejects.append(Reject(r["source"], r["source_id"], "filter", "not_measured",
                              f"{r['l3']}: verified {r.get('verification')!r}; the source requires measured rows",
                              sample_id=r["sample_id"], audio_sha256=r["audio_sha256"], extra={"leaf": r["l3"]}))
    return kept, rejects


def _ledger(source: str, source_id: str, audio_sha256: str | None, status: str, planted: dict | None,
            n_rows: int = 0) -> dict:
    return {"source": source, "source_id": source_id, "audio_sha256": audio_sha256, "n_rows": n_rows,
            "status": status, "planted": json.dumps(planted) if planted else None}

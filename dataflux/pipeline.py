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
                      run_id: str, *, progress: bool = False) -> PartitionResult:
    use_object_store(config)
    return asyncio.run(_process_partition(config, source_name, partition, n_partitions, version_id, run_id,
                                          progress=progress))


async def _process_partition(config, source_name, partition, n_partitions, version_id, run_id, *, progress):
    from dataflux.audio.analyze import analyze_item
    from dataflux.loop import LoopConfig, LoopStats, run_clip
    from dataflux.sources.registry import open_source
    from dataflux.backends import build_steps
    from dataflux.steps.filter import FilterConfig, dedupe, quality_reject, rebalance_positions
    from dataflux.storage.row_schema import row_content_sha256
    from dataflux.storage.shards import shard_path, write_shard
    from dataflux.taxonomy import load_taxonomy

    key = partition_key(source_name, partition, n_partitions)
    source = open_source(config, source_name)
    taxonomy = load_taxonomy(config.data.get("taxonomy"))
    categories = source_leaves(config, source_name, taxonomy)
    vocab = source.vocabulary()
    if vocab:
        categories = taxonomy.with_vocabulary(categories, vocab)
    leaf_ids = [c.id for c in categories]
    # The reference captioner states only what the source claims, so only claimed leaves get
    # questions and need measuring; a model captioner may describe anything, so measure all.
    claims_only = config.data["steps"]["caption"]["backend"] == "reference"
    cache = None
    from dataflux.backends import uses_models

    if uses_models(config):
        from dataflux.storage.catalog import Catalog

        cache = Catalog(config.catalog_path)
    steps, pool = build_steps(config, categories, run_id=run_id, cache=cache)
    loop_cfg = LoopConfig(**config.data["loop"])
    filters = FilterConfig.from_dict(config.data["filters"])
    limits = {"max_seconds": float(filters.max_duration_s or 600.0),
              "min_seconds": min(0.05, float(filters.min_duration_s or 0.05))}

    rejects: list[Reject] = []
    items: list[dict] = []
    clips: list[Clip] = []
    llm: dict | None = None
    counts = {"items": 0, "decoded": 0, "rows": 0, "rejects": 0}

    for obj in source.iter_items(partition, n_partitions):
        counts["items"] += 1
        if isinstance(obj, Reject):
            rejects.append(obj)
            items.append(_ledger(obj.source, obj.source_id, None, "rejected:" + obj.reason, None))
            continue
        try:
            analysed = analyze_item(obj, _leaves_to_measure(obj, leaf_ids, claims_only), **limits)
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
        per_clip_rows[row["audio_sha256"]] = per_clip_rows.get(row["audio_sha256"], 0) + 1
    rows.sort(key=lambda r: r["sample_id"])
    for clip in clips:
        n = per_clip_rows.get(clip.audio_sha256, 0)
        items.append(_ledger(clip.item.source, clip.item.source_id, clip.audio_sha256,
                             "kept" if n else "no_rows", clip.item.meta.get("planted"), n))
    shard = None
    if rows:
        shard = write_shard(rows, shard_path(config.storage_root, version_id, key))
    counts["rows"] = len(rows)
    counts["rejects"] = len(rejects)
    counts.update({f"loop_{k}": int(v) for k, v in loop_stats.counts.items()})
    return PartitionResult(source_name, key, shard, rejects, items, counts, llm=llm)


def _leaves_to_measure(item, leaf_ids: list[str], claims_only: bool) -> list[str]:
    if not claims_only:
        return leaf_ids
    return [leaf for leaf in leaf_ids if leaf in item.labels]


def _ledger(source: str, source_id: str, audio_sha256: str | None, status: str, planted: dict | None,
            n_rows: int = 0) -> dict:
    return {"source": source, "source_id": source_id, "audio_sha256": audio_sha256, "n_rows": n_rows,
            "status": status, "planted": json.dumps(planted) if planted else None}

"""One partition of one source through the closed loop, as a plain function.

`process_partition` is what a Prefect task runs (threads locally, Ray/Dask workers on a
cluster). It calls each phase once and hands its result down: prepare (items, leaves, steps) ->
analyse (clips) -> ask (the closed loop: caption, generate, answer, judge) -> filter -> write (one
Parquet shard). It touches no catalog: the flow commits the returned result in one catalog
transaction, so a crash before the commit leaves nothing half-recorded and a rerun redoes exactly
the uncommitted partitions.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

from dataflux.config import Config
from dataflux.pipeline.analyse import analyse
from dataflux.pipeline.ask import ask
from dataflux.pipeline.filter import filter_rows
from dataflux.pipeline.prepare import prepare
from dataflux.pipeline.write import write
from dataflux.records import Reject, partition_key


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


def use_object_store(config: Config) -> None:
    """Point pyarrow's S3 filesystem (which reads the AWS_* environment) at `storage.s3` of the config.

    Runs in every process that touches shards (the flow and each worker), so `s3://` roots work on
    any S3 API (MinIO, Ceph, moto) as well as AWS. Keys come from the environment variables the
    config names, never from the config itself.
    """
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
    key = partition_key(source_name, partition, n_partitions)
    return asyncio.run(_run_phases(config, source_name, partition, n_partitions, key, version_id, run_id,
                                   run_sources or [source_name]))


async def _run_phases(config: Config, source_name: str, partition: int, n_partitions: int, key: str,
                      version_id: str, run_id: str, run_sources: list[str]) -> PartitionResult:
    # Inside the event loop: the steps' endpoint pool binds to the loop that runs them.
    prepared = prepare(config, source_name, partition, n_partitions, run_id, run_sources)
    analysed = analyse(prepared)
    counts = {"items": analysed.n_items, "decoded": len(analysed.clips), "rows": 0, "rejects": 0}
    asked = await ask(prepared, analysed.clips)
    if asked.budget_exhausted:
        # Nothing of this partition is committed; a later run with more budget redoes it.
        return PartitionResult(prepared.source_name, key, None, [], [], counts, budget_exhausted=True, llm=asked.llm)
    rows, filter_rejects, counts["rebalanced"] = filter_rows(prepared, analysed.clips, asked.rows)
    shard, kept = write(prepared.storage_root, analysed.clips, rows, version_id=version_id, key=key, run_id=run_id)
    rejects = analysed.rejects + asked.rejects + filter_rejects
    counts["rows"] = len(rows)
    counts["rejects"] = len(rejects)
    counts.update(asked.loop_counts)
    return PartitionResult(prepared.source_name, key, shard, rejects, analysed.ledger + kept, counts, llm=asked.llm)

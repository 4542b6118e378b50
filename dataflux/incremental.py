"""Incremental versions: a new version reuses what did not change and processes only what did.

A source's *state* is what its rows depend on: its inputs (`Source.fingerprint()`: file names,
sizes, mtimes or content), its config plus the steps, loop and filters (`Config.source_sha256`),
and the partition count (partition keys name it). Every version records the states it was built
from (in its catalog notes, under `source_states`). When a new version is built, each source whose
state equals its state in an earlier *finalized* version that committed all of its partitions is
not processed again: those partitions are committed to the new version as they are - same shard
files, same rejects, same item ledger - and only the other sources go through the loop.

Finalized shards are immutable and checksummed, so sharing a file between versions is safe; the new
version's `finalize` re-hashes every shard it lists, reused or not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dataflux.config import Config
from dataflux.records import partition_key
from dataflux.sources.registry import open_source
from dataflux.storage.shards import ShardInfo

NOTES_KEY = "source_states"


@dataclass(frozen=True)
class SourceState:
    """What a source's rows depend on. Two equal states give the same rows (for deterministic backends)."""

    fingerprint: str  # Source.fingerprint(): the inputs
    config_sha256: str  # Config.source_sha256(name): the source's config, steps, loop, filters, taxonomy
    partitions: int

    def as_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "config_sha256": self.config_sha256, "partitions": self.partitions}


def source_state(config: Config, name: str) -> SourceState | None:
    """The current state of source `name`, or None when its inputs cannot be fingerprinted
    (such a source is always processed)."""
    try:
        fingerprint = open_source(config, name).fingerprint()
    except Exception:  # unreadable inputs surface as rejects when the partition runs, not here
        return None
    if not fingerprint:
        return None
    return SourceState(fingerprint, config.source_sha256(name), int(config.data["run"]["partitions"]))


def source_states(config: Config, sources: list[str]) -> dict[str, dict[str, Any] | None]:
    """{source: state dict or None} for the version notes."""
    out = {}
    for name in sources:
        state = source_state(config, name)
        out[name] = state.as_dict() if state else None
    return out


@dataclass
class ReusePlan:
    """Source `source`'s partitions `partition_keys` are taken unchanged from version `from_version`."""

    source: str
    from_version: str
    partition_keys: list[str]


@dataclass
class ReuseResult:
    plans: list[ReusePlan] = field(default_factory=list)
    partitions_reused: int = 0

    @property
    def sources_reused(self) -> list[str]:
        return [p.source for p in self.plans]


def source_partition_keys(source: str, n_partitions: int) -> list[str]:
    return [partition_key(source, p, n_partitions) for p in range(n_partitions)]


def plan_reuse(catalog, states: dict[str, dict[str, Any] | None], *, exclude: str | None = None) -> list[ReusePlan]:
    """For each source with a known state, the newest finalized version (other than `exclude`) that
    recorded the same state and committed every partition of that source."""
    finalized = [v for v in catalog.list_versions() if v["status"] == "finalized" and v["version_id"] != exclude]
    finalized.sort(key=lambda v: (v.get("finalized_at") or "", v["version_id"]), reverse=True)
    plans = []
    for source, state in states.items():
        if state is None:
            continue
        keys = source_partition_keys(source, int(state["partitions"]))
        for v in finalized:
            recorded = ((v.get("notes") or {}).get(NOTES_KEY) or {}).get(source)
            if recorded != state:
                continue
            if set(keys) <= catalog.committed_partitions(v["version_id"]):
                plans.append(ReusePlan(source, v["version_id"], keys))
                break
    return plans


def _partition_records(catalog, vid: str, key: str) -> tuple[list[dict], list[dict]]:
    def dicts(sql: str) -> list[dict]:
        # the catalog's own connection handling (lock, retry), on its tables only
        with catalog._connect() as con:
            cur = con.execute(sql, [vid, key])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    rejects = dicts("SELECT run_id, source, source_id, sample_id, audio_sha256, stage, reason, detail, extra "
                    "FROM rejects WHERE version_id = ? AND partition_key = ?")
    items = dicts("SELECT source, source_id, audio_sha256, n_rows, status, planted "
                  "FROM items WHERE version_id = ? AND partition_key = ?")
    for r in rejects:
        if r.get("extra") is not None and not isinstance(r["extra"], str):
            r["extra"] = json.dumps(r["extra"])
    return rejects, items


def apply_reuse(catalog, version_id: str, plans: list[ReusePlan], run_id: str | None) -> ReuseResult:
    """Commit the planned partitions to draft `version_id` (skipping any it already has), each with
    its shard, rejects and ledger items copied from the version it comes from."""
    result = ReuseResult()
    committed = catalog.committed_partitions(version_id)
    for plan in plans:
        shards = {s["partition_key"]: s for s in catalog.shards(plan.from_version)}
        reused_any = False
        for key in plan.partition_keys:
            if key in committed:
                continue
            s = shards[key]
            info = None if s["path"] is None else ShardInfo(path=s["path"], rows=int(s["rows"]),
                                                            bytes=int(s["bytes"]), sha256=s["sha256"])
            rejects, items = _partition_records(catalog, plan.from_version, key)
            catalog.commit_partition(version_id, key, info, rejects, items, run_id)
            result.partitions_reused += 1
            reused_any = True
        if reused_any:
            result.plans.append(plan)
    return result


def reuse_unchanged_sources(catalog, version_id: str, states: dict[str, dict[str, Any] | None],
                            run_id: str | None) -> ReuseResult:
    """Plan and apply reuse for draft `version_id` built from sources with `states`."""
    return apply_reuse(catalog, version_id, plan_reuse(catalog, states, exclude=version_id), run_id)

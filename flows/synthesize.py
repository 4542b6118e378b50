"""The `synthesize` flow: sources -> partitions -> closed loop -> shards -> a finalized version.

Thin orchestration over `dataflux.pipeline.process_partition`. Partitions fan out on the
configured task runner with per-task retries; each finished partition is committed to the
catalog in one transaction as soon as it completes, so a crash loses at most the partitions
in flight and a rerun (same config, same version) redoes only those.

The config reaches the flow and its tasks as a file path and its sha256 (`write_snapshot`), never
as a parameter, so a config of any size runs. A partition that fails with the user's error (a
missing folder, a bad file, a full disk: `is_user_error`) is not retried, and the flow raises that
error, with its own type, once the other partitions are done. A SIGTERM, SIGHUP or SIGINT stops the
ephemeral Prefect server this process started before the process ends (`stop_server_on_signals`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from prefect import flow, get_run_logger, task
from prefect.futures import as_completed

from dataflux.backends import merge_llm_reports
from dataflux.config import (Config, check_name, config_from_dict, demo_config, load_config, read_snapshot,
                             write_snapshot)
from dataflux.incremental import reuse_unchanged_sources, source_states
from dataflux.pipeline import PartitionResult, partition_key, process_partition, use_object_store
from dataflux.sources.registry import open_source
from dataflux.storage.catalog import Catalog
from dataflux.storage.orphans import remove_orphan_shards
from dataflux.storage.writer_lock import writer_lock
from flows.artifacts import publish_version_artifact

# Errors that are the user's to fix (a path, a file, a value, the disk): retrying cannot help, and the
# command line reports them in one line. A dropped connection or a timeout is not among them.
USER_ERRORS = (ValueError, LookupError, OSError)
TRANSIENT_ERRORS = (ConnectionError, TimeoutError)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, USER_ERRORS) and not isinstance(exc, TRANSIENT_ERRORS)


def _retry_unless_user_error(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: a failed attempt is retried unless its exception is the user's error."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return exc is None or not is_user_error(exc)


@task(name="process-partition", retries=2, retry_delay_seconds=1, retry_condition_fn=_retry_unless_user_error)
def partition_task(config_file: str, config_sha256: str, source: str, partition: int, n_partitions: int,
                   version_id: str, run_id: str, run_sources: list[str] | None = None) -> PartitionResult:
    config = read_snapshot(config_file, config_sha256)
    return process_partition(config, source, partition, n_partitions, version_id, run_id, run_sources=run_sources)


def task_runner_for(config: Config):
    kind = config.data["run"].get("task_runner", "threads")
    if kind == "ray":
        from prefect_ray import RayTaskRunner

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        return RayTaskRunner(init_kwargs={"num_cpus": os.cpu_count() or 2, "include_dashboard": False})
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner()
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=1 if kind == "sequential" else max(2, os.cpu_count() or 2))


def unverified(config: Config) -> Config:
    """The same config with verification off (`loop.verify: false`): it builds the unverified twin."""
    import copy

    data = copy.deepcopy(config.data)
    data["loop"]["verify"] = False
    return config_from_dict(data, origin=f"{config.path or '<config>'} (unverified)", path=config.path)


def resolve_config(config_path: str | None, demo_size: int | None = None) -> Config:
    if config_path:
        return load_config(config_path)
    return demo_config(size=demo_size or 240)


def run_synthesis(config: Config, *, sources: list[str] | None = None, version: str | None = None,
                  name: str | None = None, finalize: bool = True, progress: bool = False,
                  max_partitions: int | None = None, reuse: bool = True, wait: bool = False,
                  wait_timeout_s: float | None = None, allow_empty: bool = False) -> dict[str, Any]:
    """Build (or resume) a version from `sources` and finalize it. Runs as the `synthesize` flow.
    `reuse=False` processes every source even when an earlier version holds it unchanged.
    A version without rows stays a draft (the summary's `empty` says why) unless `allow_empty`.

    The catalog's writer lock is taken before the flow starts, so a second run on the same catalog
    is refused at once (`CatalogBusy`, naming the holder), or with `wait=True` waits for the first
    (at most `wait_timeout_s`)."""
    if version is not None:
        check_name(version, what="--version")
    runner = task_runner_for(config)
    flow_fn = synthesize_flow.with_options(task_runner=runner)
    run_id = new_run_id()
    config_file, config_sha256 = write_snapshot(config)
    with stop_server_on_signals(), writer_lock(config.catalog_path, run_id, wait=wait, timeout_s=wait_timeout_s,
                                               notify=lambda msg: print(msg, file=sys.stderr, flush=True)):
        return flow_fn(config_file=config_file, config_sha256=config_sha256, sources=sources, version=version,
                       name=name, finalize=finalize, progress=progress, max_partitions=max_partitions, reuse=reuse,
                       run_id=run_id, allow_empty=allow_empty)


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


def stop_ephemeral_servers() -> None:
    """Stop every ephemeral Prefect API server this process started (Prefect stops them only at a clean exit)."""
    module = sys.modules.get("prefect.server.api.server")  # not imported: no server was started
    if module is None:
        return
    for server in list(module.SubprocessASGIServer._instances.values()):
        if server.server_process is not None:
            server.stop()


@contextmanager
def stop_server_on_signals() -> Iterator[None]:
    """While the run lasts, SIGTERM, SIGHUP and SIGINT first stop the ephemeral Prefect server, then end the
    process as the signal would have (its default action), so a stopped run leaves nothing listening.
    The catalog is left as a killed run leaves it: the next run resumes (the writer lock dies with us).
    Signal handlers can only be set in the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    def stop(signum, frame):
        for sig in handled:  # a second signal must not cut the server's stop short
            signal.signal(sig, signal.SIG_IGN)
        try:
            stop_ephemeral_servers()
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    previous = {sig: signal.signal(sig, stop) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@flow(name="synthesize", log_prints=True)
def synthesize_flow(config_file: str, config_sha256: str, sources: list[str] | None = None,
                    version: str | None = None, name: str | None = None, finalize: bool = True,
                    progress: bool = False, max_partitions: int | None = None, reuse: bool = True,
                    run_id: str | None = None, allow_empty: bool = False) -> dict[str, Any]:
    """Build a version from the config saved at `config_file` (`write_snapshot`; its sha256 is checked).
    `reuse`: commit unchanged sources' partitions from an earlier finalized version instead of
    processing them again (dataflux.incremental). The run holds the catalog's writer lock throughout
    (taken here unless `run_synthesis` already holds it for `run_id`)."""
    config = read_snapshot(config_file, config_sha256)
    run_id = run_id or new_run_id()
    with writer_lock(config.catalog_path, run_id):
        return _synthesize(config, (config_file, config_sha256), sources, version, name, finalize, progress,
                           max_partitions, reuse, run_id, allow_empty=allow_empty)


def _open_sources(config: Config, chosen: list[str]) -> None:
    """Open each source once before any partition starts, so a missing folder or a manifest that is not a
    regular file is one error from the flow, not one per partition."""
    for name in chosen:
        open_source(config, name)


def _synthesize(config: Config, snapshot: tuple[str, str], sources: list[str] | None, version: str | None,
                name: str | None, finalize: bool, progress: bool, max_partitions: int | None, reuse: bool,
                run_id: str, *, allow_empty: bool = False) -> dict[str, Any]:
    logger = get_run_logger()
    chosen = sources or list(config.sources)
    unknown = [s for s in chosen if s not in config.sources]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; data_catalog.yaml defines {sorted(config.sources)}")
    _open_sources(config, chosen)
    use_object_store(config)
    catalog = Catalog(config.catalog_path)
    states = source_states(config, chosen)
    interrupted = catalog.mark_interrupted_runs(except_run_id=run_id)  # we hold the lock: they are dead
    if interrupted:
        logger.warning("runs %s ended without finishing; marked interrupted", ", ".join(interrupted))
    version_id = _open_version(catalog, config, chosen, version, name, states)
    orphans = remove_orphan_shards(catalog, version_id, config.storage_root, run_id)
    if orphans:
        logger.warning("version %s: removed %d uncommitted shard file(s) of ended runs", version_id, len(orphans))
    flow_run_id = _flow_run_id()
    catalog.record_run(run_id, version_id, flow_run_id=flow_run_id)
    n_partitions = int(config.data["run"]["partitions"])
    committed = catalog.committed_partitions(version_id)
    skipped = len(committed)
    reused = reuse_unchanged_sources(catalog, version_id, states, run_id) if reuse else None
    if reused is not None and reused.partitions_reused:
        logger.info("version %s: reused %d unchanged partitions of %s", version_id, reused.partitions_reused,
                    ", ".join(f"{p.source} (from {p.from_version})" for p in reused.plans))
        committed = catalog.committed_partitions(version_id)
    todo = [(s, p) for s in chosen for p in range(n_partitions)
            if partition_key(s, p, n_partitions) not in committed]
    if max_partitions is not None:
        todo = todo[:max_partitions]
    logger.info("version %s: %d partitions to do, %d already committed", version_id, len(todo), len(committed))
    retries = int(config.data["run"].get("task_retries", 2))
    task_fn = partition_task.with_options(retries=retries)
    futures = [task_fn.submit(*snapshot, s, p, n_partitions, version_id, run_id, chosen) for s, p in todo]

    counts = {"partitions_done": 0, "partitions_skipped": skipped, "items": 0, "rows": 0, "rejects": 0,
              "partitions_failed": 0, "budget_exhausted": 0,
              "partitions_reused": reused.partitions_reused if reused else 0,
              "sources_reused": reused.sources_reused if reused else [],
              "sources_processed": sorted({s for s, _ in todo})}
    bar = _progress(len(futures), progress)
    llm_reports, user_errors = _commit_as_completed(futures, catalog, version_id, run_id, counts, bar, logger)
    bar.close()

    complete = counts["partitions_failed"] == 0 and counts["budget_exhausted"] == 0 and (
        max_partitions is None or len(catalog.committed_partitions(version_id)) == n_partitions * len(chosen))
    status = "completed" if complete else ("budget_exhausted" if counts["budget_exhausted"] else "incomplete")
    if llm_reports:
        counts["llm"] = merge_llm_reports(llm_reports)
    if user_errors:  # the first one, as raised: the command line names it in one line
        catalog.finish_run(run_id, status="failed", counts=counts)
        raise user_errors[0]
    catalog.finish_run(run_id, status=status, counts=counts)
    summary: dict[str, Any] = {"version": version_id, "run_id": run_id, "status": status, **counts}
    empty = _why_empty(catalog, version_id) if complete else None
    if empty is not None:
        summary["empty"] = empty
        logger.warning("version %s has no rows: %s", version_id, empty)
    if complete and finalize and (empty is None or allow_empty):
        summary["finalized"] = catalog.finalize(version_id)
        _publish_summary(catalog, version_id)
        _emit_finalized(version_id, summary["finalized"], catalog_path=str(config.catalog_path))
    return summary


def _why_empty(catalog, version_id: str, top: int = 3) -> dict[str, Any] | None:
    """None when the version holds rows; else what became of its items: their number and the `top` most
    common reject reasons (`stage/reason` -> count), so that an empty run says why instead of finalizing."""
    [(rows,)] = catalog.fetch("SELECT coalesce(sum(rows), 0) FROM shards WHERE version_id = ?", [version_id])
    if rows:
        return None
    [(items,)] = catalog.fetch("SELECT count(*) FROM items WHERE version_id = ?", [version_id])
    reasons = catalog.fetch("SELECT stage || '/' || reason, count(*) FROM rejects WHERE version_id = ? "
                            "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?", [version_id, top])
    return {"items": int(items), "top_rejects": {r: int(n) for r, n in reasons}}


def _commit_as_completed(futures, catalog, version_id: str, run_id: str, counts: dict[str, Any], bar,
                         logger) -> tuple[list[dict], list[BaseException]]:
    """Commit each partition as it finishes (counting into `counts`); returns the LLM reports and the
    user errors of the partitions that failed (`is_user_error`)."""
    llm_reports: list[dict] = []
    user_errors: list[BaseException] = []
    for future in as_completed(futures):
        try:
            result: PartitionResult = future.result()
        except Exception as exc:  # a partition that failed after its retries stays uncommitted
            counts["partitions_failed"] += 1
            if is_user_error(exc):
                user_errors.append(exc)
            logger.error("partition failed after retries: %s", exc)
            bar.update(1)
            continue
        if result.llm is not None:
            llm_reports.append(result.llm)
        if result.budget_exhausted:
            counts["budget_exhausted"] += 1
        else:
            catalog.commit_partition(version_id, result.partition_key, result.shard, result.rejects,
                                     result.items, run_id)
            counts["partitions_done"] += 1
            for k in ("items", "rows", "rejects"):
                counts[k] += result.counts.get(k, 0)
        bar.update(1)
    return llm_reports, user_errors


def _open_version(catalog, config: Config, sources: list[str], version: str | None, name: str | None,
                  states: dict | None = None) -> str:
    """Resume the named draft, or the newest draft built from the same config and sources, or start one."""
    if version is not None:
        info = catalog.get_version(version)
        if info["status"] != "draft":
            raise ValueError(f"version {version} is {info['status']}; finalized versions are immutable")
        return version
    fingerprint = _version_fingerprint(config, sources, states)
    for info in sorted(catalog.list_versions(), key=lambda v: v["version_id"], reverse=True):
        if info["status"] == "draft" and info.get("config_sha256") == fingerprint:
            return info["version_id"]
    notes = {"sources": sources, "partitions": config.data["run"]["partitions"], "source_states": states or {}}
    if config.data["loop"].get("verify", True) is False:
        notes["verified"] = False  # the unverified twin: first questions as written (LoopConfig.verify)
    return catalog.create_version(name=name or "-".join(sources), config_sha256=fingerprint, notes=notes)


def _version_fingerprint(config: Config, sources: list[str], states: dict | None = None) -> str:
    import hashlib
    import json

    parts = [config.source_sha256(s) for s in sorted(sources)]
    if states:  # a draft built from other inputs is not resumed
        parts.append(json.dumps(states, sort_keys=True))
    parts.append(str(config.data["run"]["partitions"]))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id) if flow_run.id else None
    except Exception:
        return None


def _publish_summary(catalog, version_id: str) -> None:
    try:
        publish_version_artifact(catalog, version_id)
    except Exception as exc:  # the artifact is a view; the version is finalized either way
        get_run_logger().warning("could not publish the summary artifact of %s: %s", version_id, exc)


def _emit_finalized(version_id: str, info: dict, catalog_path: str | None = None) -> None:
    try:
        from prefect.events import emit_event

        resource = {"prefect.resource.id": version_id}
        if catalog_path:
            resource["dataflux.catalog"] = catalog_path  # lets a trigger listen to one catalog only
        emit_event(event="dataflux.version.finalized", resource=resource,
                   payload={"manifest_sha256": info.get("manifest_sha256"), "rows": info.get("n_rows")})
    except Exception as exc:  # events are best-effort; the version is finalized either way
        get_run_logger().warning("could not emit finalized event: %s", exc)


class _NoBar:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="partitions", unit="part")

"""The `train` flow: a finalized version -> the single-stage trainer -> a checkpoint recorded in the catalog.

Thin orchestration over `modeling.train.train`. The version is checked first (a draft, or a shard
whose checksum no longer matches, is refused before any model is built); rerunning the flow with
the same version and config resumes the same run from its last checkpoint.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task


@task(name="check-version")
def check_version_task(version: str, catalog_path: str | None) -> int:
    """Refuse drafts and tampered shards (the catalog's errors); returns the number of shards."""
    from modeling.data import version_shard_paths  # lazy, as below: modeling imports torch (seconds)

    return len(version_shard_paths(version, catalog_path))


@task(name="train-model")
def train_task(version: str, config: str, catalog_path: str | None, output_dir: str | None,
               overrides: list[str]) -> dict[str, Any]:
    from modeling.train import train  # lazy: torch, only when the flow runs (deployments import this module)

    logger = get_run_logger()
    return train(version, config, catalog_path=catalog_path, output_dir=output_dir, overrides=overrides,
                 log=logger.info)


@flow(name="train")
def train_flow(version: str, config: str, catalog_path: str | None = None, output_dir: str | None = None,
               overrides: list[str] | None = None) -> dict[str, Any]:
    """Train `config` (a preset such as modeling/configs/tiny.yaml) on finalized `version`.

    Returns {"training_id", "run_dir", "checkpoint", "metrics", "status"}; the training is recorded
    in the catalog at `catalog_path` (default: <dataflux home>/catalog.duckdb).
    """
    shards = check_version_task(version, catalog_path)
    get_run_logger().info(f"version {version}: {shards} verified shard(s)")
    return train_task(version, config, catalog_path, output_dir, list(overrides or []))

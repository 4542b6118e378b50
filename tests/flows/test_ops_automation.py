"""With a local Prefect server: a cron deployment fires and builds a version, and that version's
finalization starts a training run on it with no human step. Everything is checked through the
Prefect client and the catalog."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import pytest

from dataflux.storage.catalog import Catalog
from flows.artifacts import artifact_key
from flows.deploy import SERVER_STARTUP_TIMEOUT_S, LocalServer, free_port, server_healthy
from flows import prefect_env

pytestmark = pytest.mark.slow

CONFIG = """
version: 1
sources:
  demo: {kind: demo, size: 16, seed: 2, error_rate: 0.1, license: CC0-1.0 (synthesized)}
run: {partitions: 2}
training: {preset: tiny}
schedules:
  - {name: every-minute, cron: "* * * * *", sources: [demo]}
"""
WAIT_S = 240  # server start, up to a minute until the cron fires, synthesis, training


async def _runs(api_url: str) -> dict:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async with PrefectClient(api_url) as client:
        out = {}
        for name in ("scheduled-synthesis", "synthesize", "train"):
            out[name] = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))
        out["deployments"] = {f"{d.name}": d for d in await client.read_deployments()}
        out["artifacts"] = await client.read_artifacts()
        return out


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)  # the runner pauses its schedules and exits
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def test_cron_deployment_builds_a_version_whose_finalization_starts_training(tmp_path):
    config = tmp_path / "data_catalog.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    home = tmp_path / "dataflux-home"
    server = LocalServer(port=free_port(), home=tmp_path / "prefect-home", log=tmp_path / "server.log")
    server.start()
    serve_log = tmp_path / "serve.log"
    env = {**os.environ, **prefect_env.SERVER, "PREFECT_API_URL": server.api_url, "DATAFLUX_HOME": str(home),
           "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_LOGGING_LEVEL": "INFO"}
    with open(serve_log, "wb") as log:
        serving = subprocess.Popen(
            [sys.executable, "-m", "cli", "schedule", "--config", str(config), "--serve",
             "--with-training", "--set", "train.max_steps=2", "--query-seconds", "1"],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT_S
        trained = []
        while time.monotonic() < deadline:
            assert serving.poll() is None, f"`dataflux schedule --serve` exited:\n{serve_log.read_text()[-3000:]}"
            runs = asyncio.run(_runs(server.api_url))
            trained = [r for r in runs["train"] if r.state and r.state.is_completed()]
            failed = [r for r in runs["train"] + runs["scheduled-synthesis"] if r.state and r.state.is_failed()]
            assert not failed, f"a run failed:\n{serve_log.read_text()[-3000:]}"
            if trained:
                break
            time.sleep(2)
        assert trained, f"no training run completed within {WAIT_S} s:\n{serve_log.read_text()[-3000:]}"
    finally:
        _stop(serving)
        server.stop()

    artifacts = runs["artifacts"]
    # The cron deployment exists with its schedule, and one of its runs was made by the scheduler.
    deployment = runs["deployments"]["every-minute"]
    assert deployment.schedules[0].schedule.cron == "* * * * *"
    scheduled = [r for r in runs["scheduled-synthesis"] if r.deployment_id == deployment.id]
    done = [r for r in scheduled if r.state.is_completed()]
    assert done and all(r.auto_scheduled for r in done)

    # The version it built is finalized, and the synthesize subflow run recorded in the catalog ran under it.
    catalog = Catalog(home / "catalog.duckdb", read_only=True)
    versions = [v for v in catalog.list_versions() if v["status"] == "finalized"]
    assert versions and all(v["name"] == "every-minute" for v in versions)
    synth_ids = {str(r.id) for r in runs["synthesize"] if r.state.is_completed()}

    # The training run was started by the automation, on that version, with the configured preset.
    run = trained[0]
    version = run.parameters["version"]
    info = catalog.get_version(version)
    assert info["status"] == "finalized"
    assert run.parameters["config"].endswith("modeling/configs/tiny.yaml")
    assert run.deployment_id == runs["deployments"]["train-on-finalize"].id
    assert run.created_by is not None and run.created_by.type == "AUTOMATION", run.created_by
    _, rows = catalog.query("SELECT flow_run_id FROM runs WHERE version_id = ? AND status = 'completed'",
                            [version])
    assert {r[0] for r in rows} & synth_ids, "the version's run is not one of the scheduled synthesize runs"
    finalized_at = datetime.fromisoformat(info["finalized_at"]).replace(tzinfo=timezone.utc)
    started = run.start_time.astimezone(timezone.utc)
    lag = (started - finalized_at).total_seconds()
    assert 0 < lag < 60, (finalized_at, started)
    print(f"version {version} finalized -> training run started after {lag:.1f} s")

    # The trainer recorded the training against the version in the catalog.
    trainings = catalog.trainings(version)
    assert trainings and trainings[-1]["status"] == "completed"
    # The version's summary was published as an artifact on the server.
    assert any(a.key == artifact_key(version) and info["content_sha256"] in a.data for a in artifacts), \
        [a.key for a in artifacts]


def test_server_command_serves_the_api_and_ui_on_localhost(tmp_path):
    import urllib.request

    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "cli", "server", "--port", str(port)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_STARTUP_TIMEOUT_S
        while not server_healthy(f"http://127.0.0.1:{port}/api") and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            page = resp.read().decode()
        assert resp.status == 200 and "<html" in page.lower() and "prefect" in page.lower()
    finally:
        _stop(process)
    assert process.returncode == 0, "Ctrl-C stops the server cleanly: " + (tmp_path / "server.log").read_text()[-2000:]
    out = (tmp_path / "server.log").read_text()
    assert f"PREFECT_API_URL=http://127.0.0.1:{port}/api" in out

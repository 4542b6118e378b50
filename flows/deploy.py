"""Operating DataFlux on Prefect: cron deployments, training on finalization, a local server.

* `schedule_deployments(config)`: one cron deployment of `scheduled_synthesis` per entry of
  `schedules:` in data_catalog.yaml.
* `training_deployment(config)`: the training flow, started by a deployment trigger whenever a
  version is finalized (the `dataflux.version.finalized` event, resource id = version id), with the
  configured preset.
* `serve_deployments(...)`: serve them from this process (the runner polls every `query_seconds`).
* `LocalServer`: a Prefect server with its UI on 127.0.0.1, for `dataflux server` and the tests.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from prefect import flow, serve
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

import modeling
from dataflux.config import Config, config_from_dict, load_config
from flows import prefect_env
from flows.synthesize import run_synthesis
from flows.train import train_flow

FINALIZED_EVENT = "dataflux.version.finalized"
CATALOG_LABEL = "dataflux.catalog"  # resource label naming the catalog a finalized version lives in
TRAINING_DEPLOYMENT = "train-on-finalize"
SERVER_STARTUP_TIMEOUT_S = 120.0


class ServeError(RuntimeError):
    """Deployments cannot be served as asked; the message says what to start or set."""


# --- flows that deployments run ----------------------------------------------------------------


@flow(name="scheduled-synthesis", log_prints=True)
def scheduled_synthesis(config_path: str | None = None, config_data: dict | None = None,
                        sources: list[str] | None = None, name: str | None = None) -> dict[str, Any]:
    """One scheduled build: read the config (the file as it is *now*, so a source added since the
    deployment was created is picked up), then run the `synthesize` flow with its task runner."""
    if config_path:
        config = load_config(config_path)
    elif config_data is not None:
        config = config_from_dict(config_data, origin="<deployment parameters>")
    else:
        raise ValueError("scheduled-synthesis needs config_path or config_data; recreate the deployment "
                         "with `dataflux schedule --config data_catalog.yaml --serve`")
    summary = run_synthesis(config, sources=sources, name=name)
    if summary.get("status") != "completed":
        raise RuntimeError(f"version {summary.get('version')}: run {summary.get('run_id')} ended "
                           f"{summary.get('status')}; the next scheduled run resumes it")
    return summary


# --- deployments -------------------------------------------------------------------------------


def _config_parameters(config: Config) -> dict[str, Any]:
    if config.path is not None:
        return {"config_path": str(config.path)}
    return {"config_data": config.data}


def deployment_name(schedule: dict[str, Any], index: int) -> str:
    name = schedule.get("name") or f"schedule-{index}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def schedule_deployments(config: Config, *, cron: str | None = None) -> list:
    """One `RunnerDeployment` of `scheduled_synthesis` per `schedules:` entry of the config.

    `cron` overrides every entry's cron expression (e.g. "* * * * *" to see a run within a minute).
    Returns an empty list when the config has no schedules.
    """
    out = []
    for i, entry in enumerate(config.data.get("schedules") or []):
        name = deployment_name(entry, i)
        expr = cron or entry["cron"]
        params = {**_config_parameters(config), "sources": entry.get("sources") or None, "name": name}
        out.append(scheduled_synthesis.to_deployment(
            name, schedules=[Cron(expr, timezone=entry.get("timezone"))], parameters=params,
            description=f"DataFlux synthesis of {entry.get('sources') or 'all sources'} on cron {expr!r}",
            tags=["dataflux", "synthesis"], entrypoint_type=EntrypointType.MODULE_PATH,
        ))
    return out


def training_preset_path(preset: str) -> str:
    """A training preset name ("tiny") -> modeling/configs/tiny.yaml (absolute); a path stays a path."""
    if preset.endswith((".yaml", ".yml")) or os.sep in preset:
        path = Path(preset).expanduser().resolve()
    else:
        package_dir = Path(next(iter(modeling.__path__)))  # also right when installed as a namespace package
        path = package_dir.resolve() / "configs" / f"{preset}.yaml"
    if not path.exists():
        raise ServeError(f"training.preset: {preset!r} resolves to {path}, which does not exist "
                         "(presets live in modeling/configs/*.yaml)")
    return str(path)


def finalized_trigger(config: Config, preset: str | None = None, overrides: list[str] | None = None):
    """A deployment trigger: each `dataflux.version.finalized` event of this config's catalog starts
    one training run on that version (`version` = the event's resource id) with `preset`."""
    preset = preset or config.data["training"].get("preset", "tiny")
    return DeploymentEventTrigger(
        name=f"dataflux-train-{Path(preset).stem}-on-finalize",
        description="Train on every version the synthesis flow finalizes",
        expect={FINALIZED_EVENT},
        match={CATALOG_LABEL: config.catalog_path},
        parameters={"version": "{{ event.resource.id }}", "config": training_preset_path(preset),
                    "catalog_path": config.catalog_path, "overrides": list(overrides or [])},
    )


def training_deployment(config: Config, *, preset: str | None = None, overrides: list[str] | None = None):
    """The training flow as a deployment that the finalized-version trigger runs.
    `overrides`: `section.key=value` settings for the preset, e.g. ["train.max_steps=200"]."""
    return train_flow.to_deployment(
        TRAINING_DEPLOYMENT, triggers=[finalized_trigger(config, preset, overrides)],
        description="Trains on a version as soon as it is finalized", tags=["dataflux", "training"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def require_api_url() -> str:
    """The Prefect API the deployments go to; refuses the ephemeral in-process API, where schedules
    and triggers never fire once the command exits."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise ServeError("PREFECT_API_URL is not set: start a server with `dataflux server` and "
                         "`export PREFECT_API_URL=http://127.0.0.1:4200/api` in this shell")
    return url


def serve_deployments(deployments: list, *, query_seconds: float = 1.0, limit: int | None = None) -> None:
    """Register `deployments` with the Prefect API and run their flow runs from this process until
    interrupted (Ctrl-C pauses the schedules)."""
    if not deployments:
        raise ServeError("nothing to serve: data_catalog.yaml has no `schedules:` and training was not asked for")
    require_api_url()
    serve(*deployments, query_seconds=query_seconds, limit=limit)


# --- a local server ----------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_env(home: str | os.PathLike | None = None) -> dict[str, str]:
    env = {**prefect_env.SERVER, **os.environ}
    env.pop("PREFECT_API_URL", None)  # the server must not try to talk to another server
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    return env


class LocalServer:
    """`prefect server start --host 127.0.0.1 --port PORT` in a child process.

        with LocalServer(port=free_port(), home=tmp) as server:
            os.environ["PREFECT_API_URL"] = server.api_url
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 4200, *, home: str | os.PathLike | None = None,
                 log: str | os.PathLike | None = None, timeout_s: float = SERVER_STARTUP_TIMEOUT_S):
        self.host, self.port, self.home, self.timeout_s = host, port, home, timeout_s
        self.log = Path(log) if log else None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def command(self) -> list[str]:
        prefect = Path(sys.executable).with_name("prefect")
        exe = [str(prefect)] if prefect.exists() else [sys.executable, "-m", "prefect"]
        return exe + ["server", "start", "--host", self.host, "--port", str(self.port), "--analytics-off"]

    def start(self) -> "LocalServer":
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), env=server_env(self.home), stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_healthy()
        return self

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServeError(f"prefect server exited with code {self.process.returncode} before it was "
                                 f"ready{'; see ' + str(self.log) if self.log else ''}")
            if server_healthy(self.api_url):
                return
            time.sleep(0.5)
        self.stop()
        raise ServeError(f"prefect server on {self.url} not healthy after {self.timeout_s:.0f} s"
                         + (f"; see {self.log}" if self.log else ""))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the server's own process group only
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def server_healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except OSError:
        return False

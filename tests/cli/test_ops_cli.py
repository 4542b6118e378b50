"""The operations commands and the deployments they build (no server needed)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from cli.main import main
from dataflux.config import load_config
from flows.artifacts import artifact_key
from flows.deploy import (
    CATALOG_LABEL,
    FINALIZED_EVENT,
    ServeError,
    schedule_deployments,
    server_healthy,
    free_port,
    training_deployment,
    training_preset_path,
)

CONFIG = """
version: 1
sources:
  tones: {kind: demo, size: 8, seed: 0}
  speech: {kind: demo, size: 8, seed: 1}
run: {partitions: 2}
training: {preset: tiny}
schedules:
  - {name: nightly tones, cron: "0 3 * * *", sources: [tones], timezone: Europe/Berlin}
  - {cron: "30 4 * * 1"}
"""


@pytest.fixture
def config_file(tmp_path, dataflux_home) -> Path:
    path = tmp_path / "data_catalog.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    return path


def test_one_cron_deployment_per_schedule_entry(config_file):
    config = load_config(config_file)
    first, second = schedule_deployments(config)
    assert first.name == "nightly-tones" and second.name == "schedule-1"
    assert first.entrypoint == "flows.deploy.scheduled_synthesis"
    assert first.schedules[0].schedule.cron == "0 3 * * *"
    assert first.schedules[0].schedule.timezone == "Europe/Berlin"
    assert second.schedules[0].schedule.cron == "30 4 * * 1"
    assert first.parameters == {"config_path": str(config_file.resolve()), "sources": ["tones"],
                                "name": "nightly-tones"}
    assert second.parameters["sources"] is None  # all sources, as the file lists them at run time
    overridden = schedule_deployments(config, cron="* * * * *")
    assert {d.schedules[0].schedule.cron for d in overridden} == {"* * * * *"}


def test_training_deployment_runs_on_finalized_versions_of_this_catalog(config_file):
    config = load_config(config_file)
    deployment = training_deployment(config, overrides=["train.max_steps=5"])
    assert deployment.flow_name == "train" and deployment.entrypoint == "flows.train.train_flow"
    (trigger,) = deployment.triggers
    assert trigger.expect == {FINALIZED_EVENT}
    assert trigger.match.model_dump() == {CATALOG_LABEL: config.catalog_path}
    assert trigger.parameters == {"version": "{{ event.resource.id }}", "config": training_preset_path("tiny"),
                                  "catalog_path": config.catalog_path, "overrides": ["train.max_steps=5"]}
    assert Path(trigger.parameters["config"]).name == "tiny.yaml" and Path(trigger.parameters["config"]).exists()


def test_unknown_training_preset_is_refused_with_where_presets_live(config_file):
    with pytest.raises(ServeError, match="modeling/configs"):
        training_deployment(load_config(config_file), preset="enormous")


def test_schedule_dry_run_lists_the_deployments(config_file, capsys):
    assert main(["schedule", "--config", str(config_file), "--with-training"]) == 0
    out = capsys.readouterr().out
    assert "scheduled-synthesis/nightly-tones: cron '0 3 * * *' (Europe/Berlin), sources ['tones']" in out
    assert "scheduled-synthesis/schedule-1: cron '30 4 * * 1', sources all" in out
    assert "train/train-on-finalize: on every dataflux.version.finalized event" in out
    assert "dry run" in out


def test_serving_without_a_server_says_how_to_start_one(config_file, monkeypatch, capsys):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["schedule", "--config", str(config_file), "--serve"]) == 2
    err = capsys.readouterr().err
    assert "PREFECT_API_URL is not set" in err and "dataflux server" in err


def test_schedule_without_schedules_or_training_is_an_error(tmp_path, dataflux_home, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("version: 1\nsources:\n  d: {kind: demo, size: 4}\n")
    assert main(["schedule", "--config", str(path)]) == 2
    assert "no deployments" in capsys.readouterr().err


def test_artifact_keys_are_what_prefect_accepts():
    assert artifact_key("v0012-Nightly_Tones.2") == "dataflux-v0012-nightly-tones-2"


def test_server_health_check_is_false_on_a_closed_port():
    assert server_healthy(f"http://127.0.0.1:{free_port()}/api", timeout_s=0.5) is False


def test_makefile_exports_the_same_prefect_and_ray_defaults_as_flows_prefect_env():
    from flows import prefect_env

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    exported = dict(re.findall(r"^export (\w+) \?= (\S+)$", makefile, flags=re.M))
    ours = {**prefect_env.OFFLINE, **prefect_env.RAY}
    wrong = {k: (v, ours.get(k)) for k, v in exported.items()
             if (k.startswith(("PREFECT_", "RAY_")) or k == "DO_NOT_TRACK") and ours.get(k) != v}
    assert not wrong, f"Makefile exports (value, flows/prefect_env.py value) that disagree: {wrong}"
    missing = [k for k in prefect_env.OFFLINE if k not in exported]
    assert not missing, f"Makefile lacks `export {missing[0]} ?= ...` that flows/prefect_env.py sets"


def test_server_env_keeps_the_callers_values_over_the_defaults(monkeypatch):
    from flows import prefect_env
    from flows.deploy import server_env

    monkeypatch.setenv("DO_NOT_TRACK", "0")
    monkeypatch.delenv("PREFECT_UI_ENABLED", raising=False)
    env = server_env()
    assert env["DO_NOT_TRACK"] == "0"
    assert env["PREFECT_UI_ENABLED"] == prefect_env.SERVER["PREFECT_UI_ENABLED"]
    assert "PREFECT_API_URL" not in env

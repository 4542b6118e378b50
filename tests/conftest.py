"""Shared fixtures: an isolated DataFlux home and Prefect running offline in ephemeral mode."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flows import prefect_env  # noqa: E402  (after the path above; before any test imports prefect)

prefect_env.apply({**prefect_env.COMMAND_LINE, **prefect_env.RAY})


@pytest.fixture
def dataflux_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "dfhome"
    monkeypatch.setenv("DATAFLUX_HOME", str(home))
    return home

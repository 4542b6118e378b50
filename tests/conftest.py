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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved tiny EurekaAudio checkpoint folder (tests/helpers/tiny_model.py), built once per run.
    Tests read it; one that needs to change it copies it first."""
    # imported here, not at the top: torch and transformers take seconds to load, and most tests never need them
    from tests.helpers.tiny_model import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-v1")


@pytest.fixture
def tiny_model_and_processor(tiny_checkpoint):
    """A fresh tiny model (in eval mode) and its processor, loaded from `tiny_checkpoint`, so what one test
    does to them never reaches another."""
    # imported here, not at the top: torch and transformers take seconds to load, and most tests never need them
    from modeling.model import EurekaAudioForCausalLM
    from modeling.processor import EurekaAudioProcessor

    return EurekaAudioForCausalLM.from_pretrained(tiny_checkpoint).eval(), EurekaAudioProcessor.from_pretrained(
        tiny_checkpoint)

"""Prefect's environment defaults, in one place.

Prefect reads its settings from the environment when it is first imported, so every entry point
(the `dataflux` commands, the local server, the tests) applies these before importing it. Each is
a default: a value already in the environment wins. The Makefile exports the same values for
scripts run through it; tests/cli/test_ops_cli.py checks the two agree.
"""

from __future__ import annotations

import os

# Offline and quiet about it: no usage analytics, and room for the ephemeral API to start on a busy machine.
OFFLINE = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
# The `dataflux` commands and the tests: a flow's log lines only from warnings up.
COMMAND_LINE = {**OFFLINE, "PREFECT_LOGGING_LEVEL": "WARNING"}
# `dataflux server`, `schedule` and `trigger`: the server with its UI.
SERVER = {**OFFLINE, "PREFECT_UI_ENABLED": "true"}
# Ray, for `run.task_runner: ray`: no usage statistics, no token for a local cluster.
RAY = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def apply(defaults: dict[str, str] = COMMAND_LINE) -> None:
    """Set each of `defaults` in os.environ unless it is already set."""
    for key, value in defaults.items():
        os.environ.setdefault(key, value)

"""Where DataFlux keeps its state (catalog, shards, caches live under one directory), and which
catalog a command uses.

One rule for every command (`dataflux` data commands, train, the ops commands):
1. a config file named on the command line (`--config`, `--data-config`) decides;
2. else `DATAFLUX_HOME`, when set, decides: its catalog, the embedded defaults, no ./data_catalog.yaml;
3. else ./data_catalog.yaml, when there is one;
4. else the defaults: `./.dataflux/catalog.duckdb`.
`config_file` says which file applies; the catalog is then that config's `catalog_path`, or
`default_catalog_path()` where no file applies. (A command's own `--catalog` flag names the file
outright and goes before all of these.)
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = ".dataflux"
PROJECT_CONFIG = "data_catalog.yaml"


def dataflux_home() -> Path:
    """`DATAFLUX_HOME` if set, else `./.dataflux` (relative to the working directory)."""
    return Path(os.environ.get("DATAFLUX_HOME", DEFAULT_HOME)).expanduser()


def default_catalog_path() -> Path:
    return dataflux_home() / "catalog.duckdb"


def default_shard_root() -> Path:
    return dataflux_home() / "shards"


def config_file(named: str | os.PathLike[str] | None = None) -> Path | None:
    """The data_catalog.yaml a command uses (see the module's rule), or None: the home's defaults."""
    if named:
        return Path(named)
    if os.environ.get("DATAFLUX_HOME"):
        return None
    return Path(PROJECT_CONFIG) if os.path.isfile(PROJECT_CONFIG) else None

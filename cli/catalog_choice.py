"""Which catalog a command reads or writes, from its flags and the working directory.

`--config FILE` names a data_catalog.yaml (its object-store settings are applied, so versions on
`s3://` can be read); without it, the rule of `dataflux.home.config_file` applies (./data_catalog.yaml
unless DATAFLUX_HOME is set, else <dataflux home>/catalog.duckdb).
"""

from __future__ import annotations

import os

from dataflux.config import load_config
from dataflux.home import config_file, default_catalog_path
from dataflux.pipeline import use_object_store
from dataflux.storage.catalog import Catalog


def open_catalog(args, *, read_only: bool = False) -> Catalog:
    """The catalog of `args.config`, of ./data_catalog.yaml, or of the dataflux home (in that order)."""
    named = config_file(getattr(args, "config", None))
    if named is None:
        return Catalog(default_catalog_path(), read_only=read_only)
    config = load_config(named)
    if getattr(args, "config", None):
        use_object_store(config)
    return Catalog(config.catalog_path, read_only=read_only)


def open_catalog_for_reading(args) -> Catalog:
    """`open_catalog` for the report commands: the object-store settings of --config, else of
    ./data_catalog.yaml, are applied even where the catalog itself comes from the dataflux home."""
    path = args.config or ("data_catalog.yaml" if os.path.exists("data_catalog.yaml") else None)
    if path:
        use_object_store(load_config(path))
    return open_catalog(args, read_only=True)

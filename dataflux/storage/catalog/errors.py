"""What the catalog refuses to do, one class per reason; every message says what and how to proceed."""

from __future__ import annotations


class CatalogError(Exception):
    """Something the catalog refuses to do; the message says what and how to proceed."""


class VersionNotFound(CatalogError, LookupError):
    pass


class VersionNotFinalized(CatalogError):
    pass


class VersionImmutable(CatalogError):
    pass


class PartitionAlreadyCommitted(CatalogError):
    pass


class QueryRefused(CatalogError):
    """A user's SQL statement was refused or failed (dataflux.storage.sql_sandbox); one-line message."""


class CatalogReadOnly(CatalogError):
    pass


class CatalogDamaged(CatalogError):
    """The catalog file is not a whole DuckDB database (garbage, empty or cut short). It was only
    read, never written; the message names the file and what to do."""

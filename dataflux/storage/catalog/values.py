"""How Python values go into the catalog's SQL and come back out: JSON columns, timestamps, literals."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from dataflux.storage.catalog.errors import CatalogError


def now() -> datetime:
    """UTC now without tzinfo: the catalog's TIMESTAMP columns hold naive UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def json_text(value: Any, what: str) -> str | None:
    """JSON column value: None stays NULL, a str must already be JSON, anything else is serialised."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError as e:
            raise CatalogError(f"{what}: not valid JSON text ({e}): {value[:80]!r}") from e
        return value
    return json.dumps(value, sort_keys=True, default=str)


def json_value(text: Any) -> Any:
    return json.loads(text) if isinstance(text, str) else text


def iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def read_parquet_sql(paths: list[str]) -> str:
    # by name: a version may hold shards written before a column (e.g. `task`) was added
    return "read_parquet([" + ", ".join(sql_str(p) for p in paths) + "], union_by_name = true)"

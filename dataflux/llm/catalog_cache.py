"""The model-call cache kept in the catalog's DuckDB file: request hash -> response, for every run.

A `CallCache` (`dataflux.llm.cache`) whose rows live in the catalog's `calls` table, so a rerun
over the same catalog answers its repeated calls without a request. The table is created with
the catalog's others (`dataflux.storage.catalog.schema`); this module reads and writes it through
the catalog's short connections (`connect`, `transaction`), taking turns with the pipeline's writes.
"""

from __future__ import annotations

import os
from typing import Any

from dataflux.storage.catalog import Catalog
from dataflux.storage.catalog.values import iso, json_text, json_value, now


def _record(cols: list[str], row: tuple) -> dict[str, Any]:
    rec = dict(zip(cols, row))
    rec["response"] = json_value(rec["response"])
    rec["created_at"] = iso(rec["created_at"])
    return rec


class CatalogCallCache:
    """`cache_get`/`cache_put` and their batched forms on the `calls` table of `catalog` (a `Catalog`
    or the path of its file)."""

    def __init__(self, catalog: Catalog | str | os.PathLike[str]):
        self.catalog = catalog if isinstance(catalog, Catalog) else Catalog(catalog)

    def __repr__(self) -> str:
        return f"CatalogCallCache({str(self.catalog.path)!r})"

    def cache_get(self, request_sha256: str) -> dict[str, Any] | None:
        """The cached call for a request hash: {request_sha256, step, model, response, tokens_in,
        tokens_out, cost_usd, latency_s, created_at}, `response` parsed from JSON; None on a miss."""
        with self.catalog.connect() as con:
            cur = con.execute("SELECT * FROM calls WHERE request_sha256 = ?", [request_sha256])
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return _record(cols, rows[0]) if rows else None

    def cache_put(self, request_sha256: str, step: str, model: str, response: Any, tokens_in: int = 0,
                  tokens_out: int = 0, cost_usd: float = 0.0, latency_s: float = 0.0) -> bool:
        """Store a call's response under its request hash; the first stored response wins.
        Returns True when stored, False when the hash was already present."""
        with self.catalog.transaction() as con:
            before = con.execute("SELECT count(*) FROM calls WHERE request_sha256 = ?", [request_sha256]).fetchall()
            if before[0][0]:
                return False
            con.execute("INSERT INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [request_sha256, step, model, json_text(response, f"call {request_sha256}: response"),
                         int(tokens_in), int(tokens_out), float(cost_usd), float(latency_s), now()])
        return True

    def cache_get_many(self, request_sha256s: list[str]) -> dict[str, dict[str, Any]]:
        """`cache_get` for many hashes in one query: {hash: cached call} for the hashes found."""
        keys = sorted(set(request_sha256s))
        if not keys:
            return {}
        with self.catalog.connect() as con:
            cur = con.execute("SELECT * FROM calls WHERE request_sha256 IN (SELECT unnest(?::VARCHAR[]))", [keys])
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return {rec["request_sha256"]: rec for rec in (_record(cols, row) for row in rows)}

    def cache_put_many(self, calls: list[dict[str, Any]]) -> int:
        """`cache_put` for many calls (dicts of its arguments) in one transaction; the first stored
        response of a hash wins, within the batch too. Returns how many were stored."""
        first: dict[str, dict[str, Any]] = {}
        for c in calls:
            first.setdefault(c["request_sha256"], c)
        if not first:
            return 0
        rows = list(first.values())
        columns = [
            [c["request_sha256"] for c in rows], [c["step"] for c in rows], [c["model"] for c in rows],
            [json_text(c["response"], f"call {c['request_sha256']}: response") for c in rows],
            [int(c.get("tokens_in", 0)) for c in rows], [int(c.get("tokens_out", 0)) for c in rows],
            [float(c.get("cost_usd", 0.0)) for c in rows], [float(c.get("latency_s", 0.0)) for c in rows],
        ]
        with self.catalog.transaction() as con:
            before = con.execute("SELECT count(*) FROM calls").fetchall()[0][0]
            con.execute(
                "INSERT OR IGNORE INTO calls SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                "unnest(?::VARCHAR[]), unnest(?::VARCHAR[])::JSON, unnest(?::BIGINT[]), unnest(?::BIGINT[]), "
                "unnest(?::DOUBLE[]), unnest(?::DOUBLE[]), ?", [*columns, now()])
            after = con.execute("SELECT count(*) FROM calls").fetchall()[0][0]
        return int(after - before)

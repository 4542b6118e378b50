"""Phase 4, filter: drop duplicate rows, keep only measured rows where the source asks, balance
answer positions, then add the rows of the source's other tasks."""

from __future__ import annotations

from dataflux.pipeline.prepare import Prepared
from dataflux.records import Clip, Reject
from dataflux.steps.filter import dedupe, rebalance_positions
from dataflux.steps.task_rows import task_rows


def filter_rows(prepared: Prepared, clips: list[Clip], rows: list[dict]) -> tuple[list[dict], list[Reject], int]:
    """(rows kept, rejects, rows whose answer position was moved)."""
    rows, rejects = dedupe(rows, prepared.filters)
    if prepared.require_measured:
        rows, unmeasured = keep_measured(rows)
        rejects.extend(unmeasured)
    rows.sort(key=lambda r: r["sample_id"])
    rows, balance = rebalance_positions(rows, prepared.filters.max_position_share)
    moved = int(balance.get("moved", 0)) if isinstance(balance, dict) else 0
    if prepared.tasks != ("mcq",):
        extra, task_rejects = task_rows(clips, rows, prepared.tasks, prepared.categories)
        rows.extend(extra)
        rejects.extend(task_rejects)
    return rows, rejects, moved


def keep_measured(rows: list[dict]) -> tuple[list[dict], list[Reject]]:
    """Rows a measurement verified, and a reject (reason not_measured) for each other row."""
    kept, rejects = [], []
    for r in rows:
        if r.get("verification") == "measured":
            kept.append(r)
            continue
        rejects.append(Reject(r["source"], r["source_id"], "filter", "not_measured",
                              f"{r['l3']}: verified {r.get('verification')!r}; the source requires measured rows",
                              sample_id=r["sample_id"], audio_sha256=r["audio_sha256"], extra={"leaf": r["l3"]}))
    return kept, rejects

"""Runs and the ledger: which run built what, how it ended, what it rejected and what each item became.

`reject_row` and `item_row` turn a partition's rejects and ledger items into catalog rows (the
version store records them with the partition's shard, in one transaction); `RunLedger` records
runs of the pipeline and trainings of a version.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from dataflux.storage.catalog.connection import CatalogFile
from dataflux.storage.catalog.errors import CatalogError
from dataflux.storage.catalog.values import iso, json_text, json_value, now


def reject_row(vid: str, key: str, run_id: str | None, r: Any) -> list[Any]:
    d = dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r)
    where = f"reject {d.get('source')}/{d.get('source_id')} in partition {key!r}"
    for required in ("stage", "reason"):
        if not d.get(required):
            raise CatalogError(f"{where}: field {required!r} is empty; every reject needs a stage and reason code")
    return [vid, key, d.get("run_id", run_id), d.get("source"), d.get("source_id"), d.get("sample_id"),
            d.get("audio_sha256"), d["stage"], d["reason"], d.get("detail", ""),
            json_text(d.get("extra") or None, f"{where}: extra")]


def item_row(vid: str, key: str, it: dict[str, Any]) -> list[Any]:
    where = f"ledger item {it.get('source')}/{it.get('source_id')} in partition {key!r}"
    if not it.get("source_id") and it.get("source_id") != 0:
        raise CatalogError(f"{where}: field 'source_id' is empty")
    return [vid, key, it.get("source"), str(it.get("source_id")), it.get("audio_sha256"),
            int(it.get("n_rows") or 0), it.get("status"), json_text(it.get("planted"), f"{where}: planted")]


class RunLedger(CatalogFile):
    """Runs of the pipeline and trainings of a version. Methods that name a version check it
    exists (`_require_version`, from the version store the catalog is composed with)."""

    def record_run(self, run_id: str, version_id: str, flow_run_id: str | None = None,
                   status: str = "running", counts: dict[str, Any] | None = None) -> None:
        """Start (or restart, for a resumed run with the same id) a run of `version_id`."""
        with self.transaction() as con:
            self._require_version(con, version_id)
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, NULL, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
                "flow_run_id = excluded.flow_run_id, status = excluded.status, ended_at = NULL",
                [run_id, version_id, flow_run_id, now(), status, json_text(counts, f"run {run_id}: counts")],
            )

    def finish_run(self, run_id: str, status: str = "completed", counts: dict[str, Any] | None = None) -> None:
        with self.transaction() as con:
            n = con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]
            if not n:
                raise CatalogError(f"unknown run {run_id!r}; call record_run first")
            con.execute("UPDATE runs SET ended_at = ?, status = ?, counts = coalesce(?, counts) WHERE run_id = ?",
                        [now(), status, json_text(counts, f"run {run_id}: counts"), run_id])

    def mark_interrupted_runs(self, except_run_id: str | None = None) -> list[str]:
        """Mark every run still `running` (other than `except_run_id`) as `interrupted`; returns their ids.

        Call it only while holding the writer lock (`dataflux.storage.writer_lock`): a run holds the
        lock for its whole life, so a run still `running` when another holds it has died."""
        with self.transaction() as con:
            ids = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'running' AND run_id <> ?",
                                             [except_run_id or ""]).fetchall()]
            if ids:
                con.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running' AND run_id <> ?",
                            [except_run_id or ""])
        return ids

    def get_run(self, run_id: str) -> dict[str, Any]:
        with self.connect() as con:
            cur = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        if not rows:
            raise CatalogError(f"unknown run {run_id!r}")
        rec = dict(zip(cols, rows[0]))
        rec["counts"] = json_value(rec["counts"])
        return {k: iso(v) for k, v in rec.items()}

    def record_training(self, training_id: str, version_id: str, checkpoint: str | None = None,
                        config: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                        status: str = "running", started_at: datetime | None = None,
                        ended_at: datetime | None = None) -> None:
        """Insert or update one training run of a version (checkpoint <- version)."""
        with self.transaction() as con:
            self._require_version(con, version_id)
            con.execute(
                "INSERT INTO trainings VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (training_id) DO UPDATE SET "
                "checkpoint = coalesce(excluded.checkpoint, trainings.checkpoint), "
                "config = coalesce(excluded.config, trainings.config), "
                "metrics = coalesce(excluded.metrics, trainings.metrics), "
                "ended_at = coalesce(excluded.ended_at, trainings.ended_at), status = excluded.status",
                [training_id, version_id, checkpoint, json_text(config, "training config"),
                 json_text(metrics, "training metrics"), started_at or now(), ended_at, status],
            )

    def trainings(self, version_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM trainings" + (" WHERE version_id = ?" if version_id else "") + " ORDER BY started_at"
        with self.connect() as con:
            cur = con.execute(sql, [version_id] if version_id else [])
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        out = []
        for r in rows:
            rec = dict(zip(cols, r))
            rec["config"] = json_value(rec["config"])
            rec["metrics"] = json_value(rec["metrics"])
            out.append({k: iso(v) for k, v in rec.items()})
        return out

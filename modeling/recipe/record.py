"""What a run records: one JSON line per logged step in `metrics.jsonl`, and its entry in the catalog
(`Catalog.record_training`: checkpoint <- version, config, metrics, status)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dataflux.storage.catalog import Catalog


def append_jsonl(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")


class CatalogRecord:
    """The run's catalog entry; does nothing when not recording (or off the main process)."""

    def __init__(self, catalog_path: str | Path | None, training_id: str, version: str, enabled: bool):
        self.catalog = Catalog(catalog_path) if enabled else None
        self.training_id, self.version = training_id, version

    def _record(self, **fields: Any) -> None:
        if self.catalog is not None:
            self.catalog.record_training(self.training_id, self.version, **fields)

    def running(self, config: dict[str, Any]) -> None:
        self._record(checkpoint=None, config=config, status="running")

    def failed(self) -> None:
        self._record(status="failed", ended_at=datetime.now(timezone.utc))

    def interrupted(self) -> None:
        self._record(status="interrupted")

    def completed(self, checkpoint: str, metrics: dict[str, Any]) -> None:
        self._record(checkpoint=checkpoint, metrics=metrics, status="completed", ended_at=datetime.now(timezone.utc))

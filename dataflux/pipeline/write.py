"""Phase 5, write: stamp the rows with run and code version, write the partition's one shard, and
record in the ledger what became of each clip."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from dataflux import __version__
from dataflux.records import Clip, ledger_entry
from dataflux.storage.row_schema import row_content_sha256
from dataflux.storage.shards import shard_path, unique_tag, write_shard


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"dataflux-{__version__}" + (f"+{sha}" if sha else "")


def write(storage_root: str, clips: list[Clip], rows: list[dict], *, version_id: str, key: str,
          run_id: str) -> tuple[Any, list[dict]]:
    """(the shard written, or None when no rows; the kept clips' ledger entries). Sorts `rows` in place."""
    version = code_version()
    per_clip_rows: dict[tuple[str, str], int] = {}
    for row in rows:
        row["run_id"] = run_id
        row["code_version"] = version
        row["row_sha256"] = row_content_sha256(row)
        clip_key = (row["source"], row["source_id"])
        per_clip_rows[clip_key] = per_clip_rows.get(clip_key, 0) + 1
    rows.sort(key=lambda r: r["sample_id"])
    ledger = []
    for clip in clips:
        # By the clip's own id, not its audio hash: a copy of another clip's file whose rows were all
        # dropped as duplicates holds nothing in the version and must not be `kept`.
        n = per_clip_rows.get((clip.item.source, clip.item.source_id), 0)
        ledger.append(ledger_entry(clip.item.source, clip.item.source_id, clip.audio_sha256,
                                   "kept" if n else "no_rows", clip.item.meta.get("planted"), n))
    shard = write_shard(rows, shard_path(storage_root, version_id, key, tag=unique_tag(run_id))) if rows else None
    return shard, ledger

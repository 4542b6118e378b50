"""Shard files a dead run wrote but never committed.

A run writes a partition's shard before committing it; a run killed in between leaves the file
behind (and perhaps a `.tmp` file it was writing). Names carry the writing run's id
(`<partition>.<run_id>.<token>.parquet`), so a later run, holding the writer lock, can tell such
orphans apart from committed shards and from files it does not know: only files of *this*
catalog's ended runs that no version lists are removed.
"""

from __future__ import annotations

import os
from pathlib import Path


def orphan_shards(catalog, vid: str, storage_root: str, current_run_id: str) -> list[Path]:
    """Files under `<storage_root>/<vid>/` written by an ended run of `catalog` and committed nowhere."""
    if "://" in storage_root:
        return []
    directory = Path(storage_root) / vid
    if not directory.is_dir():
        return []
    ended = {r[0] for r in catalog._fetch("SELECT run_id FROM runs WHERE status <> 'running'")
             if r[0] and r[0] != current_run_id}
    committed = {os.path.realpath(catalog._full_path(p))
                 for (p,) in catalog._fetch("SELECT path FROM shards WHERE path IS NOT NULL") if "://" not in p}
    out = []
    for f in directory.iterdir():
        # <partition>.<run_id>.<token>.parquet, or its temporary `.<that>.<pid>.<token>.tmp`
        if any(f".{run_id}." in f.name for run_id in ended) and os.path.realpath(f) not in committed:
            out.append(f)
    return sorted(out)


def remove_orphan_shards(catalog, vid: str, storage_root: str, current_run_id: str) -> list[Path]:
    """Delete `orphan_shards(...)`; call only while holding the catalog's writer lock. Returns them."""
    removed = orphan_shards(catalog, vid, storage_root, current_run_id)
    for f in removed:
        f.unlink(missing_ok=True)
    return removed

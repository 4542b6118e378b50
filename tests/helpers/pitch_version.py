"""Rows about pure tones (the answer is the tone played) and a catalog version holding them: the input the
evaluation and task tests score a model on."""

from __future__ import annotations

from pathlib import Path

from dataflux.storage.catalog import Catalog
from dataflux.storage.example_row import make_example_row, tone_wav_bytes
from dataflux.storage.shards import shard_path, write_shard

FREQS = [110.0, 220.0, 440.0, 880.0]


def pitch_rows(n: int = 8, splits: tuple[str, ...] = ("train",)) -> list[dict]:
    """Rows about tones of 110-880 Hz (answer = the tone played), each at its own length; row i is in
    split `splits[i]` (the last split for the rows past the end)."""
    return [make_example_row(f"clip-{i}", answer_index=i % 4, audio_bytes=tone_wav_bytes(FREQS[i % 4], 0.3 + 0.05 * i),
                             split=splits[min(i, len(splits) - 1)])
            for i in range(n)]


def finished_version(home: Path, rows: list[dict], finalize: bool = True) -> str:
    """A version of `rows` in one partition of the catalog under `home`, finalized unless told not to."""
    catalog = Catalog(home / "catalog.duckdb")
    vid = catalog.create_version("eval")
    catalog.record_run("run-1", vid)
    info = write_shard(rows, shard_path(home / "shards", vid, "demo-p0"))
    items = [{"source": r["source"], "source_id": r["source_id"], "audio_sha256": None, "n_rows": 1,
              "status": "kept", "planted": None} for r in rows]
    catalog.commit_partition(vid, "demo-p0", info, [], items, "run-1")
    if finalize:
        catalog.finalize(vid)
    return vid

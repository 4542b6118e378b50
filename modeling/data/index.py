"""The version's index: one light entry per row (where it is, its split, duration, category, task),
read from the verified shards of a finalized version without touching the audio.

Reading a version goes through the catalog (`Catalog.shard_paths`), which refuses drafts and shards
whose sha256 no longer matches, so the trainer never learns from data it cannot name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dataflux.storage.catalog import Catalog

INDEX_COLUMNS = ["sample_id", "split", "duration_s", "l3"]
# Read when a shard has them (older versions do not): whether our own model answered the row right,
# and the row's task (a missing `task` is mcq).
OPTIONAL_INDEX_COLUMNS = ["model_correct", "task"]
# Read when a shard has it, to leave out train rows answerable without their audio (None: not asked, kept).
AUDIO_NEEDED = "audio_needed"
SPLITS = ("train", "validation", "test")
TASKS = ("mcq", "asr", "caption", "open_qa")


def version_shard_paths(version: str, catalog_path: str | Path | None = None) -> list[str]:
    """Verified shard paths of a finalized version.

    Raises the catalog's `VersionNotFinalized` for a draft and `ChecksumMismatch`/`ShardMissing` for a
    shard that changed on disk; both messages say what to do.
    """
    catalog = Catalog(catalog_path, read_only=True)
    paths = catalog.shard_paths(version)
    if not paths:
        raise ValueError(f"version {version} in {catalog.path} has no shards: nothing to train on")
    return paths


@dataclass
class VersionIndex:
    """One entry per row of the version: where it is and how long its audio lasts.

    paths: shard paths; shard (N,) and row (N,) locate each row; split, duration_s, l3 (N,) come
    from the recorded columns; task (N,) too, None when no shard records one (every row is mcq).
    """

    paths: list[str]
    shard: np.ndarray
    row: np.ndarray
    sample_id: np.ndarray
    split: np.ndarray
    duration_s: np.ndarray
    l3: np.ndarray
    model_correct: np.ndarray | None = None  # (N,) True / False / None (not asked); None: no shard has it
    task: np.ndarray | None = None  # (N,) mcq | asr | caption | open_qa; None: no shard has the column
    text_answerable_left_out: int = 0  # train rows left out as answerable without their audio

    @classmethod
    def build(cls, paths: Sequence[str], *, require_measured: bool = False,
              include_text_answerable: bool = True) -> "VersionIndex":
        """`require_measured`: index only rows whose `verification` is "measured" (train.require_measured).
        `include_text_answerable=False`: leave out train-split rows with `audio_needed` false (rows with
        None, and shards without the column, are kept; validation and test rows always are)."""
        cols: dict[str, list] = {c: [] for c in INDEX_COLUMNS + OPTIONAL_INDEX_COLUMNS}
        shard, row = [], []
        seen_optional: set[str] = set()
        left_out = 0
        wanted = INDEX_COLUMNS + (["verification"] if require_measured else [])
        for s, path in enumerate(paths):
            pf = pq.ParquetFile(path)
            missing = [c for c in wanted if c not in pf.schema_arrow.names]
            if missing:
                raise ValueError(f"{path}: shard lacks column(s) {missing} of the row contract; rebuild the version"
                                 + (" (train.require_measured needs rows that record their verification)"
                                    if "verification" in missing else ""))
            optional = [c for c in OPTIONAL_INDEX_COLUMNS if c in pf.schema_arrow.names]
            seen_optional.update(optional)
            blind = [AUDIO_NEEDED] if not include_text_answerable and AUDIO_NEEDED in pf.schema_arrow.names else []
            n = 0
            for batch in pf.iter_batches(columns=wanted + optional + blind, batch_size=4096):
                keep = ([v == "measured" for v in batch.column("verification").to_pylist()] if require_measured
                        else [True] * batch.num_rows)
                if blind:
                    answerable = [k and needed is False and split == "train" for k, needed, split in zip(
                        keep, batch.column(AUDIO_NEEDED).to_pylist(), batch.column("split").to_pylist())]
                    left_out += sum(answerable)
                    keep = [k and not a for k, a in zip(keep, answerable)]
                for c in INDEX_COLUMNS + optional:
                    cols[c].extend(v for v, k in zip(batch.column(c).to_pylist(), keep) if k)
                for c in set(OPTIONAL_INDEX_COLUMNS) - set(optional):
                    cols[c].extend([None] * sum(keep))
                row.extend(n + i for i, k in enumerate(keep) if k)
                shard.extend([s] * sum(keep))
                n += batch.num_rows
        bad = sorted({s for s in cols["split"] if s not in SPLITS})
        if bad:
            raise ValueError(f"version rows carry unknown split value(s) {bad}; expected one of {SPLITS}")
        return cls(
            paths=list(paths), shard=np.asarray(shard, dtype=np.int64), row=np.asarray(row, dtype=np.int64),
            sample_id=np.asarray(cols["sample_id"], dtype=object), split=np.asarray(cols["split"], dtype=object),
            duration_s=np.asarray(cols["duration_s"], dtype=np.float64), l3=np.asarray(cols["l3"], dtype=object),
            model_correct=np.asarray(cols["model_correct"], dtype=object) if "model_correct" in seen_optional else None,
            task=np.asarray([t or "mcq" for t in cols["task"]], dtype=object) if any(cols["task"]) else None,
            text_answerable_left_out=left_out,
        )

    def __len__(self) -> int:
        return len(self.shard)

    def rows_of(self, splits: str | Sequence[str], tasks: Sequence[str] | None = None) -> np.ndarray:
        """Index positions of the rows in the given split(s), of the given tasks only when named."""
        splits = [splits] if isinstance(splits, str) else list(splits)
        keep = np.isin(self.split, splits)
        if tasks is not None:
            keep &= np.isin(self.task_of(np.arange(len(self))), list(tasks))
        return np.nonzero(keep)[0]

    def task_of(self, positions: np.ndarray) -> np.ndarray:
        """The task of each position (mcq for a version without task rows)."""
        if self.task is None:
            return np.full(len(positions), "mcq", dtype=object)
        return self.task[positions]

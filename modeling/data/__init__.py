"""Training data from a finished version: verified shards -> light index -> length-bucketed batches.

Reading a version goes through the catalog (`Catalog.shard_paths`), which refuses drafts and shards
whose sha256 no longer matches, so the trainer never learns from data it cannot name.

* `VersionIndex` (index.py) reads only the small columns (split, duration, category) of every
  shard, streamed with `iter_batches`: one entry per row, no audio.
* `BucketBatchSampler` (sampler.py) plans an epoch from the index alone, deterministically from
  (seed, epoch): shards are shuffled and taken a window at a time (so only a window of shards is
  ever held in memory), rows inside a window are shuffled, sorted by duration in pools of a few
  batches (little padding) and cut into batches whose order is then shuffled. Ranks take every
  world_size-th batch. With `hard_example_weight`, rows our own model answered wrong
  (`model_correct`) are drawn more often.
* `RowReader` (rows.py) fetches the rows of a batch (audio bytes, messages, choices...) from the
  window's shards, streaming each shard once with `iter_batches` and keeping only the current window.
  Audio is decoded by the project's one decoder, `dataflux.audio.decode.decode_audio`.
* `Collator` (collate.py) computes features and tokens through the processor, optionally packs
  several examples into one row.
* `TrainLoader` (loader.py) ties them together and carries the data position: `state_dict()` is the
  epoch and the number of batches already consumed in it; `load_state_dict()` resumes at the next
  batch without reading the skipped ones.

Legend: B batch, L tokens, M mel bins, F mel frames.
"""

from __future__ import annotations

from modeling.data.collate import Collator, ExampleCache, permute_options
from modeling.data.index import SPLITS, TASKS, VersionIndex, version_shard_paths
from modeling.data.loader import TrainLoader, build_loader
from modeling.data.rows import ROW_COLUMNS, RowReader, decode_row_audio, read_texts, row_where
from modeling.data.sampler import BucketBatchSampler

__all__ = ["ROW_COLUMNS", "SPLITS", "TASKS", "BucketBatchSampler", "Collator", "ExampleCache", "RowReader",
           "TrainLoader", "VersionIndex", "build_loader", "decode_row_audio", "permute_options", "read_texts",
           "row_where", "version_shard_paths"]

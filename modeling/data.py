"""Training data from a finished version: verified shards -> light index -> length-bucketed batches.

Reading a version goes through the catalog (`Catalog.shard_paths`), which refuses drafts and shards
whose sha256 no longer matches, so the trainer never learns from data it cannot name.

* `VersionIndex` reads only the small columns (split, duration, category) of every shard, streamed
  with `iter_batches`: one entry per row, no audio.
* `BucketBatchSampler` plans an epoch from the index alone, deterministically from (seed, epoch):
  shards are shuffled and taken a window at a time (so only a window of shards is ever held in
  memory), rows inside a window are shuffled, sorted by duration in pools of a few batches (little
  padding) and cut into batches whose order is then shuffled. Ranks take every world_size-th batch.
  With `hard_example_weight`, rows our own model answered wrong (`model_correct`) are drawn more often.
* `RowReader` fetches the rows of a batch (audio bytes, messages, choices...) from the window's shards,
  streaming each shard once with `iter_batches` and keeping only the current window.
* `Collator` decodes audio, computes features and tokens through the processor, optionally packs
  several examples into one row.
* `TrainLoader` ties them together and carries the data position: `state_dict()` is the epoch and
  the number of batches already consumed in it; `load_state_dict()` resumes at the next batch
  without reading the skipped ones.

Legend: B batch, L tokens, M mel bins, F mel frames.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from modeling.eval import LETTERS, option_lines
from modeling.processor import IGNORE_INDEX, EurekaAudioProcessor

INDEX_COLUMNS = ["sample_id", "split", "duration_s", "l3"]
# Read when a shard has them (older versions do not): whether our own model answered the row right,
# and the row's task (a missing `task` is mcq).
OPTIONAL_INDEX_COLUMNS = ["model_correct", "task"]
ROW_COLUMNS = ["sample_id", "audio", "messages", "l3", "question", "choices", "answer", "answer_index", "split",
               "task", "audio_sha256"]
# Columns a shard written before they existed may lack: read as None (a missing `task` is mcq).
OPTIONAL_COLUMNS = frozenset({"task", "audio_sha256"})
SPLITS = ("train", "validation", "test")
TASKS = ("mcq", "asr", "caption", "open_qa")


def version_shard_paths(version: str, catalog_path: str | Path | None = None) -> list[str]:
    """Verified shard paths of a finalized version.

    Raises the catalog's `VersionNotFinalized` for a draft and `ChecksumMismatch`/`ShardMissing` for a
    shard that changed on disk; both messages say what to do.
    """
    from dataflux.storage.catalog import Catalog

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

    @classmethod
    def build(cls, paths: Sequence[str], *, require_measured: bool = False) -> "VersionIndex":
        """`require_measured`: index only rows whose `verification` is "measured" (train.require_measured)."""
        cols: dict[str, list] = {c: [] for c in INDEX_COLUMNS + OPTIONAL_INDEX_COLUMNS}
        shard, row = [], []
        seen_optional: set[str] = set()
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
            n = 0
            for batch in pf.iter_batches(columns=wanted + optional, batch_size=4096):
                keep = ([v == "measured" for v in batch.column("verification").to_pylist()] if require_measured
                        else [True] * batch.num_rows)
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


class BucketBatchSampler:
    """Deterministic, resumable length-bucketed batches of index positions (see the module docstring).

    Args:
        index: the version index; positions: which entries to draw from (e.g. the train split).
        batch_size: examples per batch; max_batch_seconds: optional cap on total audio per batch.
        shuffle: False gives shard order and duration-sorted pools without randomness (evaluation).
        shards_per_window: shards planned and held in memory together.
        pool_batches: batches per duration-sorted pool.
        rank, world_size: this process's share under DDP (every world_size-th batch).
        drop_last: drop the final short batch of each window (training).
        hard_example_weight: rows our own model answered wrong (index.model_correct False) are drawn
            this many times as often as the others, inside each category's share of the epoch
            (1: off). Like the rest of the plan, a pure function of (seed, epoch): resumable.
    """

    def __init__(
        self,
        index: VersionIndex,
        positions: np.ndarray,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        max_batch_seconds: float | None = None,
        shards_per_window: int = 4,
        pool_batches: int = 16,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        balance_categories: float = 0.0,
        category_weights: dict[str, float] | None = None,
        category_stages: Sequence[dict[str, Any]] | None = None,
        hard_example_weight: float = 1.0,
        task_weights: dict[str, float] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(positions) == 0:
            raise ValueError("no rows to sample from (is the split empty in this version?)")
        self.index, self.positions = index, np.asarray(positions)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.max_batch_seconds = max_batch_seconds
        self.shards_per_window, self.pool_batches = shards_per_window, pool_batches
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        if not 0.0 <= balance_categories <= 1.0:
            raise ValueError(f"balance_categories must be between 0 and 1, got {balance_categories}")
        self.balance_categories = balance_categories if shuffle else 0.0
        self.category_weights = dict(category_weights or {}) if shuffle else {}
        # a curriculum: stage i's weights for its `epochs` epochs, in order, then category_weights
        self.stage_of_epoch: list[dict[str, float]] = []
        for i, stage in enumerate((category_stages or []) if shuffle else []):
            epochs = stage.get("epochs")
            if not isinstance(epochs, int) or epochs < 1:
                raise ValueError(f"category_stages[{i}].epochs must be an integer >= 1, got {epochs!r}")
            self.stage_of_epoch += [dict(stage.get("category_weights") or {})] * epochs
        held = set(index.l3[self.positions])
        for where, weights in [("category_weights", self.category_weights)] + [
                (f"category_stages (epoch {e})", w) for e, w in enumerate(self.stage_of_epoch)]:
            # A taxonomy category these rows lack (a preset on a small version) draws nothing; a
            # name that is no category at all is a mistake. The taxonomy is read only for such names.
            unknown = sorted(set(weights) - held)
            if unknown:
                unknown = sorted(set(unknown) - _taxonomy_categories())
            if unknown:
                raise ValueError(f"{where} names {unknown}, which the rows do not hold; "
                                 f"categories here: {sorted(held)}")
            bad = {k: v for k, v in weights.items() if not (float(v) > 0)}
            if bad:
                raise ValueError(f"{where}: weights must be > 0, got {bad}")
        if not float(hard_example_weight) > 0:
            raise ValueError(f"hard_example_weight must be > 0, got {hard_example_weight}")
        wrong = index.model_correct is not None and bool(np.any(index.model_correct[self.positions] == False))  # noqa: E712
        self.hard_example_weight = float(hard_example_weight) if shuffle and wrong else 1.0
        self.task_weights = dict(task_weights or {}) if shuffle else {}
        unknown = sorted(set(self.task_weights) - set(TASKS))
        if unknown:
            raise ValueError(f"task_weights names {unknown}, which are no tasks; tasks: {list(TASKS)}")
        bad = {k: v for k, v in self.task_weights.items() if not (float(v) > 0)}
        if bad:
            raise ValueError(f"task_weights: weights must be > 0 (leave a task out of training with "
                             f"train.task_weights {{task: 0}} in the config), got {bad}")
        self._plans: dict[int, list[np.ndarray]] = {}

    def _row_weights(self, pool: np.ndarray) -> np.ndarray:
        """Draw weight of each position: hard_example_weight for a row our model got wrong, else 1."""
        wrong = self.index.model_correct[pool] == False  # noqa: E712 (object array: True/False/None)
        return np.where(wrong, self.hard_example_weight, 1.0)

    def _weighted_draw(self, rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
        """`n` positions from `pool`, each row drawn in proportion to its weight: the integer part of its
        expected count always, the fractional parts by one draw without replacement (so a row of weight
        w gets w times the draws of a weight-1 row, up to rounding)."""
        w = self._row_weights(pool)
        exact = n * w / w.sum()
        counts = np.floor(exact).astype(int)
        rest = n - int(counts.sum())
        if rest > 0:
            frac = exact - counts
            counts[rng.choice(len(pool), size=rest, replace=False, p=frac / frac.sum())] += 1
        return np.repeat(pool, counts)

    def weights_for(self, epoch: int) -> dict[str, float]:
        """The mixture weights epoch `epoch` draws with: its curriculum stage's, else category_weights."""
        return self.stage_of_epoch[epoch] if epoch < len(self.stage_of_epoch) else self.category_weights

    def _epoch_positions(self, rng: np.random.Generator, weights_by_category: dict[str, float]) -> np.ndarray:
        """The positions one epoch draws from. With `task_weights`, an epoch draws each task's row count
        times its weight (unnamed: 1), so a task at weight 1 fills the same epoch it would alone (a
        curriculum stage of N epochs means the same for it); inside each task the categories share
        its draws (`_category_positions`). Without task weights, the categories share all rows."""
        if not self.task_weights:
            return self._category_positions(self.positions, len(self.positions), rng, weights_by_category)
        tasks = self.index.task_of(self.positions)
        chosen = []
        for name in np.unique(tasks):
            pool = self.positions[tasks == name]
            total = max(1, int(round(len(pool) * float(self.task_weights.get(name, 1.0)))))
            chosen.append(self._category_positions(pool, total, rng, weights_by_category))
        return np.sort(np.concatenate(chosen))

    def _category_positions(self, positions: np.ndarray, total: int, rng: np.random.Generator,
                            weights_by_category: dict[str, float]) -> np.ndarray:
        """`total` draws from `positions`. With `balance_categories` = a > 0 each category (l3) gets
        a share of the epoch proportional to n_c ** (1 - a) (a = 1: every category equally often), times
        `weights_by_category[c]` where given (a mixture weight: 2 draws the category twice as often).
        A category over its row count is drawn again, without replacement inside a pass, until its
        share is filled; one under it gets a fresh random subset each epoch. With hard_example_weight,
        rows our model got wrong are drawn that many times as often inside each category's share."""
        hard = self.hard_example_weight != 1.0
        if not self.balance_categories and not weights_by_category:
            if hard:
                return np.sort(self._weighted_draw(rng, positions, total))
            if total == len(positions):
                return positions
        cats = self.index.l3[positions]
        names, counts = np.unique(cats, return_counts=True)
        weights = counts.astype(np.float64) ** (1.0 - self.balance_categories)
        weights *= np.array([float(weights_by_category.get(n, 1.0)) for n in names])
        quota = _largest_remainder(total, weights)
        chosen = []
        for name, q in zip(names, quota):
            pool = positions[cats == name]
            if hard:
                chosen.append(self._weighted_draw(rng, pool, int(q)))
                continue
            passes = [rng.permutation(pool) for _ in range(-(-q // len(pool)))]
            chosen.append(np.concatenate(passes)[:q] if passes else pool[:0])
        return np.sort(np.concatenate(chosen))

    def _cut(self, pos: np.ndarray) -> list[np.ndarray]:
        """Cut duration-ordered positions into batches of at most batch_size and max_batch_seconds."""
        batches, start = [], 0
        dur = self.index.duration_s
        while start < len(pos):
            end = min(start + self.batch_size, len(pos))
            if self.max_batch_seconds is not None:
                total = np.cumsum(dur[pos[start:end]])
                fit = int(np.searchsorted(total, self.max_batch_seconds, side="right"))
                end = start + max(1, fit)
            batches.append(pos[start:end])
            start = end
        return batches

    def plan(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches for `epoch`, in order (cached)."""
        if epoch in self._plans:
            return self._plans[epoch]
        rng = np.random.default_rng([self.seed, epoch])
        positions = self._epoch_positions(rng, self.weights_for(epoch))
        shards = np.unique(self.index.shard[positions])
        if self.shuffle:
            shards = rng.permutation(shards)
        dur = self.index.duration_s
        batches: list[np.ndarray] = []
        for w in range(0, len(shards), self.shards_per_window):
            window = positions[np.isin(self.index.shard[positions], shards[w : w + self.shards_per_window])]
            window = rng.permutation(window) if self.shuffle else window
            pool = self.batch_size * self.pool_batches
            window_batches = []
            for p in range(0, len(window), pool):
                chunk = window[p : p + pool]
                chunk = chunk[np.argsort(dur[chunk], kind="stable")]
                window_batches += self._cut(chunk)
            if self.drop_last:
                window_batches = [b for b in window_batches if len(b) == self.batch_size] or window_batches[:1]
            if self.shuffle:
                window_batches = [window_batches[i] for i in rng.permutation(len(window_batches))]
            batches += window_batches
        usable = len(batches) - len(batches) % self.world_size if len(batches) >= self.world_size else len(batches)
        mine = batches[:usable][self.rank :: self.world_size]
        self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}  # this epoch and the previous
        self._plans[epoch] = mine
        return mine

    def __len__(self) -> int:
        return len(self.plan(0))


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """`total` split in proportion to `weights` as integers: floors, then the rows lost to flooring
    go to the largest remainders."""
    exact = total * weights / weights.sum()
    quota = np.floor(exact).astype(int)
    short = total - int(quota.sum())
    quota[np.argsort(quota - exact, kind="stable")[:short]] += 1
    return quota


@functools.lru_cache(maxsize=1)
def _taxonomy_categories() -> frozenset[str]:
    """The default taxonomy's categories (l3 ids), read once."""
    from dataflux.taxonomy import load_taxonomy

    return frozenset(load_taxonomy().ids)


class RowReader:
    """Fetch full rows by index position, reading each shard once per window with `iter_batches`."""

    def __init__(self, index: VersionIndex, columns: Sequence[str] = ROW_COLUMNS, cache_shards: int = 4):
        self.index = index
        self.columns = list(columns)
        self.cache_shards = cache_shards
        self._cache: OrderedDict[int, dict[str, list]] = OrderedDict()

    def _shard(self, s: int) -> dict[str, list]:
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        path = self.index.paths[s]
        pf = pq.ParquetFile(path)
        present = [c for c in self.columns if c in pf.schema_arrow.names]
        missing = [c for c in self.columns if c not in present and c not in OPTIONAL_COLUMNS]
        if missing:
            raise ValueError(f"{path}: shard lacks column(s) {missing} of the row contract; rebuild the version")
        data: dict[str, list] = {c: [] for c in self.columns}
        for batch in pf.iter_batches(columns=present, batch_size=256):
            for c in present:
                data[c].extend(batch.column(c).to_pylist())
        for c in set(self.columns) - set(present):
            data[c] = [None] * len(data[present[0]])
        self._cache[s] = data
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return data

    def rows(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        out = []
        for p in positions:
            s, r = int(self.index.shard[p]), int(self.index.row[p])
            data = self._shard(s)
            row = {c: data[c][r] for c in self.columns}
            row["_where"] = f"{self.index.paths[s]} row {r}"
            out.append(row)
        return out


def _where(row: dict[str, Any]) -> str:
    """How errors name a row: its shard and position when read from one, else its sample_id."""
    return row.get("_where", row.get("sample_id", "row"))


def decode_row_audio(row: dict[str, Any], sampling_rate: int = 16000) -> np.ndarray:
    """The row's audio as float32 (T,) at `sampling_rate`, via dataflux's decoder (soundfile if absent)."""
    data = (row.get("audio") or {}).get("bytes")
    where = _where(row)
    if not data:
        raise ValueError(f"{where}: audio.bytes is empty; the row contract stores the clip's bytes inline")
    try:
        from dataflux.audio.decode import decode_audio
    except ImportError:
        import io

        import soundfile as sf
        import soxr

        y, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        y = y.mean(axis=1)
        return soxr.resample(y, sr, sampling_rate).astype(np.float32) if sr != sampling_rate else y
    y, _ = decode_audio(data, name=where, target_sr=sampling_rate)
    return y


class ExampleCache:
    """Log-mel features by clip, least recently used evicted past `max_mb` of feature memory, and
    the rows' tokens by sample_id. A clip's rows (its questions, transcript, caption, open answers:
    ~2.5-6 rows per clip) share one entry, so a version's features take a clip's worth of memory
    each, not a row's. A small version fits whole, and every epoch after the first then skips
    decoding and features (the training step gets both cores)."""

    def __init__(self, max_mb: float):
        self.max_bytes = int(max_mb * 2**20)
        self.bytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[str, tuple[tuple[Any, torch.Tensor], int]] = OrderedDict()  # item, bytes

        self._tokens: dict[str, Any] = {}

    def get_or_make(self, key: str, make) -> tuple[Any, torch.Tensor]:
        """The cached value for `key` (a clip's (n_samples, features)), or make() it and keep it."""
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key][0]
        self.misses += 1
        item = make()
        size = item[1].numel() * item[1].element_size()
        self._items[key] = (item, size)
        self.bytes += size
        while self.bytes > self.max_bytes and len(self._items) > 1:
            self.bytes -= self._items.popitem(last=False)[1][1]
        return item

    def tokens(self, sample_id: str, make) -> Any:
        """The row's tokens (small: kept for every row seen, never evicted)."""
        if sample_id not in self._tokens:
            self._tokens[sample_id] = make()
        return self._tokens[sample_id]


def permute_options(messages: Sequence[dict[str, str]], choices: Sequence[str], answer_index: int,
                    rng: np.random.Generator) -> list[dict[str, str]] | None:
    """The conversation with its lettered options in a random order and the answer re-lettered to match.

    The user turn must list the choices as "(A) first", "(B) second", ... on consecutive lines, and the
    assistant turn must start with the lettered answer, "(C) third"; anything after it (reasoning) is
    kept. Returns None for a conversation of any other shape (a transcript, a free-form answer), which
    is then trained on as it is.
    """
    n = len(choices)
    if not 2 <= n <= len(LETTERS) or not 0 <= answer_index < n:
        return None
    lines = option_lines(choices)
    block = "\n".join(lines)
    users = [i for i, m in enumerate(messages) if m["role"] == "user" and block in m["content"]]
    assistants = [i for i, m in enumerate(messages)
                  if m["role"] == "assistant" and m["content"].startswith(lines[answer_index])]
    if len(users) != 1 or len(assistants) != 1 or messages[users[0]]["content"].count(block) != 1:
        return None
    order = rng.permutation(n)  # new position j shows old option order[j]
    new_lines = option_lines([choices[k] for k in order])
    new_answer = new_lines[int(np.flatnonzero(order == answer_index)[0])]
    out = [dict(m) for m in messages]
    out[users[0]]["content"] = out[users[0]]["content"].replace(block, "\n".join(new_lines))
    a = out[assistants[0]]["content"]
    out[assistants[0]]["content"] = new_answer + a[len(lines[answer_index]):]
    return out


class Collator:
    """Rows -> a model batch through the processor.

    Without packing: input_ids, attention_mask, labels (B, L), input_features (B, M, F), feature_lengths (B,).
    With packing (`pack_tokens` > 0): examples are concatenated greedily into rows of at most
    `pack_tokens` tokens; position_ids (B, L) restart at 0 for each example and there is no
    attention_mask (the LM then builds a block-diagonal causal mask from the position resets).
    `zero_audio` replaces every clip by silence of the same length (the audio-blind baseline).
    `cache_mb` > 0 keeps examples (tokens and features) in an `ExampleCache` of that size.
    `shuffle_options` shows a multiple-choice row's options in a new order each epoch (the answer
    re-lettered; `permute_options`), drawn from (seed, epoch, sample_id), so a resumed run sees the
    same orders: the letter of the right option then never follows from the clip alone.
    Also returns `sample_id`, `l3` and `task` lists for bookkeeping.
    """

    def __init__(self, processor: EurekaAudioProcessor, zero_audio: bool = False, pack_tokens: int = 0,
                 cache_mb: float = 0.0, shuffle_options: bool = False, seed: int = 0):
        self.processor = processor
        self.zero_audio = zero_audio
        self.pack_tokens = pack_tokens
        self.cache = ExampleCache(cache_mb) if cache_mb > 0 else None
        self.shuffle_options = shuffle_options
        self.seed = seed

    def _shuffled(self, row: dict[str, Any], epoch: int) -> list[dict[str, str]] | None:
        """The row's messages with the options reordered for `epoch`, or None (not a lettered
        multiple-choice row)."""
        if row.get("choices") is None or row.get("answer_index") is None:
            return None
        key = zlib.crc32(str(row.get("sample_id", "")).encode())
        rng = np.random.default_rng([self.seed, epoch, key])
        return permute_options(row["messages"], list(row["choices"]), int(row["answer_index"]), rng)

    def _retokenized(self, row: dict[str, Any], encoded, epoch: int):
        """`encoded` (the row as stored), or its option-shuffled messages tokenized with the same clip."""
        messages = self._shuffled(row, epoch)
        if messages is None:
            return encoded
        pad = self.processor.audio_ids["audio_pad_token_id"]
        n_audio = sum(1 for t in encoded.input_ids if t == pad)
        return self.processor.encode(messages, [n_audio], where=_where(row))

    def _audio_and_tokens(self, row: dict[str, Any]) -> tuple[np.ndarray, Any]:
        """One row -> its clip (T,) (silence of the same length with `zero_audio`) and its Encoded tokens."""
        p = self.processor
        audio = decode_row_audio(row, p.sampling_rate)
        if self.zero_audio:
            audio = np.zeros_like(audio)
        encoded = p.encode(row["messages"], [p.audio_token_count(len(audio))],
                           where=_where(row))
        return audio, encoded

    def _clip_features(self, row: dict[str, Any]) -> tuple[int, torch.Tensor]:
        """The row's clip -> (samples, features (M, F_i)); computed for the clip alone, so a cached
        entry is the same numbers whatever batch it first came in."""
        audio = decode_row_audio(row, self.processor.sampling_rate)
        if self.zero_audio:
            audio = np.zeros_like(audio)
        features, lengths = self.processor.audio_features([audio])
        return len(audio), features[0, :, : int(lengths[0])]

    def _example(self, row: dict[str, Any]) -> tuple[Any, torch.Tensor]:
        """One row -> (Encoded tokens, features (M, F_i)), the features shared by the clip's rows."""
        p = self.processor
        clip_key = row.get("audio_sha256") or hashlib.sha256((row.get("audio") or {}).get("bytes") or b"").hexdigest()
        n_samples, features = self.cache.get_or_make(clip_key, lambda: self._clip_features(row))
        encoded = self.cache.tokens(str(row.get("sample_id")), lambda: p.encode(
            row["messages"], [p.audio_token_count(n_samples)], where=_where(row)))
        return encoded, features

    def __call__(self, rows: Sequence[dict[str, Any]], epoch: int = 0) -> dict[str, Any]:
        p = self.processor
        if self.cache is None:
            audios, encoded = zip(*(self._audio_and_tokens(r) for r in rows))
            features, feature_lengths = p.audio_features(list(audios))
        else:
            examples = [self._example(r) for r in rows]
            encoded = [e for e, _ in examples]
            feature_lengths = torch.tensor([f.shape[-1] for _, f in examples], dtype=torch.long)
            features = torch.zeros((len(examples), p.n_mels, int(feature_lengths.max())))
            for i, (_, f) in enumerate(examples):
                features[i, :, : f.shape[-1]] = f
        if self.shuffle_options:
            encoded = [self._retokenized(r, e, epoch) for r, e in zip(rows, encoded)]
        batch = self._pack(encoded) if self.pack_tokens else p.pad(encoded, side="right")
        batch["input_features"], batch["feature_lengths"] = features, feature_lengths
        batch["sample_id"] = [r.get("sample_id") for r in rows]
        batch["l3"] = [r.get("l3") for r in rows]
        batch["task"] = [r.get("task") or "mcq" for r in rows]
        return batch

    def _pack(self, encoded) -> dict[str, torch.Tensor]:
        rows: list[list] = [[]]
        for e in encoded:
            used = sum(len(x.input_ids) for x in rows[-1])
            if rows[-1] and used + len(e.input_ids) > self.pack_tokens:
                rows.append([])
            rows[-1].append(e)
        longest = max(sum(len(x.input_ids) for x in r) for r in rows)
        pad_id = self.processor.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        pos = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            at = 0
            for e in r:
                n = len(e.input_ids)
                ids[i, at : at + n] = torch.tensor(e.input_ids)
                labels[i, at : at + n] = torch.tensor(e.labels)
                pos[i, at : at + n] = torch.arange(n)
                at += n
            pos[i, at:] = torch.arange(longest - at)  # the pad tail is its own (loss-free) segment
        return {"input_ids": ids, "labels": labels, "position_ids": pos}


class TrainLoader:
    """Batches of one split, endless over epochs, with an exact, cheap resume point.

    state_dict() = {"epoch", "batches_done", "seed"}: batches handed out so far in the current
    epoch. After load_state_dict(), iteration continues with the next batch of that epoch's plan;
    skipped batches are not read. With `prefetch` > 0 a background thread prepares that many
    batches ahead (decoding and features overlap the training step); batches are deterministic
    functions of the plan, so prefetching does not change what a resumed run sees.
    """

    def __init__(self, sampler: BucketBatchSampler, reader: RowReader, collator: Collator,
                 max_epochs: int | None = None, prefetch: int = 0):
        self.sampler, self.reader, self.collator = sampler, reader, collator
        self.max_epochs = max_epochs
        self.prefetch = prefetch
        self.epoch = 0
        self.batches_done = 0

    def _positions(self) -> Iterator[tuple[int, int, np.ndarray]]:
        epoch, done = self.epoch, self.batches_done
        while self.max_epochs is None or epoch < self.max_epochs:
            plan = self.sampler.plan(epoch)
            for b in range(done, len(plan)):
                yield epoch, b, plan[b]
            epoch, done = epoch + 1, 0

    def _make(self, epoch: int, positions: np.ndarray) -> dict[str, Any]:
        return self.collator(self.reader.rows(positions), epoch=epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.prefetch <= 0:
            for epoch, b, positions in self._positions():
                batch = self._make(epoch, positions)
                self.epoch, self.batches_done = epoch, b + 1
                yield batch
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-prefetch") as pool:
            pending: deque = deque()
            upcoming = self._positions()
            for item in upcoming:
                pending.append((item[0], item[1], pool.submit(self._make, item[0], item[2])))
                if len(pending) > self.prefetch:
                    epoch, b, future = pending.popleft()
                    self.epoch, self.batches_done = epoch, b + 1
                    yield future.result()
            while pending:
                epoch, b, future = pending.popleft()
                self.epoch, self.batches_done = epoch, b + 1
                yield future.result()

    def __len__(self) -> int:
        return len(self.sampler)

    def state_dict(self) -> dict[str, int]:
        """The data position: an epoch that is finished counts as the start of the next one."""
        epoch, done = self.epoch, self.batches_done
        if done >= len(self.sampler.plan(epoch)):
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": done, "seed": self.sampler.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.sampler.seed) != self.sampler.seed:
            raise ValueError(f"data state was saved with seed {state['seed']} but this loader uses "
                             f"{self.sampler.seed}; resume with the same config")
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])


def build_loader(
    index: VersionIndex,
    processor: EurekaAudioProcessor,
    split: str | Sequence[str],
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    max_batch_seconds: float | None = None,
    zero_audio: bool = False,
    pack_tokens: int = 0,
    rank: int = 0,
    world_size: int = 1,
    max_epochs: int | None = None,
    drop_last: bool = False,
    prefetch: int = 0,
    balance_categories: float = 0.0,
    category_weights: dict[str, float] | None = None,
    cache_mb: float = 0.0,
    category_stages: Sequence[dict[str, Any]] | None = None,
    shuffle_options: bool = False,
    hard_example_weight: float = 1.0,
    tasks: Sequence[str] | None = None,
    task_weights: dict[str, float] | None = None,
) -> TrainLoader:
    """A loader over `split` of a version index (see `TrainLoader`); `tasks` limits it to those tasks."""
    sampler = BucketBatchSampler(index, index.rows_of(split, tasks), batch_size, seed=seed, shuffle=shuffle,
                                 max_batch_seconds=max_batch_seconds, rank=rank, world_size=world_size,
                                 drop_last=drop_last, balance_categories=balance_categories,
                                 category_weights=category_weights, category_stages=category_stages,
                                 hard_example_weight=hard_example_weight, task_weights=task_weights)
    return TrainLoader(sampler, RowReader(index, cache_shards=sampler.shards_per_window),
                       Collator(processor, zero_audio=zero_audio, pack_tokens=pack_tokens, cache_mb=cache_mb,
                                shuffle_options=shuffle_options, seed=seed), max_epochs=max_epochs,
                       prefetch=prefetch)


def read_texts(index: VersionIndex, split: str | Sequence[str] = "train",
               tasks: Sequence[str] | None = None) -> list[str]:
    """All message contents of a split (for training a small tokenizer), placeholders removed; of the
    given tasks only when named."""
    reader = RowReader(index, columns=["messages"], cache_shards=1)
    texts = []
    for pos in index.rows_of(split, tasks):
        for m in reader.rows([pos])[0]["messages"]:
            texts.append(m["content"].replace("<audio>", ""))
    return texts

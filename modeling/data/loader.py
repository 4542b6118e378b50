"""`TrainLoader`: sampler, reader and collator tied together, endless over epochs, carrying the data
position (the epoch and the batches consumed in it) that a checkpoint saves and a resume restores
without reading the skipped batches; `build_loader` makes one for a split."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from modeling.data.collate import Collator
from modeling.data.index import VersionIndex
from modeling.data.rows import RowReader
from modeling.data.sampler import BucketBatchSampler
from modeling.processor import EurekaAudioProcessor


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

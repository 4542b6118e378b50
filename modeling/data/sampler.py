"""`BucketBatchSampler`: an epoch's batches planned from the index alone, deterministically from
(seed, epoch), so a resumed run sees the same batches.

Shards are shuffled and taken a window at a time (so only a window of shards is ever held in
memory), rows inside a window are shuffled, sorted by duration in pools of a few batches (little
padding) and cut into batches whose order is then shuffled. Ranks take every world_size-th batch.
Mixture weights (per category, per curriculum stage, per task) and `hard_example_weight` (rows our
own model answered wrong drawn more often) decide which rows an epoch draws.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from dataflux.taxonomy import load_taxonomy
from modeling.data.index import TASKS, VersionIndex


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
        self._check_category_weights()
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

    def _check_category_weights(self) -> None:
        """Every mixture weight (category_weights and each curriculum stage's) names a category and is > 0.
        A taxonomy category these rows lack (a preset on a small version) draws nothing; a name that
        is no category at all is a mistake. The taxonomy is read only for such names."""
        held = set(self.index.l3[self.positions])
        for where, weights in [("category_weights", self.category_weights)] + [
                (f"category_stages (epoch {e})", w) for e, w in enumerate(self.stage_of_epoch)]:
            unknown = sorted(set(weights) - held)
            if unknown:
                unknown = sorted(set(unknown) - _taxonomy_categories())
            if unknown:
                raise ValueError(f"{where} names {unknown}, which the rows do not hold; "
                                 f"categories here: {sorted(held)}")
            bad = {k: v for k, v in weights.items() if not (float(v) > 0)}
            if bad:
                raise ValueError(f"{where}: weights must be > 0, got {bad}")

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
    return frozenset(load_taxonomy().ids)

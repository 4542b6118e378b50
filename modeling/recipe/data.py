"""The data phase: the train loader (resumable: its position is checkpointed) and the validation rows
scored every `eval_every` steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modeling.data import BucketBatchSampler, Collator, RowReader, TrainLoader, build_loader
from modeling.processor import EurekaAudioProcessor
from modeling.recipe.config import positive_task_weights
from modeling.recipe.evaluate import held_out_rows, stratified_rows
from modeling.recipe.setup import Run


def train_loader(run: Run, processor: EurekaAudioProcessor) -> TrainLoader:
    """This process's share of the train split, endless over epochs, in the config's mixture."""
    spec, accelerator = run.spec, run.accelerator
    return build_loader(run.index, processor, "train", spec.batch_size, seed=spec.seed, shuffle=True,
                        max_batch_seconds=spec.max_batch_seconds, zero_audio=spec.zero_audio,
                        pack_tokens=spec.pack_tokens, rank=accelerator.process_index,
                        world_size=accelerator.num_processes, drop_last=True, prefetch=spec.prefetch,
                        balance_categories=spec.balance_categories, category_weights=spec.category_weights,
                        category_stages=spec.category_stages, shuffle_options=spec.shuffle_options,
                        cache_mb=spec.cache_mb, hard_example_weight=spec.hard_example_weight,
                        tasks=run.tasks, task_weights=positive_task_weights(spec))


@dataclass
class Validation:
    """What the main process scores during training: teacher-forced batches, and asr rows to transcribe."""

    loader: TrainLoader | None = None
    asr_rows: list[dict[str, Any]] = field(default_factory=list)


def validation_set(run: Run, processor: EurekaAudioProcessor) -> Validation:
    """Validation rows, categories evenly represented for the questions, plus `eval_task_rows` of each
    other task; nothing without `eval_every` or off the main process."""
    spec, index = run.spec, run.index
    if not (spec.eval_every and run.main):
        return Validation()
    positions = stratified_rows(index, "validation", spec.eval_every_rows, ["mcq"])
    others = [index.rows_of("validation", [t])[: spec.eval_task_rows] for t in run.tasks if t != "mcq"]
    positions = np.sort(np.concatenate([positions, *others])) if others else positions
    asr_rows = []
    if "asr" in run.tasks and spec.eval_asr_rows:
        asr_rows = held_out_rows(index, "validation", spec.eval_asr_rows, ["asr"])
    loader = None
    if len(positions):
        loader = TrainLoader(BucketBatchSampler(index, positions, spec.eval_batch_size, shuffle=False),
                             RowReader(index), Collator(processor, cache_mb=spec.cache_mb), max_epochs=1)
    return Validation(loader, asr_rows)

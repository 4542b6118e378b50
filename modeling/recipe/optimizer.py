"""The optimizer phase: AdamW with per-part learning rates, linear warmup then cosine decay.

The decay runs over `max_steps`, or, with `anneal: budget` and a `max_minutes` budget, over whichever
of the two is spent first: a run that the time budget stops early (a slower or busier machine) still
ends at the floor learning rate instead of being cut off part-way down the cosine."""

from __future__ import annotations

import math

import torch

from modeling.model import EurekaAudioForCausalLM
from modeling.recipe.checkpoint import Progress
from modeling.recipe.config import TrainSpec


def build_optimizer(model: EurekaAudioForCausalLM, spec: TrainSpec) -> torch.optim.Optimizer:
    """AdamW with per-part learning rates; no weight decay on vectors (norms, biases)."""
    lrs = {"encoder": spec.encoder_lr or spec.lr, "adapter": spec.lr, "llm": spec.llm_lr or spec.lr}
    groups = []
    for part, lr in lrs.items():
        params = [p for p in getattr(model, part).parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups += [{"params": decay, "lr": lr, "weight_decay": spec.weight_decay, "name": f"{part}"},
                   {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{part}_no_decay"}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, betas=spec.betas, eps=1e-8)


def build_scheduler(optimizer: torch.optim.Optimizer, spec: TrainSpec,
                    progress: Progress) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_factor` per step, reading the run's elapsed time from `progress` (restored with it on resume).
    A plain function (not a callable object), so the scheduler's state_dict holds only counters."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, spec, progress.elapsed_s))


def lr_factor(step: int, spec: TrainSpec, elapsed_s: float = 0.0) -> float:
    """Linear warmup over warmup_steps, then cosine from 1 to min_lr_ratio at max_steps (or, annealing on
    the budget, at max_steps or max_minutes, whichever comes first)."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    progress = min(1.0, (step - spec.warmup_steps) / max(1, spec.max_steps - spec.warmup_steps))
    if spec.anneal == "budget" and spec.max_minutes:
        progress = max(progress, min(1.0, elapsed_s / (60 * spec.max_minutes)))
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

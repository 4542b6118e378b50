"""The optimizer phase: AdamW with per-part learning rates, linear warmup then cosine decay."""

from __future__ import annotations

import math

import torch

from modeling.model import EurekaAudioForCausalLM
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


def build_scheduler(optimizer: torch.optim.Optimizer, spec: TrainSpec) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_factor` per step. A plain function (not a callable object), so the scheduler's state_dict
    holds only counters."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, spec))


def lr_factor(step: int, spec: TrainSpec) -> float:
    """Linear warmup over warmup_steps, then cosine from 1 to min_lr_ratio at max_steps."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    progress = min(1.0, (step - spec.warmup_steps) / max(1, spec.max_steps - spec.warmup_steps))
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

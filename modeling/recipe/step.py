"""The step phase: one optimizer step over `grad_accum` micro-batches (gradient sync on the last one
only), clipping, and the numbers a log line reports."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from modeling.recipe.checkpoint import Progress
from modeling.recipe.evaluate import embedding_scale
from modeling.recipe.setup import Run


@dataclass
class Window:
    """Each micro-batch's losses (and the MoE adapter's tokens per expert) since the last log line."""

    loss: list[float] = field(default_factory=list)
    lm_loss: list[float] = field(default_factory=list)
    aux: list[float] = field(default_factory=list)
    expert_counts: torch.Tensor | None = None

    def add(self, out) -> None:
        self.loss.append(out.loss.item())
        self.lm_loss.append(out.lm_loss.item())
        self.aux.append(out.aux_loss.item() if out.aux_loss is not None else 0.0)
        if out.expert_counts is not None:
            c = out.expert_counts.detach().cpu()
            self.expert_counts = c if self.expert_counts is None else self.expert_counts + c

    def mean_loss(self) -> float | None:
        return float(np.mean(self.loss)) if self.loss else None


def train_step(run: Run, model, optimizer, scheduler, batches: Iterator[dict[str, Any]], params, progress: Progress,
               window: Window) -> torch.Tensor | None:
    """Forward and backward over `grad_accum` batches, clip, step; returns the gradient norm (None
    without clipping)."""
    spec, accelerator = run.spec, run.accelerator
    for micro in range(spec.grad_accum):
        batch = next(batches)
        progress.examples += len(batch["sample_id"])
        inputs = {k: v.to(accelerator.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        sync = micro == spec.grad_accum - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            out = model(**inputs)
            accelerator.backward(out.loss / spec.grad_accum)
        window.add(out)
    grad_norm = accelerator.clip_grad_norm_(params, spec.grad_clip) if spec.grad_clip else None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    progress.step += 1
    return grad_norm


def step_line(run: Run, model, scheduler, progress: Progress, window: Window, grad_norm) -> dict[str, Any]:
    """The metrics.jsonl line of a logged step: window means, the last step's losses, lr, gradient
    norm, counters, expert load and the embedding scales."""
    line = {"step": progress.step, "loss": float(np.mean(window.loss)),
            "lm_loss": float(np.mean(window.lm_loss)), "aux_loss": float(np.mean(window.aux)),
            "step_losses": window.loss[-run.spec.grad_accum:],
            "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "examples": progress.examples, "elapsed_s": round(progress.elapsed_s, 2)}
    if window.expert_counts is not None:
        line["expert_tokens"] = window.expert_counts.tolist()
    line["scale"] = embedding_scale(run.accelerator.unwrap_model(model))
    return line

"""The loop phase: steps until max_steps, logging, validating, checkpointing, and stopping early on a
validation target, a time budget, or `stop_after_steps` (as an interruption would)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch

from modeling.data import TrainLoader
from modeling.recipe.checkpoint import Progress, save_checkpoint
from modeling.recipe.data import Validation
from modeling.recipe.evaluate import answer_accuracy, validation_wer
from modeling.recipe.record import append_jsonl
from modeling.recipe.setup import Run
from modeling.recipe.step import Window, step_line, train_step


@dataclass
class Outcome:
    status: str = "completed"  # completed | interrupted
    stop_reason: str = "max_steps"  # max_steps | validation_target | time_budget
    window: Window = field(default_factory=Window)  # the last, partly filled log window


def train_loop(run: Run, model, optimizer, scheduler, loader: TrainLoader, progress: Progress,
               validation: Validation, processor, stop_after_steps: int | None) -> Outcome:
    spec = run.spec
    started = time.monotonic() - progress.elapsed_s
    params = [p for p in model.parameters() if p.requires_grad]
    batches = iter(loader)
    outcome = Outcome()
    model.train()
    while progress.step < spec.max_steps:
        grad_norm = train_step(run, model, optimizer, scheduler, batches, params, progress, outcome.window)
        progress.elapsed_s = _agreed_elapsed(run, time.monotonic() - started)
        if run.main and (progress.step % spec.log_every == 0 or progress.step == 1):
            _log(run, step_line(run, model, scheduler, progress, outcome.window, grad_norm))
        reached = _validate(run, model, processor, validation, progress.step)
        if progress.step % spec.log_every == 0:
            outcome.window = Window()
        out_of_time = spec.max_minutes is not None and progress.elapsed_s > 60 * spec.max_minutes
        stopping = stop_after_steps is not None and progress.step >= stop_after_steps
        if progress.step % spec.save_every == 0 or out_of_time or stopping or reached:
            save_checkpoint(run.accelerator, run.run_dir, progress.step, spec.keep_checkpoints)
        if reached:
            outcome.stop_reason = "validation_target"
            if run.main:
                run.log(f"every validation category at or above {spec.stop_at_accuracy} at step {progress.step}; "
                        "stopping")
            break
        if stopping:
            outcome.status = "interrupted"
            break
        if out_of_time:
            outcome.stop_reason = "time_budget"
            if run.main:
                run.log(f"time budget of {spec.max_minutes} min spent at step {progress.step}")
            break
    return outcome


def _agreed_elapsed(run: Run, elapsed_s: float) -> float:
    """The slowest process's wall time, so that every process reads the same clock: the time budget stops
    them at one step, and a schedule that anneals on the budget sets one learning rate on all of them."""
    if run.accelerator.num_processes == 1:
        return elapsed_s
    clock = torch.tensor([elapsed_s], dtype=torch.float64, device=run.accelerator.device)
    return float(run.accelerator.reduce(clock, "max").item())


def _log(run: Run, line: dict) -> None:
    append_jsonl(run.metrics_file, line)
    run.log(json.dumps(line))


def _validate(run: Run, model, processor, validation: Validation, step: int) -> bool:
    """Score the validation rows on an `eval_every` step (main process); whether every category reached
    `stop_at_accuracy`, agreed by every process."""
    spec, accelerator = run.spec, run.accelerator
    reached = False
    eval_step = bool(spec.eval_every) and step % spec.eval_every == 0
    if validation.loader is not None and eval_step:
        validation.loader.epoch = validation.loader.batches_done = 0
        unwrapped = accelerator.unwrap_model(model)
        line = {"step": step, "validation": answer_accuracy(unwrapped, validation.loader)}
        if validation.asr_rows:
            line["validation"].update(validation_wer(unwrapped, processor, validation.asr_rows, spec))
        _log(run, line)
        by = line["validation"]["by_category"]
        reached = bool(spec.stop_at_accuracy is not None and by and min(by.values()) >= spec.stop_at_accuracy)
    if spec.stop_at_accuracy is not None and eval_step:
        # only the main process scores; every process must agree to stop at the same step
        flag = accelerator.reduce(torch.tensor([float(reached)], device=accelerator.device), "sum")
        reached = bool(flag.item() > 0)
    return reached

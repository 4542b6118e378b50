"""Single-stage training of the audio LM on a finalized data version.

    python -m modeling.train --version v0003-demo --config modeling/configs/tiny.yaml [--set train.max_steps=200]
    torchrun --nproc-per-node 2 -m modeling.train ...            # DDP
    accelerate launch --config_file modeling/configs/accelerate_fsdp.yaml -m modeling.train ...   # FSDP

One stage (Falcon3-Audio): the adapter always trains; the config says whether the LLM trains fully,
through LoRA, or not at all, and whether the encoder trains. AdamW, linear warmup then cosine decay,
gradient clipping and accumulation, bf16 autocast where the hardware has it.

A run lives in one directory (default `<dataflux home>/trainings/<training id>`, the id derived from
the version and the config, so rerunning the same command resumes the same run):

    config.yaml            the resolved config
    processor/             tokenizer (with the audio tokens and chat template) + processor config
    checkpoints/step-N/    exact-resume state: model, optimizer, scheduler, RNG (python, numpy,
                           torch), data position, step counter; written atomically, last two kept
    final/                 Hugging Face checkpoint (save_pretrained) with its processor
    metrics.jsonl          one JSON line per logged step and the final evaluation

Each run is recorded in the catalog (`Catalog.record_training`): checkpoint <- version, config, metrics.
The phases (setup, model, optimizer, data, step, checkpoint, loop) are the modules of `modeling.recipe`;
`train` calls them in that order.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed

from modeling.recipe.checkpoint import Progress, save_final
from modeling.recipe.config import ModelSpec, TrainConfig, TrainSpec, trained_tasks, training_id_for
from modeling.recipe.data import train_loader, validation_set
from modeling.recipe.evaluate import EVAL_COLUMNS, evaluate_held_out, final_evaluation, stratified_rows
from modeling.recipe.loop import Outcome, train_loop
from modeling.recipe.model import build_model, build_processor, encoder_geometry, set_trainable
from modeling.recipe.optimizer import build_optimizer, build_scheduler
from modeling.recipe.record import CatalogRecord, append_jsonl
from modeling.recipe.setup import Run, setup_processor, setup_run

# What callers (tests, benches, flows) import from here; each name is defined in its phase's module.
__all__ = ["EVAL_COLUMNS", "ModelSpec", "TrainConfig", "TrainSpec", "build_model", "build_optimizer",
           "build_processor", "encoder_geometry", "evaluate_held_out", "main", "set_trainable", "stratified_rows",
           "train", "trained_tasks", "training_id_for"]


def train(
    version: str,
    config: str | Path | TrainConfig,
    catalog_path: str | Path | None = None,
    output_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    stop_after_steps: int | None = None,
    evaluate: bool = True,
    record: bool = True,
    log=print,
) -> dict[str, Any]:
    """Train on finalized `version` with `config` (a preset path or a TrainConfig); resume if the run
    directory holds a checkpoint. `stop_after_steps` stops (after a checkpoint) at that step, as an
    interruption would. Returns {"training_id", "run_dir", "checkpoint", "metrics", "status"}.

    Refuses a draft version or a version whose shards changed on disk (the catalog's errors).
    """
    run = setup_run(version, config, catalog_path, output_dir, overrides, log)
    processor = setup_processor(run)
    set_seed(run.spec.seed)  # the model's initial weights do not depend on how the processor was made
    model = build_model(run.cfg.model, processor)
    trainable = set_trainable(model, run.spec)
    optimizer = build_optimizer(model, run.spec)
    progress = Progress()
    scheduler = build_scheduler(optimizer, run.spec, progress)
    loader = train_loader(run, processor)
    model, optimizer = run.accelerator.prepare(model, optimizer)
    run.accelerator.register_for_checkpointing(scheduler, loader, progress)
    catalog = CatalogRecord(catalog_path, run.training_id, version, enabled=record and run.main)
    catalog.running(run.cfg.to_dict())
    _resume_or_announce(run, progress, trainable, len(loader))
    validation = validation_set(run, processor)
    try:
        outcome = train_loop(run, model, optimizer, scheduler, loader, progress, validation, processor,
                             stop_after_steps)
    except BaseException:
        catalog.failed()
        raise
    result: dict[str, Any] = {"training_id": run.training_id, "run_dir": str(run.run_dir), "status": outcome.status,
                              "checkpoint": None, "metrics": {}}
    if outcome.status == "interrupted":
        catalog.interrupted()
        return result
    result["checkpoint"], result["metrics"] = _finish(run, model, processor, progress, outcome, trainable,
                                                      catalog, evaluate)
    run.accelerator.wait_for_everyone()
    return result


def _resume_or_announce(run: Run, progress: Progress, trainable: dict[str, int], batches_per_epoch: int) -> None:
    """Load the latest checkpoint's state (model, optimizer, scheduler, RNG, data position, counters)
    when there is one; else say what trains."""
    if run.resume_from is not None:
        run.accelerator.load_state(str(run.resume_from))
        if run.main:
            run.log(f"resumed {run.training_id} from {run.resume_from} at step {progress.step}")
    elif run.main:
        run.log(f"training {run.training_id}: {sum(trainable.values()):,} trainable parameters {trainable}, "
                f"{len(run.index.rows_of('train'))} train rows ({run.index.text_answerable_left_out} left out as "
                f"answerable without their audio), {batches_per_epoch} batches per epoch")


def _finish(run: Run, model, processor, progress: Progress, outcome: Outcome, trainable: dict[str, int],
            catalog: CatalogRecord, evaluate: bool) -> tuple[str | None, dict[str, Any]]:
    """The final checkpoint, the run's metrics (with the held-out scores when `evaluate`), recorded."""
    unwrapped, final = save_final(run.accelerator, model, processor, run.run_dir, lora=run.spec.llm == "lora")
    metrics: dict[str, Any] = {"steps": progress.step, "examples": progress.examples,
                               "stop_reason": outcome.stop_reason, "train_minutes": round(progress.elapsed_s / 60, 3),
                               "trainable_parameters": trainable,
                               "parameters": sum(p.numel() for p in unwrapped.parameters()),
                               "last_loss": outcome.window.mean_loss(),
                               "rows_left_out": {"text_answerable": run.index.text_answerable_left_out}}
    if final is None:
        return None, metrics
    if evaluate:
        metrics.update(final_evaluation(unwrapped, processor, run.index, run.tasks, run.spec))
    append_jsonl(run.metrics_file, {"final": metrics})
    catalog.completed(str(final), metrics)
    return str(final), metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeling.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", required=True, help="a finalized version id (see `dataflux versions`)")
    parser.add_argument("--config", required=True, help="a YAML preset, e.g. modeling/configs/tiny.yaml")
    parser.add_argument("--catalog", default=None, help="catalog path (default: <dataflux home>/catalog.duckdb)")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--stop-after-steps", type=int, default=None)
    parser.add_argument("--no-eval", action="store_true")
    args = parser.parse_args(argv)
    result = train(args.version, args.config, args.catalog, args.output_dir, args.overrides,
                   stop_after_steps=args.stop_after_steps, evaluate=not args.no_eval)
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

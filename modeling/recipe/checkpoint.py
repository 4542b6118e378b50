"""The checkpoint phase: exact-resume state written atomically, the last few kept, and the final
Hugging Face checkpoint.

`checkpoints/step-N/` holds what `accelerate.save_state` writes: model, optimizer, and the objects
registered for checkpointing (the scheduler, the train loader's data position, `Progress`), with the
RNG states of python, numpy and torch.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeling.lora import merge_lora


@dataclass
class Progress:
    """Counters saved with each checkpoint."""

    step: int = 0
    examples: int = 0
    elapsed_s: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.examples, self.elapsed_s = int(state["step"]), int(state["examples"]), float(state["elapsed_s"])


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's exact-resume checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.exists():
        return []
    return sorted((p for p in root.iterdir() if p.name.startswith("step-") and p.is_dir()),
                  key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator, run_dir: Path, step: int, keep: int) -> Path:
    """accelerate.save_state into a temporary directory, renamed into place: a kill never leaves half a checkpoint."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_final(accelerator, model, processor, run_dir: Path, lora: bool):
    """The Hugging Face checkpoint (`final/`, with its processor) on the main process; returns the
    unwrapped model and the checkpoint's path (None off the main process). LoRA is merged first, so
    the checkpoint is a plain model (LoRA under FSDP is not supported)."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if lora:
        merge_lora(unwrapped.llm)
        state_dict = None
    else:
        state_dict = accelerator.get_state_dict(model)  # collective under FSDP: every rank calls it
    if not accelerator.is_main_process:
        return unwrapped, None
    final = run_dir / "final"
    unwrapped.save_pretrained(final, state_dict=state_dict)
    processor.save_pretrained(final)
    return unwrapped, final

"""The setup phase: the config, the version's index, the run directory, the accelerator and seeds,
and the processor (loaded from the run on resume, else built and saved with the resolved config)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed

from dataflux.home import dataflux_home
from modeling.data import VersionIndex, version_shard_paths
from modeling.processor import EurekaAudioProcessor
from modeling.recipe.checkpoint import latest_checkpoint
from modeling.recipe.config import TrainConfig, TrainSpec, trained_tasks, training_id_for
from modeling.recipe.model import build_processor, encoder_geometry


@dataclass
class Run:
    """What every later phase reads: the config, where the run lives, the accelerator, the data."""

    version: str
    cfg: TrainConfig
    training_id: str
    run_dir: Path
    accelerator: Accelerator
    index: VersionIndex
    tasks: list[str]
    resume_from: Path | None
    log: Callable[[str], None]

    @property
    def spec(self) -> TrainSpec:
        return self.cfg.train

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def metrics_file(self) -> Path:
        return self.run_dir / "metrics.jsonl"


def setup_run(version: str, config: str | Path | TrainConfig, catalog_path: str | Path | None,
              output_dir: str | Path | None, overrides: Sequence[str], log: Callable[[str], None]) -> Run:
    """Refuses a draft version or a version whose shards changed on disk (the catalog's errors) before
    anything is written. The run directory defaults to `<dataflux home>/trainings/<training id>`."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.load(config, overrides)
    spec = cfg.train
    paths = version_shard_paths(version, catalog_path)  # refuses drafts and tampered shards
    training_id = training_id_for(version, cfg)
    run_dir = Path(output_dir) if output_dir is not None else dataflux_home() / "trainings" / training_id
    accelerator = Accelerator(mixed_precision=mixed_precision(spec), cpu=not torch.cuda.is_available())
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    set_seed(spec.seed)
    index = VersionIndex.build(paths, require_measured=spec.require_measured,
                               include_text_answerable=spec.include_text_answerable)
    return Run(version=version, cfg=cfg, training_id=training_id, run_dir=run_dir, accelerator=accelerator,
               index=index, tasks=trained_tasks(spec), resume_from=latest_checkpoint(run_dir), log=log)


def mixed_precision(spec: TrainSpec) -> str:
    if spec.precision == "bf16":
        return "bf16"
    if spec.precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def setup_processor(run: Run) -> EurekaAudioProcessor:
    """The run's processor: the saved one on resume; else built (a tokenizer trained on the version when
    the config names none) and saved beside the resolved config."""
    if run.resume_from is not None:
        return EurekaAudioProcessor.from_pretrained(run.run_dir / "processor")
    n_mels, chunk = encoder_geometry(run.cfg.model)
    processor = build_processor(run.cfg.model, run.index, n_mels, chunk, run.tasks)
    if run.main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        processor.save_pretrained(run.run_dir / "processor")
        resolved = {**run.cfg.to_dict(), "version": run.version}
        (run.run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    run.accelerator.wait_for_everyone()
    return processor

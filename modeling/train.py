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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from modeling.configuration import EurekaAudioConfig
from modeling.data import VersionIndex, build_loader, read_texts, version_shard_paths
from modeling.lora import DEFAULT_TARGETS, apply_lora, merge_lora
from modeling.model import EurekaAudioForCausalLM
from modeling.processor import EurekaAudioProcessor


# ---- config --------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """What to build. Either `encoder`/`llm` config dicts (a model from scratch, e.g. the tiny preset)
    or `encoder_path`/`llm_path` local checkpoints (e.g. whisper-large-v3 and Qwen3-1.7B)."""

    encoder: dict[str, Any] | None = None  # WhisperConfig fields
    llm: dict[str, Any] | None = None  # causal-LM config fields, with model_type
    encoder_path: str | None = None  # local Whisper checkpoint (full model or encoder)
    llm_path: str | None = None  # local causal-LM checkpoint, with its tokenizer
    tokenizer_path: str | None = None  # default: llm_path; with neither, a BPE is trained on the version
    tokenizer_vocab_size: int = 1000  # size of that trained BPE
    tokenizer_whole_lines: bool = False  # that BPE may merge whole lines (one token per option line)
    tokenizer_words: bool = False  # with whole lines: other lines (transcripts, captions) cut at words
    dtype: str | None = None  # load dtype for real checkpoints, e.g. "bfloat16"
    system_prompt: str | None = None
    adapter: str = "moe"  # moe | linear
    stack_factor: int = 4
    n_experts: int = 8
    top_k: int = 2
    n_shared: int = 1
    expert_hidden: int | None = None
    aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.0
    adapter_norm_init: float = 1.0
    audio_scale: str = "fixed"  # fixed | text (audio embeddings at the text embeddings' RMS times the gain)


@dataclass
class TrainSpec:
    """How to train. Steps are optimizer steps; one step consumes `grad_accum` batches per process."""

    llm: str = "full"  # full | lora | frozen
    encoder: str = "train"  # train | frozen
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    batch_size: int = 16
    max_batch_seconds: float | None = None  # cap on audio seconds per batch (length bucketing)
    grad_accum: int = 1
    lr: float = 1e-3
    llm_lr: float | None = None  # default lr
    encoder_lr: float | None = None  # default lr
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 50
    max_steps: int = 1000
    max_minutes: float | None = None  # stop early (with a checkpoint) when the wall time is spent
    grad_clip: float = 1.0
    precision: str = "auto"  # auto (bf16 on a GPU that has it, else fp32) | bf16 | fp32
    num_threads: int | None = None  # torch intra-op threads (1 is fastest on a busy 2-core machine)
    prefetch: int = 2  # batches prepared ahead in a background thread
    cache_mb: float = 0.0  # > 0: keep tokenized examples and features in memory (a small version, many epochs)
    seed: int = 0
    zero_audio: bool = False  # train on silence: the audio-blind baseline
    pack_tokens: int = 0  # > 0: pack examples into rows of at most this many tokens
    balance_categories: float = 0.0  # 0: rows as they come; 1: every category (l3) equally often per epoch
    category_weights: dict[str, float] = field(default_factory=dict)  # l3 -> mixture weight on its share
    # a curriculum before category_weights: [{epochs: N, category_weights: {...}}, ...], stage by stage
    category_stages: list[dict[str, Any]] = field(default_factory=list)
    shuffle_options: bool = False  # multiple-choice options in a new order each epoch (answer re-lettered)
    require_measured: bool = False  # train only on rows a measurement of the audio verified (verification = measured)
    hard_example_weight: float = 1.0  # rows our own model answered wrong (model_correct False) drawn this x as often
    # task -> draws per epoch as a multiple of its row count (unnamed: 1.0; 0 leaves the task out);
    # inside each task the category weights and stages apply as before
    task_weights: dict[str, float] = field(default_factory=dict)
    log_every: int = 10
    save_every: int = 200
    keep_checkpoints: int = 2
    eval_every: int = 0  # > 0: teacher-forced answer accuracy on validation rows every N steps (cheap)
    eval_every_rows: int = 256
    stop_at_accuracy: float | None = None  # stop once every category's validation accuracy reaches this
    eval_split: str = "test"
    eval_batch_size: int = 64
    eval_max_rows: int | None = None
    eval_zero_audio: bool = True  # also score the model with the audio zeroed
    max_new_tokens: int = 16
    max_new_tokens_text: int = 48  # transcripts and captions
    eval_task_rows: int = 64  # per non-mcq task: validation rows scored teacher-forced every eval_every steps
    eval_asr_rows: int = 32  # validation transcripts generated every eval_every steps (WER in metrics.jsonl)
    eval_task_max_rows: int | None = 300  # per non-mcq task, in the final evaluation


@dataclass
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    name: str = "run"

    @classmethod
    def from_dict(cls, doc: dict[str, Any], origin: str = "<config>") -> "TrainConfig":
        unknown = set(doc) - {"model", "train", "name"}
        if unknown:
            raise ValueError(f"{origin}: unknown top-level key(s) {sorted(unknown)}; expected model, train, name")
        return cls(model=_fill(ModelSpec, doc.get("model") or {}, f"{origin}: model"),
                   train=_fill(TrainSpec, doc.get("train") or {}, f"{origin}: train"),
                   name=str(doc.get("name", "run")))

    @classmethod
    def load(cls, path: str | Path, overrides: Sequence[str] = ()) -> "TrainConfig":
        """Read a YAML preset and apply `section.key=value` overrides (values parsed as YAML)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"training config {path} does not exist (presets: modeling/configs/*.yaml)")
        doc = _with_base(yaml.safe_load(path.read_text()) or {}, path)
        doc.setdefault("name", path.stem)
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or "." not in key:
                raise ValueError(f"override {item!r}: expected section.key=value, e.g. train.max_steps=100")
            node = doc
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = yaml.safe_load(value)
        return cls.from_dict(doc, str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _with_base(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """A preset with `extends: other.yaml` (relative to it): the other preset, with this one's
    `model`/`train` keys laid over it key by key."""
    base_name = doc.pop("extends", None)
    if base_name is None:
        return doc
    base_path = path.parent / str(base_name)
    if not base_path.exists():
        raise FileNotFoundError(f"{path}: extends {base_name!r}, but {base_path} does not exist")
    base = _with_base(yaml.safe_load(base_path.read_text()) or {}, base_path)
    for section in ("model", "train"):
        if section in doc:
            base[section] = {**(base.get(section) or {}), **(doc.pop(section) or {})}
    base.update(doc)
    return base


def _mixture_weights(value: Any, where: str) -> dict[str, float]:
    """A category -> weight mapping from a config, with numbers as floats."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping category -> weight, got {value!r}")
    try:
        return {str(k): float(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{where}: weights must be numbers, got {value!r}") from None


def _fill(cls, values: dict[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    values = dict(values)
    for key, value in values.items():  # YAML reads 3e-4 (no dot) as a string: coerce numbers
        if isinstance(value, str) and kinds[key].split(" |")[0] in ("float", "int"):
            try:
                values[key] = float(value) if kinds[key].startswith("float") else int(value)
            except ValueError:
                raise ValueError(f"{where}.{key}: {value!r} is not a number") from None
    obj = cls(**values)
    if isinstance(obj, TrainSpec):
        obj.betas = tuple(obj.betas)
        if obj.llm not in ("full", "lora", "frozen"):
            raise ValueError(f"{where}.llm: {obj.llm!r} is not one of full, lora, frozen")
        if obj.encoder not in ("train", "frozen"):
            raise ValueError(f"{where}.encoder: {obj.encoder!r} is not one of train, frozen")
        obj.category_weights = _mixture_weights(obj.category_weights, f"{where}.category_weights")
        obj.task_weights = _mixture_weights(obj.task_weights, f"{where}.task_weights")
        from modeling.data import TASKS

        unknown_tasks = sorted(set(obj.task_weights) - set(TASKS))
        negative = {k: v for k, v in obj.task_weights.items() if v < 0}
        if unknown_tasks or negative or obj.task_weights and not trained_tasks(obj):
            raise ValueError(f"{where}.task_weights: expected task -> weight >= 0 for tasks {list(TASKS)} with "
                             f"at least one above 0, got {obj.task_weights!r}")
        if not isinstance(obj.category_stages, list) or not all(isinstance(st, dict) for st in obj.category_stages):
            raise ValueError(f"{where}.category_stages: expected a list of {{epochs, category_weights}} mappings, "
                             f"got {obj.category_stages!r}")
        for i, st in enumerate(obj.category_stages):
            extra = sorted(set(st) - {"epochs", "category_weights"})
            if extra:
                raise ValueError(f"{where}.category_stages[{i}]: unknown key(s) {extra} (epochs, category_weights)")
            st["category_weights"] = _mixture_weights(st.get("category_weights") or {},
                                                      f"{where}.category_stages[{i}].category_weights")
        if obj.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"{where}.precision: {obj.precision!r} is not one of auto, bf16, fp32")
    if isinstance(obj, ModelSpec):
        for name in ("encoder_path", "llm_path", "tokenizer_path"):
            value = getattr(obj, name)
            if value:
                value = os.path.expanduser(os.path.expandvars(str(value)))
                if "$" in value:
                    raise ValueError(f"{where}.{name}: {getattr(obj, name)!r} names an unset environment variable; "
                                     f"set it or pass --set model.{name}=/local/path")
                setattr(obj, name, value)
        if obj.encoder is None and obj.encoder_path is None:
            raise ValueError(f"{where}: give encoder (config fields) or encoder_path (a local Whisper checkpoint)")
        if obj.llm is None and obj.llm_path is None:
            raise ValueError(f"{where}: give llm (config fields) or llm_path (a local causal-LM checkpoint)")
    return obj


def trained_tasks(spec: TrainSpec) -> list[str]:
    """The tasks a run trains on: every task whose weight is not 0 (an unnamed task weighs 1)."""
    from modeling.data import TASKS

    return [t for t in TASKS if spec.task_weights.get(t, 1.0) > 0]


def positive_task_weights(spec: TrainSpec) -> dict[str, float]:
    return {t: w for t, w in spec.task_weights.items() if w > 0}


# ---- building ------------------------------------------------------------------------------------


def build_processor(spec: ModelSpec, index: VersionIndex, n_mels: int, chunk_mel_frames: int,
                    tasks: Sequence[str] | None = None) -> EurekaAudioProcessor:
    """The tokenizer from tokenizer_path/llm_path, else a byte-level BPE trained on the train split
    (the rows of `tasks` only, when named)."""
    from transformers import AutoTokenizer

    from modeling.tokenizer import train_small_tokenizer

    path = spec.tokenizer_path or spec.llm_path
    tokenizer = AutoTokenizer.from_pretrained(path) if path else train_small_tokenizer(
        read_texts(index, "train", tasks), vocab_size=spec.tokenizer_vocab_size,
        whole_lines=spec.tokenizer_whole_lines, words=spec.tokenizer_words)
    return EurekaAudioProcessor(tokenizer, n_mels=n_mels, chunk_mel_frames=chunk_mel_frames,
                                stack_factor=spec.stack_factor, system_prompt=spec.system_prompt)


def _adapter_fields(spec: ModelSpec) -> dict[str, Any]:
    return {k: getattr(spec, k) for k in ("adapter", "stack_factor", "n_experts", "top_k", "n_shared",
                                          "expert_hidden", "aux_loss_coef", "router_z_loss_coef", "adapter_norm_init",
                                          "audio_scale")}


def encoder_geometry(spec: ModelSpec) -> tuple[int, int]:
    """(n_mels, chunk_mel_frames) of the encoder the spec names, without loading weights."""
    if spec.encoder_path:
        from transformers import WhisperConfig

        enc = WhisperConfig.from_pretrained(spec.encoder_path)
    else:
        from transformers import WhisperConfig

        enc = WhisperConfig(**spec.encoder)
    return enc.num_mel_bins, 2 * enc.max_source_positions


def build_model(spec: ModelSpec, processor: EurekaAudioProcessor) -> EurekaAudioForCausalLM:
    """A fresh model: from config dicts, or from local checkpoints (adapter freshly initialised)."""
    if spec.encoder_path and spec.llm_path:
        dtype = getattr(torch, spec.dtype) if spec.dtype else None
        return EurekaAudioForCausalLM.from_components(spec.encoder_path, spec.llm_path, tokenizer=processor.tokenizer,
                                                      dtype=dtype, **_adapter_fields(spec))
    if spec.encoder_path or spec.llm_path:
        raise ValueError("model: give both encoder_path and llm_path, or neither (config dicts for both)")
    llm = dict(spec.llm)
    llm["vocab_size"] = len(processor.tokenizer)
    llm.setdefault("eos_token_id", processor.tokenizer.eos_token_id)
    llm.setdefault("pad_token_id", processor.tokenizer.pad_token_id)
    llm.setdefault("bos_token_id", None)
    config = EurekaAudioConfig(encoder_config=dict(spec.encoder), llm_config=llm, **processor.audio_ids,
                               **_adapter_fields(spec))
    model = EurekaAudioForCausalLM(config)
    model.llm.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.llm.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model


def set_trainable(model: EurekaAudioForCausalLM, spec: TrainSpec) -> dict[str, int]:
    """Freeze/unfreeze per the config (LoRA layers added when llm == "lora"); returns trainable counts."""
    model.adapter.requires_grad_(True)
    model.encoder.requires_grad_(spec.encoder == "train")
    model.encoder.embed_positions.requires_grad_(False)  # Whisper's positions stay fixed
    if spec.llm == "lora":
        model.llm.requires_grad_(False)
        apply_lora(model.llm, spec.lora_rank, spec.lora_alpha, spec.lora_dropout, spec.lora_targets)
    else:
        model.llm.requires_grad_(spec.llm == "full")
    return {part: sum(p.numel() for p in getattr(model, part).parameters() if p.requires_grad)
            for part in ("encoder", "adapter", "llm")}


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


def lr_factor(step: int, spec: TrainSpec) -> float:
    """Linear warmup over warmup_steps, then cosine from 1 to min_lr_ratio at max_steps."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    progress = min(1.0, (step - spec.warmup_steps) / max(1, spec.max_steps - spec.warmup_steps))
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


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


def training_id_for(version: str, config: TrainConfig) -> str:
    return f"{version}-{config.name}-{config.sha256()[:10]}"


def _mixed_precision(spec: TrainSpec) -> str:
    if spec.precision == "bf16":
        return "bf16"
    if spec.precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.exists():
        return []
    return sorted((p for p in root.iterdir() if p.name.startswith("step-") and p.is_dir()),
                  key=lambda p: int(p.name.split("-")[1]))


def _save_checkpoint(accelerator, run_dir: Path, step: int, keep: int) -> Path:
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
        for old in _checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ---- evaluation ----------------------------------------------------------------------------------


EVAL_COLUMNS = ["sample_id", "audio", "messages", "question", "choices", "answer", "answer_index",
                "l0", "l1", "l2", "l3", "source", "transcript", "task"]


def stratified_rows(index: VersionIndex, split: str, max_rows: int, tasks: Sequence[str] | None = None) -> np.ndarray:
    """Up to `max_rows` positions of `split` with the categories (l3) as evenly represented as their
    row counts allow (a category with fewer rows than its share gives the rest to the others), each
    category's first rows in index order, returned in index order. A plain prefix would follow the
    version's mix: 600 rows of the demo hold 11 beep-count rows, too few to tell 80% from 95%.
    `tasks`: rows of those tasks only."""
    positions = index.rows_of(split, tasks)
    if len(positions) <= max_rows:
        return positions
    cats = index.l3[positions]
    names, counts = np.unique(cats, return_counts=True)
    take = np.zeros(len(names), dtype=int)
    left = max_rows
    while left > 0:  # water-filling: an even share, capped by what each category has
        open_ = np.flatnonzero(take < counts)
        share = max(1, left // len(open_))
        for i in open_:
            add = min(share, counts[i] - take[i], left)
            take[i] += add
            left -= add
            if left == 0:
                break
    chosen = [positions[cats == n][:k] for n, k in zip(names, take)]
    return np.sort(np.concatenate(chosen))


@torch.no_grad()
def embedding_scale(model: EurekaAudioForCausalLM) -> dict[str, float]:
    """The scale audio embeddings enter the LLM at (RMS of the adapter's output gain, times the text
    scale under audio_scale "text"; the norm's input is RMS-normalised) beside the RMS of the LLM's
    text embeddings: audio far above text dominates the residual stream at its positions, far below
    it is drowned by the layers' updates."""
    gain = float(model.adapter.norm.weight.float().pow(2).mean().sqrt())
    text = float(model.text_embedding_rms())
    audio = gain * text if model.config.audio_scale == "text" else gain
    return {"audio_rms": round(audio, 4), "text_embed_rms": round(text, 4)}


def held_out_rows(index: VersionIndex, split: str, max_rows: int | None = None,
                  tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a split (of `tasks` only, when named), full (audio included), in index order; at most
    `max_rows` spread over the split."""
    from modeling.data import RowReader

    positions = index.rows_of(split, tasks)
    if max_rows is not None and len(positions) > max_rows:
        positions = positions[np.linspace(0, len(positions) - 1, max_rows).astype(int)]
    return RowReader(index, columns=EVAL_COLUMNS, cache_shards=len(index.paths)).rows(positions)


def expert_load(model: EurekaAudioForCausalLM, processor: EurekaAudioProcessor, rows, batch_size: int = 64) -> dict[str, Any] | None:
    """Routing statistics of the MoE adapter over `rows`: tokens per expert, each expert's share of its fair
    share (1.0 = even; collapse = near 0), and L_aux. None for the linear adapter."""
    from modeling.data import decode_row_audio

    if model.config.adapter != "moe":
        return None
    counts = torch.zeros(model.config.n_experts, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            audios = [decode_row_audio(r) for r in rows[start : start + batch_size]]
            feats, lengths = processor.audio_features(audios)
            _, _, aux = model.encode_audio(feats, lengths)
            counts += aux.expert_counts.cpu()
    total = int(counts.sum())
    fair = total / model.config.n_experts
    frac = counts.double() / max(total, 1)
    return {"tokens_per_expert": counts.tolist(), "share_of_fair": (counts.double() / fair).round(decimals=3).tolist(),
            "min_share_of_fair": float(counts.min()) / fair if fair else None,
            "load_balance_lower_bound_ok": bool(total and float(counts.min()) >= fair / 4),
            "fraction": frac.round(decimals=4).tolist()}


def answer_accuracy(model, loader) -> dict[str, Any]:
    """Teacher-forced exact-answer accuracy: an example counts when the argmax at every labelled position
    is the label (what greedy decoding would then reproduce). Over the questions (mcq rows), overall
    and per category (l3), and per task (`by_task`)."""
    hits: dict[str, list[bool]] = {}
    by_task: dict[str, list[bool]] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in loader:
            inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
            logits = model(**inputs).logits[:, :-1]
            labels = inputs["labels"][:, 1:]
            ok = ((logits.argmax(-1) == labels) | (labels == -100)).all(-1)
            for cat, task, good in zip(batch["l3"], batch.get("task") or ["mcq"] * len(ok), ok.tolist()):
                by_task.setdefault(task, []).append(good)
                if task == "mcq":
                    hits.setdefault(cat, []).append(good)
    model.train(was_training)
    every = [h for v in hits.values() for h in v]
    out = {"answer_accuracy": sum(every) / max(1, len(every)),
           "by_category": {k: round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}}
    if set(by_task) - {"mcq"}:
        out["by_task"] = {k: round(sum(v) / len(v), 3) for k, v in sorted(by_task.items())}
    return out


def validation_wer(model, processor, rows, spec: TrainSpec) -> dict[str, Any]:
    """WER of greedy transcripts of validation asr rows (`dataflux.text_metrics.wer`), with two examples."""
    from modeling.task_eval import asr_block, generate_answers
    from modeling.eval import as_predictor

    texts = generate_answers(as_predictor(model, processor, spec.max_new_tokens_text), rows, spec.eval_batch_size)
    block = asr_block(rows, texts)
    return {"wer": round(block["wer"], 4), "wer_n": block["n"],
            "wer_examples": [{"reference": it["reference"], "hypothesis": it["hypothesis"]} for it in block["items"][:2]]}


def evaluate_held_out(model, processor, rows, spec: TrainSpec) -> dict[str, Any]:
    """MMAU-style and exact accuracy on `rows`, overall and per category.

    "audio": the real clips. With `eval_zero_audio`, two audio-blind baselines: "zero_audio" (each
    clip replaced by silence of the same length, as `modeling.eval` does; the token count still tells
    the duration) and "fixed_silence" (one second of silence for every item: no cue at all).
    """
    from modeling.eval import evaluate

    runs: list[tuple[str, dict[str, Any]]] = [("audio", {})]
    if spec.eval_zero_audio:
        silence = np.zeros(processor.sampling_rate, dtype=np.float32)
        runs += [("zero_audio", {"zero_audio": True}), ("fixed_silence", {"audio_loader": lambda row: silence})]
    metrics: dict[str, Any] = {}
    if not rows:
        return metrics
    for name, kwargs in runs:
        result = evaluate(model, processor, rows, batch_size=spec.eval_batch_size,
                          max_new_tokens=spec.max_new_tokens, **kwargs)
        by = result.get("by", {}).get("l3", {})
        metrics[name] = {
            "n": result["n"], "mmau_accuracy": result["mmau_accuracy"], "exact_accuracy": result["exact_accuracy"],
            "by_category": {k: {"n": v["n"], "mmau_accuracy": v["mmau_accuracy"], "exact_accuracy": v["exact_accuracy"]}
                            for k, v in by.items()},
            "examples": [{"id": it["id"], "prediction": it.get("model_prediction"), "answer": it["answer"]}
                         for it in result["predictions"][:5]],
        }
    return metrics


def evaluate_held_out_tasks(model, processor, rows, spec: TrainSpec) -> dict[str, Any]:
    """Per-task scores of non-mcq rows (`modeling.task_eval`), with five example items per task."""
    from modeling.task_eval import evaluate_tasks

    blocks = evaluate_tasks(model, processor, rows, batch_size=spec.eval_batch_size,
                            max_new_tokens=spec.max_new_tokens, max_new_tokens_text=spec.max_new_tokens_text)
    return {task: {**{k: v for k, v in b.items() if k != "items"}, "examples": b["items"][:5]}
            for task, b in blocks.items()}


# ---- the loop ------------------------------------------------------------------------------------


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
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.load(config, overrides)
    spec = cfg.train
    paths = version_shard_paths(version, catalog_path)  # refuses drafts and tampered shards
    training_id = training_id_for(version, cfg)
    if output_dir is None:
        from dataflux.home import dataflux_home

        output_dir = dataflux_home() / "trainings" / training_id
    run_dir = Path(output_dir)

    accelerator = Accelerator(mixed_precision=_mixed_precision(spec), cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    set_seed(spec.seed)
    index = VersionIndex.build(paths, require_measured=spec.require_measured)
    tasks = trained_tasks(spec)
    resume_from = _checkpoints(run_dir)[-1] if _checkpoints(run_dir) else None
    if resume_from is not None:
        processor = EurekaAudioProcessor.from_pretrained(run_dir / "processor")
    else:
        n_mels, chunk = encoder_geometry(cfg.model)
        processor = build_processor(cfg.model, index, n_mels, chunk, tasks)
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            processor.save_pretrained(run_dir / "processor")
            (run_dir / "config.yaml").write_text(yaml.safe_dump({**cfg.to_dict(), "version": version}, sort_keys=False))
        accelerator.wait_for_everyone()

    set_seed(spec.seed)
    model = build_model(cfg.model, processor)
    trainable = set_trainable(model, spec)
    optimizer = build_optimizer(model, spec)
    # a plain function (not a callable object), so the scheduler's state_dict holds only counters
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, spec))
    loader = build_loader(index, processor, "train", spec.batch_size, seed=spec.seed, shuffle=True,
                          max_batch_seconds=spec.max_batch_seconds, zero_audio=spec.zero_audio,
                          pack_tokens=spec.pack_tokens, rank=accelerator.process_index,
                          world_size=accelerator.num_processes, drop_last=True, prefetch=spec.prefetch,
                          balance_categories=spec.balance_categories, category_weights=spec.category_weights,
                          category_stages=spec.category_stages, shuffle_options=spec.shuffle_options,
                          cache_mb=spec.cache_mb, hard_example_weight=spec.hard_example_weight,
                          tasks=tasks, task_weights=positive_task_weights(spec))
    progress = Progress()
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler, loader, progress)

    catalog = None
    if record and main:
        from dataflux.storage.catalog import Catalog

        catalog = Catalog(catalog_path)
        catalog.record_training(training_id, version, checkpoint=None, config=cfg.to_dict(), status="running")
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        if main:
            log(f"resumed {training_id} from {resume_from} at step {progress.step}")
    elif main:
        log(f"training {training_id}: {sum(trainable.values()):,} trainable parameters {trainable}, "
            f"{len(index.rows_of('train'))} train rows, {len(loader)} batches per epoch")

    val_loader = None
    val_asr_rows: list[dict[str, Any]] = []
    if spec.eval_every and main:
        val_positions = stratified_rows(index, "validation", spec.eval_every_rows, ["mcq"])
        others = [index.rows_of("validation", [t])[: spec.eval_task_rows] for t in tasks if t != "mcq"]
        val_positions = np.sort(np.concatenate([val_positions, *others])) if others else val_positions
        if "asr" in tasks and spec.eval_asr_rows:
            val_asr_rows = held_out_rows(index, "validation", spec.eval_asr_rows, ["asr"])
        if len(val_positions):
            from modeling.data import BucketBatchSampler, Collator, RowReader, TrainLoader

            val_loader = TrainLoader(BucketBatchSampler(index, val_positions, spec.eval_batch_size, shuffle=False),
                                     RowReader(index), Collator(processor, cache_mb=spec.cache_mb), max_epochs=1)
    metrics_file = run_dir / "metrics.jsonl"
    started = time.monotonic() - progress.elapsed_s
    params = [p for p in model.parameters() if p.requires_grad]
    batches = iter(loader)
    window: dict[str, list] = {"loss": [], "lm_loss": [], "aux": []}
    counts_window = None
    status = "completed"
    stop_reason = "max_steps"
    model.train()
    try:
        while progress.step < spec.max_steps:
            for micro in range(spec.grad_accum):
                batch = next(batches)
                progress.examples += len(batch["sample_id"])
                inputs = {k: v.to(accelerator.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
                sync = micro == spec.grad_accum - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    out = model(**inputs)
                    accelerator.backward(out.loss / spec.grad_accum)
                window["loss"].append(out.loss.item())
                window["lm_loss"].append(out.lm_loss.item())
                window["aux"].append(out.aux_loss.item() if out.aux_loss is not None else 0.0)
                if out.expert_counts is not None:
                    c = out.expert_counts.detach().cpu()
                    counts_window = c if counts_window is None else counts_window + c
            grad_norm = accelerator.clip_grad_norm_(params, spec.grad_clip) if spec.grad_clip else None
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.elapsed_s = time.monotonic() - started
            if main and (progress.step % spec.log_every == 0 or progress.step == 1):
                line = {"step": progress.step, "loss": float(np.mean(window["loss"])),
                        "lm_loss": float(np.mean(window["lm_loss"])), "aux_loss": float(np.mean(window["aux"])),
                        "step_losses": window["loss"][-spec.grad_accum:],
                        "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm) if grad_norm is not None else None,
                        "examples": progress.examples, "elapsed_s": round(progress.elapsed_s, 2)}
                if counts_window is not None:
                    line["expert_tokens"] = counts_window.tolist()
                line["scale"] = embedding_scale(accelerator.unwrap_model(model))
                _append_jsonl(metrics_file, line)
                log(json.dumps(line))
            reached = False
            eval_step = bool(spec.eval_every) and progress.step % spec.eval_every == 0
            if val_loader is not None and eval_step:
                val_loader.epoch = val_loader.batches_done = 0
                line = {"step": progress.step, "validation": answer_accuracy(accelerator.unwrap_model(model), val_loader)}
                if val_asr_rows:
                    line["validation"].update(validation_wer(accelerator.unwrap_model(model), processor, val_asr_rows, spec))
                _append_jsonl(metrics_file, line)
                log(json.dumps(line))
                by = line["validation"]["by_category"]
                reached = bool(spec.stop_at_accuracy is not None and by and min(by.values()) >= spec.stop_at_accuracy)
            if spec.stop_at_accuracy is not None and eval_step:
                # only the main process scores; every process must agree to stop at the same step
                flag = accelerator.reduce(torch.tensor([float(reached)], device=accelerator.device), "sum")
                reached = bool(flag.item() > 0)
            if progress.step % spec.log_every == 0:
                window = {k: [] for k in window}
                counts_window = None
            out_of_time = spec.max_minutes is not None and progress.elapsed_s > 60 * spec.max_minutes
            stopping = stop_after_steps is not None and progress.step >= stop_after_steps
            if progress.step % spec.save_every == 0 or out_of_time or stopping or reached:
                _save_checkpoint(accelerator, run_dir, progress.step, spec.keep_checkpoints)
            if reached:
                stop_reason = "validation_target"
                if main:
                    log(f"every validation category at or above {spec.stop_at_accuracy} at step {progress.step}; stopping")
                break
            if stopping:
                status = "interrupted"
                break
            if out_of_time:
                stop_reason = "time_budget"
                if main:
                    log(f"time budget of {spec.max_minutes} min spent at step {progress.step}")
                break
    except BaseException:
        if catalog is not None:
            catalog.record_training(training_id, version, status="failed", ended_at=datetime.now(timezone.utc))
        raise

    result: dict[str, Any] = {"training_id": training_id, "run_dir": str(run_dir), "status": status,
                              "checkpoint": None, "metrics": {}}
    if status == "interrupted":
        if catalog is not None:
            catalog.record_training(training_id, version, status="interrupted")
        return result

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if spec.llm == "lora":
        merge_lora(unwrapped.llm)  # a plain checkpoint; LoRA under FSDP is not supported
        state_dict = None
    else:
        state_dict = accelerator.get_state_dict(model)  # collective under FSDP: every rank calls it
    train_minutes = progress.elapsed_s / 60
    metrics: dict[str, Any] = {"steps": progress.step, "examples": progress.examples, "stop_reason": stop_reason,
                               "train_minutes": round(train_minutes, 3), "trainable_parameters": trainable,
                               "parameters": sum(p.numel() for p in unwrapped.parameters()),
                               "last_loss": float(np.mean(window["loss"])) if window["loss"] else None}
    if main:
        final = run_dir / "final"
        unwrapped.save_pretrained(final, state_dict=state_dict)
        processor.save_pretrained(final)
        result["checkpoint"] = str(final)
        if evaluate:
            t0 = time.monotonic()
            rows = held_out_rows(index, spec.eval_split, spec.eval_max_rows, ["mcq"])
            unwrapped.float().eval()
            metrics["eval_split"] = spec.eval_split
            metrics.update(evaluate_held_out(unwrapped, processor, rows, spec))
            task_rows = [r for t in tasks if t != "mcq"
                         for r in held_out_rows(index, spec.eval_split, spec.eval_task_max_rows, [t])]
            if task_rows:
                metrics["tasks"] = evaluate_held_out_tasks(unwrapped, processor, task_rows, spec)
            metrics["expert_load"] = expert_load(unwrapped, processor, rows)
            metrics["eval_minutes"] = round((time.monotonic() - t0) / 60, 3)
        _append_jsonl(metrics_file, {"final": metrics})
        if catalog is not None:
            catalog.record_training(training_id, version, checkpoint=str(final), metrics=metrics,
                                    status="completed", ended_at=datetime.now(timezone.utc))
    result["metrics"] = metrics
    accelerator.wait_for_everyone()
    return result


def _append_jsonl(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")


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

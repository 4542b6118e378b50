"""The model phase: the processor (tokenizer + audio features), the model, and which parts train."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoTokenizer, WhisperConfig

from modeling.configuration import EurekaAudioConfig
from modeling.data import VersionIndex, read_texts
from modeling.lora import apply_lora
from modeling.model import EurekaAudioForCausalLM
from modeling.processor import EurekaAudioProcessor
from modeling.recipe.config import ModelSpec, TrainSpec
from modeling.tokenizer import train_small_tokenizer

ADAPTER_FIELDS = ("adapter", "stack_factor", "n_experts", "top_k", "n_shared", "expert_hidden", "aux_loss_coef",
                  "router_z_loss_coef", "adapter_norm_init", "audio_scale")


def build_processor(spec: ModelSpec, index: VersionIndex, n_mels: int, chunk_mel_frames: int,
                    tasks: Sequence[str] | None = None) -> EurekaAudioProcessor:
    """The tokenizer from tokenizer_path/llm_path, else a byte-level BPE trained on the train split
    (the rows of `tasks` only, when named)."""
    path = spec.tokenizer_path or spec.llm_path
    tokenizer = AutoTokenizer.from_pretrained(path) if path else train_small_tokenizer(
        read_texts(index, "train", tasks), vocab_size=spec.tokenizer_vocab_size,
        whole_lines=spec.tokenizer_whole_lines, words=spec.tokenizer_words)
    return EurekaAudioProcessor(tokenizer, n_mels=n_mels, chunk_mel_frames=chunk_mel_frames,
                                stack_factor=spec.stack_factor, system_prompt=spec.system_prompt)


def _adapter_fields(spec: ModelSpec) -> dict[str, Any]:
    return {k: getattr(spec, k) for k in ADAPTER_FIELDS}


def encoder_geometry(spec: ModelSpec) -> tuple[int, int]:
    """(n_mels, chunk_mel_frames) of the encoder the spec names, without loading weights."""
    enc = WhisperConfig.from_pretrained(spec.encoder_path) if spec.encoder_path else WhisperConfig(**spec.encoder)
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

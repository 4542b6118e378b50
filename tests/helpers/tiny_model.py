"""The tiny EurekaAudio model the tests run: a real model and processor (16 mel bins, one encoder layer,
one 32-wide qwen3 layer, four experts), small enough to build and answer in well under a second on a CPU.

The tokenizer is trained on the pitch question in both of its phrasings and the four lettered answers, so
every test that asks the tiny model about a tone reads whole words, not bytes."""

from __future__ import annotations

from pathlib import Path

import torch

from modeling.configuration import EurekaAudioConfig
from modeling.model import EurekaAudioForCausalLM
from modeling.processor import EurekaAudioProcessor
from modeling.tokenizer import train_small_tokenizer

PITCHES = ["110 Hz", "220 Hz", "440 Hz", "880 Hz"]
PITCH_QUESTIONS = ["What is the approximate pitch of the tone?",
                   "What is the approximate pitch of the tone in this recording?"]
OPTIONS = "\n".join(f"({'ABCD'[i]}) {p}" for i, p in enumerate(PITCHES))
TINY_TEXTS = [f"<audio>\n{q}\n{OPTIONS}" for q in PITCH_QUESTIONS] + [
    f"({'ABCD'[i]}) {p}" for i, p in enumerate(PITCHES)]


def tiny_processor(texts: list[str] = TINY_TEXTS, vocab_size: int = 400) -> EurekaAudioProcessor:
    return EurekaAudioProcessor(train_small_tokenizer(texts, vocab_size=vocab_size), n_mels=16, chunk_mel_frames=100)


def tiny_model(processor: EurekaAudioProcessor, seed: int = 0) -> EurekaAudioForCausalLM:
    """Untrained weights drawn from `seed`, so two calls give the same model."""
    torch.manual_seed(seed)
    config = EurekaAudioConfig(
        encoder_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                            max_source_positions=50, num_mel_bins=16),
        llm_config=dict(model_type="qwen3", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=16, intermediate_size=64, vocab_size=len(processor.tokenizer)),
        n_experts=4, expert_hidden=32, **processor.audio_ids)
    return EurekaAudioForCausalLM(config).eval()


def save_tiny_checkpoint(path: Path) -> Path:
    """A checkpoint folder as the trainer writes one (weights, config, processor); returns `path`."""
    processor = tiny_processor()
    tiny_model(processor).save_pretrained(path)
    processor.save_pretrained(path)
    return path

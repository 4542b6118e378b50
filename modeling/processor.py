"""One processor for training and inference: log-mel features, audio-token expansion, chat format, labels.

A conversation is a list of {"role", "content"} messages (the row contract's `messages`); a user
message holds the literal placeholder `<audio>` once per clip. The processor computes how many
audio tokens each clip becomes (mel frames -> encoder windows -> conv stride 2 -> 4x stacking) and
expands the placeholder to `<|audio_start|> N x <|audio_pad|> <|audio_end|>`. Training examples get
labels on the assistant turns only (their content and closing `<|im_end|>`; -100 elsewhere); an
inference prompt is the same token sequence up to `<|im_start|>assistant\\n`.

Legend: B batch, T samples (16 kHz), M mel bins, F mel frames, L tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoProcessor, ProcessorMixin

from modeling.configuration import AUDIO_END, AUDIO_PAD, AUDIO_START, EurekaAudioConfig, audio_token_count
from modeling.features import log_mel, n_frames
from modeling.tokenizer import CHATML_TEMPLATE, IM_END, IM_START, add_audio_tokens

AUDIO_PLACEHOLDER = "<audio>"
IGNORE_INDEX = -100
PROCESSOR_CONFIG = "processor_config.json"


@dataclass
class Encoded:
    """One tokenized conversation: input_ids (L,), labels (L,) with -100 off the assistant turns."""

    input_ids: list[int]
    labels: list[int]


def _mel_frames(num_samples: int) -> int:
    return int(n_frames(int(num_samples)))


def log_mel_batch(waveforms: torch.Tensor, lengths: torch.Tensor, n_mels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper log-mel of a padded batch: (B, T), (B,) -> features (B, M, F), frame lengths (B,)."""
    return log_mel(waveforms, lengths, n_mels=n_mels)


class EurekaAudioProcessor(ProcessorMixin):
    """Features + tokenizer + chat template for `EurekaAudioForCausalLM`.

    A `transformers` processor: `save_pretrained` writes the tokenizer, `chat_template.jinja` and
    `processor_config.json` (the audio geometry below), and `AutoProcessor.from_pretrained(checkpoint)`
    loads it back (the class is registered for `EurekaAudioConfig`, `model_type` "eureka_audio").

    Args:
        tokenizer: a Hugging Face tokenizer; the audio special tokens are added if missing.
        n_mels: mel bins the encoder expects (80, or 128 for whisper-large-v3).
        chunk_mel_frames: mel frames per encoder window (2 * max_source_positions).
        stack_factor: encoder frames per audio token.
        sampling_rate: the rate audio must arrive in (16 kHz).
        system_prompt: prepended as a system turn when a conversation has none (None: no system turn).
        chat_template: the Jinja chat template (default: the tokenizer's, else ChatML).
    """

    def __init__(
        self,
        tokenizer,
        n_mels: int = 80,
        chunk_mel_frames: int = 3000,
        stack_factor: int = 4,
        sampling_rate: int = 16000,
        system_prompt: str | None = None,
        chat_template: str | None = None,
    ):
        chat_template = chat_template or getattr(tokenizer, "chat_template", None) or CHATML_TEMPLATE
        tokenizer.chat_template = chat_template
        super().__init__(tokenizer, chat_template=chat_template)
        self.audio_ids = add_audio_tokens(tokenizer)
        self.n_mels = n_mels
        self.chunk_mel_frames = chunk_mel_frames
        self.stack_factor = stack_factor
        self.sampling_rate = sampling_rate
        self.system_prompt = system_prompt
        self._ids = {t: self._encode(t) for t in (IM_START, IM_END, "\n")}
        self._im_end = tokenizer.convert_tokens_to_ids(IM_END)

    @classmethod
    def for_model(cls, tokenizer, config: EurekaAudioConfig, **kwargs) -> "EurekaAudioProcessor":
        """A processor whose audio geometry matches `config`."""
        return cls(tokenizer, n_mels=config.n_mels, chunk_mel_frames=config.chunk_mel_frames,
                   stack_factor=config.stack_factor, **kwargs)

    # -- audio ------------------------------------------------------------------------------------
    def audio_token_count(self, num_samples: int) -> int:
        """How many `<|audio_pad|>` tokens a clip of `num_samples` samples (at 16 kHz) becomes."""
        frames = _mel_frames(num_samples)
        if frames <= 0:
            raise ValueError(f"a clip of {num_samples} samples is shorter than one mel frame (160 samples)")
        return audio_token_count(frames, self.chunk_mel_frames, self.stack_factor)

    def audio_features(self, audios: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips (each (T_i,) float32 at 16 kHz) -> features (B, M, F), frame lengths (B,)."""
        waves = [torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in audios]
        for i, w in enumerate(waves):
            if w.dim() != 1:
                raise ValueError(f"clip {i}: expected mono samples of shape (T,), got {tuple(w.shape)}")
        lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.long)
        batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
        return log_mel_batch(batch, lengths, self.n_mels)

    # -- text -------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def _with_system(self, messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        messages = list(messages)
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The chat text (placeholders not expanded); equals the tokenizer's chat template output."""
        parts = [f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in self._with_system(messages)]
        if add_generation_prompt:
            parts.append(f"{IM_START}assistant\n")
        return "".join(parts)

    def _encode_content(self, content: str, audio_tokens: list[int], where: str) -> list[int]:
        pieces = content.split(AUDIO_PLACEHOLDER)
        ids = self._encode(pieces[0])
        for piece in pieces[1:]:
            if not audio_tokens:
                raise ValueError(f"{where}: more {AUDIO_PLACEHOLDER} placeholders than audio clips")
            n = audio_tokens.pop(0)
            ids += [self.audio_ids["audio_start_token_id"]] + [self.audio_ids["audio_pad_token_id"]] * n
            ids += [self.audio_ids["audio_end_token_id"]] + self._encode(piece)
        return ids

    def encode(
        self,
        messages: Sequence[dict[str, str]],
        audio_token_counts: Sequence[int] = (),
        add_generation_prompt: bool = False,
        where: str = "conversation",
    ) -> Encoded:
        """Tokenize one conversation, expanding each `<audio>` with the next clip's token count.

        Labels cover each assistant turn's content and its `<|im_end|>`. With
        `add_generation_prompt`, the sequence ends with `<|im_start|>assistant\\n` (an inference prompt).
        `where` names the conversation in errors (e.g. "shard x.parquet row 12").
        """
        counts = list(audio_token_counts)
        ids: list[int] = []
        labels: list[int] = []
        for m in self._with_system(messages):
            role, content = m["role"], m["content"]
            head = self._ids[IM_START] + self._encode(f"{role}\n")
            body = self._encode_content(content, counts, where)
            tail = self._ids[IM_END]
            ids += head + body + tail + self._ids["\n"]
            if role == "assistant":
                labels += [IGNORE_INDEX] * len(head) + body + tail + [IGNORE_INDEX] * len(self._ids["\n"])
            else:
                labels += [IGNORE_INDEX] * (len(head) + len(body) + len(tail) + len(self._ids["\n"]))
        if counts:
            raise ValueError(f"{where}: {len(counts)} audio clip(s) left without an {AUDIO_PLACEHOLDER} placeholder")
        if add_generation_prompt:
            prompt = self._ids[IM_START] + self._encode("assistant\n")
            ids += prompt
            labels += [IGNORE_INDEX] * len(prompt)
        return Encoded(ids, labels)

    def __call__(
        self,
        conversations: Sequence[Sequence[dict[str, str]]],
        audios: Sequence[np.ndarray | torch.Tensor | Sequence[np.ndarray]],
        add_generation_prompt: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Batch for the model. `audios[i]` is conversation i's clip (or list of clips, in placeholder order).

        Inference (add_generation_prompt=True): prompts left-padded for `generate`. Training (False):
        right-padded with `labels`. Returns input_ids (B, L), attention_mask (B, L), [labels (B, L)],
        input_features (B_a, M, F), feature_lengths (B_a,).
        """
        clips_per_conv = [list(a) if isinstance(a, (list, tuple)) else [a] for a in audios]
        if len(clips_per_conv) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(audios)} audio entries")
        flat = [c for clips in clips_per_conv for c in clips]
        encoded = [
            self.encode(conv, [self.audio_token_count(len(c)) for c in clips], add_generation_prompt, f"conversation {i}")
            for i, (conv, clips) in enumerate(zip(conversations, clips_per_conv))
        ]
        batch = self.pad(encoded, side="left" if add_generation_prompt else "right")
        if add_generation_prompt:
            batch.pop("labels")
        if flat:
            batch["input_features"], batch["feature_lengths"] = self.audio_features(flat)
        return batch

    def pad(self, encoded: Sequence[Encoded], side: str = "right") -> dict[str, torch.Tensor]:
        """Pad encoded conversations to the longest: input_ids, attention_mask, labels (B, L)."""
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self._im_end
        longest = max(len(e.input_ids) for e in encoded)
        ids = torch.full((len(encoded), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(encoded), longest), dtype=torch.long)
        for i, e in enumerate(encoded):
            n = len(e.input_ids)
            sl = slice(longest - n, longest) if side == "left" else slice(0, n)
            ids[i, sl] = torch.tensor(e.input_ids)
            labels[i, sl] = torch.tensor(e.labels)
            mask[i, sl] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def decode(self, token_ids: Sequence[int] | torch.Tensor) -> str:
        """Generated ids -> text, stopping at the first `<|im_end|>`."""
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        if self._im_end in ids:
            ids = ids[: ids.index(self._im_end)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # -- persistence (ProcessorMixin: save_pretrained, from_pretrained) ----------------------------
    def to_dict(self) -> dict[str, Any]:
        """processor_config.json: the audio geometry, plus the audio tokens and placeholder (for readers)."""
        return {**super().to_dict(), "audio_tokens": [AUDIO_START, AUDIO_PAD, AUDIO_END],
                "audio_placeholder": AUDIO_PLACEHOLDER}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "EurekaAudioProcessor":
        """The processor saved in a checkpoint directory (or hub id) by `save_pretrained`."""
        path = Path(pretrained_model_name_or_path)
        if path.is_dir() and not (path / PROCESSOR_CONFIG).exists():
            raise FileNotFoundError(f"{path / PROCESSOR_CONFIG}: no processor config; was this checkpoint saved "
                                    "by the trainer?")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)


AutoProcessor.register(EurekaAudioConfig, EurekaAudioProcessor, exist_ok=True)

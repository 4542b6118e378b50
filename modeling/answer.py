"""Asking the trained audio LM: load a checkpoint once, then `answer(audio, prompt)`.

Every caller that asks the model something goes through here: `dataflux generate`, `dataflux eval`
and the evaluation inside training (`modeling.eval`, `modeling.task_eval`), and the closed loop's
own answerer (`dataflux.llm.local`). A prompt is the user turn, holding the `<audio>` placeholder
where the clip goes (put in front when the prompt has none); the model continues the chat after
`<|im_start|>assistant\\n`, greedily, and the reply is its text up to `<|im_end|>`.

Audio arrives as (T,) float32 mono samples at 16 kHz (`modeling.eval.read_clip` reads a file so).

Legend: B prompts in a batch, T samples, L tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modeling.model import EurekaAudioForCausalLM
from modeling.processor import AUDIO_PLACEHOLDER, EurekaAudioProcessor


@dataclass(frozen=True)
class Reply:
    """One answer: the text, the prompt's tokens (audio tokens included) and the generated tokens."""

    text: str
    prompt_tokens: int
    new_tokens: int


def load_checkpoint(path: str | Path, device: str | None = None) -> tuple[EurekaAudioForCausalLM, EurekaAudioProcessor]:
    """(model in eval mode on `device`, processor) from a directory the trainer saved.

    `device`: a torch device name; None picks cuda when available, else cpu.
    """
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json there; pass a directory saved by `dataflux train` "
                                "(a run's final/ directory: model.save_pretrained + processor.save_pretrained)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = EurekaAudioForCausalLM.from_pretrained(path).to(device).eval()
    return model, EurekaAudioProcessor.from_pretrained(path)


def with_placeholder(prompt: str) -> str:
    """The prompt with the `<audio>` placeholder in front when it holds none."""
    return prompt if AUDIO_PLACEHOLDER in prompt else f"{AUDIO_PLACEHOLDER}{prompt}"


class AudioLM:
    """A model and its processor, loaded once, answering prompts about clips.

    Args:
        model: an `EurekaAudioForCausalLM` (it may be in training; each answer runs in eval mode and
            puts the mode back).
        processor: its `EurekaAudioProcessor`.
        max_new_tokens: the default reply budget.
    """

    def __init__(self, model: EurekaAudioForCausalLM, processor: EurekaAudioProcessor, max_new_tokens: int = 32):
        self.model = model
        self.processor = processor
        self.max_new_tokens = int(max_new_tokens)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, max_new_tokens: int = 32) -> "AudioLM":
        model, processor = load_checkpoint(path, device)
        return cls(model, processor, max_new_tokens)

    def answer(self, audio: np.ndarray, prompt: str, max_new_tokens: int | None = None) -> str:
        """The model's reply to `prompt` about one clip (T,) at 16 kHz."""
        return self.reply_batch([(audio, prompt)], max_new_tokens)[0].text

    def predict(self, batch: Sequence[tuple[np.ndarray, str]]) -> list[str]:
        """The replies' texts for (clip, prompt) pairs (the `modeling.eval.Predictor` interface)."""
        return [r.text for r in self.reply_batch(batch)]

    def reply_batch(self, batch: Sequence[tuple[np.ndarray, str]], max_new_tokens: int | None = None) -> list[Reply]:
        """Greedy replies to B (clip, prompt) pairs, generated together (prompts left-padded)."""
        conversations = [[{"role": "user", "content": with_placeholder(prompt)}] for _, prompt in batch]
        clips = [np.asarray(audio, dtype=np.float32) for audio, _ in batch]
        inputs = self.processor(conversations, clips, add_generation_prompt=True)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                new = self.model.generate(**inputs, max_new_tokens=max_new_tokens or self.max_new_tokens,
                                          do_sample=False)
        finally:
            self.model.train(was_training)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        stops = _stop_ids(self.model)
        return [Reply(self.processor.decode(row), int(n_in), _generated_length(row.tolist(), stops))
                for row, n_in in zip(new, prompt_tokens)]


def _stop_ids(model: EurekaAudioForCausalLM) -> set[int]:
    eos = model.llm.generation_config.eos_token_id
    return set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())


def _generated_length(ids: list[int], stops: set[int]) -> int:
    """Tokens the model generated for one row: up to and including the first stop token (what
    follows is padding, where a longer row of the batch went on), else the whole row."""
    return next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))

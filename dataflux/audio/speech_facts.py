"""Measured facts about real recordings: what is said, who says it, pauses, recording quality.

Each measurer takes the clip's `_Analysis` (dataflux.audio.facts) and returns a word of its
leaf's vocabulary, or None when the audio cannot decide. `spoken_text` is checked against the
claim: the recognizer chooses among the claimed transcript and the transcripts nearest to it in
the source's vocabulary (the same neighbours a question offers as distractors); a clip whose
audio picks another phrase, or whose claimed words would need an impossible speaking rate,
measures `OTHER_WORDS`, which is no phrase of the vocabulary: the claim is contradicted and no
replacement is asserted.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Callable

import numpy as np

from dataflux.audio.envelope import SPEECH_GATE_DB, runs, smooth, speech_seconds
from dataflux.audio.quality import quality_metrics
from dataflux.audio.speakers import gender_from_f0
from dataflux.audio.speech import (RECOGNIZER_LANGUAGES, normalise_words, recognise_among, speech_thresholds,
                                   syllables, voiced_f0, word_count_word)
from dataflux.fields import language_code
from dataflux.taxonomy import distinct_neighbours

OTHER_WORDS = "(words other than the claimed transcript)"
N_COMPETITORS = 3  # as many as a question's distractors
PENDING = "pending: Whisper checks it with the partition's clips (dataflux.audio.recognizer_facts)"


def claimed(a: Any, key: str) -> Any:
    return (a.context.get("labels") or {}).get(key)


def _speech_time(a: Any) -> float:
    return speech_seconds(a.vowel_env)


def spoken_text(a: Any) -> str | None:
    """The claimed transcript if the recognizer confirms it, OTHER_WORDS if the audio refutes it,
    None if it cannot tell (computed once per clip: `spoken_word_count` builds on it)."""
    if "spoken_text" not in a.memo:
        a.memo["spoken_text"] = _spoken_text(a)
    return a.memo["spoken_text"]


def _confirmed_transcript(a: Any) -> str | None:
    """The claimed transcript when the recognizer confirms it, else None."""
    text = claimed(a, "transcript")
    if not isinstance(text, str) or spoken_text(a) != " ".join(text.split()):
        return None
    return text


def spoken_word_count(a: Any) -> str | None:
    """How many words are said: counted on the claimed transcript once the recognizer confirms that
    transcript (a count is only as good as the words it counts); a refuted or unconfirmed
    transcript measures no count."""
    text = _confirmed_transcript(a)
    if text is None:
        return None
    words = word_count_word(text)
    a.raw["confirmed_words"] = len(normalise_words(text))
    return words


def speech_tempo(a: Any) -> str | None:
    """How fast the speaker talks: syllables of the transcript per second of speech, measured only
    once the recognizer confirms the transcript (a wrong transcript would give a wrong count)."""
    text = _confirmed_transcript(a)
    if text is None:
        return None
    return tempo_word(text, _speech_time(a), a.raw)


def tempo_word(text: str, seconds: float, raw: dict[str, Any]) -> str | None:
    """The `speech_tempo` word of a confirmed transcript said in `seconds` of speech."""
    if seconds < 0.3:
        return None
    rate = syllables(text) / seconds
    raw["transcript_syllables_per_s"] = round(rate, 2)
    slow, moderate, fast = speech_thresholds()["speech_tempo"]["upper_syl_per_s"]
    if rate < slow:
        return "slow"
    if rate < moderate:
        return "moderate"
    return "fast" if rate < fast else "very fast"


def _spoken_text(a: Any) -> str | None:
    text = claimed(a, "transcript")
    if not isinstance(text, str) or not text.strip():
        return None
    text = " ".join(text.split())
    vocab = list((a.context.get("vocabularies") or {}).get("spoken_text") or [])
    seconds = _speech_time(a)
    a.raw["speech_s"] = round(seconds, 3)
    if seconds > 0:
        rate = syllables(text) / seconds
        a.raw["claimed_syllables_per_s"] = round(rate, 2)
        lo, hi = speech_thresholds()["speaking_rate"]["plausible_syl_per_s"]
        if (rate < lo and seconds > 1.0) or rate > hi:
            return OTHER_WORDS
    if text not in vocab:
        return None
    if language_code(claimed(a, "language")) not in RECOGNIZER_LANGUAGES:
        a.raw["recognizer"] = PENDING  # Whisper, in batches over the partition (recognizer_facts)
        return None
    # the question's own options, plus phrases drawn from the whole vocabulary: forced to choose,
    # a recognizer hearing none of the candidates still names one, and the more candidates the
    # less often that one is a wrong claim
    options = [text, *distinct_neighbours(vocab, text, N_COMPETITORS)]
    # (drawn from every language: on the Asterisk prompts that agreed more often with clean
    # transcripts and refuted more swapped ones than drawing from the claim's language only)
    options += drawn_phrases(vocab, text, set(options), speech_thresholds()["recognizer"]["extra_candidates"])
    heard = recognise_among(a.y, a.sr, options, language_code(claimed(a, "language")))
    if heard is None:
        a.raw["recognizer"] = "pocketsphinx: no candidate phrase has words its dictionary knows"
        return None
    a.raw["recognizer_heard"] = heard["heard"]
    a.raw["recognizer_choice"] = options[heard["index"]] if heard["index"] is not None else None
    # No path through the grammar (the recognizer hears none of the candidates) refutes the claim
    # as a wrong pick does: on the Asterisk prompts, clean transcripts ended there in 6 % of clips,
    # swapped ones in 30 %; forced alignment to rescue them never picked the clean claim.
    return text if heard["index"] == 0 else OTHER_WORDS


def drawn_phrases(vocab: list[str], text: str, exclude: set[str], n: int) -> list[str]:
    """`n` phrases of `vocab` (not in `exclude`), drawn reproducibly from a hash of `text`."""
    pool = [v for v in vocab if v not in exclude]
    if len(pool) <= n:
        return pool
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return random.Random(seed).sample(pool, n)


def speaker_gender(a: Any) -> str | None:
    f0 = voiced_f0(a.y, a.sr)
    if f0 is None:
        return None
    a.raw.update(f0)
    # a speaker named by the source is decided again from all of the speaker's clips
    # (dataflux.audio.speakers); this is the clip's own evidence
    return gender_from_f0(f0["f0_median_hz"])


def speech_pauses(a: Any) -> str | None:
    """Pauses inside the speech (not before or after it): quiet stretches of >= 150 ms."""
    if a.envelope_std_db < 5.0:
        return None  # a held tone or a steady noise is not speech
    env = smooth(a.vowel_env, 5)
    if env.size == 0:
        return None
    quiet = env < float(env.max()) - SPEECH_GATE_DB
    min_frames = speech_thresholds()["pauses"]["min_pause_s"] / 0.01
    inner = [(s, e) for s, e in runs(quiet) if s > 0 and e < env.size and e - s >= min_frames]
    a.raw["pause_count"] = len(inner)
    words = ["no pause", "one pause", "two pauses", "three or more pauses"]
    return words[min(len(inner), 3)]


def audio_quality(a: Any) -> str | None:
    q = quality_metrics(a.y, a.sr)
    a.raw["clipping_ratio"] = round(q["clipping_ratio"], 5)
    a.raw["snr_db"] = round(q["snr_db"], 1)
    if q["clipping_ratio"] >= 0.001:
        return "clipped"
    if q["snr_db"] < 10.0:
        return None  # no quiet stretch to hear the background in
    return "clean" if q["snr_db"] >= 40.0 else ("slightly noisy" if q["snr_db"] >= 25.0 else "noisy")


SPEECH_MEASURERS: dict[str, Callable[[Any], str | None]] = {
    "spoken_text": spoken_text,
    "spoken_word_count": spoken_word_count,
    "speech_tempo": speech_tempo,
    "speaker_gender": speaker_gender,
    "speech_pauses": speech_pauses,
    "audio_quality": audio_quality,
}


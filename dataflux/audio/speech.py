"""Measurements of speech, offline: which phrase is spoken, and the voice's pitch.

- `recognise_among(y, sr, phrases, language)`: which of a few candidate phrases the speech
  recognizer hears. The recognizer is pocketsphinx with the US English model its wheel ships; it
  decodes against a grammar of exactly the candidate phrases. On 8 kHz telephone prompts that
  picks the right phrase far more often than free decoding gets the words right (free decoding:
  median WER 1.12 on 20 English Asterisk prompts). English only: every other language is checked
  by Whisper (`dataflux.audio.recognizer_facts`), which measured worse than this on English
  prompts (docs/verification.md).
- `voiced_f0(y, sr)`: median fundamental of the voiced, loud frames (`yin_f0`: librosa's YIN), the
  number `speaker_gender` is decided from.
- `normalise_words(text)`: the words as the recognizer says them: the one normaliser's words
  (`dataflux.text_metrics.words`) with digits spelled out in English ("Press 6." -> press six), the
  form its dictionary, the word counts and the syllable counts work on. Word error rates are
  `dataflux.text_metrics.wer`.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

import numpy as np
import yaml

from dataflux.text_metrics import words

RECOGNIZER_LANGUAGES = frozenset({"en"})  # the model's own dictionary
RECOGNIZER_MODEL = "pocketsphinx-en-us@5"

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_local = threading.local()


@lru_cache(maxsize=1)
def speech_thresholds() -> dict[str, Any]:
    """The numbers speech facts are decided by (dataflux/audio/speech_thresholds.yaml)."""
    text = resources.files("dataflux.audio").joinpath("speech_thresholds.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def spell_number(n: int) -> str:
    """0..99 as English words; longer numbers digit by digit (how prompts read them)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    return " ".join(_ONES[int(d)] for d in str(n))


def normalise_words(text: str) -> list[str]:
    """The normalised words with digits spelled out, each number as `spell_number` reads it
    ("Press 6." -> press six; "3.5" -> three five)."""
    out: list[str] = []
    for word in words(text):
        if not any(ch.isdigit() for ch in word):
            out.append(word)
            continue
        spoken = re.sub(r"\d+", lambda m: f" {spell_number(int(m.group()))} ", word)
        out += [w for w in re.split(r"[^\w']+", spoken) if w]
    return out


WORD_COUNT_BINS = ((1, "one word"), (3, "two or three words"), (6, "four to six words"),
                   (10, "seven to ten words"))
MORE_WORDS = "more than ten words"


def word_count_word(text: str) -> str | None:
    """The `spoken_word_count` word for a transcript (digits spelled, as they are spoken)."""
    n = len(normalise_words(text))
    if n == 0:
        return None
    return next((word for top, word in WORD_COUNT_BINS if n <= top), MORE_WORDS)


def syllables(text: str) -> int:
    """Vowel groups of the normalised words: a rough syllable count that works across languages."""
    return sum(max(1, len(re.findall(r"[aeiouyàèéìíòóùú]+", w))) for w in normalise_words(text))


def _decoder():
    dec = getattr(_local, "decoder", None)
    if dec is None:
        from pocketsphinx import Decoder  # the wheel carries the en-us model

        dec = Decoder(samprate=16000, loglevel="FATAL")
        _local.decoder = dec
    return dec


def _known_words(dec, text: str) -> list[str]:
    """The decoder's words for `text`: English words its dictionary knows (others dropped)."""
    return [w for w in normalise_words(text) if dec.lookup_word(w)]


def recognise_among(y: np.ndarray, sr: int, phrases: Sequence[str], language: str | None) -> dict[str, Any] | None:
    """Which of `phrases` the recognizer hears in (T,) float32 `y` at 16 kHz.

    Returns {"index": i or None, "heard": the decoded words} or None when the language has no
    recognizer or the first phrase has no word the model can say. A later phrase that reads
    the same as an earlier one (after dropping words outside the dictionary) is left out.
    """
    if language not in RECOGNIZER_LANGUAGES or sr != 16000:
        return None
    dec = _decoder()
    spoken = [" ".join(_known_words(dec, p)) for p in phrases]
    # a phrase that reads like an earlier one (or like nothing) cannot be told apart: left out
    usable = [s if s and s not in spoken[:i] else "" for i, s in enumerate(spoken)]
    if not usable[0] or sum(1 for s in usable if s) < 2:
        return None
    alternatives = " | ".join(f"( {s} )" for s in usable if s)
    dec.add_jsgf_string("choice", f"#JSGF V1.0;\ngrammar choice;\npublic <phrase> = {alternatives} ;\n")
    dec.activate_search("choice")
    pcm = (np.clip(np.asarray(y, dtype=np.float32), -1.0, 1.0) * 32767).astype(np.int16).tobytes()
    dec.start_utt()
    dec.process_raw(pcm, full_utt=True)
    dec.end_utt()
    hyp = dec.hyp()
    heard = hyp.hypstr.strip() if hyp is not None else ""
    index = usable.index(heard) if heard and heard in usable else None
    return {"index": index, "heard": heard}


def yin_f0(y: np.ndarray, sr: int, fmin: float, fmax: float, frame: int = 1024, hop: int = 256,
           threshold: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """YIN pitch per frame (librosa's), with each frame's rms: (f0 Hz (F,), rms (F,)).

    Unvoiced frames still get a value (YIN's best lag): callers gate them by loudness and range.
    """
    import librosa

    if y.shape[0] < frame:
        return np.zeros(0), np.zeros(0)
    f0 = librosa.yin(y, fmin=fmin, fmax=fmax, sr=sr, frame_length=frame, hop_length=hop,
                     trough_threshold=threshold, center=False)
    rms = librosa.feature.rms(y=y, frame_length=frame, hop_length=hop, center=False)[0]
    n = min(f0.shape[0], rms.shape[0])
    return f0[:n].astype(np.float64), rms[:n].astype(np.float64)


def voiced_f0(y: np.ndarray, sr: int) -> dict[str, float] | None:
    """Median and spread of f0 (Hz) over loud frames (YIN, 60..400 Hz); None when too few frames."""
    t = speech_thresholds()["f0"]
    f0, rms = yin_f0(np.asarray(y, dtype=np.float32), sr, t["min_hz"], t["max_hz"])
    if f0.size < 2 or float(rms.max()) < 1e-4:  # below -80 dBFS: nothing is voiced
        return None
    loud = rms >= float(rms.max()) * 10 ** (-t["loud_within_db"] / 20.0)
    # YIN returns a value on every frame; the edges of its range are where unvoiced frames land
    voiced = f0[loud & (f0 > t["min_hz"] * 1.05) & (f0 < t["max_hz"] * 0.95)]
    if voiced.size < t["min_frames"]:
        return None
    return {"f0_median_hz": round(float(np.median(voiced)), 1),
            "f0_iqr_hz": round(float(np.subtract(*np.percentile(voiced, [75, 25]))), 1),
            "voiced_frames": int(voiced.size)}

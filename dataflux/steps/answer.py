"""Reference answerers: two independent ways to answer a question about a clip.

- `MeasuringAnswerer` ("measure") answers from what was measured in the audio (`Clip.facts`),
  citing the raw measurement; it abstains when nothing was measured or the measured value is
  not an option.
- `CaptionReader` ("caption_reader") never hears the audio: it finds the option the caption
  text states, quoting the caption; it abstains when no option (or more than one, without a
  way to tell them apart) appears.

The two disagree exactly when the caption disagrees with the measurement, which is what the
judge looks for.
"""

from __future__ import annotations

import math
import re
from typing import Any

from dataflux.records import Clip
from dataflux.steps.base import Answer, Call, Caption, Category, Question
from dataflux.claims import values_in_text

MEASURE_MODEL = "reference-measure@1"
CAPTION_READER_MODEL = "reference-caption-reader@1"

_STOP = frozenset(
    "a an the of in is are be this that these those to at by for with and or it its how what which "
    "does do best you can there heard hear recording clip sound".split()
)


def _tokens(text: str) -> set[str]:
    return {t for t in re.findall(r"[a-z0-9]+", text.lower()) if t not in _STOP}


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else str(x)
    if isinstance(x, (list, tuple)) and len(x) > 6:
        return "[" + ", ".join(_fmt(v) for v in x[:6]) + ", ...]"
    return str(x)


# The raw numbers (dataflux.audio.facts) each measured leaf is decided from.
RAW_KEYS = {
    "tone_pitch": ("f0_hz", "f0_prominence_db", "harmonic_ratio"),
    "waveform": ("h2_h1", "h3_h1", "h5_h1", "harmonic_ratio"),
    "beep_count": ("event_count",),
    "click_tempo": ("tempo_bpm", "ioi_cv"),
    "event_count": ("event_count",),
    "event_rhythm": ("event_count", "tempo_bpm", "ioi_cv"),
    "noise_colour": ("spectral_slope_db_per_oct", "slope_fit_residual_db"),
    "loudness": ("active_rms_dbfs", "active_ratio"),
    "duration": ("duration_s",),
    "speaking_rate": ("syllable_rate", "syllable_nuclei", "speech_active_s"),
    "spoken_text": ("recognizer_choice", "recognizer_heard", "recognizer", "claim_score", "free_decode_score",
                    "claimed_syllables_per_s"),
    "spoken_language": ("language_top", "language_top_p", "language_claimed_p", "speaker_language",
                        "language_recognizer"),
    "spoken_word_count": ("confirmed_words", "recognizer_choice", "recognizer"),
    "speech_tempo": ("transcript_syllables_per_s", "recognizer_choice", "recognizer"),
    "speaker_gender": ("f0_median_hz", "f0_iqr_hz", "voiced_frames", "speaker_f0_median_hz", "speaker_f0_clips",
                       "speaker_claim_majority", "speaker_claim_agreeing", "speaker_claim_total"),
    "speech_pauses": ("pause_count",),
    "audio_quality": ("snr_db", "clipping_ratio"),
    "relative_loudness": ("relative_loudness_percentile", "relative_loudness_reference_clips", "active_rms_dbfs"),
    "relative_duration": ("relative_duration_percentile", "relative_duration_reference_clips"),
}


def raw_evidence(facts: dict[str, Any], category: Category) -> dict[str, Any]:
    """The raw measurements `category` is decided from: the known keys of `facts["raw"]` for the
    fact, else entries whose key starts with the fact name or shares a word with it."""
    raw = facts.get("raw") or {}
    key = category.measured_by or category.id
    known = [k for k in RAW_KEYS.get(key, ()) if k in raw]
    if known:
        return {k: raw[k] for k in known}
    words = set(key.split("_")) | {w for need in category.needs for w in need.split("_")}
    return {k: v for k, v in raw.items()
            if k == key or str(k).startswith(key) or words & set(re.split(r"[_\W]+", str(k)))}


def describe_evidence(evidence: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {_fmt(v)}" for k, v in sorted(evidence.items())) or "no raw numbers recorded"


class MeasuringAnswerer:
    """Answers from the clip's measured facts (librosa/numpy measurements made on the audio)."""

    name = "measure"
    sees_audio = True
    model = MEASURE_MODEL
    backend = "reference"

    def __init__(self, name: str = "measure"):
        self.name = name

    async def answer(self, clip: Clip, caption: Caption, question: Question, category: Category) -> Answer:
        call = Call(step="answer", backend=self.backend, model=self.model, params={"answerer": self.name})
        key = category.measured_by
        if key is None:
            return Answer(self.name, True, f"No measurement can check {category.id}; I cannot tell from the "
                          "signal alone.", None, None, call)
        value = clip.facts.get(key)
        raw = describe_evidence(raw_evidence(clip.facts, category))
        if value is None:
            return Answer(self.name, True, f"The {key} measurement was inconclusive ({raw}); I abstain.",
                          None, None, call)
        if value not in question.choices:
            return Answer(self.name, True, f"Measured {key} = {value!r} ({raw}), which is none of the options; "
                          "I abstain.", None, None, call)
        idx = question.choices.index(value)
        reasoning = (f"Measured from the audio: {raw}. That corresponds to {value!r} for {key}, "
                     f"so the answer is ({'ABCD'[idx]}) {value}.")
        return Answer(self.name, True, reasoning, idx, value, call)


class CaptionReader:
    """Answers by finding the option the caption text states (reads only the caption)."""

    name = "caption_reader"
    sees_audio = False
    model = CAPTION_READER_MODEL
    backend = "reference"

    def __init__(self, name: str = "caption_reader"):
        self.name = name

    async def answer(self, clip: Clip, caption: Caption, question: Question, category: Category) -> Answer:
        call = Call(step="answer", backend=self.backend, model=self.model, params={"answerer": self.name})
        text = caption.text
        quoted = [(m.start(), m.end()) for m in re.finditer(r'"[^"]*"', text)]  # quoted speech is not description
        hits = [h for h in values_in_text(text, question.choices)
                if not any(s <= h[1] and h[2] <= e for s, e in quoted)]
        if not hits:
            return Answer(self.name, False, "The caption states none of the options; I abstain.", None, None, call)
        cue = _tokens(" ".join([category.id.replace("_", " "), category.description, question.question]))
        scored = sorted(((len(cue & _tokens(_context(text, s, e))), v, s, e) for v, s, e in hits), reverse=True)
        if len(scored) > 1 and scored[0][0] == scored[1][0]:
            both = ", ".join(repr(h[1]) for h in scored[:2])
            return Answer(self.name, False, f"The caption states several options ({both}) and nothing tells "
                          "which one the question is about; I abstain.", None, None, call)
        _, value, s, e = scored[0]
        idx = question.choices.index(value)
        span = _clause(text, s, e)
        reasoning = f'The caption says "{span}", so the answer is ({"ABCD"[idx]}) {value}.'
        return Answer(self.name, False, reasoning, idx, value, call)


def _context(text: str, start: int, end: int, words: int = 3) -> str:
    before = re.findall(r"\S+", text[:start])[-words:]
    after = re.findall(r"\S+", text[end:])[:words]
    return " ".join(before + [text[start:end]] + after)


def _clause(text: str, start: int, end: int) -> str:
    """The clause of `text` around [start, end): from the previous to the next , ; . boundary."""
    left = max(text.rfind(ch, 0, start) for ch in ",;.")
    rights = [i for i in (text.find(ch, end) for ch in ",;.") if i != -1]
    right = min(rights) if rights else len(text)
    return text[left + 1:right].strip()

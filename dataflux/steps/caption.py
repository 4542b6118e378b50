"""Captioning: a dense caption per clip, and what the caption claims about each taxonomy leaf.

`ReferenceCaptioner` writes the caption from what the source claims (its labels) with
sentence templates, so every value it states is known: it returns a `ClaimedCaption` whose
`claims` map leaf id -> stated value. Given corrections (leaf -> measured value) it writes the
caption again from the measurement and marks it corrected.

`caption_claims()` recovers the claims of any caption: the recorded ones when the captioner
kept them, else the vocabulary words found in the text (for captions written by a model).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from dataflux.records import Clip
from dataflux.sources.fields import KNOWN_FIELDS
from dataflux.steps.base import Call, Caption, Category

CAPTIONER_MODEL = "reference-captioner@1"

# Leaf ids a source label can claim directly; "label" is the raw class label (sound_source).
_SOURCE_LABEL_KEYS = ("sound_source", "label")
# Typed metadata of a SourceItem (not leaf ids): a leaf claims from one of them via `claimed_from`.
METADATA_KEYS = frozenset({"transcript", "language", "speaker", "gender", "age", "emotion", "labels", "caption",
                           "genre", "instrument", "label"})
# ISO 639-1 code -> the language's name as the taxonomy's spoken_language vocabulary writes it.
LANGUAGE_NAMES = {"en": "English", "it": "Italian", "es": "Spanish", "fr": "French", "de": "German", "ru": "Russian",
                  "pt": "Portuguese", "nl": "Dutch", "zh": "Chinese", "ja": "Japanese"}
_GENDER_WORDS = {"m": "male", "man": "male", "male": "male", "f": "female", "woman": "female", "female": "female"}


@dataclasses.dataclass
class ClaimedCaption(Caption):
    """A caption that knows which value it states for each leaf.

    `claims`: leaf id -> value the caption text states (e.g. {"tone_pitch": "440 Hz"}).
    `corrected`: leaf id -> the value the source claimed before a measurement replaced it.
    """

    claims: dict[str, str] = dataclasses.field(default_factory=dict)
    corrected: dict[str, str] = dataclasses.field(default_factory=dict)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)  # leaf -> "metadata" | "measurement"
    human: str | None = None  # the corpus's own caption of the clip, which leads the text

    @property
    def corrected_from_measurement(self) -> bool:
        return bool(self.corrected)


# a source's metadata fields (dataflux.sources.fields) describe the clip; only leaf ids are claims
NOT_CLAIMS = frozenset({"label", *KNOWN_FIELDS})


def claimed_labels(labels: Mapping[str, Any]) -> dict[str, str]:
    """The leaf claims in a source's labels (transcript/speaker are free fields, not claims)."""
    claims: dict[str, str] = {}
    for key, value in labels.items():
        if (key in NOT_CLAIMS | METADATA_KEYS and key != "emotion") or value is None or isinstance(value, list):
            continue
        claims[key] = str(value).strip()
    if "sound_source" not in claims and labels.get("label") not in (None, ""):
        claims["sound_source"] = str(labels["label"]).strip()
    return claims


def _word_count_claim(transcript: str) -> str | None:
    from dataflux.audio.speech import word_count_word

    return word_count_word(transcript)


# leaves whose claim is computed from their metadata field's value rather than being it
DERIVED_CLAIMS = {"spoken_word_count": _word_count_claim}


def metadata_claim(field: str, value: Any) -> str | None:
    """The vocabulary word a typed metadata value claims: "en" -> "English", "F" -> "female"."""
    if value is None or isinstance(value, (list, dict)):
        return None
    text = " ".join(str(value).split())
    if not text:
        return None
    if field == "language":
        return LANGUAGE_NAMES.get(text.lower().split("-")[0].split("_")[0], text.title())
    if field == "gender":
        return _GENDER_WORDS.get(text.lower(), text.lower())
    return text


def _article(word: str) -> str:
    # "an 880 Hz", "an 11 ...", "an 18 ...": the article follows the spoken number
    spoken_vowel = re.match(r"^(8\d*|11|18|11\d{3}|18\d{3})(?!\d)", word) is not None
    return "An" if word[:1].lower() in "aeio" or spoken_vowel else "A"


def describe(claims: Mapping[str, str], transcript: str | None = None) -> str:
    """Compose a caption from leaf claims with fixed sentence templates.

    >>> describe({"tone_pitch": "440 Hz", "waveform": "sine", "duration": "2 seconds", "loudness": "moderate"})
    'A steady 440 Hz sine tone, lasting 2 seconds, at a moderate level.'
    """
    c = dict(claims)
    tone = " ".join(x for x in (c.get("tone_pitch"), c.get("waveform")) if x)
    if "noise_colour" in c:
        subject = f"{c['noise_colour']} noise"
        subject = f"{_article(subject)} steady {subject}"
    elif "click_tempo" in c:
        subject = f"A click track ticking regularly at {c['click_tempo']}"
    elif "beep_count" in c:
        subject = f"{c['beep_count']} of {_article(tone).lower() + ' ' + tone if tone else 'a'} tone separated by silence"
        subject = subject[0].upper() + subject[1:]
    elif tone:
        subject = f"A steady {tone} tone"
    elif "speaking_rate" in c or transcript or "speaker_gender" in c or "spoken_language" in c:
        gender = c.get("speaker_gender")
        voice = "A voice" if not gender else (f"A {gender}" if gender.endswith("voice") else f"A {gender} voice")
        subject = (voice + " speaking" + (f" {c['spoken_language']}" if "spoken_language" in c else "")
                   + (f" at a {c['speaking_rate']} pace" if "speaking_rate" in c else ""))
    elif "sound_source" in c:
        subject = f"A recording whose main sound source is {c['sound_source']}"
    else:
        subject = "A sound"
    if "speaking_rate" in c and " speaking" not in subject:
        subject += f", with a voice speaking at a {c['speaking_rate']} pace"
    if "sound_source" in c and not subject.startswith("A recording whose"):
        subject += f", made by {c['sound_source']}"
    parts = [subject]
    if "duration" in c:
        parts.append(f"lasting {c['duration']}")
    if "loudness" in c:
        parts.append(f"at a {c['loudness']} level")
    if "speech_pauses" in c:
        parts.append(f"with {c['speech_pauses']}")
    text = ", ".join(parts) + "."
    relative = [c[k] for k in ("relative_loudness", "relative_duration") if k in c]
    if relative:
        text += f" Compared with the other recordings of its set it is {' and '.join(relative)}."
    if "audio_quality" in c:
        text += f" The recording is {c['audio_quality']}."
    if "event_count" in c:
        text += f" It holds {c['event_count']}" + (f", {c['event_rhythm']}" if "event_rhythm" in c else "") + "."
    elif "event_rhythm" in c:
        text += f" Its sounds are {c['event_rhythm']}."
    if "speech_tempo" in c:
        text += f" The speech is {c['speech_tempo']} in pace."
    if "spoken_word_count" in c:
        text += f" The speech is {c['spoken_word_count']} long."
    known = {"spoken_word_count", "speech_tempo", "event_count", "event_rhythm", "noise_colour", "click_tempo", "beep_count", "tone_pitch", "waveform", "speaking_rate",
             "sound_source", "duration", "loudness", "speaker_gender", "spoken_language", "spoken_text",
             "speech_pauses", "relative_loudness", "relative_duration", "audio_quality"}
    for leaf in sorted(set(c) - known):  # leaves added to the taxonomy later still get stated
        text += f" Its {leaf.replace('_', ' ')} is {c[leaf]}."
    if transcript:
        text += f' The speaker says: "{transcript.strip()}"'
    return text


class ReferenceCaptioner:
    """Writes a dense caption from the source's claimed labels (no model: sentence templates).

    The labels may be wrong: that is what the closed loop checks. `recaption()` rewrites the
    caption with measured values in place of the claims the judge found wrong.
    """

    backend = "reference"
    model = CAPTIONER_MODEL

    def __init__(self, leaves: Iterable[str] | None = None, claimed_from: Mapping[str, str] | None = None):
        # Only claims about known leaves are written; None means every claimed leaf.
        self.leaves = set(leaves) if leaves is not None else None
        # leaf -> metadata field its claim comes from, or "measurement" (taxonomy `claimed_from`)
        self.claimed_from = dict(claimed_from or {})

    def _call(self, params: dict[str, Any]) -> Call:
        return Call(step="caption", backend=self.backend, model=self.model, params=params, seed=None)

    def _claims(self, clip: Clip) -> tuple[dict[str, str], dict[str, str]]:
        """(leaf -> claimed value, leaf -> "metadata" | "measurement")."""
        claims = claimed_labels(clip.item.labels)
        sources = {k: "metadata" for k in claims}
        for leaf, field in self.claimed_from.items():
            if leaf in claims:
                continue
            if field == "measurement":
                value = clip.facts.get(leaf)
                if isinstance(value, str):
                    claims[leaf], sources[leaf] = value, "measurement"
            else:
                value = metadata_claim(field, clip.item.labels.get(field))
                if value is not None and leaf in DERIVED_CLAIMS:
                    value = DERIVED_CLAIMS[leaf](value)
                if value is not None:
                    claims[leaf], sources[leaf] = value, "metadata"
        if self.leaves is not None:
            claims = {k: v for k, v in claims.items() if k in self.leaves}
        return claims, {k: sources[k] for k in claims}

    async def caption(self, clip: Clip) -> ClaimedCaption:
        transcript = clip.item.labels.get("transcript") or None
        if isinstance(transcript, str):
            transcript = " ".join(transcript.split()) or None
        claims, sources = self._claims(clip)
        human = clip.item.labels.get("caption")
        human = " ".join(human.split()) or None if isinstance(human, str) else None
        return ClaimedCaption(text=_with_human(human, describe(claims, transcript)),
                              call=self._call({"corrections": {}, "claim_sources": sources}),
                              transcript=transcript, claims=claims, sources=sources, human=human)

    async def recaption(self, clip: Clip, previous: Caption, corrections: Mapping[str, str | None]) -> ClaimedCaption:
        """Caption again with `corrections` applied: leaf -> measured value, or None to drop the claim."""
        claims = dict(caption_claims(previous))
        corrected = dict(getattr(previous, "corrected", {}) or {})
        sources = dict(getattr(previous, "sources", {}) or {})
        transcript = previous.transcript
        for leaf, value in corrections.items():
            old = claims.get(leaf)
            if value is None:
                claims.pop(leaf, None)
                sources.pop(leaf, None)
                if self.claimed_from.get(leaf) == "transcript":
                    transcript = None  # the audio contradicts the transcript: the caption stops quoting it
            else:
                claims[leaf] = value
                sources[leaf] = "measurement"
                if old is not None and old != value:
                    corrected.setdefault(leaf, old)
        params = {"corrections": {k: corrections[k] for k in sorted(corrections)}, "claim_sources": sources}
        human = getattr(previous, "human", None)
        return ClaimedCaption(text=_with_human(human, describe(claims, transcript)), call=self._call(params),
                              transcript=transcript, claims=claims, corrected=corrected, sources=sources, human=human)


def _with_human(human: str | None, described: str) -> str:
    """A human caption leads (what the corpus says in its own words); the stated claims follow."""
    return f"{human} {described}" if human else described


def caption_claims(caption: Caption, categories: Iterable[Category] = ()) -> dict[str, str]:
    """Leaf id -> value the caption states.

    A `ClaimedCaption` knows its claims. For any other caption the text is searched for each
    category's vocabulary words (whole words, case-insensitive); a leaf is claimed when exactly
    one of its words appears (the longest match wins, so "very quiet" is not also "quiet").
    """
    claims = getattr(caption, "claims", None)
    if claims is not None:
        return dict(claims)
    out: dict[str, str] = {}
    for cat in categories:
        found = values_in_text(caption.text, cat.values)
        if len(found) == 1:
            out[cat.id] = found[0][0]
    return out


def values_in_text(text: str, values: Iterable[str]) -> list[tuple[str, int, int]]:
    """Vocabulary words found in `text` as (value, start, end), whole words only, case-insensitive.

    A match inside a longer matching value ("quiet" inside "very quiet") is not counted.
    """
    hits: list[tuple[str, int, int]] = []
    for v in sorted(set(values), key=len, reverse=True):
        for m in re.finditer(r"(?<![\w-])" + re.escape(v) + r"(?![\w-])", text, flags=re.IGNORECASE):
            if not any(s <= m.start() and m.end() <= e for _, s, e in hits):
                hits.append((v, m.start(), m.end()))
    uniq: dict[str, tuple[str, int, int]] = {}
    for h in sorted(hits, key=lambda h: h[1]):
        uniq.setdefault(h[0], h)
    return list(uniq.values())


def apply_corrections(caption: Caption, corrections: Mapping[str, str | None]) -> ClaimedCaption:
    """Correct a caption whose captioner cannot re-caption: replace each wrong claimed word by the
    measured one in the text (or drop the sentence stating it when the value is None)."""
    claims = caption_claims(caption)
    text = caption.text
    corrected = dict(getattr(caption, "corrected", {}) or {})
    for leaf, value in corrections.items():
        old = claims.get(leaf)
        if old is None:
            continue
        pattern = re.compile(r"(?<![\w-])" + re.escape(old) + r"(?![\w-])", flags=re.IGNORECASE)
        if value is None:
            sentences = re.split(r"(?<=[.!?])\s+", text)
            text = " ".join(s for s in sentences if not pattern.search(s))
            claims.pop(leaf, None)
        else:
            text = pattern.sub(value, text)
            claims[leaf] = value
            corrected.setdefault(leaf, old)
    call = dataclasses.replace(caption.call, params={**caption.call.params, "corrections": dict(corrections)})
    return ClaimedCaption(text=text, call=call, transcript=caption.transcript, claims=claims, corrected=corrected)

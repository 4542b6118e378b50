"""Captioning: a dense caption per clip, and what the caption claims about each taxonomy leaf.

`ReferenceCaptioner` writes the caption from what the source claims (its labels) with
sentence templates, so every value it states is known: it returns a `ClaimedCaption` whose
`claims` map leaf id -> stated value. Given corrections (leaf -> measured value) it writes the
caption again from the measurement and marks it corrected.

What a caption claims, corrections and conflicts live in `dataflux.claims` (re-exported here).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from dataflux.claims import (  # noqa: F401  (re-exported: the steps' public names)
    DERIVED_CLAIMS, METADATA_KEYS, NOT_CLAIMS, ClaimedCaption, apply_corrections, caption_claims,
    claimed_labels, metadata_claim, values_in_text)
from dataflux.records import Clip
from dataflux.steps.base import Call, Caption

CAPTIONER_MODEL = "reference-captioner@1"

# Leaf ids a source label can claim directly; "label" is the raw class label (sound_source).
_SOURCE_LABEL_KEYS = ("sound_source", "label")


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



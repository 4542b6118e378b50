"""What a caption claims, and how claims are corrected and checked against measurement.

A claim is the value a caption states for one taxonomy leaf ("tone_pitch": "440 Hz"). Claims
come from a source's labels and typed metadata (`claimed_labels`, `metadata_claim`), are read
back from any caption's text (`caption_claims`), conflict with a measured fact
(`caption_conflicts`), and are corrected in the text when a measurement disagrees
(`apply_corrections`). The steps and the closed loop all use this one module.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dataflux.audio.speech import word_count_word
from dataflux.records import Caption, Clip
from dataflux.fields import KNOWN_FIELDS, metadata_claim  # noqa: F401  (claims read typed metadata)
from dataflux.taxonomy import Category

# Typed metadata of a SourceItem (not leaf ids): a leaf claims from one of them via `claimed_from`.
METADATA_KEYS = frozenset({"transcript", "language", "speaker", "gender", "age", "emotion", "labels", "caption",
                           "genre", "instrument", "label"})


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


# a source's metadata fields (dataflux.fields) describe the clip; only leaf ids are claims
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


# leaves whose claim is computed from their metadata field's value rather than being it
DERIVED_CLAIMS = {"spoken_word_count": word_count_word}


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


def caption_conflicts(clip: Clip, caption: Caption, categories: Sequence[Category]) -> dict[str, str]:
    """Caption claims a measured fact contradicts: leaf -> measured value."""
    by_id = {c.id: c for c in categories}
    out = {}
    for leaf, claimed in caption_claims(caption, categories).items():
        cat = by_id.get(leaf)
        key = cat.measured_by if cat is not None else leaf
        measured = clip.facts.get(key) if key else None
        if isinstance(measured, str) and measured != claimed:
            out[leaf] = measured
    return out

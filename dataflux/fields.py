"""The metadata a source may carry about a clip: canonical field names, their parsers and limits.

A source's `fields` mapping says which of its columns holds which of our fields
(`fields: {transcript: sentence, gender: gender}`). Only the audio is required; every other
field is optional, and an empty one (missing column, empty cell, null, empty list) is simply
absent from `SourceItem.labels`. A mapped name that is neither one of the fields below nor a
taxonomy leaf id is a config error (`check_field_mapping`).

What a clip's labels look like after `map_record`:
    transcript, caption          str, whitespace collapsed
    language                     lower-case ISO 639-1 code when recognisable ("English", "en_US",
                                 "eng" -> "en"), else the cleaned string
    gender                       "male" | "female" | another cleaned string ("M", "woman" -> ...)
    speaker, age                 str
    emotion, genre, instrument   cleaned class words (see `clean_label`)
    labels                       list[str] of cleaned class labels; a column holds one label, several
                                 split on "," or ";", or a JSON list; `sound_source` = the first one
    <leaf id>                    the claimed value of that taxonomy leaf, as text

A value longer than its field's limit is never truncated: the row becomes a reject
`field_too_long` naming the field. A value of the wrong type (a mapping, a list outside
`labels`) is a reject `bad_field`. A label that looks like a file name or path (an audio
extension, a slash, or the clip's own file stem when that has digits) is not a class: the row becomes a reject
`label_not_a_class` naming the value, since a file name in a label column means the column
is mapped wrong and the user should fix the mapping rather than get questions about file names.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import langcodes

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus", ".m4a", ".aiff", ".aif")

# where the audio is and how a row is named: not metadata, never in labels
STRUCTURAL_FIELDS = frozenset({"file", "audio", "id"})
# `label` is accepted as another name of `labels`
LABEL_ALIASES = {"label": "labels"}

# field -> the longest value accepted (characters; for `labels`, per label)
MAX_LENGTH: dict[str, int] = {
    "transcript": 2000, "caption": 1000, "language": 40, "speaker": 200, "gender": 40, "age": 40,
    "emotion": 100, "labels": 100, "genre": 100, "instrument": 100,
}
LEAF_VALUE_MAX_LENGTH = 100
MAX_LABELS_PER_ROW = 50

_SPACES = re.compile(r"\s+")
_LABEL_JOINERS = re.compile(r"[_\-]+")


class FieldProblem(ValueError):
    """A row's value that cannot be used; `reason` is the reject code, the message names the field."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    return isinstance(value, (list, tuple)) and not [v for v in value if not is_empty(v)]


def clean_text(value: str) -> str:
    return _SPACES.sub(" ", value).strip()


def clean_label(value: str) -> str:
    """"dog_bark", "Dog-Bark", " dog  bark " -> "dog bark"."""
    return clean_text(_LABEL_JOINERS.sub(" ", value)).lower()


def looks_like_file_name(label: str, file_stem: str | None = None) -> bool:
    """True for "dog.wav", "audio/dog", or the clip's own numbered stem ("clip_0012" on clip_0012.wav).

    A stem without digits that equals the label ("dog" on dog.wav) is a class that named its file,
    as in many hand-made collections, so it stays a label.
    """
    raw = label.strip().lower()
    if "/" in raw or "\\" in raw or raw.endswith(AUDIO_EXTENSIONS):
        return True
    return (bool(file_stem) and any(ch.isdigit() for ch in file_stem)
            and clean_label(raw) == clean_label(file_stem))


_GENDERS = {"m": "male", "male": "male", "man": "male", "boy": "male", "masculine": "male",
            "f": "female", "female": "female", "woman": "female", "girl": "female", "feminine": "female"}


def normalise_language(value: str) -> str:
    """A corpus's language field as its base code ("en_US", "eng", "Deutsch" -> "en", "en", "de");
    a value langcodes cannot read passes through cleaned."""
    text = clean_text(value)
    head = re.split(r"[.]", text, maxsplit=1)[0]  # "en_US.utf8"
    return language_code(head) or language_code(text) or text.lower()


def normalise_gender(value: str) -> str:
    text = clean_text(value).lower()
    if text.startswith("male_") or text.startswith("female_"):  # Common Voice 17: "male_masculine"
        text = text.split("_", 1)[0]
    return _GENDERS.get(text, text)


def split_labels(value: Any) -> list[str]:
    """One label, several split on "," or ";", or a (JSON) list, as raw strings."""
    if isinstance(value, (list, tuple)):
        return [v for v in value]
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return parsed
    return re.split(r"[;,]", text)


@dataclass(frozen=True)
class Field:
    name: str
    normalise: Callable[[str], str]
    max_length: int


FIELDS: dict[str, Field] = {
    "transcript": Field("transcript", clean_text, MAX_LENGTH["transcript"]),
    "caption": Field("caption", clean_text, MAX_LENGTH["caption"]),
    "language": Field("language", normalise_language, MAX_LENGTH["language"]),
    "speaker": Field("speaker", clean_text, MAX_LENGTH["speaker"]),
    "gender": Field("gender", normalise_gender, MAX_LENGTH["gender"]),
    "age": Field("age", clean_text, MAX_LENGTH["age"]),
    "emotion": Field("emotion", clean_label, MAX_LENGTH["emotion"]),
    "genre": Field("genre", clean_label, MAX_LENGTH["genre"]),
    "instrument": Field("instrument", clean_label, MAX_LENGTH["instrument"]),
    "labels": Field("labels", clean_label, MAX_LENGTH["labels"]),
}
# fields that describe the clip but are not taxonomy claims by themselves
KNOWN_FIELDS = frozenset(FIELDS) | frozenset(LABEL_ALIASES)


def check_field_mapping(fields: Mapping[str, Any], leaf_ids: Iterable[str], *, where: str) -> list[str]:
    """Problems with a source's `fields` mapping: each names `where.<field>` and what is allowed."""
    leaves = set(leaf_ids)
    problems = []
    for ours in fields:
        if ours in STRUCTURAL_FIELDS or ours in KNOWN_FIELDS or ours in leaves:
            continue
        problems.append(f"{where}.{ours}: {ours!r} is neither a known field "
                        f"({', '.join(sorted(STRUCTURAL_FIELDS | KNOWN_FIELDS))}) nor a taxonomy leaf id; "
                        f"rename it or remove the mapping")
    return problems


def _text(value: Any, field: str, column: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise FieldProblem("bad_field", f"field {field!r} (column {column!r}) must be text"
                                    + (" or a list of text" if field == "labels" else "")
                                    + f", got {type(value).__name__}")


def _capped(value: str, field: str, column: str, limit: int) -> str:
    if len(value) > limit:
        raise FieldProblem("field_too_long", f"field {field!r} (column {column!r}) holds {len(value)} characters, "
                                             f"more than its limit of {limit}")
    return value


def parse_labels(value: Any, column: str, file_stem: str | None) -> list[str]:
    if not isinstance(value, (list, tuple)):
        _text(value, "labels", column)  # a mapping or another object is no label
    raw = split_labels(value)
    out: list[str] = []
    for item in raw:
        if is_empty(item):
            continue
        if isinstance(item, (list, tuple, dict)):
            raise FieldProblem("bad_field", f"field 'labels' (column {column!r}) must hold text labels, "
                                            f"got a nested {type(item).__name__}")
        text = _text(item, "labels", column)
        _capped(text.strip(), "labels", column, MAX_LENGTH["labels"])
        if looks_like_file_name(text, file_stem):
            raise FieldProblem("label_not_a_class", f"field 'labels' (column {column!r}): {text.strip()[:80]!r} "
                                                    f"looks like a file name, not a class; map the class column")
        label = clean_label(text)
        if label and label not in out:
            out.append(label)
    if len(out) > MAX_LABELS_PER_ROW:
        raise FieldProblem("field_too_long", f"field 'labels' (column {column!r}) holds {len(out)} labels, "
                                             f"more than its limit of {MAX_LABELS_PER_ROW}")
    return out


def parse_value(ours: str, value: Any, column: str, *, file_stem: str | None = None) -> Any:
    """One mapped value, parsed and checked; raises FieldProblem. `ours` is a field or leaf id."""
    ours = LABEL_ALIASES.get(ours, ours)
    if ours == "labels":
        return parse_labels(value, column, file_stem)
    if isinstance(value, (list, tuple)):
        raise FieldProblem("bad_field", f"field {ours!r} (column {column!r}) holds a list; only labels may")
    text = _text(value, ours, column)
    spec = FIELDS.get(ours)
    limit = spec.max_length if spec else LEAF_VALUE_MAX_LENGTH
    _capped(text.strip(), ours, column, limit)
    return spec.normalise(text) if spec else clean_text(text)


def map_record(record: Mapping[str, Any], fields: Mapping[str, str], *, file_stem: str | None = None
               ) -> dict[str, Any]:
    """A record's metadata as SourceItem.labels; empty fields absent. Raises FieldProblem (first bad field)."""
    labels: dict[str, Any] = {}
    for ours, theirs in fields.items():
        if ours in STRUCTURAL_FIELDS:
            continue
        value = record.get(theirs)
        if is_empty(value):
            continue
        parsed = parse_value(ours, value, theirs, file_stem=file_stem)
        if parsed in ("", []):
            continue
        labels[LABEL_ALIASES.get(ours, ours)] = parsed
    if labels.get("labels"):
        labels.setdefault("sound_source", labels["labels"][0])
    return labels


def vocabulary_of(label_dicts: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Sorted value sets per key over items' labels; every label of a list feeds `sound_source`."""
    seen: dict[str, set[str]] = {}
    for labels in label_dicts:
        for key, value in labels.items():
            if key == "labels":
                seen.setdefault("sound_source", set()).update(value)
            elif isinstance(value, str) and key != "sound_source":
                seen.setdefault(key, set()).add(value)
            elif key == "sound_source" and "labels" not in labels:
                seen.setdefault(key, set()).add(value)
    return {k: sorted(v) for k, v in seen.items() if v}


# class-label fields of a source's metadata, and the taxonomy leaf that states each (the label
# check holds them against the audio; planted errors flip them)
LABEL_LEAVES = {"sound_source": "sound_source", "instrument": "music_instrument", "genre": "music_genre",
                "emotion": "emotion"}


def language_code(value: Any) -> str | None:
    """The language a metadata value names, as its base BCP 47 code: "it", "it-IT", "Italian" -> "it".

    Codes and names are read by langcodes (the CLDR's data, every language it knows); None when
    the value names no language."""
    text = " ".join(str(value or "").split())
    if not text:
        return None
    try:
        if langcodes.tag_is_valid(text.replace("_", "-")):
            return langcodes.Language.get(text.replace("_", "-")).prefer_macrolanguage().language
        return langcodes.find(text).prefer_macrolanguage().language
    except (LookupError, ValueError):
        return None


def language_name(code: str) -> str:
    """The English name of a language code ("nl" -> "Dutch"), as questions and captions state it."""
    return langcodes.Language.get(code).display_name()


_GENDER_WORDS = {"m": "male", "man": "male", "male": "male", "f": "female", "woman": "female", "female": "female"}


def metadata_claim(field: str, value: Any) -> str | None:
    """The vocabulary word a typed metadata value claims: "en" -> "English", "F" -> "female"."""
    if value is None or isinstance(value, (list, dict)):
        return None
    text = " ".join(str(value).split())
    if not text:
        return None
    if field == "language":
        code = language_code(text)
        return language_name(code) if code else text.title()
    if field == "gender":
        return _GENDER_WORDS.get(text.lower(), text.lower())
    return text

"""Planted errors on any source: known wrong claims the closed loop should catch.

`plant_errors(items, rate, seed)` gives about `rate` of the items one wrong claim:
- swap_transcript: the transcript of another clip in the same language (leaf spoken_text);
- flip_gender: male <-> female (leaf speaker_gender);
- flip_language: another language the source's clips claim (leaf spoken_language);
- flip_label: another class label of the source, in the field the item carries (sound_source,
  instrument, genre or emotion; leaves sound_source, music_instrument, music_genre, emotion).
An item gets one kind its metadata allows, chosen from a hash of (seed, source, id), so the same
item is planted the same way whatever the partitioning. `meta["planted"]` records
{"leaf", "claimed", "true", "kind"} in the value the caption and the questions state; the
pipeline writes it to the item ledger, and `stats` counts a plant as caught when no row of the
version asserts the claimed value, exactly as for the demo's planted labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from dataflux.fields import LABEL_LEAVES
from dataflux.records import Reject, SourceItem
from dataflux.steps.caption import metadata_claim

_FLIP = {"male": "female", "female": "male"}


def _unit(*parts: object) -> float:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64




def _label_field(item: SourceItem, classes: dict[str, list[str]]) -> str | None:
    return next((f for f in LABEL_LEAVES if item.labels.get(f) is not None and len(classes.get(f, [])) > 1), None)


def _kinds(item: SourceItem, donors: dict[str, list[SourceItem]], classes: dict[str, list[str]]) -> list[str]:
    out = []
    text = item.labels.get("transcript")
    if isinstance(text, str) and any(_words(d) != _words(item) for d in donors.get(_language(item), [])):
        out.append("swap_transcript")
    if metadata_claim("gender", item.labels.get("gender")) in _FLIP:
        out.append("flip_gender")
    if _language(item) and len(classes.get("language", [])) > 1:
        out.append("flip_language")
    if _label_field(item, classes) is not None:
        out.append("flip_label")
    return out


def _words(item: SourceItem) -> str:
    return " ".join(str(item.labels.get("transcript") or "").split())


def _language(item: SourceItem) -> str:
    return str(item.labels.get("language") or "")


def plant_errors(items: Sequence[SourceItem | Reject], rate: float, seed: int = 0) -> list[SourceItem | Reject]:
    """The same items, about `rate` of them carrying one planted wrong claim (see the module doc)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"plant_errors: rate must be within 0..1, got {rate}")
    clips = [it for it in items if isinstance(it, SourceItem)]
    donors: dict[str, list[SourceItem]] = {}
    for it in clips:
        if isinstance(it.labels.get("transcript"), str) and _words(it):
            donors.setdefault(_language(it), []).append(it)
    classes = {f: sorted({str(it.labels[f]).strip() for it in clips if it.labels.get(f) not in (None, "")})
               for f in (*LABEL_LEAVES, "language")}
    original = {id(it): (_words(it), dict(it.labels)) for it in clips}
    for it in clips:
        if _unit(seed, "plant", it.source, it.source_id) >= rate:
            continue
        kinds = _kinds(it, donors, classes)
        if not kinds:
            continue
        kind = kinds[int(_unit(seed, "kind", it.source, it.source_id) * len(kinds))]
        if kind == "swap_transcript":
            mine = original[id(it)][0]
            others = [d for d in donors[_language(it)] if original[id(d)][0] != mine]
            donor = others[int(_unit(seed, "donor", it.source, it.source_id) * len(others))]
            it.labels["transcript"] = original[id(donor)][0]
            planted = {"leaf": "spoken_text", "claimed": original[id(donor)][0], "true": mine}
        elif kind == "flip_gender":
            true = metadata_claim("gender", it.labels["gender"])
            it.labels["gender"] = _FLIP[true]
            planted = {"leaf": "speaker_gender", "claimed": _FLIP[true], "true": true}
        elif kind == "flip_language":
            planted = _flip(it, "language", classes["language"], seed)
            planted = {"leaf": "spoken_language", "claimed": metadata_claim("language", planted[0]),
                       "true": metadata_claim("language", planted[1])}
        else:
            field = _label_field(it, classes)
            wrong, true = _flip(it, field, classes[field], seed)
            if field == "sound_source" and isinstance(it.labels.get("labels"), list) and it.labels["labels"]:
                it.labels["labels"] = [wrong, *it.labels["labels"][1:]]
            planted = {"leaf": LABEL_LEAVES[field], "claimed": wrong, "true": true}
        it.meta["planted"] = {**planted, "kind": kind}
    return list(items)


def _flip(item: SourceItem, field: str, values: list[str], seed: int) -> tuple[str, str]:
    """Set `field` to another of `values`, drawn from a hash of the item; (claimed, true)."""
    true = str(item.labels[field]).strip()
    others = [v for v in values if v != true]
    wrong = others[int(_unit(seed, field, item.source, item.source_id) * len(others))]
    item.labels[field] = wrong
    return wrong, true

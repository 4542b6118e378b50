"""One pass over a whole source before its partitions run: identical audio, and the answer vocabulary.

Partitions run apart (threads, Ray or Dask workers) and a clip's sample ids come from its audio
hash, so two byte-identical files under two names would otherwise be processed twice and give
the same sample ids in two partitions. The survey hashes every item once, in the source's own
order, and decides for the whole source:

- the first copy of an audio is kept; a later copy becomes a reject `duplicate_audio` naming the
  kept copy, and its list labels are merged (union) into the kept copy's, as are fields the kept
  copy lacks; a later copy whose other metadata disagrees (a different transcript, gender, ...)
  becomes a reject `duplicate_conflict` naming both copies, and nothing of it is merged;
- the vocabulary of label-driven leaves (the options of their questions) is built from the kept
  copies that pass the source stage and decode, never from a rejected row;
- class labels (sound source, instrument, genre, emotion) are held against the audio over the
  whole source (`dataflux.audio.label_check`): a label the rest of the corpus contradicts is caught.

Sources of one run are surveyed in the run's order, so a copy in a later source is a duplicate of
the copy in an earlier one. The outcome depends only on the sources' content, so every partition
(in any process) computes the same survey; within a process it is computed once per state.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any

from dataflux.audio.decode import BadAudio, decode_audio
from dataflux.audio.label_check import check_source_labels
from dataflux.fields import vocabulary_of
from dataflux.records import Reject, SourceItem, sha256_bytes
from dataflux.sources.planting import plant_errors


@dataclass
class Survey:
    duplicates: dict[str, Reject] = field(default_factory=dict)  # source_id -> its duplicate reject
    merged_labels: dict[str, dict[str, Any]] = field(default_factory=dict)  # kept source_id -> labels
    vocabulary: dict[str, list[str]] = field(default_factory=dict)
    labels_checked: dict[str, dict[str, Any]] = field(default_factory=dict)  # source_id -> leaf -> LabelVerdict
    planted: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)  # id -> (labels, plant)

    def settle(self, item: SourceItem) -> SourceItem | Reject:
        """The item as a partition should process it: its duplicate reject, or it with merged labels."""
        if item.source_id in self.duplicates:
            return self.duplicates[item.source_id]
        if item.source_id in self.merged_labels:
            item.labels = self.merged_labels[item.source_id]
        if item.source_id in self.planted:
            labels, plant = self.planted[item.source_id]
            item.labels = dict(labels)
            item.meta["planted"] = dict(plant)
        return item


_cache: dict[tuple, dict[str, Survey]] = {}
_lock = threading.Lock()


def survey_source(source, *, max_seconds: float, min_seconds: float, before: list | None = None,
                  plant: tuple[float, int] | None = None) -> Survey:
    """The survey of `source` in its current state (cached per process by the sources' fingerprints).

    `before`: the sources that precede it in the same run; a copy of their audio in `source` is a
    duplicate of theirs, so identical audio is processed once across the whole run.
    `plant`: (rate, seed) of known wrong claims to plant in `source` (`dataflux.sources.planting`),
    drawn over the whole source, so every partition sees the same plants and the label check judges
    the labels the partitions will ask about.
    """
    sources = [*(before or []), source]
    key = (tuple((s.name, s.fingerprint()) for s in sources), max_seconds, min_seconds, plant)
    with _lock:
        if key not in _cache:
            _cache[key] = _survey(sources, max_seconds=max_seconds, min_seconds=min_seconds,
                                  plant={source.name: plant} if plant else {})
        return _cache[key][source.name]


def _read(item: SourceItem) -> bytes | None:
    if item.audio_bytes is not None:
        return item.audio_bytes
    try:
        with open(item.audio_path, "rb") as f:  # not item.read_bytes(): a survey must not keep every file
            return f.read()
    except (OSError, TypeError):
        return None


def _decodes(data: bytes, name: str, max_seconds: float, min_seconds: float) -> bool:
    try:
        decode_audio(data, name=name, max_seconds=max_seconds, min_seconds=min_seconds)
    except BadAudio:
        return False
    except Exception:  # the analysis stage reports what it is; such a clip feeds no vocabulary
        return False
    return True


def _survey(sources: list, *, max_seconds: float, min_seconds: float,
            plant: dict[str, tuple[float, int]]) -> dict[str, Survey]:
    surveys = {s.name: Survey() for s in sources}
    kept: dict[str, SourceItem] = {}  # audio sha256 -> the kept copy
    decodable: dict[str, bool] = {}
    for source in sources:
        survey = surveys[source.name]
        for item in source.iter_items(0, 1):
            if isinstance(item, Reject):
                continue
            data = _read(item)
            if data is None:
                continue  # the analysis stage rejects it as unreadable
            digest = sha256_bytes(data)
            first = kept.get(digest)
            if first is None:
                kept[digest] = item
                decodable[digest] = _decodes(data, item.audio_path or item.source_id, max_seconds, min_seconds)
                continue
            survey.duplicates[item.source_id] = _duplicate(first, item, digest, surveys[first.source])
    for name, survey in surveys.items():
        mine = [it for digest, it in kept.items() if it.source == name and decodable[digest]]
        survey.vocabulary = vocabulary_of(it.labels for it in mine)
        if name in plant:
            survey.planted = _plant([it for it in kept.values() if it.source == name], *plant[name])
        survey.labels_checked = check_source_labels(mine, _read, max_seconds=max_seconds)
    return surveys


def _plant(items: list[SourceItem], rate: float, seed: int) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Plant errors in copies of `items` (the kept copies stay as read): id -> (labels, plant)."""
    copies = [dataclasses.replace(it, labels=dict(it.labels), meta=dict(it.meta)) for it in items]
    plant_errors(copies, rate, seed)
    for item, copy in zip(items, copies):
        item.labels = copy.labels  # the label check below judges what the partitions will claim
    return {c.source_id: (c.labels, c.meta["planted"]) for c in copies if c.meta.get("planted")}


def _duplicate(first: SourceItem, item: SourceItem, digest: str, first_survey: Survey) -> Reject:
    """The reject of a later copy; merges its labels into the kept copy when nothing conflicts."""
    conflicts = _conflicts(first.labels, item.labels)
    where = f"{first.source}/{first.source_id}"
    if conflicts:
        detail = (f"same audio (sha256 {digest[:16]}) as {where}, which is kept, but "
                  + "; ".join(f"{k}: {a!r} there, {b!r} here" for k, a, b in conflicts)
                  + f"; {item.source}/{item.source_id} is left out and none of its metadata used")
        reason = "duplicate_conflict"
    else:
        first.labels = _merged(first.labels, item.labels)
        first_survey.merged_labels[first.source_id] = first.labels
        detail = f"same audio (sha256 {digest[:16]}) as {where}, which is kept; labels merged into it"
        reason = "duplicate_audio"
    return Reject(item.source, item.source_id, "source", reason, detail, audio_sha256=digest,
                  extra={"kept_source": first.source, "kept_source_id": first.source_id,
                         "conflicting_fields": [k for k, _, _ in conflicts]})


def _conflicts(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Fields both copies state, other than list labels, with different values."""
    skip = {"labels", "sound_source"} if ("labels" in a or "labels" in b) else {"labels"}
    return [(k, a[k], b[k]) for k in sorted(set(a) & set(b) - skip) if a[k] != b[k]]


def _merged(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {**b, **a}
    if "labels" in a or "labels" in b:
        out["labels"] = list(dict.fromkeys([*a.get("labels", []), *b.get("labels", [])]))
        out["sound_source"] = a.get("sound_source", out["labels"][0])
    return out

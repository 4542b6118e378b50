"""A source's class labels held against its audio, over the whole source at once.

Every kept clip that carries a class label (sound source, instrument, genre, emotion) in a field
with at least two classes of `MIN_CLIPS` clips is embedded once (the Whisper encoder's pooled
states, batched), and each field's labels are judged by confident learning over those embeddings
(`dataflux.audio.label_noise`). The survey of a source runs this once, before its partitions, so
every partition reads the same verdicts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dataflux.audio.decode import BadAudio, decode_audio
from dataflux.audio.label_noise import LabelVerdict, judged_fields, label_fact, verdicts_by_field
from dataflux.audio.recognizer_facts import embed
from dataflux.fields import LABEL_LEAVES, metadata_claim
from dataflux.records import Clip

LABEL_WINDOW_S = 8.0  # the first seconds of a clip: enough to hear what makes the sound


def check_source_labels(items: Sequence[Any], read: Callable[[Any], bytes | None], *,
                        max_seconds: float) -> dict[str, dict[str, LabelVerdict]]:
    """source_id -> leaf -> verdict for the items' class labels (empty when no field can be judged)."""
    fields = judged_fields([it.labels for it in items])
    if not fields:
        return {}
    chosen = [it for it in items if any(it.labels.get(f) not in (None, "") for f in fields)]
    clips, kept = [], []
    for item in chosen:
        data = read(item)
        if data is None:
            continue
        try:
            y, _ = decode_audio(data, name=item.audio_path or item.source_id, max_seconds=max_seconds)
        except (BadAudio, ValueError):
            continue
        clips.append(y[: int(LABEL_WINDOW_S * 16000)])
        kept.append(item)
    if not kept:
        return {}
    found = verdicts_by_field(embed(clips), [it.labels for it in kept], fields)
    return {it.source_id: verdicts for it, verdicts in zip(kept, found) if verdicts}


FIELD_OF = {leaf: field for field, leaf in LABEL_LEAVES.items()}


def add_label_facts(clips: Sequence[Clip], checked: dict[str, dict[str, LabelVerdict]]) -> None:
    """Each clip's label verdicts as facts, in place: leaf -> measured value (see `label_fact`);
    a class too rare to judge leaves the leaf unmeasured, with the reason under raw."""
    for clip in clips:
        for leaf, verdict in (checked.get(clip.item.source_id) or {}).items():
            claimed = metadata_claim(FIELD_OF[leaf], clip.item.labels.get(FIELD_OF[leaf]))
            raw = clip.facts.setdefault("raw", {})
            raw[f"{leaf}_label_check"] = verdict.status if verdict.status == "measured" else verdict.reason
            if verdict.predicted is not None:
                raw[f"{leaf}_label_heard_as"] = verdict.predicted
            fact = label_fact(claimed, verdict) if claimed is not None else None
            if fact is not None:
                clip.facts[leaf] = fact

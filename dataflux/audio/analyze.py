"""Audio analysis stage: SourceItem -> Clip (decoded and measured) or Reject (why not)."""

from __future__ import annotations

from typing import Iterable

from dataflux.audio.decode import BadAudio, decode_audio
from dataflux.audio.facts import measure_facts
from dataflux.audio.quality import quality_metrics
from dataflux.records import Clip, Reject, SourceItem, sha256_bytes

TARGET_SR = 16000


def analyze_item(
    item: SourceItem,
    leaves: Iterable[str],
    *,
    max_seconds: float = 600.0,
    min_seconds: float = 0.05,
    vocabularies: dict[str, list[str]] | None = None,
) -> Clip | Reject:
    """Decode `item`, compute the always-on quality metrics and the facts `leaves` need.

    The clip's `audio_sha256` is over the original file bytes (so the same file always maps
    to the same split and sample ids). Undecodable audio becomes Reject(stage="decode") with
    the BadAudio reason code; a missing file becomes reason "unreadable".
    """
    name = item.audio_path or f"{item.source}/{item.source_id}"
    try:
        data = item.read_bytes()
    except (OSError, ValueError) as e:
        return Reject(source=item.source, source_id=item.source_id, stage="decode", reason="unreadable",
                      detail=f"{name}: cannot read the audio ({e}); check the path in the source")
    digest = sha256_bytes(data)
    try:
        y, original_sr = decode_audio(data, name=name, target_sr=TARGET_SR,
                                      max_seconds=max_seconds, min_seconds=min_seconds)
    except BadAudio as e:
        return Reject(source=item.source, source_id=item.source_id, stage="decode", reason=e.reason,
                      detail=e.detail, audio_sha256=digest)
    return Clip(
        item=item,
        audio_sha256=digest,
        samples=y,
        sampling_rate=TARGET_SR,
        original_sampling_rate=original_sr,
        quality=quality_metrics(y, TARGET_SR),
        facts=measure_facts(y, TARGET_SR, leaves, {"labels": item.labels, "vocabularies": vocabularies or {}}),
    )

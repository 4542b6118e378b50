"""Phase 2, analyse: decode and measure each item, keep the clips the quality filters pass.

Every item that does not become a clip becomes a reject and a ledger entry. Relative facts (a
clip against its partition), the recognizer's facts (Whisper batches the partition's speech) and
speaker facts are added once all clips are measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dataflux.audio.analyze import analyze_item
from dataflux.audio.label_check import add_label_facts
from dataflux.audio.recognizer_facts import add_recognizer_facts
from dataflux.audio.relative import add_relative_facts
from dataflux.audio.speakers import add_speaker_facts
from dataflux.pipeline.prepare import Prepared
from dataflux.records import Clip, Reject, ledger_entry
from dataflux.steps.filter import quality_reject


@dataclass
class Analysed:
    clips: list[Clip] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    ledger: list[dict] = field(default_factory=list)  # the rejected items' ledger entries
    n_items: int = 0


def analyse(prepared: Prepared) -> Analysed:
    out = Analysed()
    for obj in prepared.items:
        out.n_items += 1
        if prepared.survey is not None and not isinstance(obj, Reject):
            obj = prepared.survey.settle(obj)  # a later copy of identical audio becomes its duplicate reject
        if isinstance(obj, Reject):
            out.rejects.append(obj)
            out.ledger.append(ledger_entry(obj.source, obj.source_id, obj.audio_sha256, "rejected:" + obj.reason, None))
            continue
        clip = _analyse_one(obj, prepared)
        if isinstance(clip, Reject):
            out.rejects.append(clip)
            out.ledger.append(ledger_entry(obj.source, obj.source_id, clip.audio_sha256, "rejected:" + clip.reason,
                                           obj.meta.get("planted")))
            continue
        out.clips.append(clip)
    add_relative_facts(out.clips, prepared.leaf_ids)
    add_recognizer_facts(out.clips, prepared.leaf_ids, prepared.vocabularies)  # Whisper, in batches
    if prepared.survey is not None:
        add_label_facts(out.clips, prepared.survey.labels_checked)  # judged over the whole source
    out.rejects.extend(add_speaker_facts(out.clips, prepared.leaf_ids))  # a claim withdrawn, its clip kept
    return out


def _analyse_one(item, prepared: Prepared) -> Clip | Reject:
    try:
        analysed = analyze_item(item, leaves_to_measure(item, prepared.categories, prepared.claims_only),
                                **prepared.limits, vocabularies=prepared.vocabularies)
    except Exception as e:  # one clip the analysis cannot handle must not sink its partition
        return Reject(item.source, item.source_id, "analyze", "analysis_error", f"{type(e).__name__}: {e}")
    if isinstance(analysed, Reject):
        return analysed
    return quality_reject(analysed, prepared.filters) or analysed


def leaves_to_measure(item, categories: list, claims_only: bool) -> list[str]:
    """Leaves whose facts the clip needs: with the reference captioner, those it can claim (from a
    label, from the metadata field the leaf names, or from measurement); with a model captioner, all."""
    if not claims_only:
        return [c.id for c in categories]
    return [c.id for c in categories
            if c.id in item.labels or c.claimed_from == "measurement"
            or (c.claimed_from and item.labels.get(c.claimed_from) not in (None, "", []))]

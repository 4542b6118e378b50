"""Facts about a speaker, pooled over the speaker's clips analysed together (one partition).

A voice's gender belongs to the speaker, not to one utterance: a question, an emphasis or a
pitch-tracking slip moves one clip's median f0 by tens of hertz, while the median over a
speaker's clips is steady. So where the source names the speaker (`speaker` field) and at least
`MIN_SPEAKER_CLIPS` of that speaker's clips carry a measured f0, the speaker's pooled median f0
decides `speaker_gender` for all of them, and it is left undecided (None) when the pooled f0 lies
in the band where adult male and female voices overlap (speech_thresholds.yaml, `gender`).

Where the audio cannot decide, the corpus can still contradict itself: a clip whose gender claim
disagrees with what nearly all other clips of the same speaker claim (a share of at least
`CONSISTENT_SHARE` of at least `MIN_SPEAKER_CLIPS` claims) has that claim withdrawn. The clip
stays; no question or caption states the claim, and the ledger records the conflict as a reject
of that leaf (`metadata/speaker_gender_conflict`), naming the speaker and the counts. A claim
that agrees with the speaker's other clips is marked so (`speaker_claim_*` raw entries), and the
reference judge keeps its question as `metadata-only` instead of discarding it as unmeasured.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from dataflux.audio.speech import speech_thresholds
from dataflux.fields import metadata_claim
from dataflux.records import Clip, Reject

MIN_SPEAKER_CLIPS = 5
CONSISTENT_SHARE = 0.8


def speaker_of(clip: Clip) -> str | None:
    """The speaker the source names for a clip, or None."""
    value = (clip.item.labels or {}).get("speaker")
    if value is None or isinstance(value, (list, dict)):
        return None
    text = " ".join(str(value).split())
    return text or None


def gender_from_f0(f0_hz: float) -> str | None:
    t = speech_thresholds()["gender"]
    if f0_hz < t["male_below_hz"]:
        return "male"
    if f0_hz > t["female_above_hz"]:
        return "female"
    return None


def add_speaker_facts(clips: Sequence[Clip], leaves: Sequence[str]) -> list[Reject]:
    """Pool `speaker_gender` per named speaker, in place; the rejects of withdrawn claims."""
    if "speaker_gender" not in leaves:
        return []
    by_speaker: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        name = speaker_of(clip)
        if name is not None:
            by_speaker[name].append(clip)
    rejects: list[Reject] = []
    for name, group in by_speaker.items():
        f0s = [float(c.facts["raw"]["f0_median_hz"]) for c in group
               if isinstance((c.facts.get("raw") or {}).get("f0_median_hz"), (int, float))]
        decided: str | None = None
        if len(f0s) >= MIN_SPEAKER_CLIPS:
            pooled = float(np.median(f0s))
            decided = gender_from_f0(pooled)
            for c in group:
                c.facts["speaker_gender"] = decided
                raw = c.facts.setdefault("raw", {})
                raw["speaker_f0_median_hz"] = round(pooled, 1)
                raw["speaker_f0_clips"] = len(f0s)
        undecided = [c for c in group if c.facts.get("speaker_gender") is None]
        if not undecided:
            continue  # the audio decides every clip (pooled, or clip by clip for a speaker with few clips)
        claims = {id(c): metadata_claim("gender", c.item.labels.get("gender")) for c in group}
        counted = Counter(v for v in claims.values() if v is not None)
        total = sum(counted.values())
        if total < MIN_SPEAKER_CLIPS:
            continue
        majority, n = counted.most_common(1)[0]
        if n / total < CONSISTENT_SHARE:
            continue
        for c in undecided:
            claim = claims[id(c)]
            if claim is None:
                continue
            if claim == majority:
                c.facts.setdefault("raw", {}).update(
                    {"speaker_claim_majority": majority, "speaker_claim_agreeing": n, "speaker_claim_total": total})
                continue
            c.item.labels["gender"] = None
            c.facts["raw"] = {**(c.facts.get("raw") or {}), "gender_claim_withdrawn": claim}
            rejects.append(Reject(
                c.item.source, c.item.source_id, "metadata", "speaker_gender_conflict",
                f"claims {claim!r}, but {n} of {total} clips of speaker {name!r} claim {majority!r} "
                "and the voice's f0 cannot decide; the claim is withdrawn, the clip kept",
                audio_sha256=c.audio_sha256, extra={"leaf": "speaker_gender", "claimed": claim,
                                                     "speaker_majority": majority}))
    return rejects

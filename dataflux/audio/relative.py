"""Facts relative to the corpus: how loud and how long a clip is compared with the others.

A fixed scale ("loud" = -12 dBFS) says little about a corpus recorded at one level; a quartile
of the corpus says which clips stand out. The reference is the set of clips analysed together
(one partition of a source: a random sample of it, since partitions are drawn by hash), so the
words mean "among the loudest of this source's recordings".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dataflux.audio.facts import measure_facts
from dataflux.audio.vocabulary import leaf_values
from dataflux.records import Clip

RELATIVE_LEAVES = ("relative_loudness", "relative_duration")
MIN_REFERENCE_CLIPS = 8  # fewer clips: a quartile means nothing, the fact stays unmeasured


def quartile_word(values: Sequence[str], x: float, reference: np.ndarray) -> tuple[str, float]:
    """The word of `x`'s quartile among `reference` (`values` ordered low -> high) and its percentile."""
    pct = float(np.mean(reference < x) + 0.5 * np.mean(reference == x))
    return values[min(int(pct * len(values)), len(values) - 1)], round(100 * pct, 1)


def _level(clip: Clip) -> float | None:
    raw = clip.facts.get("raw") or {}
    if "active_rms_dbfs" not in raw:
        raw = measure_facts(clip.samples, clip.sampling_rate, ["loudness"])["raw"]
    return raw.get("active_rms_dbfs")


def add_relative_facts(clips: Sequence[Clip], leaves: Sequence[str]) -> None:
    """Set `relative_loudness` / `relative_duration` on every clip that asks for them, in place."""
    wanted = [leaf for leaf in RELATIVE_LEAVES if leaf in leaves]
    if not wanted or not clips:
        return
    numbers = {
        "relative_loudness": [_level(c) for c in clips],
        "relative_duration": [len(c.samples) / c.sampling_rate for c in clips],
    }
    for leaf in wanted:
        xs = numbers[leaf]
        reference = np.array([x for x in xs if x is not None], dtype=float)
        for clip, x in zip(clips, xs):
            if reference.size < MIN_REFERENCE_CLIPS or x is None:
                clip.facts[leaf] = None
                continue
            word, pct = quartile_word(leaf_values(leaf), float(x), reference)
            clip.facts[leaf] = word
            clip.facts.setdefault("raw", {})[f"{leaf}_percentile"] = pct
            clip.facts["raw"][f"{leaf}_reference_clips"] = int(reference.size)

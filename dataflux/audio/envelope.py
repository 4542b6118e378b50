"""The speech envelope's time structure: smoothing, runs of quiet frames, and seconds of speech.

Shared by the signal measurers (dataflux.audio.facts) and the speech measurers
(dataflux.audio.speech_facts), below both.
"""

from __future__ import annotations

import numpy as np

ENVELOPE_HOP_S = 0.01  # speech envelope: 10 ms hop, 25 ms windows
SPEECH_GATE_DB = 35.0  # speech time: within this of the loudest envelope frame
SPEECH_MIN_PAUSE_S = 0.15  # quieter stretches at least this long are pauses, not speech


def speech_seconds(env_db: np.ndarray) -> float:
    """Seconds of speech in a 10 ms vowel-band envelope: everything except pauses, i.e.
    stretches of at least 150 ms more than 35 dB below the loudest frame (50 ms smoothing)."""
    env = smooth(env_db, 5)
    if env.size == 0:
        return 0.0
    quiet = env < float(env.max()) - SPEECH_GATE_DB
    paused = sum(e - s for s, e in runs(quiet) if (e - s) * ENVELOPE_HOP_S >= SPEECH_MIN_PAUSE_S)
    return (env.size - paused) * ENVELOPE_HOP_S


def smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average over `width` frames (same length as x)."""
    if width <= 1 or x.size == 0:
        return x
    return np.convolve(x, np.ones(width) / width, mode="same")


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs of a 1-D bool array."""
    if mask.size == 0:
        return []
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), ends.tolist()))

"""A hand-made clip for the per-clip loop: a 2 s 440 Hz sine whose measured facts and quality are written
out by hand, so a test controls exactly what the loop sees (labels, facts) without measuring audio."""

from __future__ import annotations

import hashlib

import numpy as np

from dataflux.records import Clip, SourceItem
from dataflux.taxonomy import load_taxonomy

TAX = load_taxonomy()
CATS = TAX.leaves_for(["Sound", "Music", "Speech"])
QUALITY = {"duration_s": 2.0, "peak": 0.5, "rms_dbfs": -22.0, "clipping_ratio": 0.0, "silence_ratio": 0.05, "snr_db": 40.0}
TRUE = {"tone_pitch": "440 Hz", "waveform": "sine", "duration": "2 seconds", "loudness": "moderate"}
RAW = {"f0_hz": 440.4, "h2_h1": 0.001, "h3_h1": 0.002, "h5_h1": 0.0, "harmonic_ratio": 0.99, "duration_s": 2.0,
       "active_rms_dbfs": -22.3}


def make_clip(labels: dict, facts: dict | None = None, key: str = "clip-1") -> Clip:
    """The clip with source `labels`; `facts` (default: the true ones, TRUE) get the raw measurements RAW."""
    t = np.arange(32000) / 16000
    samples = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    facts = dict(TRUE if facts is None else facts)
    facts.setdefault("raw", dict(RAW))
    item = SourceItem("hand", key, labels=labels, license="CC0-1.0")
    return Clip(item, hashlib.sha256(key.encode()).hexdigest(), samples, 16000, 16000, dict(QUALITY), facts)

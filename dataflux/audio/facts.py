"""Measured facts: what the audio itself says about a taxonomy leaf, in the leaf's words.

`measure_facts(y, sr, leaves)` answers, for each requested leaf, with a word from the leaf's
vocabulary ("440 Hz", "3 beeps", "pink") or None when the clip is not the kind of sound the
leaf is about (the pitch of a noise, the tempo of a held tone). None lets a measuring answerer
abstain instead of guessing. Raw numbers go under `facts["raw"]`.

Everything is numpy over framed energy and one averaged spectrum (FFT, envelopes, peak
picking): no pitch tracker, no numba-compiled paths, so a clip costs milliseconds. A
descriptor is computed only when a requested leaf needs it; `_Analysis` computes each one
at most once and shares it between leaves (the tone's spectrum serves pitch and waveform).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Callable, Iterable

import numpy as np

from dataflux.audio.envelope import ENVELOPE_HOP_S, SPEECH_GATE_DB, runs, smooth, speech_seconds  # noqa: F401
from dataflux.audio.quality import frame_power, power_db
from dataflux.audio.speech_facts import SPEECH_MEASURERS
from dataflux.audio.vocabulary import leaf_values, nearest_value

# Spectrum: Welch average of Hann-windowed frames.
_NFFT_SECONDS = 0.256  # 4096 samples at 16 kHz: 3.9 Hz bins, enough to split 110 Hz harmonics
TONAL_MIN_HARMONIC_RATIO = 0.6  # share of power in the harmonics of f0 for a clip to count as a tone
TONAL_MIN_PROMINENCE_DB = 25.0  # and the fundamental stands this far above its neighbourhood
NOISE_MAX_PROMINENCE_DB = 20.0  # a noise has no spectral line this prominent (short clips reach ~13 dB by chance)
NOISE_MAX_FIT_RESIDUAL_DB = 2.5  # a noise's banded spectrum is a straight line in dB vs log f
NOISE_MAX_LEVEL_STD_DB = 3.0  # a noise is steady: 100 ms frame levels vary little
NOISE_BAND_HZ = (100.0, 6400.0)  # slope fit range; above it resampling filters roll off

EVENT_FRAME_SECONDS = 0.005
EVENT_GATE_DB = 25.0  # an event frame is within this of the loudest frame
EVENT_MIN_GAP_S = 0.06  # shorter dips do not split an event
EVENT_MIN_LENGTH_S = 0.015
BEEP_MIN_LENGTH_S = 0.04  # a beep is a held tone; shorter events are clicks
TEMPO_MAX_IOI_CV = 0.1  # a click track is regular: inter-onset intervals vary under 10 %

ACTIVE_GATE_DB = 20.0  # loudness: frames within this of the 95th-percentile frame are "active"
ACTIVE_FLOOR_DBFS = -70.0

VOWEL_BAND_HZ = (300.0, 1500.0)  # first-formant region: vowels are loud here, consonants and
# their bursts are not (a band up to 2.5 kHz splits consonant clusters into extra peaks)
SPEECH_MIN_ENVELOPE_STD_DB = 5.0  # speech swings ~10 dB; held tones and noises ~1 dB
SYLLABLE_SMOOTH_FRACTION = 0.2  # envelope smoothing window, as a fraction of a syllable
SYLLABLE_PROMINENCE_DB = 4.0  # a nucleus rises this far above the dips on both sides


def measurable_leaves() -> set[str]:
    """Taxonomy leaf ids this module can measure."""
    return set(_MEASURERS)


def measure_facts(y: np.ndarray, sr: int, leaves: Iterable[str], context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure the requested leaves on one clip.

    y: (T,) float32 mono; sr: its sample rate (16000 after decoding). `context` carries what a
    check needs besides the audio: {"labels": the source's claims, "vocabularies": leaf -> values}
    (which phrase is spoken is checked against the claimed transcript and its neighbours).
    Returns {leaf: vocabulary word or None for each requested measurable leaf,
    "raw": {descriptor name: number}}. Leaves that cannot be measured (e.g. sound_source)
    are left out; only the descriptors the requested leaves need are computed.
    """
    a = _Analysis(np.asarray(y, dtype=np.float32), int(sr), context)
    out: dict[str, Any] = {}
    for leaf in dict.fromkeys(leaves):
        fn = _MEASURERS.get(leaf)
        if fn is not None:
            out[leaf] = fn(a)
    out["raw"] = a.raw
    return out


class _Analysis:
    """Lazily computed descriptors of one clip; each property runs at most once."""

    def __init__(self, y: np.ndarray, sr: int, context: dict[str, Any] | None = None):
        self.y = y
        self.sr = sr
        self.context = context or {}
        self.raw: dict[str, Any] = {}
        self.memo: dict[str, Any] = {}  # results one measurer shares with another

    # ---- level -------------------------------------------------------------------------
    @cached_property
    def frame_db(self) -> np.ndarray:
        """(F,) dB of 20 ms frames."""
        return power_db(frame_power(self.y, max(1, int(0.02 * self.sr))))

    @cached_property
    def active_rms_dbfs(self) -> float | None:
        fdb = self.frame_db
        if fdb.size == 0:
            return None
        gate = max(float(np.percentile(fdb, 95)) - ACTIVE_GATE_DB, ACTIVE_FLOOR_DBFS)
        active = fdb >= gate
        if not active.any():
            return None
        p = float(np.mean(np.power(10.0, fdb[active] / 10.0)))
        v = float(power_db(p))
        self.raw["active_rms_dbfs"] = round(v, 2)
        self.raw["active_ratio"] = round(float(active.mean()), 3)
        return v

    @cached_property
    def level_std_db(self) -> float:
        """Std of 100 ms frame levels over the clip: small for a steady sound."""
        fdb = power_db(frame_power(self.y, max(1, int(0.1 * self.sr))))
        if fdb.size > 2:
            fdb = fdb[1:-1]  # edges may hold fades or a partial frame
        v = float(np.std(fdb)) if fdb.size else 0.0
        self.raw["level_std_db"] = round(v, 2)
        return v

    # ---- spectrum ----------------------------------------------------------------------
    @cached_property
    def psd(self) -> tuple[np.ndarray, np.ndarray]:
        """Welch power spectrum: (freqs (K,), power (K,)), Hann frames with 50 % overlap."""
        nfft = int(2 ** round(np.log2(_NFFT_SECONDS * self.sr)))
        y = self.y
        if y.shape[0] < nfft:
            y = np.pad(y, (0, nfft - y.shape[0]))
        hop = nfft // 2
        n_frames = 1 + (y.shape[0] - nfft) // hop
        # Bound the cost on long clips: an average over ~256 frames is already smooth.
        stride = max(1, n_frames // 256)
        starts = np.arange(0, n_frames, stride) * hop
        win = np.hanning(nfft).astype(np.float32)
        power = np.zeros(nfft // 2 + 1)
        for chunk in np.array_split(starts, max(1, len(starts) // 64)):
            frames = np.stack([y[s:s + nfft] for s in chunk]) * win
            power += np.sum(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0)
        power /= len(starts)
        return np.fft.rfftfreq(nfft, 1.0 / self.sr), power

    @cached_property
    def tone(self) -> dict[str, float] | None:
        """Fundamental and harmonic structure of the strongest spectral peak.

        Returns f0_hz, harmonic_ratio (share of 40 Hz..0.45 sr power within +-2 bins of the
        harmonics of f0) and h2/h1, h3/h1, h5/h1 amplitude ratios; None for a silent clip.
        """
        f, p = self.psd
        df = f[1]
        band = (f >= 40.0) & (f <= 0.45 * self.sr)
        total = float(p[band].sum())
        if total <= 0.0:
            return None
        lo, hi = np.searchsorted(f, [50.0, 4000.0])
        k = lo + int(np.argmax(p[lo:hi]))
        f0 = self._interp_peak(k) * df
        harm_power = []
        mask = np.zeros_like(band)
        for h in range(1, 64):
            fh = h * f0
            if fh > 0.45 * self.sr:
                break
            c = int(round(fh / df))
            sl = slice(max(c - 2, 0), c + 3)
            mask[sl] = True
            harm_power.append(float(p[sl].max()))
        ratio = float(p[mask & band].sum() / total)
        # Prominence of the fundamental over its neighbourhood (+-1/3 octave, main lobe
        # excluded): a tone stands tens of dB out, a noise's strongest bin a few dB.
        nb = (f >= f0 * 2 ** (-1 / 3)) & (f <= f0 * 2 ** (1 / 3))
        nb[max(k - 3, 0):k + 4] = False
        prominence = float(power_db(p[k]) - power_db(np.median(p[nb]))) if nb.any() else 0.0
        amp = np.sqrt(np.array(harm_power + [0.0] * 6))
        out = {
            "f0_hz": round(float(f0), 2),
            "harmonic_ratio": round(ratio, 4),
            "f0_prominence_db": round(prominence, 2),
            "h2_h1": round(float(amp[1] / amp[0]), 4),
            "h3_h1": round(float(amp[2] / amp[0]), 4),
            "h5_h1": round(float(amp[4] / amp[0]), 4),
        }
        self.raw.update(out)
        return out

    def _interp_peak(self, k: int) -> float:
        """Sub-bin peak position by a parabola through log power at k-1, k, k+1."""
        _, p = self.psd
        if k <= 0 or k >= p.size - 1:
            return float(k)
        a, b, c = np.log(np.maximum(p[k - 1:k + 2], 1e-30))
        den = a - 2 * b + c
        # k is the maximum, so the vertex lies within half a bin; a flat top (den ~ 0) would
        # otherwise throw it arbitrarily far
        offset = 0.5 * (a - c) / den if den < 0 else 0.0
        return float(k + min(0.5, max(-0.5, offset)))

    @cached_property
    def is_tonal(self) -> bool:
        t = self.tone
        return (t is not None and t["harmonic_ratio"] >= TONAL_MIN_HARMONIC_RATIO
                and t["f0_prominence_db"] >= TONAL_MIN_PROMINENCE_DB)

    @cached_property
    def noise_slope(self) -> tuple[float, float] | None:
        """(slope dB/octave, rms residual dB) of the banded spectrum over NOISE_BAND_HZ."""
        f, p = self.psd
        lo, hi = NOISE_BAND_HZ
        hi = min(hi, 0.4 * self.sr)
        edges = lo * 2.0 ** (np.arange(0, 64) / 3.0)
        edges = edges[edges <= hi]
        if edges.size < 4:
            return None
        centres, levels = [], []
        for a, b in zip(edges[:-1], edges[1:]):
            sel = (f >= a) & (f < b)
            if sel.any():
                centres.append(np.log2(np.sqrt(a * b)))
                levels.append(float(power_db(float(p[sel].mean()))))
        x, yv = np.array(centres), np.array(levels)
        slope, icept = np.polyfit(x, yv, 1)
        resid = float(np.sqrt(np.mean((yv - (slope * x + icept)) ** 2)))
        self.raw["spectral_slope_db_per_oct"] = round(float(slope), 3)
        self.raw["slope_fit_residual_db"] = round(resid, 3)
        return float(slope), resid

    # ---- events ------------------------------------------------------------------------
    @cached_property
    def events(self) -> list[tuple[float, float]]:
        """(start_s, end_s) of loud segments: 5 ms frames within 25 dB of the loudest,
        dips shorter than 60 ms bridged, segments shorter than 15 ms dropped."""
        hop = max(1, int(EVENT_FRAME_SECONDS * self.sr))
        fdb = power_db(frame_power(self.y, hop))
        if fdb.size == 0:
            return []
        floor = float(np.percentile(fdb, 5))
        gate = max(float(fdb.max()) - EVENT_GATE_DB, floor + 10.0)
        on = fdb >= gate
        segs = runs(on)
        dt = hop / self.sr
        merged: list[list[int]] = []
        for s, e in segs:
            if merged and (s - merged[-1][1]) * dt < EVENT_MIN_GAP_S:
                merged[-1][1] = e
            else:
                merged.append([s, e])
        out = [(s * dt, e * dt) for s, e in merged if (e - s) * dt >= EVENT_MIN_LENGTH_S]
        self.raw["event_count"] = len(out)
        return out

    @cached_property
    def tempo(self) -> tuple[float, float] | None:
        """(tempo BPM, coefficient of variation of the inter-onset intervals) or None."""
        onsets = np.array([s for s, _ in self.events])
        if onsets.size < 3:
            return None
        ioi = np.diff(onsets)
        med = float(np.median(ioi))
        cv = float(np.std(ioi) / med) if med > 0 else float("inf")
        bpm = 60.0 / med
        self.raw["tempo_bpm"] = round(bpm, 2)
        self.raw["ioi_cv"] = round(cv, 4)
        return bpm, cv

    # ---- speech ------------------------------------------------------------------------
    @cached_property
    def vowel_env(self) -> np.ndarray:
        return vowel_envelope_db(self.y, self.sr)

    @cached_property
    def envelope_std_db(self) -> float:
        """Std of the vowel-band envelope over its loud part: syllables make speech swing
        by ~10 dB; a held tone or a steady noise stays within ~1.5 dB."""
        env = self.vowel_env
        if env.size == 0:
            return 0.0
        v = float(np.std(env[env >= env.max() - SPEECH_GATE_DB]))
        self.raw["envelope_std_db"] = round(v, 2)
        return v

    @cached_property
    def syllable_rate(self) -> float | None:
        """Syllable nuclei per second of speech time, or None when there is too little speech.

        Nuclei are prominent peaks of the vowel-band envelope (`vowel_envelope_db`). The
        envelope is smoothed over about a quarter of a syllable: a first pass with a fixed
        50 ms window estimates the rate, the second smooths in proportion to it, so slow
        speech is not split inside long vowels and fast speech is not merged.
        Speech time excludes pauses (`speech_seconds`).
        """
        env = self.vowel_env
        if env.size < 20:
            return None
        active_s = speech_seconds(env)
        floor = float(env.max()) - SPEECH_GATE_DB
        first = _prominent_peaks(smooth(env, 5), prominence_db=SYLLABLE_PROMINENCE_DB, floor=floor).size
        self.raw["speech_active_s"] = round(active_s, 3)
        if active_s < 0.5 or first < 3:
            self.raw["syllable_nuclei"] = int(first)
            return None
        width = max(3, int(round(SYLLABLE_SMOOTH_FRACTION / (first / active_s) / ENVELOPE_HOP_S)))
        nuclei = _prominent_peaks(smooth(env, width | 1), prominence_db=SYLLABLE_PROMINENCE_DB, floor=floor).size
        self.raw["syllable_nuclei"] = int(nuclei)
        rate = nuclei / active_s
        self.raw["syllable_rate"] = round(rate, 3)
        return rate


def vowel_envelope_db(y: np.ndarray, sr: int) -> np.ndarray:
    """Energy in the vowel band (VOWEL_BAND_HZ, where vowels carry their energy), in dB.

    y: (T,) float32; returns (F,) with one value per 10 ms (25 ms Hann windows).
    """
    hop = max(1, int(ENVELOPE_HOP_S * sr))
    win = max(hop, int(0.025 * sr))
    if y.shape[0] < win:
        return np.zeros(0)
    nfft = int(2 ** np.ceil(np.log2(win)))
    f = np.fft.rfftfreq(nfft, 1.0 / sr)
    band = (f >= VOWEL_BAND_HZ[0]) & (f <= VOWEL_BAND_HZ[1])
    window = np.hanning(win).astype(np.float32)
    n = 1 + (y.shape[0] - win) // hop
    out = np.empty(n)
    for s0 in range(0, n, 2048):  # bounded memory on long clips
        idx = np.arange(s0, min(n, s0 + 2048))[:, None] * hop + np.arange(win)[None, :]
        spec = np.abs(np.fft.rfft(y[idx] * window, n=nfft, axis=1)) ** 2
        out[s0:s0 + idx.shape[0]] = spec[:, band].sum(axis=1)
    return power_db(out)


def _prominent_peaks(x: np.ndarray, *, prominence_db: float, floor: float) -> np.ndarray:
    """Indices of local maxima above `floor` that stand `prominence_db` above the lowest point
    between them and the neighbouring higher-or-equal peak on each side (a simple prominence)."""
    idx = np.flatnonzero((x[1:-1] > x[:-2]) & (x[1:-1] >= x[2:])) + 1
    idx = idx[x[idx] >= floor]
    keep = []
    for i in idx:
        h = x[i]
        left = i
        while left > 0 and x[left - 1] <= h:
            left -= 1
        right = i
        while right < x.size - 1 and x[right + 1] <= h:
            right += 1
        lmin = x[left:i + 1].min()
        rmin = x[i:right + 1].min()
        if h - max(lmin, rmin) >= prominence_db:
            keep.append(i)
    return np.array(keep, dtype=int)


# ---- leaf measurers: _Analysis -> vocabulary word or None --------------------------------

def _tone_pitch(a: _Analysis) -> str | None:
    if not a.is_tonal:
        return None
    return nearest_value("tone_pitch", a.tone["f0_hz"], log=True, max_distance=0.25)


def _waveform(a: _Analysis) -> str | None:
    if not a.is_tonal:
        return None
    t = a.tone
    if t["h2_h1"] > 0.25:
        return "sawtooth"  # all harmonics, h_n = 1/n
    if t["h3_h1"] > 0.2:
        return "square"  # odd harmonics, h_n = 1/n
    if t["h3_h1"] > 0.04:
        return "triangle"  # odd harmonics, h_n = 1/n^2
    return "sine"


def _beep_count(a: _Analysis) -> str | None:
    ev = a.events
    dur = a.y.shape[0] / a.sr
    if not ev or (len(ev) == 1 and ev[0][1] - ev[0][0] > 0.8 * dur):
        return None  # nothing, or one steady sound rather than a beep
    if float(np.median([e - s for s, e in ev])) < BEEP_MIN_LENGTH_S:
        return None  # clicks, not beeps
    return nearest_value("beep_count", float(len(ev)), max_distance=0.0)


def _click_tempo(a: _Analysis) -> str | None:
    t = a.tempo
    if t is None or t[1] > TEMPO_MAX_IOI_CV:
        return None
    return nearest_value("click_tempo", t[0], log=True, max_distance=0.12)


def _is_speech(a: _Analysis) -> bool:
    """The source says the clip is speech (a transcript or a language): its loud stretches are
    words and phrases, which `speech_pauses` describes; they are not counted as sounds."""
    labels = a.context.get("labels") or {}
    return any(labels.get(k) not in (None, "", []) for k in ("transcript", "language"))


def _event_count(a: _Analysis) -> str | None:
    if _is_speech(a):
        return None
    n = len(a.events)
    if n == 0:
        return None
    return ["a single sound", "two sounds", "three sounds"][n - 1] if n <= 3 else "four or more sounds"


def _event_rhythm(a: _Analysis) -> str | None:
    if _is_speech(a) or len(a.events) < 3:
        return None  # one or two sounds have no rhythm to speak of
    t = a.tempo
    if t is None:
        return None
    if t[1] > TEMPO_MAX_IOI_CV:
        return "repeating irregularly"
    if t[0] < 80.0:
        return "repeating slowly (under 80 per minute)"
    return "repeating moderately (80 to 159 per minute)" if t[0] < 160.0 else "repeating fast (160 per minute or more)"


def _noise_colour(a: _Analysis) -> str | None:
    t = a.tone
    if t is None or t["f0_prominence_db"] > NOISE_MAX_PROMINENCE_DB:
        return None
    fit = a.noise_slope
    if fit is None or fit[1] > NOISE_MAX_FIT_RESIDUAL_DB or a.level_std_db > NOISE_MAX_LEVEL_STD_DB:
        return None
    return nearest_value("noise_colour", fit[0], max_distance=1.5)


def _loudness(a: _Analysis) -> str | None:
    v = a.active_rms_dbfs
    if v is None:
        return None
    return nearest_value("loudness", v, max_distance=10.0)


def _duration(a: _Analysis) -> str | None:
    d = a.y.shape[0] / a.sr
    a.raw["duration_s"] = round(d, 4)
    n = float(np.floor(d + 0.5))
    return nearest_value("duration", n, max_distance=0.0)


def _speaking_rate(a: _Analysis) -> str | None:
    if a.is_tonal or a.envelope_std_db < SPEECH_MIN_ENVELOPE_STD_DB:
        return None  # a held tone or a steady noise is not speech
    ev = a.events
    if ev and float(np.median([e - s for s, e in ev])) < 0.06:
        return None  # short isolated bursts (clicks), not syllables
    r = a.syllable_rate
    if r is None:
        return None
    return nearest_value("speaking_rate", r, log=True)


_MEASURERS: dict[str, Callable[[_Analysis], str | None]] = {
    "tone_pitch": _tone_pitch,
    "waveform": _waveform,
    "beep_count": _beep_count,
    "click_tempo": _click_tempo,
    "event_count": _event_count,
    "event_rhythm": _event_rhythm,
    "noise_colour": _noise_colour,
    "loudness": _loudness,
    "duration": _duration,
    "speaking_rate": _speaking_rate,
    **SPEECH_MEASURERS,
}

# Fail at import, not mid-run, if the taxonomy lost a leaf this module measures.
for _leaf in _MEASURERS:
    leaf_values(_leaf)

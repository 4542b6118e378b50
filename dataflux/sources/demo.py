"""The offline demo corpus: synthesized sounds whose facts are known exactly.

Each item is one of five kinds, drawn from a per-item random stream seeded by (seed, index),
so item i is the same bytes whatever the corpus size or partitioning:

  tone    steady band-limited tone   labels tone_pitch, waveform, duration, loudness
  beeps   1-4 sine beeps             labels beep_count, loudness (every clip 2-2.6 s long,
                                     so its length says nothing of the count)
  clicks  a regular click track      labels click_tempo
  noise   coloured broadband noise   labels noise_colour, duration, loudness
  speech  espeak-ng reading a line  labels speaking_rate (+ transcript, speaker)

Speech needs the `espeak-ng` binary; without it the speech share goes to the other kinds
(the corpus is then deterministic per environment, not across environments).

With probability `error_rate` one leaf label is replaced by a wrong value from the same
leaf's vocabulary: a planted error that the closed loop should catch. `meta["planted"]`
records it and `meta["truth"]` the true labels; neither must reach the model steps.
Audio is 16-bit PCM WAV at 16, 22.05 or 44.1 kHz, so decoding exercises resampling.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf
import soxr

from dataflux.audio.facts import speech_seconds, vowel_envelope_db
from dataflux.audio.vocabulary import (
    LOUDNESS_DBFS,
    NOISE_SLOPE_DB_PER_OCT,
    SPEAKING_RATE_SYL_PER_S,
    leaf_values,
    value_number,
)
from dataflux.records import SourceItem

SOURCE = "demo"
LICENSE = "CC0-1.0 (synthesized)"
SOURCE_RATES = (16000, 22050, 44100)
KIND_WEIGHTS = {"tone": 0.30, "beeps": 0.20, "clicks": 0.15, "noise": 0.20, "speech": 0.15}
KIND_LEAVES = {
    "tone": ("tone_pitch", "waveform", "duration", "loudness"),
    "beeps": ("beep_count", "loudness"),
    "clicks": ("click_tempo",),
    "noise": ("noise_colour", "duration", "loudness"),
    "speech": ("speaking_rate",),
}
NOISE_BAND_HZ = (20.0, 7000.0)
LEVEL_JITTER_DB = 1.5  # true level is the word's level +- this
DURATION_JITTER_S = 0.2  # true duration is the word's seconds +- this

ESPEAK_REFERENCE_WPM = 160
ESPEAK_MIN_WPM, ESPEAK_MAX_WPM = 80, 500  # espeak-ng's own limits
ESPEAK_MAX_WORD_GAP = 6  # x 10 ms word gaps tried when espeak's slowest speed is still too fast
ESPEAK_VOICES = ("en-us", "en", "en-us+f2", "en+m3", "en-us+f4", "en+m7")
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank today.",
    "Please remember to close the window before the evening rain arrives.",
    "A gentle wind moved slowly across the open field after sunset.",
    "We will meet again at the station on Tuesday morning at nine.",
    "The library opens early, but the reading room stays closed until noon.",
    "Fresh bread and warm soup were waiting on the kitchen table.",
    "Every student should bring a pencil, a ruler and a small notebook.",
    "The old clock in the hallway stopped working many years ago.",
    "Our neighbours planted tomatoes, beans and sunflowers in the garden.",
    "Turn left at the second corner and walk past the blue bakery.",
    "The captain announced that the ferry would leave twenty minutes late.",
    "Bright lanterns lit the narrow street during the summer festival.",
)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def plan_demo_item(index: int, seed: int = 0, error_rate: float = 0.1,
                   with_speech: bool | None = None) -> dict[str, Any]:
    """What item `index` is, without synthesizing it: kind, true labels, claimed labels,
    the planted error (or None) and the synthesis parameters. Cheap; used by the tests to
    check planting rates over many items."""
    if with_speech is None:
        with_speech = espeak_available()
    rng = np.random.default_rng([seed, index, 0])
    kinds = [k for k in KIND_WEIGHTS if with_speech or k != "speech"]
    w = np.array([KIND_WEIGHTS[k] for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    truth = {leaf: leaf_values(leaf)[int(rng.integers(len(leaf_values(leaf))))] for leaf in KIND_LEAVES[kind]}
    params: dict[str, Any] = {
        "source_sr": int(SOURCE_RATES[int(rng.integers(len(SOURCE_RATES)))]),
        "synth_seed": int(rng.integers(2**31)),
    }
    extra: dict[str, Any] = {}
    if kind == "speech":
        params["sentence"] = int(rng.integers(len(SENTENCES)))
        params["voice"] = ESPEAK_VOICES[int(rng.integers(len(ESPEAK_VOICES)))]
        params["pitch"] = int(rng.integers(30, 71))
        extra = {"transcript": SENTENCES[params["sentence"]], "speaker": f"espeak-ng:{params['voice']}"}

    prng = np.random.default_rng([seed, index, 1])
    planted = None
    if prng.random() < error_rate:
        leaf = list(truth)[int(prng.integers(len(truth)))]
        wrong = [v for v in leaf_values(leaf) if v != truth[leaf]]
        planted = {"leaf": leaf, "true": truth[leaf], "claimed": wrong[int(prng.integers(len(wrong)))]}
    labels = dict(truth)
    if planted:
        labels[planted["leaf"]] = planted["claimed"]
    labels.update(extra)
    return {"index": index, "kind": kind, "truth": {**truth, **extra}, "labels": labels,
            "planted": planted, "params": params}


def iter_demo_items(size: int, seed: int = 0, error_rate: float = 0.1,
                    partition: int = 0, n_partitions: int = 1) -> Iterator[SourceItem]:
    """Yield the demo items i in range(size) with i % n_partitions == partition, lazily."""
    if n_partitions < 1 or not 0 <= partition < n_partitions:
        raise ValueError(f"demo source: partition {partition} is not in 0..{n_partitions - 1}")
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"demo source: error_rate {error_rate} must be within [0, 1]")
    with_speech = espeak_available()
    for i in range(partition, size, n_partitions):
        yield demo_item(i, seed=seed, error_rate=error_rate, with_speech=with_speech)


def demo_item(index: int, seed: int = 0, error_rate: float = 0.1, with_speech: bool | None = None) -> SourceItem:
    """Synthesize demo item `index` (16-bit WAV bytes plus its labels)."""
    plan = plan_demo_item(index, seed, error_rate, with_speech)
    sr = plan["params"]["source_sr"]
    rng = np.random.default_rng(plan["params"]["synth_seed"])
    y = _SYNTH[plan["kind"]](plan, sr, rng)
    return SourceItem(
        source=SOURCE,
        source_id=f"demo-{index:06d}",
        audio_bytes=_wav_bytes(y, sr),
        audio_path=None,
        labels=plan["labels"],
        license=LICENSE,
        meta={"planted": plan["planted"], "truth": plan["truth"], "kind": plan["kind"], "seed": seed},
    )


def write_demo_folder(out_dir: str | os.PathLike, size: int, seed: int = 0, error_rate: float = 0.1) -> Path:
    """Write demo-NNNNNN.wav files plus manifest.jsonl to `out_dir`; returns the manifest path.

    Manifest lines: {"source_id", "path" (relative to out_dir), "labels", "license", "meta"}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    with open(manifest, "w", encoding="utf-8") as m:
        for item in iter_demo_items(size, seed=seed, error_rate=error_rate):
            name = f"{item.source_id}.wav"
            (out / name).write_bytes(item.audio_bytes or b"")
            m.write(json.dumps({"source_id": item.source_id, "path": name, "labels": item.labels,
                                "license": item.license, "meta": item.meta}, sort_keys=True) + "\n")
    return manifest


# ---- synthesis -----------------------------------------------------------------------------

def _level(plan: dict, rng: np.random.Generator) -> float:
    """Target RMS (linear) of the active part, from the loudness word plus jitter."""
    db = LOUDNESS_DBFS[plan["truth"]["loudness"]] + rng.uniform(-LEVEL_JITTER_DB, LEVEL_JITTER_DB)
    return float(10.0 ** (db / 20.0))


def _duration(plan: dict, rng: np.random.Generator) -> float:
    return value_number("duration", plan["truth"]["duration"]) + rng.uniform(-DURATION_JITTER_S, DURATION_JITTER_S)


def _fade(y: np.ndarray, sr: int, seconds: float = 0.01) -> np.ndarray:
    n = min(int(seconds * sr), y.shape[0] // 2)
    if n > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))
        y[:n] *= ramp
        y[-n:] *= ramp[::-1]
    return y


def _floor(n: int, level: float, below_db: float, rng: np.random.Generator) -> np.ndarray:
    """A faint white noise floor `below_db` under `level` (so clips are not bit-identical)."""
    return rng.standard_normal(n) * level * 10.0 ** (-below_db / 20.0)


def _harmonic_tone(f0: float, waveform: str, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Band-limited additive synthesis (no aliasing at any source rate), unit RMS."""
    t = np.arange(n) / sr
    phase = rng.uniform(0, 2 * np.pi)
    y = np.zeros(n)
    top = 0.45 * sr
    for h in range(1, int(top // f0) + 1):
        if waveform == "sine" and h > 1:
            break
        if waveform in ("square", "triangle") and h % 2 == 0:
            continue
        if waveform == "triangle":
            amp = (-1) ** ((h - 1) // 2) / h**2
        else:
            amp = 1.0 / h
        y += amp * np.sin(2 * np.pi * h * f0 * t + h * phase)
    return y / np.sqrt(np.mean(y**2))


def _synth_tone(plan: dict, sr: int, rng: np.random.Generator) -> np.ndarray:
    truth = plan["truth"]
    n = int(_duration(plan, rng) * sr)
    f0 = value_number("tone_pitch", truth["tone_pitch"]) * (1.0 + rng.uniform(-0.02, 0.02))
    level = _level(plan, rng)
    y = _fade(_harmonic_tone(f0, truth["waveform"], n, sr, rng) * level, sr)
    return y + _floor(n, level, rng.uniform(50, 65), rng)


BEEP_WINDOW_S = (2.0, 2.6)  # every beep clip is this long, whatever its count


def _synth_beeps(plan: dict, sr: int, rng: np.random.Generator) -> np.ndarray:
    """1-4 sine beeps (80-200 ms, 150-350 ms apart) at a random offset in a window whose length
    does not depend on the count, so the count has to be heard, not read off the clip's length."""
    count = int(value_number("beep_count", plan["truth"]["beep_count"]))
    level = _level(plan, rng)
    freq = rng.uniform(500, 2000)
    lengths = rng.uniform(0.08, 0.2, size=count)
    gaps = rng.uniform(0.15, 0.35, size=count - 1)
    window = rng.uniform(*BEEP_WINDOW_S)
    train_s = float(lengths.sum() + gaps.sum())  # at most 1.85 s
    start = rng.uniform(0.05, window - train_s - 0.05)
    y = np.zeros(int(window * sr))
    at = start
    for b in range(count):
        n = int(lengths[b] * sr)
        t = np.arange(n) / sr
        beep = np.sqrt(2) * level * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
        s0 = int(at * sr)
        y[s0:s0 + n] = _fade(beep, sr, 0.005)
        at += lengths[b] + (gaps[b] if b < count - 1 else 0.0)
    return y + _floor(y.shape[0], level, rng.uniform(50, 65), rng)


def _synth_clicks(plan: dict, sr: int, rng: np.random.Generator) -> np.ndarray:
    bpm = value_number("click_tempo", plan["truth"]["click_tempo"]) * (1.0 + rng.uniform(-0.015, 0.015))
    period = 60.0 / bpm
    n_clicks = int(rng.integers(4, 9))
    lead = rng.uniform(0.05, 0.3)
    n = int((lead + period * n_clicks + 0.1) * sr)
    y = np.zeros(n)
    click_n = int(0.06 * sr)
    t = np.arange(click_n) / sr
    ring = rng.uniform(1000, 3000)
    click = np.sin(2 * np.pi * ring * t) * np.exp(-t / 0.01)
    peak = 10.0 ** (rng.uniform(-20, -6) / 20.0)
    for k in range(n_clicks):
        s = int((lead + k * period) * sr)
        y[s:s + click_n] += click[: n - s] * peak
    return y + _floor(n, peak, rng.uniform(55, 70), rng)


def _synth_noise(plan: dict, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with an exact power-spectrum slope, shaped in the frequency domain."""
    n = int(_duration(plan, rng) * sr)
    slope = NOISE_SLOPE_DB_PER_OCT[plan["truth"]["noise_colour"]]
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.fft.rfftfreq(n, 1.0 / sr)
    gain = np.zeros_like(f)
    # Band-limit to what survives resampling to 16 kHz, so the level is the same at every rate.
    ok = (f >= NOISE_BAND_HZ[0]) & (f <= NOISE_BAND_HZ[1])
    gain[ok] = (f[ok] / 1000.0) ** (slope / (20.0 * np.log10(2.0)))
    y = np.fft.irfft(spec * gain, n)
    y = y / np.sqrt(np.mean(y**2)) * _level(plan, rng)
    return _soft_limit(_fade(y, sr))


def _soft_limit(y: np.ndarray, knee: float = 0.8) -> np.ndarray:
    """Bend samples above `knee` smoothly below 1.0, so loud noise never hard-clips."""
    a = np.abs(y)
    over = a > knee
    if over.any():
        y = y.copy()
        y[over] = np.sign(y[over]) * (knee + (1 - knee) * np.tanh((a[over] - knee) / (1 - knee)))
    return y


def _synth_speech(plan: dict, sr: int, rng: np.random.Generator) -> np.ndarray:
    p = plan["params"]
    target = SPEAKING_RATE_SYL_PER_S[plan["truth"]["speaking_rate"]] * (1.0 + rng.uniform(-0.03, 0.03))
    wav, _, _ = _speech_at_rate(SENTENCES[p["sentence"]], p["voice"], p["pitch"], round(target, 3))
    y, esr = sf.read(io.BytesIO(wav), dtype="float64")
    if y.ndim > 1:
        y = y.mean(axis=1)
    if esr != sr:
        y = soxr.resample(y, esr, sr, quality="HQ")
    rms = np.sqrt(np.mean(y**2)) or 1.0
    y = y / rms * 10.0 ** (rng.uniform(-28, -18) / 20.0)
    return y + _floor(y.shape[0], 10.0 ** (-22 / 20.0), rng.uniform(50, 65), rng)


def _speech_at_rate(text: str, voice: str, pitch: int, syllables_per_s: float) -> tuple[bytes, int, float]:
    """espeak-ng speech of `text` at a true syllable rate near `syllables_per_s`.

    espeak's words-per-minute setting gives different syllable rates for different texts
    and voices, so the rate is set per clip: synthesize at a reference speed, measure the
    true rate (espeak's own syllable count over the speech time, pauses excluded), scale
    the speed, and repeat. Below espeak's slowest speed, short gaps between words (under
    the 150 ms that counts as a pause) slow it further.
    Returns (wav bytes, wpm, true syllables per second).
    """
    syllables = _ipa_syllables(text, voice)

    def rate_of(wpm: int, gap: int) -> tuple[bytes, float]:
        wav = _espeak(text, voice, wpm, pitch, gap)
        return wav, syllables / _speech_seconds_of_wav(wav)

    wpm = ESPEAK_REFERENCE_WPM
    wav, rate = rate_of(wpm, 0)
    for _ in range(3):
        new = int(np.clip(round(wpm * syllables_per_s / rate), ESPEAK_MIN_WPM, ESPEAK_MAX_WPM))
        if new == wpm:
            break
        wpm = new
        wav, rate = rate_of(wpm, 0)
    if wpm == ESPEAK_MIN_WPM and rate > syllables_per_s * 1.03:
        # Longer gaps turn into pauses (which do not count), so take the best gap, not the longest.
        tries = [(wav, rate)] + [rate_of(wpm, gap) for gap in range(1, ESPEAK_MAX_WORD_GAP + 1)]
        wav, rate = min(tries, key=lambda t: abs(np.log(t[1] / syllables_per_s)))
    return wav, wpm, rate


def _speech_seconds_of_wav(wav: bytes) -> float:
    y, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return speech_seconds(vowel_envelope_db(y, sr))


@lru_cache(maxsize=1024)
def _espeak(text: str, voice: str, wpm: int, pitch: int, word_gap: int = 0) -> bytes:
    """WAV bytes (22.05 kHz) of espeak-ng reading `text`; `word_gap` adds 10 ms units between words."""
    try:
        return subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-g", str(word_gap), "--stdout", text],
            check=True, capture_output=True, timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"demo source: espeak-ng failed for voice {voice!r} at {wpm} wpm: {e}") from e


_IPA_VOWELS = set("aeiouyæɑɒɔəɚɛɜɝɪʊʌɐᵻɨʉøœɘɵɤʏɯ")


@lru_cache(maxsize=512)
def _ipa_syllables(text: str, voice: str) -> int:
    """Syllables as espeak-ng pronounces `text`: runs of vowel symbols in its IPA output
    (a diphthong is one run; length and stress marks do not break a run)."""
    try:
        ipa = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", voice, text],
                             check=True, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"demo source: espeak-ng --ipa failed for voice {voice!r}: {e}") from e
    count, in_vowel = 0, False
    for ch in ipa:
        if ch in _IPA_VOWELS:
            count += not in_vowel
            in_vowel = True
        elif ch not in "ːˑ":
            in_vowel = False
    return count


def _wav_bytes(y: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(y, -1.0, 1.0).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


_SYNTH = {"tone": _synth_tone, "beeps": _synth_beeps, "clicks": _synth_clicks,
          "noise": _synth_noise, "speech": _synth_speech}

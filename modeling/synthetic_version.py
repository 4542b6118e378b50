"""A small finalized version of tone-pitch questions, written through the real storage layer.

For tests and benchmarks that need a version when no demo version is at hand: each clip is a
sine tone at one of the taxonomy's four pitches with a random duration; each row asks its pitch
with the options in a random order. Rows follow the row contract (`make_example_row`), shards are
written by `write_shard` and committed and finalized in a real catalog, so reading them goes
through the same checksum verification as a pipeline version.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from dataflux.storage.catalog import Catalog
from dataflux.storage.example_row import make_example_row
from dataflux.storage.shards import shard_path, write_shard

PITCHES = ("110 Hz", "220 Hz", "440 Hz", "880 Hz")
QUESTION = "What is the approximate pitch of the tone in this recording?"
SPLIT_CYCLE = ("train", "train", "train", "validation", "test")


def tone_wav(freq_hz: float, seconds: float, level: float = 0.3, sampling_rate: int = 16000) -> bytes:
    """16-bit PCM WAV bytes of a sine tone with 10 ms fades."""
    n = int(seconds * sampling_rate)
    t = np.arange(n) / sampling_rate
    y = level * np.sin(2 * np.pi * freq_hz * t)
    fade = min(n // 2, int(0.01 * sampling_rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        y[:fade] *= ramp
        y[-fade:] *= ramp[::-1]
    buf = io.BytesIO()
    sf.write(buf, y.astype(np.float32), sampling_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def tone_rows(n_clips: int, seed: int = 0, min_seconds: float = 0.3, max_seconds: float = 1.5) -> list[dict]:
    """`n_clips` rows, one question per clip; splits cycle train, train, train, validation, test."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_clips):
        pitch = PITCHES[i % len(PITCHES)]
        seconds = float(rng.uniform(min_seconds, max_seconds))
        audio = tone_wav(float(pitch.split()[0]), seconds)
        choices = [PITCHES[j] for j in rng.permutation(len(PITCHES))]
        answer = choices.index(pitch)
        options = "\n".join(f"({'ABCD'[j]}) {c}" for j, c in enumerate(choices))
        rows.append(make_example_row(
            f"tone-{i:05d}", l3="tone_pitch", choices=tuple(choices), answer_index=answer, audio_bytes=audio,
            duration_s=int(seconds * 16000) / 16000, split=SPLIT_CYCLE[i % len(SPLIT_CYCLE)], question=QUESTION,
            messages=[{"role": "user", "content": f"<audio>{QUESTION}\n{options}"},
                      {"role": "assistant", "content": f"({'ABCD'[answer]}) {pitch}"}],
        ))
    return rows


def write_tone_version(
    catalog_path: str | Path,
    shard_root: str | Path,
    n_clips: int = 40,
    n_shards: int = 2,
    seed: int = 0,
    finalize: bool = True,
    **row_kwargs,
) -> str:
    """Write `n_clips` tone rows into `n_shards` shards of a new version; finalize it unless asked
    not to (a draft). Returns the version id."""
    catalog = Catalog(catalog_path)
    version = catalog.create_version("tones")
    rows = tone_rows(n_clips, seed, **row_kwargs)
    for s in range(n_shards):
        part = rows[s::n_shards]
        info = write_shard(part, shard_path(str(shard_root), version, f"part-{s}"))
        catalog.commit_partition(version, f"part-{s}", info, rejects=[], items=[], run_id=None)
    if finalize:
        catalog.finalize(version)
    return version

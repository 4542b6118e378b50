"""Decode audio bytes into 16 kHz mono float32 samples, or say exactly why not.

libsndfile (through `soundfile`) reads WAV, FLAC, Ogg/Vorbis, Opus and MP3 from memory and
gives the frame count from the header, so an over-long file is refused before its samples
are read. Anything libsndfile cannot open goes through `audioread` (ffmpeg/gstreamer), which
needs a file on disk. Resampling uses soxr, which is both fast and high quality; librosa's
default resampler path is far slower and adds nothing here.
"""

from __future__ import annotations

import io
import os
import re
import tempfile

import numpy as np
import soundfile as sf
import soxr

MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 192_000  # the highest rate recorders use; a header above it is refused before decoding
# Decoded size (frames x channels) a file may declare: 10 minutes of 96 kHz stereo. A 2 MB FLAC of
# silence can declare 10 minutes of 8 channels at 384 kHz (1.8 G samples, 7.4 GB as float32): the header
# is checked before a sample is read, and decoding downmixes block by block, so memory stays near the
# mono signal's size.
MAX_DECODED_SAMPLES = 120_000_000
BLOCK_FRAMES = 1 << 18


class BadAudio(Exception):
    """Audio that cannot become a clip.

    `reason` is a stable code (unreadable, empty, nan_samples, bad_sample_rate, sample_rate_too_high,
    too_long, too_large, too_short) that rejects tables group by; `detail` is the human explanation,
    naming the file.
    """

    REASONS = ("unreadable", "empty", "nan_samples", "bad_sample_rate", "sample_rate_too_high", "too_long",
               "too_large", "too_short")

    def __init__(self, reason: str, detail: str):
        if reason not in self.REASONS:
            raise ValueError(f"unknown BadAudio reason {reason!r}; expected one of {self.REASONS}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_audio(
    data: bytes,
    *,
    name: str,
    target_sr: int = 16000,
    max_seconds: float = 600.0,
    min_seconds: float = 0.05,
) -> tuple[np.ndarray, int]:
    """Decode `data` (a whole audio file) to mono float32 at `target_sr`.

    Returns `(y, original_sr)` with `y` of shape (T,), T = round(frames * target_sr / original_sr).
    Raises `BadAudio` naming `name` when the bytes are not decodable audio, hold no frames,
    hold NaN/inf samples, declare an absurd sample rate, or last longer than `max_seconds`
    or shorter than `min_seconds`.
    """
    if not data:
        raise BadAudio("empty", f"{name}: the file is 0 bytes; re-export or drop it")
    try:
        y, sr = _read_soundfile(data, name=name, max_seconds=max_seconds)
    except _NotSoundfile as first:
        y, sr = _read_audioread(data, name=name, max_seconds=max_seconds, first_error=str(first))
    return _finish(y, sr, name=name, target_sr=target_sr, max_seconds=max_seconds, min_seconds=min_seconds)


class _NotSoundfile(Exception):
    """libsndfile could not open the bytes; another decoder may."""


def _check_header(sr: int, frames: int, *, name: str, max_seconds: float, channels: int = 1) -> None:
    """Refuse from the header alone (frames < 0: unknown): a rate outside the limits, no frames, too long,
    or more decoded samples (frames x channels) than MAX_DECODED_SAMPLES."""
    if sr > MAX_SAMPLE_RATE:
        raise BadAudio(
            "sample_rate_too_high",
            f"{name}: header says {sr} Hz, above the limit of {MAX_SAMPLE_RATE} Hz; resample it "
            f"(e.g. to 48 kHz) first",
        )
    if sr < MIN_SAMPLE_RATE:
        raise BadAudio(
            "bad_sample_rate",
            f"{name}: header says {sr} Hz, outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz; "
            "the header is probably corrupt, re-encode the file",
        )
    if frames == 0:
        raise BadAudio("empty", f"{name}: the file holds no audio frames")
    if frames > 0 and frames / sr > max_seconds:
        raise BadAudio(
            "too_long",
            f"{name}: {frames / sr:.1f} s is longer than max_seconds={max_seconds:g}; "
            "split it into shorter clips or raise max_seconds",
        )
    if frames > 0 and frames * max(channels, 1) > MAX_DECODED_SAMPLES:
        raise BadAudio(
            "too_large",
            f"{name}: {frames} frames x {channels} channels = {frames * channels:,} samples to decode, over the "
            f"limit of {MAX_DECODED_SAMPLES:,}; downmix or resample it first",
        )


def _read_soundfile(data: bytes, *, name: str, max_seconds: float) -> tuple[np.ndarray, int]:
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise _NotSoundfile(_decoder_message(e)) from e
    with f:
        sr = int(f.samplerate)
        # Compressed formats (MP3) may report an estimate; it is still good enough to refuse early.
        frames = int(f.frames) if f.frames is not None else -1
        _check_header(sr, frames, name=name, max_seconds=max_seconds, channels=int(f.channels))
        try:
            y = _read_mono(f, name=name, max_seconds=max_seconds)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise BadAudio("unreadable", f"{name}: decoding failed after a valid header "
                                         f"({_decoder_message(e)})") from e
    return y, sr


def _read_mono(f: sf.SoundFile, *, name: str, max_seconds: float) -> np.ndarray:
    """(T, 1) float32: the channels' mean, read BLOCK_FRAMES at a time, so a many-channel file never
    sits in memory whole. Stops as soon as more frames arrive than the header's limits allow (a header
    that under-reports its length)."""
    sr, channels = int(f.samplerate), int(f.channels)
    blocks, n = [], 0
    while True:
        block = f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)  # (t, C)
        if block.shape[0] == 0:
            break
        blocks.append(block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0].copy())
        n += block.shape[0]
        if n > max_seconds * sr + BLOCK_FRAMES:
            _check_header(sr, n, name=name, max_seconds=max_seconds, channels=channels)
    y = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    return y[:, None]


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _decoder_message(e: Exception) -> str:
    """A decoder's error without the repr of the in-memory file it was given
    (`Error opening <_io.BytesIO object at 0x7f...>`), which differs on every run: reject details
    must be the same each time the same file is rejected."""
    text = getattr(e, "error_string", None) or str(e)
    return _OBJECT_REPR.sub("the audio bytes", text).strip()


def _read_audioread(data: bytes, *, name: str, max_seconds: float, first_error: str) -> tuple[np.ndarray, int]:
    try:
        import audioread
    except ImportError:
        raise BadAudio(
            "unreadable",
            f"{name}: not a format libsndfile reads ({first_error}) and audioread is not installed",
        ) from None
    fd, tmp = tempfile.mkstemp(prefix="dataflux-decode-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        try:
            with audioread.audio_open(tmp) as f:
                sr, channels = int(f.samplerate), int(f.channels)
                _check_header(sr, -1, name=name, max_seconds=max_seconds)
                if f.duration:
                    _check_header(sr, int(f.duration * sr), name=name, max_seconds=max_seconds, channels=channels)
                limit = int(max_seconds * sr * channels) + 1
                chunks, n = [], 0
                for buf in f:
                    chunk = np.frombuffer(buf, dtype="<i2")
                    chunks.append(chunk)
                    n += chunk.size
                    if n > limit or n > MAX_DECODED_SAMPLES:
                        _check_header(sr, n // max(channels, 1), name=name, max_seconds=max_seconds,
                                      channels=channels)
        except BadAudio:
            raise
        except Exception as e:  # audioread raises backend-specific errors (NoBackendError, DecodeError...)
            why = _decoder_message(e).replace(tmp, "the audio bytes")
            raise BadAudio(
                "unreadable",
                f"{name}: not decodable audio (libsndfile: {first_error}; audioread: {type(e).__name__} {why})",
            ) from e
    finally:
        os.unlink(tmp)
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype="<i2")
    if channels < 1:
        raise BadAudio("unreadable", f"{name}: decoder reports {channels} channels")
    pcm = pcm[: pcm.size - pcm.size % channels]
    y = (pcm.astype(np.float32) / 32768.0).reshape(-1, channels)
    return y, sr


def _finish(
    y: np.ndarray, sr: int, *, name: str, target_sr: int, max_seconds: float, min_seconds: float
) -> tuple[np.ndarray, int]:
    """(T, C) at sr -> (T',) mono float32 at target_sr, with the content checks."""
    if y.shape[0] == 0:
        raise BadAudio("empty", f"{name}: the file holds no audio frames")
    seconds = y.shape[0] / sr
    if seconds > max_seconds:
        raise BadAudio(
            "too_long", f"{name}: {seconds:.1f} s is longer than max_seconds={max_seconds:g}; split it first"
        )
    if seconds < min_seconds:
        raise BadAudio(
            "too_short", f"{name}: {seconds * 1000:.1f} ms is shorter than min_seconds={min_seconds:g}"
        )
    mono = y.mean(axis=1, dtype=np.float32) if y.shape[1] > 1 else y[:, 0]
    if not np.isfinite(mono).all():
        bad = int(np.count_nonzero(~np.isfinite(mono)))
        raise BadAudio("nan_samples", f"{name}: {bad} of {mono.size} samples are NaN or infinite")
    if sr != target_sr:
        mono = soxr.resample(mono, sr, target_sr, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32), sr

"""Decoding: real files written with soundfile, and the reason codes for every kind of bad audio."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from dataflux.audio.analyze import analyze_item
from dataflux.audio.decode import BadAudio, decode_audio
from dataflux.audio.quality import quality_metrics
from dataflux.records import Clip, Reject, SourceItem, sha256_bytes


def encode(y: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def sine(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    return float(np.fft.rfftfreq(y.size, 1 / sr)[np.argmax(spec)])


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", None), ("OGG", "VORBIS"), ("WAV", "FLOAT")])
def test_decodes_common_formats_to_16k_mono_float32(fmt, subtype):
    data = encode(sine(440, 1.0, 44100), 44100, fmt, subtype)
    y, original_sr = decode_audio(data, name=f"tone.{fmt.lower()}")
    assert original_sr == 44100
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.shape[0] - 16000) <= 1
    assert abs(dominant_hz(y, 16000) - 440) < 2
    assert abs(np.sqrt(np.mean(y**2)) - 0.5 / np.sqrt(2)) < 0.01  # level survives the resampler


def test_stereo_is_mixed_down_to_mono():
    left, right = sine(300, 0.5, 22050, 0.4), np.zeros(11025, dtype=np.float32)
    y, sr = decode_audio(encode(np.stack([left, right], axis=1), 22050, "WAV", "PCM_16"), name="st.wav")
    assert sr == 22050 and y.ndim == 1
    assert abs(np.abs(y[1000:-1000]).max() - 0.2) < 0.01  # mean of the two channels


def test_native_16k_passes_through_unchanged():
    x = sine(1000, 0.3, 16000)
    y, _ = decode_audio(encode(x, 16000, "WAV", "FLOAT"), name="x.wav")
    np.testing.assert_array_equal(y, x)


def test_mp3_decodes():
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3 support")
    y, sr = decode_audio(encode(sine(440, 1.0, 44100), 44100, "MP3", "MPEG_LAYER_III"), name="t.mp3")
    assert sr == 44100 and abs(dominant_hz(y, 16000) - 440) < 3


def reason_of(data: bytes, **kw) -> BadAudio:
    with pytest.raises(BadAudio) as exc:
        decode_audio(data, name="clip-under-test.wav", **kw)
    assert "clip-under-test.wav" in exc.value.detail  # the message names the file
    return exc.value


def test_corrupt_bytes_are_unreadable():
    assert reason_of(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" * 20).reason == "unreadable"
    assert reason_of(np.random.default_rng(0).bytes(4096)).reason == "unreadable"


def test_zero_byte_file_and_header_without_frames_are_empty():
    assert reason_of(b"").reason == "empty"
    assert reason_of(encode(np.zeros(0, dtype=np.float32), 16000, "WAV", "PCM_16")).reason == "empty"


def test_nan_samples_in_a_float_wav():
    y = sine(440, 0.5, 16000)
    y[1234] = np.nan
    bad = reason_of(encode(y, 16000, "WAV", "FLOAT"))
    assert bad.reason == "nan_samples" and "1 of 8000" in bad.detail
    y[1234] = np.inf
    assert reason_of(encode(y, 16000, "WAV", "FLOAT")).reason == "nan_samples"


def test_absurd_sample_rate_in_header():
    assert reason_of(encode(sine(50, 1.0, 500), 500, "WAV", "PCM_16")).reason == "bad_sample_rate"
    # A valid file whose header rate field was overwritten with 1 MHz.
    data = bytearray(encode(sine(440, 0.5, 16000), 16000, "WAV", "PCM_16"))
    fmt_at = data.index(b"fmt ") + 8
    struct.pack_into("<I", data, fmt_at + 4, 1_000_000)
    assert reason_of(bytes(data)).reason == "sample_rate_too_high"


def test_too_long_and_too_short():
    long = reason_of(encode(np.zeros(16000 * 5, dtype=np.float32), 16000, "FLAC"), max_seconds=3.0)
    assert long.reason == "too_long" and "5.0 s" in long.detail
    assert reason_of(encode(np.zeros(100, dtype=np.float32), 16000, "WAV", "PCM_16")).reason == "too_short"


def test_bad_audio_rejects_unknown_reason_codes():
    with pytest.raises(ValueError, match="unknown BadAudio reason"):
        BadAudio("weird", "x")


def test_analyze_item_turns_bytes_into_a_measured_clip():
    data = encode(sine(220, 2.0, 22050, 0.1), 22050, "WAV", "PCM_16")
    clip = analyze_item(SourceItem(source="t", source_id="a", audio_bytes=data), ["tone_pitch", "duration"])
    assert isinstance(clip, Clip)
    assert clip.audio_sha256 == sha256_bytes(data)
    assert clip.sampling_rate == 16000 and clip.original_sampling_rate == 22050
    assert clip.samples.shape == (32000,)
    assert clip.facts["tone_pitch"] == "220 Hz" and clip.facts["duration"] == "2 seconds"
    assert set(clip.quality) == {"duration_s", "peak", "rms_dbfs", "clipping_ratio", "silence_ratio", "snr_db"}


def test_analyze_item_rejects_bad_audio_at_the_decode_stage(tmp_path):
    rej = analyze_item(SourceItem(source="t", source_id="b", audio_bytes=b"not audio"), ["duration"])
    assert isinstance(rej, Reject) and rej.stage == "decode" and rej.reason == "unreadable"
    assert rej.audio_sha256 == sha256_bytes(b"not audio")
    missing = analyze_item(SourceItem(source="t", source_id="c", audio_path=str(tmp_path / "gone.wav")), [])
    assert isinstance(missing, Reject) and missing.reason == "unreadable" and "gone.wav" in missing.detail
    long = analyze_item(SourceItem(source="t", source_id="d",
                                   audio_bytes=encode(np.zeros(32000, dtype=np.float32), 16000, "WAV", "PCM_16")),
                        [], max_seconds=1.0)
    assert isinstance(long, Reject) and long.reason == "too_long"


def test_quality_metrics_on_known_signals():
    sr = 16000
    tone = sine(1000, 1.0, sr, amp=10 ** (-20 / 20) * np.sqrt(2))  # -20 dBFS RMS
    q = quality_metrics(tone, sr)
    assert q["duration_s"] == 1.0
    assert abs(q["rms_dbfs"] + 20) < 0.05 and abs(q["peak"] - 0.1414) < 0.001
    assert q["clipping_ratio"] == 0.0 and q["silence_ratio"] == 0.0

    clipped = np.clip(sine(100, 1.0, sr, amp=2.0), -1, 1)
    assert quality_metrics(clipped, sr)["clipping_ratio"] > 0.5

    half_silent = np.concatenate([tone, np.zeros(sr, dtype=np.float32)])
    q = quality_metrics(half_silent, sr)
    assert abs(q["silence_ratio"] - 0.5) < 0.02
    assert q["snr_db"] > 60  # speech-like: loud part vs digital silence

    noisy = tone + np.random.default_rng(0).normal(0, 0.01, tone.size).astype(np.float32)  # steady: no pauses
    assert quality_metrics(noisy, sr)["snr_db"] < 3


def test_decoded_size_is_refused_from_the_header_before_decoding(monkeypatch):
    import dataflux.audio.decode as decode

    four_channels = np.zeros((48000, 4), dtype=np.float32)  # 1 s, 4 channels: 192,000 samples to decode
    monkeypatch.setattr(decode, "MAX_DECODED_SAMPLES", 100_000)
    read_blocks = []
    monkeypatch.setattr(decode, "_read_mono", lambda *a, **k: read_blocks.append(1))
    bad = reason_of(encode(four_channels, 48000, "FLAC"))
    assert bad.reason == "too_large" and "4 channels" in bad.detail and "100,000" in bad.detail
    assert read_blocks == []  # refused from the header: no sample was read


def test_a_rate_above_the_limit_is_its_own_reject():
    bad = reason_of(encode(np.zeros(4000, dtype=np.float32), 384000, "FLAC"))
    assert bad.reason == "sample_rate_too_high" and "384000 Hz" in bad.detail and "192000" in bad.detail


def test_block_by_block_downmix_equals_the_whole_file_mean(monkeypatch):
    import dataflux.audio.decode as decode

    rng = np.random.default_rng(0)
    stereo = (0.3 * rng.standard_normal((16000 * 2, 3))).astype(np.float32)
    data = encode(stereo, 16000, "WAV", "FLOAT")
    whole, _ = decode_audio(data, name="x.wav")
    monkeypatch.setattr(decode, "BLOCK_FRAMES", 999)
    blocked, _ = decode_audio(data, name="x.wav")
    assert np.array_equal(whole, blocked)
    assert np.array_equal(whole, stereo.mean(axis=1, dtype=np.float32))

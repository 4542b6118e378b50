"""Log-mel parity with transformers.WhisperFeatureExtractor, and batching without a 30 s wall.

The extractor pads every clip with zeros to 30 s by default. The fair reference for a feature that
does not pad is the extractor on the clip alone with `padding="longest"` (no padding at all): same
STFT edge handling (reflect), same dynamic-range maximum. We compare all frames with that, and with
the extractor's numpy path; against the 30 s default only the clip's last frame may differ (its
window reaches past the end, into zeros there and into the reflected signal here).
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from modeling.features import HOP_LENGTH, SAMPLING_RATE, log_mel, mel_filterbank_numpy, n_frames

TOLERANCE = 1e-3


@pytest.fixture(scope="module", params=[80, 128], ids=["80mel", "128mel"])
def n_mels(request) -> int:
    return request.param


@pytest.fixture(scope="module")
def extractor(n_mels) -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=n_mels)


def reference(extractor: WhisperFeatureExtractor, audio: np.ndarray) -> np.ndarray:
    """(M, F) extractor features of one clip, unpadded."""
    out = extractor(audio.astype(np.float32), sampling_rate=SAMPLING_RATE, padding="longest",
                    return_tensors="np")
    return out["input_features"][0]


def ours(audio: np.ndarray, n_mels: int) -> np.ndarray:
    feats, frame_lengths = log_mel(torch.from_numpy(audio.astype(np.float32))[None], n_mels=n_mels)
    assert int(frame_lengths[0]) == feats.shape[-1] == n_frames(len(audio))
    return feats[0].numpy()


def espeak_speech(tmp_path, text: str) -> np.ndarray:
    """Real synthesized speech at 16 kHz: espeak-ng writes 22.05 kHz, sox resamples."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed for the real-speech parity test (apt-get install espeak-ng sox)")
    raw, wav = tmp_path / "raw.wav", tmp_path / "speech16k.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", str(SAMPLING_RATE), "-c", "1", str(wav)], check=True,
                   capture_output=True)
    audio, sr = sf.read(wav, dtype="float32")
    assert sr == SAMPLING_RATE and audio.ndim == 1 and np.abs(audio).max() > 0.01
    return audio


def tone_with_silence() -> np.ndarray:
    """A 440 Hz tone with two harmonics, a fade in, and a stretch of exact silence: real-world edges."""
    t = np.arange(int(1.73 * SAMPLING_RATE)) / SAMPLING_RATE
    audio = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 880 * t) + 0.05 * np.sin(2 * np.pi * 1320 * t)
    audio *= np.minimum(1.0, t / 0.1)
    audio[int(0.9 * SAMPLING_RATE): int(1.2 * SAMPLING_RATE)] = 0.0
    return audio.astype(np.float32)


def test_mel_filterbank_equals_transformers(n_mels):
    expected = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                               max_frequency=8000.0, sampling_rate=SAMPLING_RATE, norm="slaney",
                               mel_scale="slaney")
    np.testing.assert_allclose(mel_filterbank_numpy(n_mels), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_samples", [16000, 12345, 3 * SAMPLING_RATE + 77, 401, 2000])
def test_random_audio_matches_whisper_extractor(extractor, n_mels, num_samples):
    audio = (np.random.default_rng(num_samples).standard_normal(num_samples) * 0.1).astype(np.float32)
    expected = reference(extractor, audio)
    got = ours(audio, n_mels)
    assert got.shape == expected.shape == (n_mels, num_samples // HOP_LENGTH)
    assert np.abs(got - expected).max() < TOLERANCE


def test_random_audio_matches_extractor_numpy_path(extractor, n_mels):
    audio = (np.random.default_rng(7).standard_normal(8000) * 0.3).astype(np.float32)
    expected = extractor._np_extract_fbank_features(audio[None], "cpu")[0]
    assert np.abs(ours(audio, n_mels) - expected).max() < TOLERANCE


def test_speech_matches_whisper_extractor(extractor, n_mels, tmp_path):
    audio = espeak_speech(tmp_path, "The quick brown fox jumps over the lazy dog, twice.")
    assert np.abs(ours(audio, n_mels) - reference(extractor, audio)).max() < TOLERANCE


def test_tone_with_silence_matches_whisper_extractor(extractor, n_mels):
    audio = tone_with_silence()
    got = ours(audio, n_mels)
    assert np.abs(got - reference(extractor, audio)).max() < TOLERANCE
    # The 8-unit dynamic-range floor is active in the silent stretch: it is what makes parity non-trivial.
    assert np.isclose(got.min(), got.max() - 2.0, atol=1e-5)


def test_exact_silence_matches_whisper_extractor(extractor, n_mels):
    audio = np.zeros(5000, dtype=np.float32)
    got = ours(audio, n_mels)
    assert np.abs(got - reference(extractor, audio)).max() < TOLERANCE
    assert np.allclose(got, (np.log10(1e-10) + 4) / 4)


def test_only_last_frame_differs_from_30s_padded_default(extractor, n_mels):
    audio = tone_with_silence()
    frames = n_frames(len(audio))
    padded = extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="np")["input_features"][0]
    assert padded.shape[-1] == 3000
    diff = np.abs(ours(audio, n_mels) - padded[:, :frames]).max(axis=0)
    assert diff[:-1].max() < TOLERANCE
    # The clip ends on a multiple of the hop, so its last window reaches 40 samples past the end:
    # zeros there, the reflected tone here. This is why the parity reference is the unpadded call.
    assert len(audio) % HOP_LENGTH == 0 and diff[-1] > 0.1


def test_batch_of_different_lengths_equals_one_by_one(n_mels):
    rng = np.random.default_rng(3)
    lengths = [16000, 7001, 2400, 11111, 160]
    width = max(lengths) + 500  # extra tail beyond every item
    batch = rng.standard_normal((len(lengths), width)).astype(np.float32) * 0.2
    for i, length in enumerate(lengths):
        batch[i, length:] = 100.0  # garbage past the length must not leak in
    feats, frame_lengths = log_mel(torch.from_numpy(batch), torch.tensor(lengths), n_mels=n_mels)
    assert feats.shape == (len(lengths), n_mels, n_frames(max(lengths)))
    assert frame_lengths.tolist() == [n // HOP_LENGTH for n in lengths]
    for i, length in enumerate(lengths):
        alone = ours(batch[i, :length], n_mels)
        np.testing.assert_allclose(feats[i, :, : alone.shape[-1]].numpy(), alone, rtol=0, atol=1e-5)
        assert torch.all(feats[i, :, alone.shape[-1]:] == 0)


def test_items_too_short_for_a_frame_give_zero_frames():
    feats, frame_lengths = log_mel(torch.randn(3, 300), torch.tensor([300, 159, 0]))
    assert frame_lengths.tolist() == [1, 0, 0]
    assert feats.shape == (3, 80, 1)
    assert torch.all(feats[1:] == 0) and torch.isfinite(feats).all()
    empty, lens = log_mel(torch.randn(2, 100))
    assert empty.shape == (2, 80, 0) and lens.tolist() == [0, 0]


def test_float64_input_agrees_with_float32():
    audio = torch.randn(2, 4000, dtype=torch.float64)
    f64, _ = log_mel(audio)
    f32, _ = log_mel(audio.float())
    assert f64.dtype == torch.float64
    assert (f64 - f32.double()).abs().max() < 1e-4


def test_n_frames_on_ints_and_tensors():
    assert n_frames(0) == 0 and n_frames(159) == 0 and n_frames(160) == 1 and n_frames(480000) == 3000
    assert n_frames(torch.tensor([159, 160, 16000])).tolist() == [0, 1, 100]


def test_bad_shapes_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        log_mel(torch.randn(1000))
    with pytest.raises(ValueError, match="lengths must lie in"):
        log_mel(torch.randn(2, 1000), torch.tensor([1000, 1001]))

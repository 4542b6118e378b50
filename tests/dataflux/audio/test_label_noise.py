"""Label-noise detection on audio embeddings: a flipped label the rest of the corpus contradicts
is caught; rare classes stay metadata-only with the reason."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import real_audio as ra
from dataflux.audio.decode import decode_audio
from dataflux.audio.label_noise import check_labels
from dataflux.audio.whisper import WhisperRecognizer, ensure_whisper_base

MODELS_HOME = Path.home() / ".cache" / "dataflux-test-models"


def test_a_class_with_fewer_than_five_clips_stays_metadata_only_with_the_reason():
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 1, (20, 8)), rng.normal(5, 1, (20, 8)), rng.normal(-5, 1, (3, 8))])
    labels = ["a"] * 20 + ["b"] * 20 + ["rare"] * 3
    verdicts = check_labels(emb, labels)
    assert all(v.status == "metadata-only" and "fewer than 5" in v.reason for v in verdicts[40:])
    assert all(v.status == "measured" and v.label_ok for v in verdicts[:40])


def test_a_label_the_rest_of_the_corpus_contradicts_is_caught():
    rng = np.random.default_rng(1)
    emb = np.concatenate([rng.normal(0, 1, (30, 8)), rng.normal(4, 1, (30, 8))])
    labels = ["a"] * 30 + ["b"] * 30
    labels[3], labels[40] = "b", "a"
    verdicts = check_labels(emb, labels)
    assert not verdicts[3].label_ok and verdicts[3].predicted == "a"
    assert not verdicts[40].label_ok
    assert sum(not v.label_ok for v in verdicts) <= 4


@pytest.mark.slow
def test_flipped_labels_on_whisper_embeddings_of_real_prompts_are_caught():
    records, _ = ra.speech_records(("en", "it", "es", "fr", "ru"))
    chosen = ra.subset(records, 150, seed=3)
    clips = [decode_audio(Path(r["file"]).read_bytes(), name=r["file"])[0] for r in chosen]
    emb = WhisperRecognizer(ensure_whisper_base(MODELS_HOME), window_s=8.0).pooled_states(clips)
    rng = random.Random(0)
    labels = [r["language"] for r in chosen]
    flipped = set(rng.sample(range(len(chosen)), 15))
    for i in flipped:
        labels[i] = rng.choice([lang for lang in sorted(set(labels)) if lang != labels[i]])
    verdicts = check_labels(emb, labels)
    caught = sum(not verdicts[i].label_ok for i in flipped)
    lost = sum(not v.label_ok for i, v in enumerate(verdicts) if i not in flipped)
    print(f"\nlabels: flipped caught {caught}/15, clean lost {lost}/135", file=sys.stderr)
    assert caught >= 11
    assert lost <= 13

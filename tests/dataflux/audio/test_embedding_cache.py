"""The embedding store: a clip is embedded once per model, damaged or planted files are embedded
again, writers racing on one clip leave whole files, and the label check's embeddings through the
packaged Whisper come back from the store unchanged."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from dataflux.audio.embedding_cache import EmbeddingStore, embed_with_store


def _clips(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(1600 + 37 * i).astype(np.float32) * 0.1 for i in range(n)]


class Counting:
    """A stand-in model: a clip's embedding is its first 4 samples' statistics; counts the clips it saw."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, clips):
        self.seen += len(clips)
        return np.stack([[c.mean(), c.std(), c.min(), c.max()] for c in clips]).astype(np.float32)


def test_a_clip_is_embedded_once_per_model_and_read_back_the_same(tmp_path):
    clips, model = _clips(5), Counting()
    store = EmbeddingStore(tmp_path, "model-a|cpu|int8")
    first = embed_with_store(clips, store, model)
    again = embed_with_store(clips + _clips(2, seed=1), store, model)
    assert model.seen == 5 + 2
    np.testing.assert_array_equal(again[:5], first)
    other = EmbeddingStore(tmp_path, "model-b|cpu|int8")  # another model's vectors are not these
    embed_with_store(clips, other, model)
    assert model.seen == 5 + 2 + 5
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "object array", "wrong width", "not finite", "symlink"])
def test_a_damaged_or_planted_file_is_embedded_again_and_replaced(tmp_path, damage):
    clips, model = _clips(4), Counting()
    store = EmbeddingStore(tmp_path, "model")
    first = embed_with_store(clips, store, model)
    path = store._path(EmbeddingStore.key(clips[2]))
    if damage == "garbage":
        path.write_bytes(b"\x00not a numpy file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:20])
    elif damage == "object array":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif damage == "wrong width":
        np.save(path, np.ones(7, dtype=np.float32))
    elif damage == "not finite":
        np.save(path, np.full(4, np.nan, dtype=np.float32))
    else:
        secret = tmp_path / "elsewhere.npy"
        np.save(secret, np.zeros(4, dtype=np.float32))
        path.unlink()
        os.symlink(secret, path)
    again = embed_with_store(clips, store, model)
    assert model.seen == 4 + 1
    np.testing.assert_array_equal(again, first)
    assert not path.is_symlink() and store.get(EmbeddingStore.key(clips[2])) is not None


def test_threads_racing_on_the_same_clips_leave_whole_files(tmp_path):
    clips = _clips(12)
    store = EmbeddingStore(tmp_path, "model")
    results, errors = [], []

    def work():
        try:
            results.append(embed_with_store(clips, store, Counting()))
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    assert all(store.get(EmbeddingStore.key(c)) is not None for c in clips)
    assert not list(tmp_path.rglob("*.partial"))


def test_a_store_that_cannot_be_written_still_embeds(tmp_path):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder would be")
    model = Counting()
    out = embed_with_store(_clips(3), EmbeddingStore(blocked, "model"), model)
    assert out.shape == (3, 4) and model.seen == 3


def test_the_label_checks_whisper_embeddings_come_back_from_the_store(tmp_path, monkeypatch):
    from dataflux.audio import recognizer_facts

    clips = _clips(3)
    first = recognizer_facts.embed(clips, store_root=tmp_path)
    assert first.shape[0] == 3 and first.shape[1] >= 256

    def no_model(_clips):
        raise AssertionError("the store holds these clips: the model must not run")

    monkeypatch.setattr(recognizer_facts.recognizer(), "pooled_states", no_model)
    np.testing.assert_array_equal(recognizer_facts.embed(clips, store_root=tmp_path), first)

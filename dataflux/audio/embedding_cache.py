"""Clip embeddings kept on disk, so that a survey's label check is paid once per clip and model.

The label check embeds every labelled clip of a whole source (`dataflux.audio.label_check`). Without
a store, a resumed run, a rerun over a grown corpus, and each Ray or Dask worker that surveys the
source would embed it all again. Here each embedding is one `.npy` file named by the SHA-256 of
the clip's samples, in a folder named by the model's identity (its folder, the size and time of
its `model.bin`, its device and compute type), under `<DATAFLUX_HOME>/cache/embeddings`.

A file is written beside its final name and renamed into place, so a reader never sees half of
one and two processes that embed the same clip write the same bytes. A file that does not load as
one finite float32 vector (damaged, truncated, planted) is a miss: the clip is embedded again and
the file replaced.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class EmbeddingStore:
    """Embeddings of one model under `root` (the home's cache folder)."""

    def __init__(self, root: Path, model_identity: str) -> None:
        digest = hashlib.sha256(model_identity.encode()).hexdigest()[:24]
        self.folder = Path(root) / "embeddings" / digest

    @staticmethod
    def key(clip: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(clip, dtype=np.float32).tobytes()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        if path.is_symlink() or not path.is_file():
            return None
        try:
            vector = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if vector.ndim != 1 or vector.dtype != np.float32 or not vector.size or not np.isfinite(vector).all():
            return None
        return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        """Store one vector; a cache that cannot be written (read-only home, full disk) stores nothing."""
        path = self._path(key)
        partial = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as f:
                np.save(f, np.ascontiguousarray(vector, dtype=np.float32), allow_pickle=False)
            os.replace(partial, path)
        except OSError:
            try:
                partial.unlink(missing_ok=True)
            except OSError:  # no folder to have written it in
                pass


def embed_with_store(clips: Sequence[np.ndarray], store: EmbeddingStore, compute) -> np.ndarray:
    """[N, d] embeddings of `clips`: those `store` holds are read, the rest computed by
    `compute(list of clips) -> [n, d]` in one call and stored."""
    keys = [EmbeddingStore.key(c) for c in clips]
    found = [store.get(k) for k in keys]
    dims = {v.shape[0] for v in found if v is not None}
    if len(dims) > 1:  # vectors of another width: not this model's; embed those clips again
        common = max(dims, key=lambda d: sum(v is not None and v.shape[0] == d for v in found))
        found = [v if v is not None and v.shape[0] == common else None for v in found]
    missing = [i for i, v in enumerate(found) if v is None]
    if missing:
        fresh = np.asarray(compute([clips[i] for i in missing]), dtype=np.float32)
        for i, vector in zip(missing, fresh):
            found[i] = vector
            store.put(keys[i], vector)
    return np.stack(found) if found else np.zeros((0, 0), dtype=np.float32)

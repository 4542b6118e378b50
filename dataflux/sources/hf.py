"""A `datasets` source: local Parquet, an audiofolder, or a hub dataset where a network exists.

Audio is read undecoded (`Audio(decode=False)`) so that the original bytes are kept and
hashed; our own decoder does the rest. Streaming mode never materialises the dataset.
An audio column that holds a path rather than bytes is read only when the path resolves under the
dataset's root (its local folder, or the Hugging Face cache for a hub dataset), else the row is an
`outside_root` reject (dataflux.sources.confine).
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path
from typing import Any, Iterator

from dataflux.records import Reject, SourceItem
from dataflux.regular_file import NOT_REGULAR, not_regular
from dataflux.sources.base import labels_from_record, partition_of
from dataflux.sources.confine import outside_root_reject, resolved_root
from dataflux.fields import vocabulary_of

DEFAULT_FIELDS = {"audio": "audio", "label": "label"}


class HFSource:
    def __init__(self, name: str, path: str, *, data_format: str | None = None, split: str = "train",
                 streaming: bool = False, fields: dict[str, str] | None = None, license: str = "unknown",
                 limit: int | None = None, allow_outside_root: bool = False):
        self.name = name
        self.allow_outside_root = allow_outside_root
        self.path = path
        self.split = split
        self.streaming = streaming
        self.fields = {**DEFAULT_FIELDS, **(fields or {})}
        self.license = license
        self.limit = limit
        if data_format is None:
            data_format = "parquet" if (path.endswith(".parquet") or self._parquet_files()) else (
                "audiofolder" if os.path.isdir(path) else "hub")
        self.data_format = data_format

    def _parquet_files(self) -> list[str]:
        if os.path.isdir(self.path):
            return sorted(glob.glob(os.path.join(self.path, "**", "*.parquet"), recursive=True))
        return sorted(glob.glob(self.path)) if any(c in self.path for c in "*?[") or self.path.endswith(".parquet") else []

    def load(self):
        import datasets

        if self.data_format == "parquet":
            files = self._parquet_files()
            if not files:
                raise FileNotFoundError(f"source {self.name!r}: no Parquet files at {self.path}")
            ds = datasets.load_dataset("parquet", data_files=files, split=self.split, streaming=self.streaming)
        elif self.data_format == "audiofolder":
            ds = datasets.load_dataset("audiofolder", data_dir=self.path, split=self.split, streaming=self.streaming)
        else:
            ds = datasets.load_dataset(self.path, split=self.split, streaming=self.streaming)
        audio_col = self.fields["audio"]
        features = ds.features
        if features is not None and audio_col not in features:
            raise KeyError(f"source {self.name!r}: column {audio_col!r} not in dataset columns {list(features)}"
                           f" (set fields.audio in data_catalog.yaml)")
        if features is not None and isinstance(features[audio_col], datasets.Audio):
            ds = ds.cast_column(audio_col, datasets.Audio(decode=False))
        return ds

    def _records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for i, record in enumerate(self.load()):
            if self.limit is not None and i >= self.limit:
                break
            yield i, record

    def _key(self, i: int, record: dict[str, Any]) -> str:
        ident = record.get(self.fields.get("id", ""))
        return str(ident) if ident not in (None, "") else f"{self.split}-{i:08d}"

    def _class_names(self) -> dict[str, list[str]]:
        """Columns holding ClassLabel ids, with their names, so labels read as words."""
        features = getattr(self.load(), "features", None) or {}
        return {col: list(feat.names) for col, feat in features.items() if hasattr(feat, "names")}

    def iter_items(self, partition: int = 0, n_partitions: int = 1) -> Iterator[SourceItem | Reject]:
        audio_col = self.fields["audio"]
        class_names = self._class_names()
        root = None
        for i, record in self._records():
            for col, names in class_names.items():
                if isinstance(record.get(col), int) and 0 <= record[col] < len(names):
                    record[col] = names[record[col]]
            key = self._key(i, record)
            if partition_of(f"{self.name}/{key}", n_partitions) != partition:
                continue
            where = f"{self.path} [{self.split}] row {i}"
            audio = record.get(audio_col)
            to_read = _path_to_read(audio)
            if to_read is not None and "\x00" in to_read:  # stat() would raise for the whole partition
                yield Reject(self.name, key, "source", "bad_field", f"{where}: column {audio_col!r} holds a "
                                                                    "path with a NUL byte, which no file name can")
                continue
            if to_read is not None:
                root = root or self._root()
                outside = outside_root_reject(to_read, root, source=self.name, key=key,
                                              where=f"{where}: column {audio_col!r}", allowed=self.allow_outside_root)
                if outside is not None:
                    yield outside
                    continue
                special = not_regular(to_read)
                if special is not None:
                    yield Reject(self.name, key, "source", NOT_REGULAR,
                                 f"{where}: column {audio_col!r}: {special}; only regular files are read")
                    continue
            data, path = _audio_bytes(audio)
            if data is None:
                yield Reject(self.name, key, "source", "bad_field",
                             f"{where}: column {audio_col!r} holds no audio bytes or readable path")
                continue
            labels = labels_from_record(record, self.fields, source=self.name, key=key, where=where,
                                        file_stem=Path(path).stem if path else None)
            if isinstance(labels, Reject):
                yield labels
                continue
            yield SourceItem(source=self.name, source_id=key, audio_bytes=data, audio_path=path,
                             labels=labels, license=self.license)

    def _root(self) -> str | tuple[str, ...]:
        """Where audio paths of this dataset may point: the local folder it lives in (the folder
        itself, a Parquet file's folder, a glob's fixed prefix), or the Hugging Face caches (hub)."""
        if self.data_format == "hub":
            import datasets
            from huggingface_hub import constants

            caches = (constants.HF_HOME, constants.HF_HUB_CACHE, datasets.config.HF_DATASETS_CACHE)
            return tuple(dict.fromkeys(resolved_root(c) for c in caches))
        if os.path.isdir(self.path):
            return resolved_root(self.path)
        fixed = self.path.split("*")[0].split("?")[0].split("[")[0]
        return resolved_root(os.path.dirname(fixed) or ".")

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.path}|{self.split}|{self.data_format}|{self.limit}".encode())
        if self.data_format == "parquet":
            for f in self._parquet_files():
                st = os.stat(f)
                h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
        elif os.path.isdir(self.path):
            for p in sorted(Path(self.path).rglob("*")):
                if p.is_file():
                    st = p.stat()
                    h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def vocabulary(self) -> dict[str, list[str]]:
        """Values of the rows that pass the source stage: the classes rows carry, not every declared name."""
        return vocabulary_of(i.labels for i in self.iter_items() if isinstance(i, SourceItem))


def _path_to_read(audio: Any) -> str | None:
    """The file `_audio_bytes` would open for this cell, if any (a path without bytes)."""
    if isinstance(audio, dict) and audio.get("bytes") is None and audio.get("path"):
        return audio["path"]
    if isinstance(audio, str) and "://" not in audio:
        return audio
    return None


def _audio_bytes(audio: Any) -> tuple[bytes | None, str | None]:
    if isinstance(audio, dict):
        data, path = audio.get("bytes"), audio.get("path")
        if data is None and path and os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
        return data, path
    if isinstance(audio, (bytes, bytearray)):
        return bytes(audio), None
    if isinstance(audio, str) and os.path.exists(audio):
        with open(audio, "rb") as f:
            return f.read(), audio
    return None, None

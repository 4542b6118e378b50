"""Full rows by index position: `RowReader` streams each shard once per window (audio bytes,
messages, choices...), `decode_row_audio` turns a row's clip into samples, `read_texts` gathers a
split's messages (for training a small tokenizer)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from dataflux.audio.decode import decode_audio
from modeling.data.index import VersionIndex

ROW_COLUMNS = ["sample_id", "audio", "messages", "l3", "question", "choices", "answer", "answer_index", "split",
               "task", "audio_sha256"]
# Columns a shard written before they existed may lack: read as None (a missing `task` is mcq).
OPTIONAL_COLUMNS = frozenset({"task", "audio_sha256"})


class RowReader:
    """Fetch full rows by index position, reading each shard once per window with `iter_batches`."""

    def __init__(self, index: VersionIndex, columns: Sequence[str] = ROW_COLUMNS, cache_shards: int = 4):
        self.index = index
        self.columns = list(columns)
        self.cache_shards = cache_shards
        self._cache: OrderedDict[int, dict[str, list]] = OrderedDict()

    def _shard(self, s: int) -> dict[str, list]:
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        path = self.index.paths[s]
        pf = pq.ParquetFile(path)
        present = [c for c in self.columns if c in pf.schema_arrow.names]
        missing = [c for c in self.columns if c not in present and c not in OPTIONAL_COLUMNS]
        if missing:
            raise ValueError(f"{path}: shard lacks column(s) {missing} of the row contract; rebuild the version")
        data: dict[str, list] = {c: [] for c in self.columns}
        for batch in pf.iter_batches(columns=present, batch_size=256):
            for c in present:
                data[c].extend(batch.column(c).to_pylist())
        for c in set(self.columns) - set(present):
            data[c] = [None] * len(data[present[0]])
        self._cache[s] = data
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return data

    def rows(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        out = []
        for p in positions:
            s, r = int(self.index.shard[p]), int(self.index.row[p])
            data = self._shard(s)
            row = {c: data[c][r] for c in self.columns}
            row["_where"] = f"{self.index.paths[s]} row {r}"
            out.append(row)
        return out


def row_where(row: dict[str, Any]) -> str:
    """How errors name a row: its shard and position when read from one, else its sample_id."""
    return row.get("_where", row.get("sample_id", "row"))


def decode_row_audio(row: dict[str, Any], sampling_rate: int = 16000) -> np.ndarray:
    """The row's audio as float32 (T,) at `sampling_rate`, by the project's one decoder
    (`dataflux.audio.decode.decode_audio`); a clip it refuses raises its `BadAudio`, naming the row."""
    data = (row.get("audio") or {}).get("bytes")
    where = row_where(row)
    if not data:
        raise ValueError(f"{where}: audio.bytes is empty; the row contract stores the clip's bytes inline")
    y, _ = decode_audio(data, name=where, target_sr=sampling_rate)
    return y


def read_texts(index: VersionIndex, split: str | Sequence[str] = "train",
               tasks: Sequence[str] | None = None) -> list[str]:
    """All message contents of a split (for training a small tokenizer), placeholders removed; of the
    given tasks only when named."""
    reader = RowReader(index, columns=["messages"], cache_shards=1)
    texts = []
    for pos in index.rows_of(split, tasks):
        for m in reader.rows([pos])[0]["messages"]:
            texts.append(m["content"].replace("<audio>", ""))
    return texts

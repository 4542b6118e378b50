"""Rows -> a model batch: audio decoded, log-mel features and tokens through the processor,
optionally several examples packed into one row, and examples cached in memory for small versions."""

from __future__ import annotations

import hashlib
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from modeling.data.rows import decode_row_audio, row_where
from modeling.eval import LETTERS, option_lines
from modeling.processor import IGNORE_INDEX, EurekaAudioProcessor


class ExampleCache:
    """Log-mel features by clip, least recently used evicted past `max_mb` of feature memory, and
    the rows' tokens by sample_id. A clip's rows (its questions, transcript, caption, open answers:
    ~2.5-6 rows per clip) share one entry, so a version's features take a clip's worth of memory
    each, not a row's. A small version fits whole, and every epoch after the first then skips
    decoding and features (the training step gets both cores)."""

    def __init__(self, max_mb: float):
        self.max_bytes = int(max_mb * 2**20)
        self.bytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[str, tuple[tuple[Any, torch.Tensor], int]] = OrderedDict()  # item, bytes

        self._tokens: dict[str, Any] = {}

    def get_or_make(self, key: str, make) -> tuple[Any, torch.Tensor]:
        """The cached value for `key` (a clip's (n_samples, features)), or make() it and keep it."""
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key][0]
        self.misses += 1
        item = make()
        size = item[1].numel() * item[1].element_size()
        self._items[key] = (item, size)
        self.bytes += size
        while self.bytes > self.max_bytes and len(self._items) > 1:
            self.bytes -= self._items.popitem(last=False)[1][1]
        return item

    def tokens(self, sample_id: str, make) -> Any:
        """The row's tokens (small: kept for every row seen, never evicted)."""
        if sample_id not in self._tokens:
            self._tokens[sample_id] = make()
        return self._tokens[sample_id]


def permute_options(messages: Sequence[dict[str, str]], choices: Sequence[str], answer_index: int,
                    rng: np.random.Generator) -> list[dict[str, str]] | None:
    """The conversation with its lettered options in a random order and the answer re-lettered to match.

    The user turn must list the choices as "(A) first", "(B) second", ... on consecutive lines, and the
    assistant turn must start with the lettered answer, "(C) third"; anything after it (reasoning) is
    kept. Returns None for a conversation of any other shape (a transcript, a free-form answer), which
    is then trained on as it is.
    """
    n = len(choices)
    if not 2 <= n <= len(LETTERS) or not 0 <= answer_index < n:
        return None
    lines = option_lines(choices)
    block = "\n".join(lines)
    users = [i for i, m in enumerate(messages) if m["role"] == "user" and block in m["content"]]
    assistants = [i for i, m in enumerate(messages)
                  if m["role"] == "assistant" and m["content"].startswith(lines[answer_index])]
    if len(users) != 1 or len(assistants) != 1 or messages[users[0]]["content"].count(block) != 1:
        return None
    order = rng.permutation(n)  # new position j shows old option order[j]
    new_lines = option_lines([choices[k] for k in order])
    new_answer = new_lines[int(np.flatnonzero(order == answer_index)[0])]
    out = [dict(m) for m in messages]
    out[users[0]]["content"] = out[users[0]]["content"].replace(block, "\n".join(new_lines))
    a = out[assistants[0]]["content"]
    out[assistants[0]]["content"] = new_answer + a[len(lines[answer_index]):]
    return out


class Collator:
    """Rows -> a model batch through the processor.

    Without packing: input_ids, attention_mask, labels (B, L), input_features (B, M, F), feature_lengths (B,).
    With packing (`pack_tokens` > 0): examples are concatenated greedily into rows of at most
    `pack_tokens` tokens; position_ids (B, L) restart at 0 for each example and there is no
    attention_mask (the LM then builds a block-diagonal causal mask from the position resets).
    `zero_audio` replaces every clip by silence of the same length (the audio-blind baseline).
    `cache_mb` > 0 keeps examples (tokens and features) in an `ExampleCache` of that size.
    `shuffle_options` shows a multiple-choice row's options in a new order each epoch (the answer
    re-lettered; `permute_options`), drawn from (seed, epoch, sample_id), so a resumed run sees the
    same orders: the letter of the right option then never follows from the clip alone.
    Also returns `sample_id`, `l3` and `task` lists for bookkeeping.
    """

    def __init__(self, processor: EurekaAudioProcessor, zero_audio: bool = False, pack_tokens: int = 0,
                 cache_mb: float = 0.0, shuffle_options: bool = False, seed: int = 0):
        self.processor = processor
        self.zero_audio = zero_audio
        self.pack_tokens = pack_tokens
        self.cache = ExampleCache(cache_mb) if cache_mb > 0 else None
        self.shuffle_options = shuffle_options
        self.seed = seed

    def _shuffled(self, row: dict[str, Any], epoch: int) -> list[dict[str, str]] | None:
        """The row's messages with the options reordered for `epoch`, or None (not a lettered
        multiple-choice row)."""
        if row.get("choices") is None or row.get("answer_index") is None:
            return None
        key = zlib.crc32(str(row.get("sample_id", "")).encode())
        rng = np.random.default_rng([self.seed, epoch, key])
        return permute_options(row["messages"], list(row["choices"]), int(row["answer_index"]), rng)

    def _retokenized(self, row: dict[str, Any], encoded, epoch: int):
        """`encoded` (the row as stored), or its option-shuffled messages tokenized with the same clip."""
        messages = self._shuffled(row, epoch)
        if messages is None:
            return encoded
        pad = self.processor.audio_ids["audio_pad_token_id"]
        n_audio = sum(1 for t in encoded.input_ids if t == pad)
        return self.processor.encode(messages, [n_audio], where=row_where(row))

    def _audio_and_tokens(self, row: dict[str, Any]) -> tuple[np.ndarray, Any]:
        """One row -> its clip (T,) (silence of the same length with `zero_audio`) and its Encoded tokens."""
        p = self.processor
        audio = decode_row_audio(row, p.sampling_rate)
        if self.zero_audio:
            audio = np.zeros_like(audio)
        encoded = p.encode(row["messages"], [p.audio_token_count(len(audio))],
                           where=row_where(row))
        return audio, encoded

    def _clip_features(self, row: dict[str, Any]) -> tuple[int, torch.Tensor]:
        """The row's clip -> (samples, features (M, F_i)); computed for the clip alone, so a cached
        entry is the same numbers whatever batch it first came in."""
        audio = decode_row_audio(row, self.processor.sampling_rate)
        if self.zero_audio:
            audio = np.zeros_like(audio)
        features, lengths = self.processor.audio_features([audio])
        return len(audio), features[0, :, : int(lengths[0])]

    def _example(self, row: dict[str, Any]) -> tuple[Any, torch.Tensor]:
        """One row -> (Encoded tokens, features (M, F_i)), the features shared by the clip's rows."""
        p = self.processor
        clip_key = row.get("audio_sha256") or hashlib.sha256((row.get("audio") or {}).get("bytes") or b"").hexdigest()
        n_samples, features = self.cache.get_or_make(clip_key, lambda: self._clip_features(row))
        encoded = self.cache.tokens(str(row.get("sample_id")), lambda: p.encode(
            row["messages"], [p.audio_token_count(n_samples)], where=row_where(row)))
        return encoded, features

    def __call__(self, rows: Sequence[dict[str, Any]], epoch: int = 0) -> dict[str, Any]:
        p = self.processor
        if self.cache is None:
            audios, encoded = zip(*(self._audio_and_tokens(r) for r in rows))
            features, feature_lengths = p.audio_features(list(audios))
        else:
            examples = [self._example(r) for r in rows]
            encoded = [e for e, _ in examples]
            feature_lengths = torch.tensor([f.shape[-1] for _, f in examples], dtype=torch.long)
            features = torch.zeros((len(examples), p.n_mels, int(feature_lengths.max())))
            for i, (_, f) in enumerate(examples):
                features[i, :, : f.shape[-1]] = f
        if self.shuffle_options:
            encoded = [self._retokenized(r, e, epoch) for r, e in zip(rows, encoded)]
        batch = self._pack(encoded) if self.pack_tokens else p.pad(encoded, side="right")
        batch["input_features"], batch["feature_lengths"] = features, feature_lengths
        batch["sample_id"] = [r.get("sample_id") for r in rows]
        batch["l3"] = [r.get("l3") for r in rows]
        batch["task"] = [r.get("task") or "mcq" for r in rows]
        return batch

    def _pack(self, encoded) -> dict[str, torch.Tensor]:
        rows: list[list] = [[]]
        for e in encoded:
            used = sum(len(x.input_ids) for x in rows[-1])
            if rows[-1] and used + len(e.input_ids) > self.pack_tokens:
                rows.append([])
            rows[-1].append(e)
        longest = max(sum(len(x.input_ids) for x in r) for r in rows)
        pad_id = self.processor.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        pos = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            at = 0
            for e in r:
                n = len(e.input_ids)
                ids[i, at : at + n] = torch.tensor(e.input_ids)
                labels[i, at : at + n] = torch.tensor(e.labels)
                pos[i, at : at + n] = torch.arange(n)
                at += n
            pos[i, at:] = torch.arange(longest - at)  # the pad tail is its own (loss-free) segment
        return {"input_ids": ids, "labels": labels, "position_ids": pos}

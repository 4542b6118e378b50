"""The records that flow between pipeline stages.

Data flows one way: a source yields `SourceItem`s; audio analysis turns each into a `Clip`
(decoded, measured) or a `Reject`; the steps turn clips into sample rows (plain dicts that
follow `schemas/sample_row.schema.json`) or rejects. Nothing is dropped silently: every item
that does not become a row becomes a `Reject` with a reason code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SourceItem:
    """One clip as a source delivers it, before any decoding.

    `labels` holds what the source claims about the clip, keyed by taxonomy leaf id
    (e.g. {"tone_pitch": "440 Hz", "duration": "2 seconds"}) plus free fields such as
    "transcript", "speaker", "label" (a raw class label). Claims may be wrong: that is
    what the closed loop is for. `meta` carries source-specific extras that must not reach
    the model steps (for the demo: the planted error, if any).
    """

    source: str
    source_id: str
    audio_bytes: bytes | None = None
    audio_path: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    license: str = "unknown"
    meta: dict[str, Any] = field(default_factory=dict)

    def read_bytes(self) -> bytes:
        if self.audio_bytes is None:
            if self.audio_path is None:
                raise ValueError(f"{self.source}/{self.source_id}: item has neither bytes nor path")
            with open(self.audio_path, "rb") as f:
                self.audio_bytes = f.read()
        return self.audio_bytes


@dataclass
class Clip:
    """A decoded, measured clip: 16 kHz mono float32 samples plus what was measured.

    `quality`: always-on metrics (duration_s, peak, rms_dbfs, clipping_ratio, silence_ratio, snr_db).
    `facts`: measured descriptor values keyed by taxonomy leaf id, in the leaf's value
    vocabulary where one exists (e.g. {"tone_pitch": "440 Hz"}), plus raw numbers under
    `facts["raw"]`.
    """

    item: SourceItem
    audio_sha256: str
    samples: np.ndarray  # (T,) float32, 16 kHz mono
    sampling_rate: int
    original_sampling_rate: int
    quality: dict[str, float]
    facts: dict[str, Any]

    @property
    def sample_key(self) -> str:
        return self.audio_sha256[:16]


@dataclass
class Reject:
    """An item, clip or question that did not make it into a version, and why."""

    source: str
    source_id: str
    stage: str  # source | decode | analyze | quality | generate | answer | verify | filter | llm
    reason: str  # a short stable code, e.g. "unreadable", "nan_samples", "judge_discard"
    detail: str = ""
    sample_id: str | None = None
    audio_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def partition_key(source: str, partition: int, n_partitions: int) -> str:
    """The name of one partition of a source, as shards, items and rejects record it."""
    return f"{source}-p{partition:04d}-of{n_partitions:04d}"


def ledger_entry(source: str, source_id: str, audio_sha256: str | None, status: str, planted: dict | None,
                 n_rows: int = 0) -> dict:
    """One row of the items ledger: what became of one source item (kept, no_rows, rejected:<reason>)."""
    return {"source": source, "source_id": source_id, "audio_sha256": audio_sha256, "n_rows": n_rows,
            "status": status, "planted": json.dumps(planted) if planted else None}


@dataclass
class Call:
    """Provenance and accounting for one step invocation (one model call or one computation)."""

    step: str  # caption | generate | answer | judge
    backend: str  # reference | openai | local
    model: str  # model id as the server reports it, or the reference algorithm's name@version
    prompt_sha256: str = ""  # hash of the prompt template file ("" for reference algorithms)
    params: dict[str, Any] = field(default_factory=dict)  # sampling parameters
    seed: int | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    cached: bool = False
    latency_s: float = 0.0
    failure: str | None = None  # reason code when the call failed after retries/repair

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "backend": self.backend, "model": self.model,
            "prompt_sha256": self.prompt_sha256, "params": dict(self.params), "seed": self.seed,
            "tokens_in": self.tokens_in, "tokens_out": self.tokens_out, "cost_usd": self.cost_usd,
            "cached": self.cached, "failure": self.failure,
        }


@dataclass
class Caption:
    text: str
    call: Call
    transcript: str | None = None

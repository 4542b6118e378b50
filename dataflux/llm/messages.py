"""Putting a clip's audio into a chat message, in the form an endpoint understands.

- `input_audio` (OpenAI): a content part `{"type": "input_audio", "input_audio": {"data": <base64 wav>, "format": "wav"}}`;
- `audio_url` (vLLM): `{"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,<...>"}}`.
The WAV is 16-bit PCM at the clip's sampling rate, so the same clip always gives the same bytes
(and the same cache key).
"""

from __future__ import annotations

import base64
import io
import threading
import weakref

import numpy as np
import soundfile as sf

from dataflux.records import Clip


def wav_bytes(samples: np.ndarray, sampling_rate: int) -> bytes:
    """(T,) float samples in [-1, 1] -> a 16-bit PCM mono WAV file."""
    buf = io.BytesIO()
    pcm = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    sf.write(buf, pcm, int(sampling_rate), subtype="PCM_16", format="WAV")
    return buf.getvalue()


def clip_wav(clip: Clip) -> bytes:
    return wav_bytes(clip.samples, clip.sampling_rate)


def audio_part(wav: bytes, audio_format: str) -> dict:
    b64 = base64.b64encode(wav).decode("ascii")
    if audio_format == "input_audio":
        return {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}}
    if audio_format == "audio_url":
        return {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64}"}}
    raise ValueError(f"audio_format {audio_format!r} cannot carry audio; use input_audio or audio_url")


_PARTS_KEPT = 64
_parts: dict[tuple[int, str], tuple[weakref.ref, dict]] = {}
_parts_lock = threading.Lock()


def clip_audio_part(clip: Clip, audio_format: str) -> dict:
    """`audio_part` of the clip's WAV, encoded once per clip object and format: a clip is asked
    about many times (questions x answerers x rounds), and its WAV and base64 are the same each
    time. The part holds the same payload string each time, so the request hash's digest of it
    is remembered too (`cache.canonical_messages`)."""
    key = (id(clip), audio_format)
    hit = _parts.get(key)
    if hit is not None and hit[0]() is clip:
        return dict(hit[1])
    part = audio_part(clip_wav(clip), audio_format)
    with _parts_lock:
        if len(_parts) >= _PARTS_KEPT:
            _parts.pop(next(iter(_parts)))
        _parts[key] = (weakref.ref(clip), part)
    return dict(part)


def with_audio(messages: list[dict], wav: bytes | dict, audio_format: str) -> list[dict]:
    """The messages with the audio attached to the last user message (audio first, then its text).
    `wav`: the WAV bytes, or a content part already made by `audio_part`/`clip_audio_part`."""
    out = [dict(m) for m in messages]
    for msg in reversed(out):
        if msg["role"] == "user":
            text = msg["content"]
            parts = [wav if isinstance(wav, dict) else audio_part(wav, audio_format)]
            if isinstance(text, str):
                parts.append({"type": "text", "text": text})
            else:
                parts.extend(text)
            msg["content"] = parts
            return out
    raise ValueError("no user message to attach the audio to")

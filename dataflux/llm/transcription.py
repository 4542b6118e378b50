"""Speech to text through an OpenAI-compatible `/audio/transcriptions` endpoint (vLLM,
faster-whisper-server, OpenAI), for the speech checks of `dataflux.audio.recognizer_facts`.

`data_catalog.yaml` names it under `recognizer` (`endpoint`: the base URL, `model`, and the *name*
of the environment variable holding the key, `api_key_env`); the pipeline hands it to
`set_recognizer`. Each clip goes up as a 16 kHz 16-bit WAV with `response_format=verbose_json`,
with or without a `language`; the reply's `text` and `language` (a name such as "english" or a
code: read by `dataflux.fields.language_code`) come back.

The requests go through the model client (`dataflux.llm.client.LLMClient.transcribe`), so they
share its retries (429 after `Retry-After`, 5xx, timeouts, refused connections, an unreadable
200: exponential backoff with jitter, up to `max_retries`), its concurrency limit and its cache:
the key is the hash of the endpoint's model, the WAV's sha256, the language asked and the
response format, kept in the catalog's `calls` table, so a rerun over the same catalog sends no
request. A clip that still has no reply after the last try stops the partition with an error that
names the endpoint.

The checks run inside a partition's event loop but are plain functions, so one batch of requests
runs on its own loop in a helper thread (the partition waits for it, as it waits for Whisper).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

from dataflux.fields import language_code
from dataflux.llm.cache import CallCache
from dataflux.llm.client import LLMClient
from dataflux.llm.endpoint import Endpoint
from dataflux.llm.messages import wav_bytes

SAMPLE_RATE = 16000
RESPONSE_FORMAT = "verbose_json"
STEP = "recognizer"
# recognizer.<field> -> the model client's endpoint field
_FIELDS = {"endpoint": "base_url", "model": "model", "api_key_env": "api_key_env", "concurrency": "concurrency",
           "timeout_s": "timeout_s", "max_retries": "max_retries"}


class TranscriptionEndpointError(RuntimeError):
    """The endpoint gave no transcript after its last try: the server is down, overloaded or not
    a transcription server."""


class Heard(NamedTuple):
    text: str
    language: str | None  # ISO 639-1, e.g. "ru"; None when the reply names no language we know


class TranscriptionEndpoint:
    """One `/audio/transcriptions` endpoint, as `recognizer` in `data_catalog.yaml` gives it."""

    def __init__(self, spec: Mapping[str, Any], cache: CallCache | None = None, **client_kwargs: Any):
        unknown = sorted(set(spec) - set(_FIELDS))
        if unknown:
            raise ValueError(f"data_catalog.yaml: recognizer: unknown field(s) {unknown}; known: {sorted(_FIELDS)}")
        fields = {_FIELDS[k]: v for k, v in spec.items()}
        fields.setdefault("concurrency", 4)
        self.endpoint = Endpoint.from_config(STEP, fields)
        self.client = LLMClient(self.endpoint, cache=cache, **client_kwargs)

    @property
    def model_id(self) -> str:
        """What a clip's raw facts record as the recognizer."""
        return f"endpoint:{self.endpoint.model}"

    def transcribe(self, clips: Sequence[np.ndarray], languages: Sequence[str | None]) -> list[Heard]:
        """What the endpoint hears in each clip (16 kHz mono float32), asked in the given language
        (None: the endpoint detects it)."""
        if not clips:
            return []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="transcription") as pool:
            return pool.submit(asyncio.run, self._all(clips, languages)).result()

    async def _all(self, clips: Sequence[np.ndarray], languages: Sequence[str | None]) -> list[Heard]:
        try:
            return list(await asyncio.gather(*(self._one(c, lang) for c, lang in zip(clips, languages))))
        finally:
            await self.client.aclose()

    async def _one(self, samples: np.ndarray, language: str | None) -> Heard:
        wav = wav_bytes(samples, SAMPLE_RATE)
        reply = await self.client.transcribe(wav, step=STEP, backend="openai", language=language,
                                             response_format=RESPONSE_FORMAT)
        if reply.call.failure is not None or not isinstance(reply.data, dict):
            tries = int(self.endpoint.max_retries) + 1
            raise TranscriptionEndpointError(
                f"transcription endpoint {self.endpoint.base_url} (model {self.endpoint.model!r}): no transcript "
                f"after {tries} tries ({reply.call.failure or 'a reply without text'}); check that the server is "
                f"up and serves /audio/transcriptions, or raise recognizer.max_retries / timeout_s in "
                f"data_catalog.yaml")
        return Heard(str(reply.data.get("text") or "").strip(), language_code(reply.data.get("language")))

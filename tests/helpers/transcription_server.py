"""A real OpenAI-compatible `/v1/audio/transcriptions` server for tests: the packaged Whisper base
(`WhisperRecognizer` with an 8 s window: language identification, then greedy decoding in the
asked or detected language), answering over HTTP as a vLLM or faster-whisper-server would.
(faster-whisper's own `WhisperModel.transcribe` answers the same, at ~3 s a prompt on 2 cores
against ~0.5 s: too slow for a test.)

It speaks the API's shape: a multipart/form-data POST with `file` (a WAV), `model`, optional
`language` and `response_format` (`json`: `{"text"}`; `verbose_json`: `{"task", "language",
"duration", "text", "segments"}`, the language as OpenAI names it, e.g. "russian").

Built on `FaultServer` (tests/helpers/fault_server.py): the same lifecycle, request log and
stats, and `chaos(n)` names a fault for the n-th transcription request (`429`, `500`, `slow`:
longer than the client's timeout, `garbage`: a 200 whose body is not JSON).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import io
import threading

import numpy as np
import soundfile as sf
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from dataflux.fields import language_name
from dataflux.audio.whisper import WhisperRecognizer
from tests.helpers.fault_server import FaultServer

MODEL_ID = "whisper-base"
WINDOW_S = 8.0


def form_fields(content_type: str, body: bytes) -> dict[str, bytes]:
    """The parts of a multipart/form-data body by field name (the stdlib's MIME parser)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("not a multipart/form-data body")
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()}


class TranscriptionServer(FaultServer):
    def __init__(self, **kwargs):
        super().__init__(model_id=MODEL_ID, **kwargs)
        self._model: WhisperRecognizer | None = None
        self._model_lock = threading.Lock()

    def _hear(self, wav: bytes, language: str | None) -> dict:
        samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
        if rate != 16000:
            raise ValueError(f"expected 16 kHz audio, got {rate} Hz")
        with self._model_lock:  # one model, one request at a time
            if self._model is None:
                self._model = WhisperRecognizer(window_s=WINDOW_S)
            encoded = self._model.encode([samples])
            language = language or self._model.languages(None, encoded)[0].language
            text = self._model.transcribe(None, [language], encoded)[0]
        return {"task": "transcribe", "language": language_name(language).lower(),
                "duration": round(len(samples) / rate, 3), "text": text,
                "segments": [{"id": 0, "start": 0.0, "end": round(len(samples) / rate, 3), "text": text}]}

    async def _transcribe(self, request: Request) -> Response:
        body = await request.body()
        fields = form_fields(request.headers.get("content-type", ""), body)
        language = fields.get("language", b"").decode() or None
        with self._lock:
            number = self.stats["transcription_requests"]
            self.stats["transcription_requests"] += 1
            self.stats["requests"] += 1
            if self.keep_requests:
                self.requests.append({"path": "/v1/audio/transcriptions", "language": language,
                                      "model": fields.get("model", b"").decode(),
                                      "response_format": fields.get("response_format", b"").decode()})
        fault = self.chaos(number) if self.chaos is not None else None
        if fault == "429":
            return JSONResponse({"error": {"message": "rate limited"}}, status_code=429,
                                headers={"Retry-After": f"{self.retry_after_s:g}"})
        if fault == "500":
            return JSONResponse({"error": {"message": "internal error"}}, status_code=500)
        if fault == "garbage":
            return PlainTextResponse("<html>502 bad gateway</html>", headers={"content-type": "application/json"})
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        doc = await asyncio.to_thread(self._hear, fields["file"], language)
        if fields.get("response_format", b"json").decode() != "verbose_json":
            doc = {"text": doc["text"]}
        return JSONResponse(doc)

"""A local OpenAI-compatible chat server that injects faults on request, for tests and benchmarks.

A request asks for faults with markers in its message text: `[[fault:<kind>:<n>]]` makes the
first `n` requests of that conversation (keyed by its first user message) fail with `<kind>`;
later ones succeed, so a retry or a repair can be watched getting through. Kinds:

  429        HTTP 429 with `Retry-After: <retry_after_s>`
  500        HTTP 500
  slow       sleep `slow_s` before replying (longer than the client's timeout)
  garbage    HTTP 200 whose body is not JSON
  invalid    a reply whose content is not JSON
  violate    a reply whose JSON violates the requested schema
  length     `finish_reason: "length"` with cut-off content
  401        HTTP 401 (a rejected key)
  echo400    HTTP 400 whose error message quotes the request's Authorization header

`chaos(n)` may also name a fault for the n-th chat request, for runs that cannot carry markers.

Successful replies come from `reply(body) -> str` (default: `{"answer": "ok"}`;
`dataflux_reply` reads the DataFlux prompts and answers them sensibly). Every reply
reports `model_id` and a deterministic `usage` (prompt tokens = words of text in the request +
`audio_tokens` per audio part; completion tokens = words of the reply + 1); `/_stats` returns
the totals the server reported, so a client's cost report can be checked against them.

In tests: `with FaultServer(reply=...) as srv: srv.base_url` (uvicorn in a thread). For a
benchmark in its own process: `python tests/helpers/fault_server.py --port 0 --latency-ms 200`
(prints the base URL on its first line).

`HostileServer(kind)` is a raw socket server that answers every request with a reply no client
should buffer: an endless header, a body declared as 10 GB, or an endless chunked or unsized body.
It counts the bytes it got out before the client hung up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

MARKER = re.compile(r"\[\[fault:(\w+)(?::(\d+))?\]\]")
DEFAULT_MODEL_ID = "fault-model-1.0"


def _texts(body: dict) -> list[str]:
    out = []
    for msg in body.get("messages", []):
        content = msg.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p.get("text", "") for p in content if p.get("type") == "text")
    return out


def _audio_parts(body: dict) -> list[dict]:
    parts = []
    for msg in body.get("messages", []):
        if isinstance(msg.get("content"), list):
            parts.extend(p for p in msg["content"] if p.get("type") in ("input_audio", "audio_url"))
    return parts


def _conversation_key(body: dict) -> str:
    for msg in body.get("messages", []):
        if msg.get("role") == "user":
            content = msg["content"]
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            return content
    return ""


def default_reply(body: dict) -> str:
    return json.dumps({"answer": "ok"})


def _between(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    if i < 0:
        return None
    j = text.find(end, i + len(start))
    return text[i + len(start): j if j >= 0 else None]


def dataflux_reply(body: dict) -> str:
    """A stand-in model that answers the DataFlux prompts sensibly, by reading them:
    the writer asks about the vocabulary value the caption states, the judge keeps a question
    whose key an answerer and the measurement support, the answerer picks the option the text
    names. Enough to run the whole pipeline over HTTP without a model."""
    # The first user turn is the step's prompt; a repair request appends turns after it.
    system = next((m["content"] for m in body.get("messages", []) if m.get("role") == "system"), "")
    user = _conversation_key(body)
    if "You write multiple-choice questions" in system:
        vocab = _between(user, "come from this vocabulary: ", ".\n")
        caption = _between(user, 'Caption of the recording:\n"', '"') or ""
        values = [v.strip() for v in vocab.split(",")] if vocab else []
        stated = [v for v in sorted(values, key=len, reverse=True)
                  if re.search(r"(?<![\w-])" + re.escape(v) + r"(?![\w-])", caption, re.IGNORECASE)]
        stated = [v for v in stated if not any(v != w and v in w for w in stated)]
        if len(values) < 4 or len(stated) != 1:
            return json.dumps({"is_success": False, "reason": "the caption states no single value", "questions": []})
        phrasing = _between(user, "phrased like:\n- ", "\n") or "Which option best describes the sound?"
        choices = values[:4] if stated[0] in values[:4] else values[:3] + [stated[0]]
        return json.dumps({"is_success": True, "reason": f"the caption states {stated[0]}", "questions": [
            {"question": phrasing.strip(), "choices": choices, "answer_index": choices.index(stated[0]),
             "answer": stated[0]}]})
    if "You verify multiple-choice questions" in system:
        key = _between(user, "Keyed answer: (", "\n") or ""
        key_text = key.split(") ", 1)[-1].strip()
        answers = re.findall(r"(MODEL_[A-Z]) \(.*?\):\n  answer: (?:\([A-D]\) )?(.*)", user)
        measured = re.search(r"- measured (\w+): (.+)", user)
        agree = [label for label, text in answers if text.strip() == key_text]
        if measured and measured.group(2).strip() not in (key_text, "inconclusive"):
            leaf, value = measured.group(1), measured.group(2).strip()
            return json.dumps({"consensus": len(set(t for _, t in answers)) == 1,
                               "consistency_with_caption": "CONFLICT", "winner": "NONE",
                               "reasoning": f'measured {leaf} = "{value}", not {key_text}',
                               "final_action": "DISCARD"})
        return json.dumps({"consensus": len(set(t for _, t in answers)) == 1,
                           "consistency_with_caption": "STRONG_MATCH" if agree else "WEAK_MATCH",
                           "winner": agree[0] if agree else "NONE", "reasoning": "the key is supported",
                           "final_action": "KEEP_USING_WINNER" if agree else "DISCARD"})
    if "You answer multiple-choice questions" in system:
        options = re.findall(r"^\(([A-D])\) (.+)$", user, re.MULTILINE)
        caption = _between(user, "here is a description of it:\n\"", '"') or ""
        named = [letter for letter, text in options if text.lower() in caption.lower()]
        return json.dumps({"reasoning": "read from the description", "answer": named[0] if named else None})
    if "expert audio annotator" in system:
        return json.dumps({"caption": "A steady tone.", "transcript": None})
    return default_reply(body)


class FaultServer:
    def __init__(self, reply: Callable[[dict], str] = default_reply, *, model_id: str = DEFAULT_MODEL_ID,
                 latency_s: float = 0.0, slow_s: float = 3.0, retry_after_s: float = 1.0,
                 audio_tokens: int = 50, host: str = "127.0.0.1", port: int = 0, keep_requests: bool = True,
                 chaos: Callable[[int], str | None] | None = None):
        self.reply = reply
        self.chaos = chaos  # request number (0-based) -> fault kind or None, beside the markers
        self.model_id = model_id
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.retry_after_s = retry_after_s
        self.audio_tokens = audio_tokens
        self.host = host
        self.port = port
        self.keep_requests = keep_requests
        self.requests: list[dict] = []  # {"body", "headers", "path"} of every request received
        self.seen: Counter = Counter()  # conversation key -> requests so far
        self.stats = Counter()  # requests, replies, prompt_tokens, completion_tokens, faults:<kind>
        self.in_flight = 0
        self.connections: set[tuple] = set()  # client (host, port) pairs seen: one per TCP connection
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/audio/transcriptions", self._transcribe, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/_stats", self._stats, methods=["GET"]),
        ])

    # -- HTTP handlers -----------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.model_id, "object": "model"}]})

    async def _stats(self, request: Request) -> Response:
        with self._lock:
            return JSONResponse(dict(self.stats))

    async def _transcribe(self, request: Request) -> Response:
        raw = await request.body()
        with self._lock:
            self.stats["requests"] += 1
            if self.keep_requests:
                self.requests.append({"path": "/v1/audio/transcriptions", "headers": dict(request.headers),
                                      "body": {"bytes": len(raw)}})
        return JSONResponse({"text": "hello from the fault server"})

    def _fault_for(self, body: dict) -> str | None:
        key = _conversation_key(body)
        with self._lock:
            n_seen = self.seen[key]
            self.seen[key] += 1
        for text in _texts(body):
            for kind, n in MARKER.findall(text):
                if n_seen < int(n or 1):
                    return kind
        return None

    def _usage(self, body: dict, content: str) -> dict:
        prompt = sum(len(t.split()) for t in _texts(body)) + self.audio_tokens * len(_audio_parts(body))
        completion = len(content.split()) + 1
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _completion(self, body: dict, content: str, finish_reason: str = "stop") -> Response:
        usage = self._usage(body, content)
        with self._lock:
            self.stats["replies"] += 1
            self.stats["prompt_tokens"] += usage["prompt_tokens"]
            self.stats["completion_tokens"] += usage["completion_tokens"]
        return JSONResponse({
            "id": f"chatcmpl-{self.stats['replies']}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}],
            "usage": usage,
        })

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            number = self.stats["chat_requests"]
            self.stats["chat_requests"] += 1
            self.stats["requests"] += 1
            self.in_flight += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self.in_flight)
            if request.client is not None:
                self.connections.add((request.client.host, request.client.port))
            if self.keep_requests:
                self.requests.append({"path": "/v1/chat/completions", "headers": dict(request.headers),
                                      "body": body})
        try:
            return await self._chat_reply(request, body, number)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _chat_reply(self, request: Request, body: dict, number: int) -> Response:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        fault = self._fault_for(body)
        if fault is None and self.chaos is not None:
            fault = self.chaos(number)
        if fault is not None:
            with self._lock:
                self.stats[f"faults:{fault}"] += 1
        if fault == "429":
            return JSONResponse({"error": {"message": "rate limited", "type": "rate_limit"}}, status_code=429,
                                headers={"Retry-After": f"{self.retry_after_s:g}"})
        if fault == "401":
            return JSONResponse({"error": {"message": "invalid api key", "type": "auth"}}, status_code=401)
        if fault == "echo400":
            auth = request.headers.get("authorization", "")
            return JSONResponse({"error": {"message": f"bad request with credentials {auth}",
                                           "type": "invalid_request_error"}}, status_code=400)
        if fault == "500":
            return JSONResponse({"error": {"message": "internal error", "type": "server_error"}}, status_code=500)
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        if fault == "garbage":
            return PlainTextResponse("<html>502 bad gateway</html>", status_code=200,
                                     headers={"content-type": "application/json"})
        if fault == "invalid":
            return self._completion(body, "Sure! Here is my answer: answer = ok")
        if fault == "violate":
            return self._completion(body, json.dumps({"unexpected": 1}))
        content = self.reply(body)
        if fault == "length":
            return self._completion(body, content[: max(1, len(content) // 2)], finish_reason="length")
        return self._completion(body, content)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "FaultServer":
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
        # and without it every response waits ~40 ms for a delayed ACK (Nagle).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                backlog=2048, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"fault server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


HOSTILE_KINDS = ("endless_header", "huge_length", "endless_chunked", "endless_unsized")
_FILL = b"x" * 65536


class HostileServer:
    """One thread per connection; each reads a request head and then sends `kind` until the client
    closes the connection or `limit_bytes` went out (a client that never stops reading fails its test)."""

    def __init__(self, kind: str, *, limit_bytes: int = 1 << 30):
        if kind not in HOSTILE_KINDS:
            raise ValueError(f"kind {kind!r}: use one of {HOSTILE_KINDS}")
        self.kind = kind
        self.limit_bytes = limit_bytes
        self.sent = 0  # bytes written over all connections
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed by stop()
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _stream(self) -> tuple[bytes, bytes]:
        """The reply's start, then the bytes repeated after it."""
        if self.kind == "endless_header":
            return b"HTTP/1.1 200 OK\r\nx-padding: ", _FILL
        if self.kind == "huge_length":
            return b"HTTP/1.1 200 OK\r\ncontent-length: 10000000000\r\n\r\n", _FILL
        if self.kind == "endless_chunked":
            return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"%x\r\n%s\r\n" % (len(_FILL), _FILL)
        return b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n", _FILL

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                start, more = self._stream()
                conn.sendall(start)
                self.sent += len(start)
                while self.sent < self.limit_bytes:
                    conn.sendall(more)
                    self.sent += len(more)
            except OSError:  # the client hung up: what it should do
                return

    def __enter__(self) -> "HostileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self._sock.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--model-id", default=DEFAULT_MODEL_ID)
    args = p.parse_args(argv)
    server = FaultServer(latency_s=args.latency_ms / 1000.0, model_id=args.model_id, port=args.port,
                         keep_requests=False).start()
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())

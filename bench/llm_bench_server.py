"""A lean OpenAI-compatible chat server with a fixed latency, for bench/bench_llm.py.

    python bench/llm_bench_server.py --port 0 --latency-ms 200     # prints its base URL first

One asyncio protocol speaking just enough HTTP/1.1 (keep-alive, Content-Length bodies) to answer
`POST /v1/chat/completions` with `{"answer": "ok"}` after the latency, and `GET /_stats` with the
token totals it reported. Usage is counted as tests/helpers/fault_server.py counts it (prompt tokens = words
of the request's text, completion tokens = words of the reply + 1), so a client's cost report can be
checked against it. It spends far less CPU per request than a framework server, so a benchmark
measures the client, not the server (the benchmark prints the server's CPU per request too).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time

import orjson

CONTENT = '{"answer": "ok"}'
COMPLETION_TOKENS = len(CONTENT.split()) + 1
MODEL_ID = "bench-server-1.0"


def prompt_tokens(body: dict) -> int:
    n = 0
    for msg in body.get("messages", ()):
        content = msg.get("content")
        if isinstance(content, str):
            n += len(content.split())
        elif isinstance(content, list):
            n += sum(len(p.get("text", "").split()) for p in content if p.get("type") == "text")
    return n


class Stats:
    def __init__(self) -> None:
        self.totals = {"requests": 0, "replies": 0, "prompt_tokens": 0, "completion_tokens": 0,
                       "max_in_flight": 0}
        self.in_flight = 0


def _response(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: keep-alive\r\n\r\n").encode("ascii") + body


class BenchHTTP(asyncio.Protocol):
    def __init__(self, stats: Stats, latency_s: float):
        self.stats = stats
        self.latency_s = latency_s
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            body, self.buf = self.buf[head_end + 4:end], self.buf[end:]
            method, path = head.split(" ", 2)[:2]
            self.handle(method, path, body)

    def handle(self, method: str, path: str, body: bytes) -> None:
        totals = self.stats.totals
        if method == "GET" and path == "/_stats":
            self.send(_response("200 OK", orjson.dumps(totals)))
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            self.send(_response("404 Not Found", b'{"error": {"message": "not found"}}'))
            return
        totals["requests"] += 1
        self.stats.in_flight += 1
        totals["max_in_flight"] = max(totals["max_in_flight"], self.stats.in_flight)
        request = orjson.loads(body)
        usage = {"prompt_tokens": prompt_tokens(request), "completion_tokens": COMPLETION_TOKENS}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        asyncio.get_running_loop().call_later(self.latency_s, self.reply, usage)

    def reply(self, usage: dict) -> None:
        totals = self.stats.totals
        self.stats.in_flight -= 1
        totals["replies"] += 1
        totals["prompt_tokens"] += usage["prompt_tokens"]
        totals["completion_tokens"] += usage["completion_tokens"]
        body = orjson.dumps({
            "id": f"chatcmpl-{totals['replies']}", "object": "chat.completion", "created": int(time.time()),
            "model": MODEL_ID, "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": CONTENT},
                         "finish_reason": "stop"}]})
        self.send(_response("200 OK", body))

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)


async def serve(port: int, latency_s: float) -> None:
    stats = Stats()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY applies
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await asyncio.get_running_loop().create_server(lambda: BenchHTTP(stats, latency_s), sock=sock,
                                                            backlog=4096)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-ms", type=float, default=200.0)
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args.port, args.latency_ms / 1000.0))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())

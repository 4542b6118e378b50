"""A minimal HTTP/1.1 client for JSON POSTs over keep-alive connections, one pool per event loop.

Model calls are small JSON requests answered with small JSON replies, thousands a second against
a local inference server. A general HTTP client spends most of a call's CPU on what such a call
does not use (cookies, redirects, decompression, per-request objects); this one writes each
request as one buffer and parses the status line, headers and a `Content-Length` or chunked
body. Anything else (multipart uploads, proxies) goes through aiohttp (`transport`).

A connection is reused while the server keeps it alive; a reused connection that turns out to
be closed before any byte of the reply came back is replaced once, as browsers and HTTP client
libraries do.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Mapping


class ConnectionDropped(ConnectionError):
    def __init__(self, message: str, *, any_reply: bool):
        super().__init__(message)
        self.any_reply = any_reply


class _Connection(asyncio.Protocol):
    """One connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.got_bytes = False

    # -- protocol callbacks -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.got_bytes = True
        if self.waiter is not None and not self.waiter.done():
            try:
                reply = self._parse(final=False)
            except ValueError as exc:
                self.waiter.set_exception(ConnectionDropped(f"malformed HTTP reply: {exc}", any_reply=True))
                self.close()
                return
            if reply is not None:
                self.waiter.set_result(reply)

    def eof_received(self) -> bool:
        self._lost("the server closed the connection")
        return False

    def connection_lost(self, exc) -> None:
        self._lost(f"connection lost ({exc})" if exc else "the server closed the connection")

    def _lost(self, why: str) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            try:  # a reply without a length ends where the connection does
                reply = self._parse(final=True)
            except ValueError:
                reply = None
            if reply is not None:
                self.waiter.set_result(reply)
            else:
                self.waiter.set_exception(ConnectionDropped(why, any_reply=self.got_bytes))

    # -- requests -----------------------------------------------------------------------------

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def send(self, request: bytes) -> asyncio.Future:
        self.buf.clear()
        self.got_bytes = False
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    def _parse(self, *, final: bool) -> tuple[int, dict[str, str], bytes, bool] | None:
        """(status, headers, body, keep_alive) once the reply is complete, else None."""
        buf = self.buf
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        lines = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/"):
            raise ValueError(f"status line {lines[0][:60]!r}")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
        if 100 <= status < 200:  # an interim reply (100 Continue, 103 Early Hints): wait for the real one
            del buf[:head_end + 4]
            return self._parse(final=final) if buf else None
        keep_alive = headers.get("connection", "").lower() != "close" and version != "HTTP/1.0"
        start = head_end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = _dechunk(buf, start)
            return None if body is None else (status, headers, body, keep_alive)
        length = headers.get("content-length")
        if length is not None:
            end = start + int(length)
            return (status, headers, bytes(buf[start:end]), keep_alive) if len(buf) >= end else None
        if status in (204, 304):
            return status, headers, b"", keep_alive
        # No length: the body runs to the end of the connection.
        return (status, headers, bytes(buf[start:]), False) if final else None


def _dechunk(buf: bytearray, pos: int) -> bytes | None:
    """The body of a chunked reply from `pos`, or None while it is incomplete."""
    out = bytearray()
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";", 1)[0].strip() or b"0", 16)
        pos = line_end + 2
        if size == 0:
            # trailers (usually none) end with an empty line
            end = buf.find(b"\r\n\r\n", pos - 2)
            return bytes(out) if end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos:pos + size]
        pos += size + 2


def _tls_context() -> ssl.SSLContext:
    """Certificates checked against certifi's bundle where installed (as the OpenAI SDK does),
    else the system's."""
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class Http1Pool:
    """Keep-alive connections to one host for the loop that made the pool."""

    def __init__(self, scheme: str, host: str, port: int):
        self.scheme = scheme
        self.host = host
        self.port = port
        self.host_header = host if port == (443 if scheme == "https" else 80) else f"{host}:{port}"
        self._ssl = _tls_context() if scheme == "https" else None
        self._idle: list[_Connection] = []

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self._ssl,
                                               server_hostname=self.host if self._ssl else None)
        return conn

    def _request(self, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host_header}", f"Content-Length: {len(body)}"]
        head.extend(f"{k}: {v}" for k, v in headers.items())
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-case headers, body). Raises ConnectionError/OSError; the caller bounds
        the time (a cancelled request closes its connection)."""
        request = self._request(path, body, headers)
        while True:
            reused = False
            conn = None
            while self._idle:
                candidate = self._idle.pop()
                if not candidate.closed:
                    conn, reused = candidate, True
                    break
            if conn is None:
                conn = await self._open()
            try:
                status, reply_headers, reply_body, keep_alive = await conn.send(request)
            except ConnectionDropped as exc:
                conn.close()
                if reused and not exc.any_reply:
                    continue  # the server had closed the idle connection: once more, on a new one
                raise
            except BaseException:
                conn.close()  # a timeout or cancellation leaves the connection mid-reply
                raise
            if keep_alive and not conn.closed:
                self._idle.append(conn)
            else:
                conn.close()
            return status, reply_headers, reply_body

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

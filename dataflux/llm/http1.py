"""HTTP/1.1 for JSON POSTs over keep-alive connections, one bounded pool per event loop, on h11.

Model calls are small JSON requests answered with small JSON replies, thousands a second against
a local inference server. h11 (the HTTP/1.1 state machine under httpx and uvicorn) reads and
writes the messages, incrementally: a chunked body is decoded once, as it arrives. Around it,
this module holds what a client needs against a server it does not control:
- caps: a header block over `max_header_bytes` or a body over `max_body_bytes` ends the request
  with `ReplyTooLarge` after at most that much was buffered (a `Content-Length` over the cap
  fails before any of the body is read), so an endless header or a 10 GB body costs no memory;
- idle expiry: a connection left idle for `idle_s` is closed, not reused;
- a bounded pool: at most `max_connections` requests (so connections) at once per loop; more wait.

A connection is reused while the server keeps it alive; a reused connection that turns out to
be closed before any byte of the reply came back is replaced once, as browsers and HTTP client
libraries do. Anything else (multipart uploads, proxies) goes through aiohttp (`transport`).

Why not aiohttp for these too: measured side by side (bench/bench_llm.py, concurrency 256, 200 ms
latency, 2 shared cores), tuned aiohttp held 0.73 of the ideal rate at 0.36 ms of client CPU per
request, the hand-written parser this replaces 0.92 at 0.23 ms; the rule was >= 0.9 within 25% of
that CPU. This path held 0.86 at 0.37 ms: h11 is pure Python, ~65 us per request more than the
hand-written parser (SECURITY.md has the table).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Mapping

import h11

MAX_HEADER_BYTES = 64 * 1024  # status line and headers of one reply
MAX_BODY_BYTES = 32 * 1024 * 1024  # one reply body: a chat completion is kilobytes
IDLE_S = 30.0  # a kept-alive connection idle longer than this is closed, not reused
MAX_CONNECTIONS = 256


class ConnectionDropped(ConnectionError):
    def __init__(self, message: str, *, any_reply: bool):
        super().__init__(message)
        self.any_reply = any_reply


class ReplyTooLarge(ConnectionError):
    """The server sent more header or body than the caps allow; the connection is closed."""


def size_text(n: int) -> str:
    """A cap in KiB or MiB, for error messages."""
    return f"{n / 2 ** 20:g} MiB" if n >= 2 ** 20 else f"{n / 1024:g} KiB"


class _Connection(asyncio.Protocol):
    """One connection, one request at a time."""

    def __init__(self, max_header_bytes: int, max_body_bytes: int) -> None:
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.got_bytes = False
        self.idle_since = 0.0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_bytes = 0

    # -- protocol callbacks -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted for the next request
            return
        self.got_bytes = True
        self.h11.receive_data(data)
        self._read_events()

    def eof_received(self) -> bool:
        self._lost("the server closed the connection")
        return False

    def connection_lost(self, exc) -> None:
        self._lost(f"connection lost ({exc})" if exc else "the server closed the connection")

    def _lost(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.got_bytes:  # a reply without a length ends where the connection does
                self.h11.receive_data(b"")
                self._read_events()
            if not self.waiter.done():
                self.waiter.set_exception(ConnectionDropped(why, any_reply=self.got_bytes))

    # -- reading a reply ----------------------------------------------------------------------

    def _read_events(self) -> None:
        try:
            while True:
                event = self.h11.next_event()
                kind = type(event)
                if kind is h11.Data:
                    self._on_data(event.data)
                elif kind is h11.Response:
                    self._on_response(event)
                elif kind is h11.EndOfMessage:
                    self.waiter.set_result((self.status, self.headers, b"".join(self.body)))
                    return
                elif event is h11.NEED_DATA or event is h11.PAUSED or kind is h11.ConnectionClosed:
                    return
                # h11.InformationalResponse (100 Continue, 103 Early Hints): wait for the real reply
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                self._fail(ReplyTooLarge(f"the reply's status line and headers ran past "
                                         f"{size_text(self.max_header_bytes)} without ending: the server is "
                                         "broken or hostile; refused"))
            else:
                self._fail(ConnectionDropped(f"malformed HTTP reply: {exc}", any_reply=True))
        except ReplyTooLarge as exc:
            self._fail(exc)

    def _on_response(self, event: h11.Response) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in event.headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.status, self.headers = event.status_code, headers
        length = headers.get("content-length")
        if length is not None and int(length) > self.max_body_bytes:
            raise ReplyTooLarge(f"the reply declares a body of {int(length):,} bytes (Content-Length), over "
                                f"the {size_text(self.max_body_bytes)} cap: refused before reading it")

    def _on_data(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if self.body_bytes > self.max_body_bytes:
            raise ReplyTooLarge(f"the reply body ran past the {size_text(self.max_body_bytes)} cap "
                                "(chunked or unsized): refused")
        self.body.append(data)

    def _fail(self, exc: Exception) -> None:
        if not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    # -- requests -----------------------------------------------------------------------------

    def reusable(self) -> bool:
        """The reply ended, both sides keep the connection alive and nothing extra came after it."""
        conn = self.h11
        return (not self.closed and conn.our_state is h11.DONE and conn.their_state is h11.DONE
                and not conn.trailing_data[0])

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def send(self, request: bytes) -> asyncio.Future:
        self.got_bytes = False
        self.body, self.body_bytes = [], 0
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    def announce(self, request: h11.Request) -> None:
        """Tell h11 a request went out, so it reads the reply that is due (h11 is the reply
        parser and the connection's state; the pool writes the request's bytes itself)."""
        conn = self.h11
        if conn.our_state is h11.DONE:
            conn.start_next_cycle()
        conn.send(request)
        conn.send(_END)


_END = h11.EndOfMessage()


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

    def __init__(self, scheme: str, host: str, port: int, *, max_connections: int = MAX_CONNECTIONS,
                 idle_s: float = IDLE_S, max_header_bytes: int = MAX_HEADER_BYTES,
                 max_body_bytes: int = MAX_BODY_BYTES):
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.scheme = scheme
        self.host = host
        self.port = port
        self.host_header = host if port == (443 if scheme == "https" else 80) else f"{host}:{port}"
        self.idle_s = float(idle_s)
        self.max_header_bytes = int(max_header_bytes)
        self.max_body_bytes = int(max_body_bytes)
        self._ssl = _tls_context() if scheme == "https" else None
        self._idle: collections.deque[_Connection] = collections.deque()  # oldest first
        self._slots = asyncio.Semaphore(max_connections)
        self._heads: dict[tuple, tuple[h11.Request, bytes]] = {}
        self.opened = 0  # connections opened so far

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: _Connection(self.max_header_bytes, self.max_body_bytes), self.host, self.port,
            ssl=self._ssl, server_hostname=self.host if self._ssl else None)
        self.opened += 1
        return conn

    def _take_idle(self, now: float) -> _Connection | None:
        """The most recently used live idle connection; those idle past `idle_s` are closed."""
        idle = self._idle
        while idle and now - idle[0].idle_since > self.idle_s:
            idle.popleft().close()
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def _head(self, path: str, headers: Mapping[str, str]) -> tuple[h11.Request, bytes]:
        """The h11 event and the bytes of a request head, up to its Content-Length, made once per
        path and header set: h11 validates the headers (no CR/LF smuggled into a value) when the
        event is made, not again per request (~30 us each)."""
        key = (path, *headers.items())
        entry = self._heads.get(key)
        if entry is None:
            fields = [("Host", self.host_header), *headers.items()]
            # No Content-Length in the event: its length is written per request, with the body.
            event = h11.Request(method="POST", target=path, headers=fields)
            head = b"".join([b"POST ", event.target, b" HTTP/1.1\r\n",
                             *(name + b": " + value + b"\r\n" for name, value in event.headers.raw_items())])
            if len(self._heads) >= 64:  # headers that change per request: stay bounded
                self._heads.clear()
            entry = self._heads[key] = (event, head)
        return entry

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-case headers, body). Raises ConnectionError (`ReplyTooLarge` past a cap)
        or OSError; the caller bounds the time (a cancelled request closes its connection)."""
        event, head = self._head(path, headers)
        request = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        async with self._slots:
            return await self._post(event, request)

    async def _post(self, event: h11.Request, request: bytes) -> tuple[int, dict[str, str], bytes]:
        loop = asyncio.get_running_loop()
        while True:
            conn = self._take_idle(loop.time())
            reused = conn is not None
            if conn is None:
                conn = await self._open()
            try:
                conn.announce(event)
                reply = await conn.send(request)
            except ConnectionDropped as exc:
                conn.close()
                if reused and not exc.any_reply:
                    continue  # the server had closed the idle connection: once more, on a new one
                raise
            except BaseException:
                conn.close()  # a timeout or cancellation leaves the connection mid-reply
                raise
            if conn.reusable():
                conn.idle_since = loop.time()
                self._idle.append(conn)
            else:
                conn.close()
            return reply

    def close(self) -> None:
        idle, self._idle = self._idle, collections.deque()
        for conn in idle:
            conn.close()

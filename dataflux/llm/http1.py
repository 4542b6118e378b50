"""HTTP/1.1 for JSON POSTs over keep-alive connections, one bounded pool per event loop, on httptools.

Model calls are small JSON requests answered with small JSON replies, thousands a second against
a local inference server. httptools (llhttp, the C parser under uvicorn and Node.js) reads the
replies, incrementally: a chunked body is decoded once, as it arrives. A request is one bytes
buffer: its head (checked once per path and header set: no CR/LF smuggled into a value) and body.
Around the parser, this module holds what a client needs against a server it does not control:
- caps: a header block over `max_header_bytes` or a body over `max_body_bytes` ends the request
  with `ReplyTooLarge` after at most that much was buffered (httptools holds a header until it
  ends, so the header cap counts the bytes read; a `Content-Length` over the cap fails before any
  of the body is read), so an endless header or a 10 GB body costs no memory;
- idle expiry: a connection left idle for `idle_s` is closed, not reused;
- a bounded pool: at most `max_connections` requests (so connections) at once per loop; more wait.

A connection is reused while the server keeps it alive; a reused connection that turns out to
be closed before any byte of the reply came back is replaced once, as browsers and HTTP client
libraries do. Anything else (multipart uploads, proxies) goes through aiohttp (`transport`).

Why this and not aiohttp or h11: measured side by side (bench/bench_llm.py, 200 ms latency,
2 shared cores; SECURITY.md has the table), tuned aiohttp held 0.73 of the ideal rate at
concurrency 256 at 0.36 ms of client CPU per request against the first, hand-written parser's 0.92
at 0.23 ms (the rule was >= 0.9 within 25% of that CPU). h11, pure Python, cost ~0.1 ms more per
request than the hand-written parser; httptools costs the same as it. In one run (medians of 5
at 256, 3 at 1,024): 0.20 ms per request and 0.86 of ideal at 256 (h11 0.30 ms, 0.78;
hand-written 0.20 ms, 0.87), 0.23 ms and 0.36 at 1,024, where the client's CPU is the limit (h11
0.35 ms, 0.20; hand-written 0.25 ms, 0.34). In-process, rendering a request and parsing a reply
costs 7.6 us (h11 121 us, hand-written 7.9 us).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Mapping

import httptools

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
    """One connection, one request at a time; httptools' parser calls the `on_*` methods as the
    reply's parts arrive."""

    def __init__(self, max_header_bytes: int, max_body_bytes: int) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.keep_alive = False
        self._reset()

    def _reset(self) -> None:
        self.error: Exception | None = None  # what a callback raised, to report instead of httptools' wrapper
        self.got_bytes = False
        self.head_done = False  # the headers of the final (non-1xx) reply were read
        self.head_bytes = 0  # bytes read before the final reply's headers ended, interim replies included
        self.header_bytes = 0  # the same, counted from the headers the parser handed over
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
        if not self.head_done:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionDropped("the server switched protocols (101 or Upgrade) on a JSON "
                                         "request: refused", any_reply=True))
            return
        except httptools.HttpParserError as exc:
            self._fail(self.error or ConnectionDropped(f"malformed HTTP reply: {exc}", any_reply=True))
            return
        if not self.head_done and self.head_bytes > self.max_header_bytes:
            # httptools buffers a header it has not seen the end of: the cap is on the bytes read
            self._fail(ReplyTooLarge(f"the reply's status line and headers ran past "
                                     f"{size_text(self.max_header_bytes)} without ending: the server is "
                                     "broken or hostile; refused"))

    def eof_received(self) -> bool:
        self._lost("the server closed the connection")
        return False

    def connection_lost(self, exc) -> None:
        self._lost(f"connection lost ({exc})" if exc else "the server closed the connection")

    def _lost(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.head_done and self._ends_with_connection():
            waiter.set_result((self.status, self.headers, b"".join(self.body)))
        else:
            waiter.set_exception(ConnectionDropped(f"{why} before the reply ended" if self.got_bytes else why,
                                                   any_reply=self.got_bytes))

    def _ends_with_connection(self) -> bool:
        """A reply with neither a length nor chunks: its body is what came before the close."""
        return "content-length" not in self.headers and "chunked" not in self.headers.get("transfer-encoding", "")

    # -- parser callbacks (an exception raised here comes back out of feed_data) --------------

    def on_message_begin(self) -> None:
        if self.head_done:  # a second reply after the one asked for: the connection is not reused
            self.keep_alive = False
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.max_header_bytes:  # a block that ended, read in one piece
            self._raise(ReplyTooLarge(f"the reply's status line and headers ran past "
                                      f"{size_text(self.max_header_bytes)}: refused"))
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers = self.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            return  # 100 Continue, 103 Early Hints: wait for the real reply
        self.status, self.head_done = status, True
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            self._raise(ReplyTooLarge(f"the reply declares a body of {int(length):,} bytes (Content-Length), "
                                      f"over the {size_text(self.max_body_bytes)} cap: refused before reading it"))

    def on_body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if self.body_bytes > self.max_body_bytes:
            self._raise(ReplyTooLarge(f"the reply body ran past the {size_text(self.max_body_bytes)} cap "
                                      "(chunked or unsized): refused"))
        self.body.append(data)

    def on_message_complete(self) -> None:
        if not self.head_done or self.waiter.done():
            return  # an interim reply ended, or one nobody asked for (see on_message_begin)
        self.keep_alive = self.parser.should_keep_alive()
        self.waiter.set_result((self.status, self.headers, b"".join(self.body)))

    def _raise(self, exc: Exception) -> None:
        self.error = exc
        raise exc

    def _fail(self, exc: Exception) -> None:
        if not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    # -- requests -----------------------------------------------------------------------------

    def reusable(self) -> bool:
        """The reply ended, the server keeps the connection alive and nothing came after it."""
        return not self.closed and self.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def send(self, request: bytes) -> asyncio.Future:
        self._reset()
        self.keep_alive = False  # until this reply ends and says so
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def request_head(path: str, headers: Mapping[str, str]) -> bytes:
    """`POST path HTTP/1.1` and the header lines, as bytes. A path or header that would break the
    message (a space or control character in the path, a name that is not a token, CR, LF or NUL
    in a value: request smuggling) is refused with ValueError naming it."""
    if not (path and path.isascii() and path.isprintable() and " " not in path):
        raise ValueError(f"request path {path!r}: must not be empty or hold spaces, control or non-ASCII "
                         "characters (percent-encode them)")
    lines = [b"POST ", path.encode("ascii"), b" HTTP/1.1\r\n"]
    for name, value in headers.items():
        text = str(value).strip()
        if not (name.isascii() and name and _TOKEN.issuperset(name.encode("ascii"))):
            raise ValueError(f"request header name {name!r}: not an HTTP token (letters, digits, -)")
        if not text.isascii() or "\r" in text or "\n" in text or "\0" in text:
            raise ValueError(f"request header {name}: its value holds CR, LF, NUL or non-ASCII "
                             "characters; refused")
        lines += (name.encode("ascii"), b": ", text.encode("ascii"), b"\r\n")
    return b"".join(lines)


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
        self._heads: dict[tuple, bytes] = {}
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

    def _head(self, path: str, headers: Mapping[str, str]) -> bytes:
        """The bytes of a request head, up to its Content-Length, checked and made once per path
        and header set (headers that change per request are checked each time; the cache stays
        bounded)."""
        key = (path, *headers.items())
        head = self._heads.get(key)
        if head is None:
            head = request_head(path, {"Host": self.host_header, **headers})
            if len(self._heads) >= 64:
                self._heads.clear()
            head = self._heads[key] = head
        return head

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-case headers, body). Raises ConnectionError (`ReplyTooLarge` past a cap)
        or OSError; the caller bounds the time (a cancelled request closes its connection)."""
        request = b"%sContent-Length: %d\r\n\r\n%s" % (self._head(path, headers), len(body), body)
        async with self._slots:
            return await self._post(request)

    async def _post(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        loop = asyncio.get_running_loop()
        while True:
            conn = self._take_idle(loop.time())
            reused = conn is not None
            if conn is None:
                conn = await self._open()
            try:
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

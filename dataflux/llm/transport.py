"""HTTP to model endpoints: one connection pool per endpoint per process, on one event loop.

A run processes partitions in several threads, each with its own asyncio loop, and an HTTP
session belongs to the loop that made it. So the sessions live on one background loop thread
per process (started on first use, restarted after a fork, which is how Ray and multiprocessing
workers get their own), and a caller on any loop hands it a request and awaits the answer.
Every partition in the process then shares one keep-alive pool per endpoint.

Requests and replies are bytes: callers pre-render bodies with orjson and parse replies
themselves, so no per-request object model sits between the call and the socket.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from typing import Mapping

import aiohttp


class TransportTimeout(Exception):
    """No complete reply within the endpoint's `timeout_s`."""


class TransportConnectionError(Exception):
    """The server could not be reached, or dropped the connection before replying."""


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class FormFile:
    """A file part of a multipart upload."""

    field: str
    filename: str
    data: bytes
    content_type: str


class _LoopThread:
    """One event loop in a daemon thread, owning the process's HTTP sessions."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.sessions: dict[tuple[str, float], aiohttp.ClientSession] = {}
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), name="dataflux-http", daemon=True)
        self.thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.run_forever()

    def session(self, base_url: str, timeout_s: float) -> aiohttp.ClientSession:
        """The session for one endpoint (runs on the transport loop only)."""
        key = (base_url, timeout_s)
        session = self.sessions.get(key)
        if session is None or session.closed:
            # No connector limit: the endpoint's concurrency limiter decides what is in flight.
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
            session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
                skip_auto_headers=("User-Agent",), auto_decompress=True)
            self.sessions[key] = session
        return session

    async def close_all(self) -> None:
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            await session.close()


_current: _LoopThread | None = None
_current_lock = threading.Lock()


def _loop_thread() -> _LoopThread:
    global _current
    lt = _current
    if lt is not None and lt.pid == os.getpid() and lt.thread.is_alive():
        return lt
    with _current_lock:
        if _current is None or _current.pid != os.getpid() or not _current.thread.is_alive():
            _current = _LoopThread()  # after a fork the parent's thread does not exist here
        return _current


def _run_on_transport(coro) -> "asyncio.Future":
    """Schedule `coro` on the transport loop; an awaitable for the caller's loop. Cancelling
    the caller's await cancels the request."""
    lt = _loop_thread()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is lt.loop:
        return asyncio.ensure_future(coro)
    return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, lt.loop))


async def _post(base_url: str, timeout_s: float, path: str, headers: Mapping[str, str],
                body: bytes | None, form: tuple[dict, FormFile] | None) -> HttpReply:
    session = _loop_thread().session(base_url, timeout_s)
    url = base_url.rstrip("/") + path
    data: aiohttp.FormData | bytes | None = body
    if form is not None:
        fields, file = form
        data = aiohttp.FormData()
        for name, value in fields.items():
            data.add_field(name, str(value))
        data.add_field(file.field, file.data, filename=file.filename, content_type=file.content_type)
    try:
        async with session.post(url, data=data, headers=headers) as resp:
            raw = await resp.read()
            return HttpReply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, raw)
    except asyncio.TimeoutError as exc:  # aiohttp's timeouts subclass it
        raise TransportTimeout(f"no reply from {url} within {timeout_s:g} s") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TransportConnectionError(f"{url}: {type(exc).__name__}: {exc}") from exc


class HttpTransport:
    """POSTs to one endpoint through the process's shared pool. Safe from any thread or loop."""

    def __init__(self, base_url: str, timeout_s: float):
        self.base_url = base_url
        self.timeout_s = float(timeout_s)

    async def post_json(self, path: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        hdrs = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        return await _run_on_transport(_post(self.base_url, self.timeout_s, path, hdrs, body, None))

    async def post_form(self, path: str, fields: dict, file: FormFile, headers: Mapping[str, str]) -> HttpReply:
        return await _run_on_transport(_post(self.base_url, self.timeout_s, path, dict(headers), None,
                                             (fields, file)))


def close_pools() -> None:
    """Close every pooled connection of this process (the sessions reopen on next use)."""
    lt = _current
    if lt is None or lt.pid != os.getpid() or not lt.thread.is_alive():
        return
    asyncio.run_coroutine_threadsafe(lt.close_all(), lt.loop).result(timeout=30)


def pool_sessions() -> int:
    """How many endpoint sessions this process holds (for tests and reports)."""
    lt = _current
    return len(lt.sessions) if lt is not None and lt.pid == os.getpid() else 0

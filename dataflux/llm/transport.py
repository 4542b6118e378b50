"""HTTP to one model endpoint: a keep-alive connection pool per event loop, bytes in and out.

JSON requests go through the HTTP/1.1 pool in `http1` (httptools, with caps on header and body size,
idle expiry and at most `max_connections` per loop); multipart uploads and requests through a
proxy go through aiohttp, under the same body cap (aiohttp caps header lines itself).

A run processes partitions in several threads, each with its own asyncio loop, and a connection
belongs to the loop that opened it. So each loop gets its own pool for the endpoint, opened on
its first request and closed by `aclose()` when the partition ends; what holds across loops and
threads is the endpoint's concurrency limit (`limiter.CrossLoopLimiter`), which the client takes
around every request. (Handing every request to one process-wide loop thread instead was
measured: the hop across threads cost more CPU per request than it saved, and the two threads
passing the GIL back and forth delayed replies.)

Requests and replies are bytes: the client pre-renders bodies with orjson and parses replies
itself, so no per-request object model sits between the call and the socket. Proxy settings
come from the environment (`HTTPS_PROXY` and friends), as with the OpenAI SDK.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
import urllib.request
import weakref
from dataclasses import dataclass
from typing import Mapping

import aiohttp

from dataflux.llm.http1 import MAX_BODY_BYTES, MAX_CONNECTIONS, Http1Pool, ReplyTooLarge, size_text


_timeout = getattr(asyncio, "timeout", None)  # 3.11+: no task per request, unlike wait_for


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


def _env_proxy(base_url: str) -> str | None:
    """The proxy the environment names for this URL (HTTPS_PROXY, NO_PROXY, ...), looked up once."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class HttpTransport:
    """POSTs to one endpoint. Safe from any thread or loop: each loop uses its own pool."""

    def __init__(self, base_url: str, timeout_s: float, *, max_connections: int = MAX_CONNECTIONS,
                 max_body_bytes: int = MAX_BODY_BYTES):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.max_connections = int(max_connections)
        self.max_body_bytes = int(max_body_bytes)
        self._sessions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession]" = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.proxy = _env_proxy(self.base_url)
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{base_url!r}: an endpoint's base_url must be an http:// or https:// URL")
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = parts.path.rstrip("/")
        self._http1_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Http1Pool]" = \
            weakref.WeakKeyDictionary()

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            # No connector limit: the endpoint's concurrency limiter decides what is in flight.
            # No cookies and no decompression: an API reply needs neither, and both cost per request.
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",), auto_decompress=False)
            with self._lock:
                self._sessions[loop] = session
        return session

    async def _post(self, path: str, headers: Mapping[str, str], data) -> HttpReply:
        url = self.base_url + path
        try:
            async with self._session().post(url, data=data, headers=headers, proxy=self.proxy) as resp:
                body = await self._read_capped(resp)
                return HttpReply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)
        except asyncio.TimeoutError as exc:  # aiohttp's timeouts subclass it
            raise TransportTimeout(f"no reply from {url} within {self.timeout_s:g} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportConnectionError(f"{url}: {type(exc).__name__}: {exc}") from exc

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body, refused past `max_body_bytes` (declared or as it arrives)."""
        cap = self.max_body_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise ReplyTooLarge(f"the reply declares a body of {resp.content_length:,} bytes "
                                f"(Content-Length), over the {size_text(cap)} cap: refused before reading it")
        parts, size = [], 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > cap:
                raise ReplyTooLarge(f"the reply body ran past the {size_text(cap)} cap: refused")
            parts.append(chunk)
        return b"".join(parts)

    def _http1(self) -> Http1Pool:
        loop = asyncio.get_running_loop()
        pool = self._http1_pools.get(loop)
        if pool is None:
            pool = Http1Pool(self._scheme, self._host, self._port, max_connections=self.max_connections,
                             max_body_bytes=self.max_body_bytes)
            with self._lock:
                self._http1_pools[loop] = pool
        return pool

    async def post_json(self, path: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        hdrs = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        if self.proxy is not None:
            return await self._post(path, hdrs, body)
        url = self.base_url + path
        request = self._http1().post(self._path + path, body, hdrs)
        try:
            if _timeout is not None:
                async with _timeout(self.timeout_s):
                    status, reply_headers, reply_body = await request
            else:  # Python 3.10
                status, reply_headers, reply_body = await asyncio.wait_for(request, self.timeout_s)
        except asyncio.TimeoutError as exc:
            raise TransportTimeout(f"no reply from {url} within {self.timeout_s:g} s") from exc
        except (ConnectionError, OSError) as exc:
            raise TransportConnectionError(f"{url}: {type(exc).__name__}: {exc}") from exc
        return HttpReply(status, reply_headers, reply_body)

    async def post_form(self, path: str, fields: dict, file: FormFile, headers: Mapping[str, str]) -> HttpReply:
        form = aiohttp.FormData()
        for name, value in fields.items():
            form.add_field(name, str(value))
        form.add_field(file.field, file.data, filename=file.filename, content_type=file.content_type)
        return await self._post(path, dict(headers), form)

    async def aclose(self) -> None:
        """Close the running loop's connections (call before the loop ends)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            session = self._sessions.pop(loop, None)
            pool = self._http1_pools.pop(loop, None)
        if pool is not None:
            pool.close()
        if session is not None:
            await session.close()

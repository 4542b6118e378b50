"""A concurrency limit that holds across event loops and threads.

A run may process partitions in several threads, each with its own asyncio loop (Prefect's
thread task runner does this). `asyncio.Semaphore` belongs to one loop, so an endpoint's
`concurrency` would silently multiply by the number of partitions. This limiter keeps one
count under a thread lock and wakes waiters in their own loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class CrossLoopLimiter:
    """At most `limit` holders at once, whichever loop or thread they run in."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._free = limit
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self.limit - self._free

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            fut = loop.create_future()
            entry = (loop, fut)
            self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            with self._lock:
                if entry in self._waiters:  # never granted: just leave the queue
                    self._waiters.remove(entry)
                    raise
            if fut.done() and not fut.cancelled():  # granted, then cancelled: give it back
                self.release()
            # else: the grant is in flight; `_grant` sees the cancelled future and releases
            raise

    def release(self) -> None:
        with self._lock:
            if not self._waiters:
                self._free += 1
                if self._free > self.limit:
                    raise RuntimeError("CrossLoopLimiter released more often than acquired")
                return
            loop, fut = self._waiters.popleft()
        # The slot passes straight to the waiter; it is never counted free in between.
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # same loop: no wake-up through the loop's self-pipe needed
            self._grant(fut)
            return
        try:
            loop.call_soon_threadsafe(self._grant, fut)
        except RuntimeError:  # the waiter's loop is closed: pass the slot on
            self.release()

    def _grant(self, fut: asyncio.Future) -> None:
        if fut.cancelled():
            self.release()
        else:
            fut.set_result(None)

    async def __aenter__(self) -> "CrossLoopLimiter":
        await self.acquire()
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()

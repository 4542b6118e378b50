"""Cache reads and writes of many concurrent calls, batched into one query each.

A partition runs many clips at once, so many calls look up the cache in the same moment. Each
lookup joins the batch of its event loop; one thread runs the whole batch as one query
(`cache_get_many`) while the next batch gathers. Writes go the same way (`cache_put_many`),
and a call returns only after its write is done, so what a finished call stored is in the
catalog, as with single writes. A cache without the batch methods is asked key by key.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, Callable

from dataflux.llm.cache import CallCache


class _LoopBatch:
    __slots__ = ("pending", "busy", "task")

    def __init__(self) -> None:
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.busy = False
        self.task: asyncio.Task | None = None  # held so the running batch is not collected


class _Coalescer:
    """Items submitted from one loop while its batch runs wait for the next one; `run(items)`
    returns one result per item and runs in a worker thread."""

    def __init__(self, run: Callable[[list], list]):
        self._run = run
        self._batches: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBatch]" = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _batch(self, loop: asyncio.AbstractEventLoop) -> _LoopBatch:
        batch = self._batches.get(loop)
        if batch is None:
            with self._lock:
                batch = self._batches.setdefault(loop, _LoopBatch())
        return batch

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        batch = self._batch(loop)
        fut = loop.create_future()
        batch.pending.append((item, fut))
        if not batch.busy:
            batch.busy = True
            # Start on the next turn of the loop, so the calls started in this turn join in.
            loop.call_soon(self._start, loop, batch)
        return await fut

    def _start(self, loop: asyncio.AbstractEventLoop, batch: _LoopBatch) -> None:
        batch.task = loop.create_task(self._drain(batch))

    async def _drain(self, batch: _LoopBatch) -> None:
        try:
            while batch.pending:
                work, batch.pending = batch.pending, []
                try:
                    results = await asyncio.to_thread(self._run, [item for item, _ in work])
                except BaseException as exc:  # every waiter of the batch hears why
                    for _, fut in work:
                        if not fut.done():
                            fut.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, fut), result in zip(work, results):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            batch.busy = False


class CacheBatcher:
    """`get`/`put` on a `CallCache`, batched per event loop."""

    def __init__(self, cache: CallCache):
        self.cache = cache
        self.queries = 0  # batch queries run (reads and writes), for tests and benchmarks
        self._gets = _Coalescer(self._get_many)
        self._puts = _Coalescer(self._put_many)

    def _get_many(self, keys: list[str]) -> list[dict | None]:
        self.queries += 1
        many = getattr(self.cache, "cache_get_many", None)
        if many is not None:
            found = many(keys)
            return [found.get(k) for k in keys]
        return [self.cache.cache_get(k) for k in keys]

    def _put_many(self, calls: list[dict]) -> list[None]:
        self.queries += 1
        many = getattr(self.cache, "cache_put_many", None)
        if many is not None:
            many(calls)
        else:
            for c in calls:
                self.cache.cache_put(c["request_sha256"], c["step"], c["model"], c["response"], c["tokens_in"],
                                     c["tokens_out"], c["cost_usd"], c["latency_s"])
        return [None] * len(calls)

    async def get(self, request_sha256: str) -> dict | None:
        return await self._gets.submit(request_sha256)

    async def put(self, call: dict) -> None:
        await self._puts.submit(call)

"""The call path shared by a run's partitions: one client and one concurrency limit per endpoint in
a process, keep-alive connections, batched cache reads and writes, and the HTTP/1.1 client's
handling of what servers send (chunked bodies, closed connections, idle expiry, a bounded pool,
and hostile replies that must end in a clear error, not in memory exhaustion)."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from dataflux.config import config_from_dict
from dataflux.llm.cache import MemoryCallCache
from dataflux.llm.cache_batches import CacheBatcher
from dataflux.llm.catalog_cache import CatalogCallCache
from dataflux.llm.client import EndpointPool
from dataflux.llm.http1 import Http1Pool
from dataflux.llm.transport import FormFile, HttpTransport, TransportConnectionError
from tests.helpers.fault_server import HOSTILE_KINDS, FaultServer, HostileServer

SCHEMA = {"type": "object", "required": ["answer"], "additionalProperties": False,
          "properties": {"answer": {"type": "string"}}}


def run_config(base_url: str, concurrency: int):
    return config_from_dict({
        "version": 1,
        "sources": {"demo": {"kind": "demo", "size": 4, "seed": 1, "license": "CC0-1.0 (synthesized)"}},
        "endpoints": {"ep": {"base_url": base_url, "model": "m", "structured_output": "json_object",
                             "concurrency": concurrency, "timeout_s": 10.0, "max_retries": 0}},
        "steps": {"generate": {"backend": "openai", "endpoint": "ep"}},
    }, origin="<call path test>")


def test_partitions_in_threads_share_one_client_its_limit_and_kept_alive_connections():
    from dataflux.backends import build_steps

    with FaultServer(latency_s=0.03) as srv:
        config = run_config(srv.base_url, concurrency=3)
        seen, errors = [], []

        def partition(k: int):
            try:
                # what each partition of a run does: build its steps, then call from its own loop
                _, pool = build_steps(config, None, run_id="shared-run")
                client = pool.client("ep")
                seen.append((pool, client))

                async def calls():
                    try:
                        return await asyncio.gather(*(client.complete(
                            step="t", messages=[{"role": "user", "content": f"p{k} q{i}"}], schema=SCHEMA)
                            for i in range(10)))
                    finally:
                        await pool.aclose()

                replies = asyncio.run(calls())
                assert all(r.call.failure is None for r in replies)
            except Exception as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=partition, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        pools = {id(p) for p, _ in seen}
        clients = {id(c) for _, c in seen}
        assert len(pools) == 1 and len(clients) == 1, "partitions in one process share the pool and client"
        assert srv.stats["chat_requests"] == 30
        assert srv.stats["max_in_flight"] == 3, "the endpoint's limit holds across the partitions' loops"
        # keep-alive: each loop opens at most `concurrency` connections and reuses them
        assert len(srv.connections) <= 3 * 3 < 30
        counters = seen[0][0].counters.snapshot()["ep"]
        assert counters["requests"] == counters["calls"] == 30 and counters["ok"] == 30


def cache_rows(n: int, tag: str) -> list[dict]:
    return [{"request_sha256": f"{tag}{i:060d}", "step": "s", "model": "m",
             "response": {"data": {"answer": f"{tag}{i}"}, "text": None, "failure": None},
             "tokens_in": i, "tokens_out": 2 * i, "cost_usd": i / 1e6, "latency_s": 0.1} for i in range(n)]


@pytest.mark.parametrize("kind", ["catalog", "memory"])
def test_batched_cache_lookup_returns_what_single_lookups_return(tmp_path, kind):
    cache = CatalogCallCache(tmp_path / "catalog.duckdb") if kind == "catalog" else MemoryCallCache()
    singles, batch = cache_rows(5, "a"), cache_rows(40, "b")
    for r in singles:
        cache.cache_put(r["request_sha256"], r["step"], r["model"], r["response"], r["tokens_in"],
                        r["tokens_out"], r["cost_usd"], r["latency_s"])
    # the first stored reply of a hash wins, within a batch and against what is stored
    changed = {**batch[0], "response": {"data": "second"}}
    restored = {**singles[0], "response": {"data": "later"}}
    cache.cache_put_many(batch + [changed, restored])
    keys = [r["request_sha256"] for r in singles + batch] + ["f" * 64]
    many = cache.cache_get_many(keys)
    assert set(many) == set(keys) - {"f" * 64}
    for key in keys:
        assert many.get(key) == cache.cache_get(key)
    def response(key):  # the memory cache keeps the JSON text, the catalog a parsed value
        value = many[key]["response"]
        return json.loads(value) if isinstance(value, str) else value

    assert response(batch[0]["request_sha256"]) == batch[0]["response"]
    assert response(singles[0]["request_sha256"]) == singles[0]["response"]
    assert many[batch[7]["request_sha256"]]["tokens_out"] == 14


def test_concurrent_lookups_of_one_loop_become_few_queries(tmp_path):
    catalog = CatalogCallCache(tmp_path / "catalog.duckdb")
    rows = cache_rows(300, "c")
    batcher = CacheBatcher(catalog)

    async def main():
        await asyncio.gather(*(batcher.put(r) for r in rows[:200]))
        writes = batcher.queries
        keys = [r["request_sha256"] for r in rows]
        got = await asyncio.gather(*(batcher.get(k) for k in keys))
        return writes, batcher.queries - writes, keys, got

    writes, reads, keys, got = asyncio.run(main())
    assert writes <= 2 and reads <= 2, (writes, reads)  # one batch, or two when the first went early
    assert [g is not None for g in got] == [True] * 200 + [False] * 100
    assert got[:200:25] == [catalog.cache_get(k) for k in keys[:200:25]]


async def scripted_server(replies: list[bytes], close_after_each: bool):
    """A raw server answering the n-th request on any connection with replies[n]; it counts
    connections, and closes each one after replying when told to."""
    state = {"n": 0, "connections": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        state["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                              if ln.lower().startswith(b"content-length")][0])
                await reader.readexactly(length)
                writer.write(replies[state["n"]])
                state["n"] += 1
                await writer.drain()
                if close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], state


def test_http1_reads_chunked_and_length_bodies_over_one_kept_alive_connection():
    chunked = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
               b"7\r\n{\"a\": 1\r\n2\r\n0}\r\n0\r\n\r\n")
    sized = b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\ncontent-length: 2\r\n\r\n{}"

    async def main():
        server, port, state = await scripted_server([chunked, sized], close_after_each=False)
        async with server:
            pool = Http1Pool("http", "127.0.0.1", port)
            first = await pool.post("/v1/x", b"{}", {})
            second = await pool.post("/v1/x", b"{}", {})
            pool.close()
            await asyncio.sleep(0.05)  # the server's handler sees the close and ends
        return first, second, state

    first, second, state = asyncio.run(main())
    assert first[0] == 200 and first[2] == b'{"a": 10}'
    assert second[0] == 429 and second[1]["retry-after"] == "2" and second[2] == b"{}"
    assert state["connections"] == 1


def test_http1_replaces_a_kept_alive_connection_the_server_closed():
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    async def main():
        server, port, state = await scripted_server([ok, ok], close_after_each=True)
        async with server:
            pool = Http1Pool("http", "127.0.0.1", port)
            first = await pool.post("/", b"1", {})
            await asyncio.sleep(0.05)  # the server has closed the idle connection by now
            second = await pool.post("/", b"2", {})
            pool.close()
        return first, second, state

    first, second, state = asyncio.run(main())
    assert first[2] == second[2] == b"ok"
    assert state["connections"] == 2


def test_http1_skips_interim_replies_and_reads_a_body_that_ends_with_the_connection():
    interim = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
               b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    unsized = b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{\"a\": 1}"

    async def main():
        server, port, state = await scripted_server([interim, unsized], close_after_each=True)
        async with server:
            pool = Http1Pool("http", "127.0.0.1", port)
            first = await pool.post("/", b"1", {})
            second = await pool.post("/", b"2", {})
            pool.close()
        return first, second, state

    first, second, state = asyncio.run(main())
    assert first[0] == 200 and first[2] == b"ok"
    assert second[0] == 200 and second[2] == b'{"a": 1}'
    assert state["connections"] == 2


def test_http1_closes_a_connection_idle_past_its_expiry_instead_of_reusing_it():
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    async def main(idle_s: float):
        server, port, state = await scripted_server([ok, ok], close_after_each=False)
        async with server:
            pool = Http1Pool("http", "127.0.0.1", port, idle_s=idle_s)
            await pool.post("/", b"1", {})
            await asyncio.sleep(0.15)
            second = await pool.post("/", b"2", {})
            pool.close()
            await asyncio.sleep(0.05)
        return second, state, pool.opened

    second, state, opened = asyncio.run(main(idle_s=0.05))
    assert second[2] == b"ok" and state["connections"] == opened == 2
    _, state, opened = asyncio.run(main(idle_s=30.0))
    assert state["connections"] == opened == 1


def test_http1_pool_opens_at_most_max_connections():
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    async def main():
        server, port, state = await scripted_server([ok] * 12, close_after_each=False)
        async with server:
            pool = Http1Pool("http", "127.0.0.1", port, max_connections=2)
            replies = await asyncio.gather(*(pool.post("/", b"%d" % i, {}) for i in range(12)))
            pool.close()
            await asyncio.sleep(0.05)
        return replies, state

    replies, state = asyncio.run(main())
    assert [r[2] for r in replies] == [b"ok"] * 12
    assert state["connections"] == 2


def test_http1_caps_a_header_block_that_arrives_whole_and_never_reuses_a_connection_with_extra_bytes():
    """httptools hands over a header only once it ends, and parses on past the end of a reply:
    a 70 KB header that arrives in one piece is refused all the same, and a second reply nobody
    asked for (in the same packet) leaves the connection closed, not reused for the next request."""
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    big = b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 70_000 + b"\r\ncontent-length: 2\r\n\r\nok"

    async def main():
        server, port, state = await scripted_server([big, ok + b"HTTP/1.1 200 OK\r\n", ok], close_after_each=False)
        async with server:
            pool = Http1Pool("http", "127.0.0.1", port)
            with pytest.raises(ConnectionError) as refused:
                await pool.post("/", b"1", {})
            replies = [await pool.post("/", b"%d" % i, {}) for i in (2, 3)]
            pool.close()
            await asyncio.sleep(0.05)
        return str(refused.value), replies, state

    refused, replies, state = asyncio.run(main())
    assert "ran past 64 KiB" in refused, refused
    assert [r[2] for r in replies] == [b"ok", b"ok"]
    assert state["connections"] == 3  # refused, then the one with extra bytes, then a fresh one


def test_http1_a_sized_or_chunked_body_cut_short_by_the_close_is_an_error_not_a_short_reply():
    sized = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok"
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nok"

    async def main():
        server, port, _ = await scripted_server([sized, chunked], close_after_each=True)
        async with server:
            pool = Http1Pool("http", "127.0.0.1", port)
            errors = []
            for i in range(2):
                with pytest.raises(ConnectionError) as err:
                    await pool.post("/", b"%d" % i, {})
                errors.append(str(err.value))
            pool.close()
        return errors

    assert asyncio.run(main()) == ["the server closed the connection before the reply ended"] * 2


CAP = 1 << 20  # a small body cap, so an endless body is refused fast


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
@pytest.mark.parametrize("path", ["json", "upload"])
def test_a_hostile_reply_ends_in_a_clear_error_after_at_most_a_cap(kind, path):
    """An endless header, a body declared as 10 GB, an endless chunked or unsized body: the
    request fails naming the cap, and the client hangs up long before the server runs out."""
    with HostileServer(kind, limit_bytes=256 << 20) as srv:
        transport = HttpTransport(srv.base_url, timeout_s=30.0, max_body_bytes=CAP)

        async def main():
            try:
                if path == "json":
                    return await transport.post_json("/chat/completions", b"{}", {})
                return await transport.post_form("/audio/transcriptions", {"model": "m"},
                                                 FormFile("file", "a.wav", b"RIFF", "audio/wav"), {})
            finally:
                await transport.aclose()

        with pytest.raises(TransportConnectionError) as err:
            asyncio.run(main())
    message = str(err.value)
    assert srv.base_url in message
    if path == "json" or kind != "endless_header":  # aiohttp caps header lines with its own words
        assert "cap" in message or "ran past" in message, message
    assert srv.sent < 32 << 20, f"the client read {srv.sent:,} bytes of a hostile reply before giving up"


def test_a_hostile_endpoint_costs_a_call_a_failure_not_the_run():
    with HostileServer("huge_length") as srv:
        pool = EndpointPool({"ep": {"base_url": srv.base_url, "model": "m", "max_retries": 1, "timeout_s": 30}},
                            backoff_base_s=0.0)
        client = pool.client("ep")

        async def main():
            try:
                return await client.complete(step="t", messages=[{"role": "user", "content": "hi"}], schema=SCHEMA)
            finally:
                await pool.aclose()

        reply = asyncio.run(main())
    assert reply.data is None and reply.call.failure == "connection"
    counters = pool.counters.snapshot()["ep"]
    assert counters["requests"] == 2 and counters["failed"] == {"connection": 1}


@pytest.mark.parametrize("fmt", ["input_audio", "audio_url"])
def test_a_clips_audio_is_encoded_once_and_hashes_as_before(fmt):
    import numpy as np

    from dataflux.llm.cache import request_sha256
    from dataflux.llm.messages import clip_audio_part, clip_wav, with_audio
    from dataflux.records import Clip, SourceItem

    def clip(freq: float) -> Clip:
        t = np.arange(8000, dtype=np.float32) / 16000
        return Clip(SourceItem("demo", f"c{freq}", labels={}), "a" * 64,
                    (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000, 8000, {}, {})

    def key(messages):
        return request_sha256(model="m", messages=messages, params={}, schema=None, structured_output="text",
                              prompt_sha256="p")

    prompt = [{"role": "user", "content": "which pitch?"}]
    a, b = clip(440.0), clip(880.0)
    first, again = with_audio(prompt, clip_audio_part(a, fmt), fmt), with_audio(prompt, clip_audio_part(a, fmt), fmt)
    fresh = with_audio(prompt, clip_wav(a), fmt)  # encoded anew, as every call did before
    assert first == fresh and key(first) == key(again) == key(fresh)
    inner = "input_audio" if fmt == "input_audio" else "audio_url"
    assert first[0]["content"][0][inner] is again[0]["content"][0][inner]  # the same encoding, reused
    assert key(with_audio(prompt, clip_audio_part(b, fmt), fmt)) != key(first)

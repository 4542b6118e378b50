"""The LLM client against a real local HTTP server that injects faults (tests/helpers/fault_server.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

import pytest

from dataflux.llm.budget import Budget, BudgetExhausted
from dataflux.llm.cache import MemoryCallCache, request_sha256
from dataflux.llm.client import EndpointPool
from dataflux.llm.endpoint import EndpointConfigError
from dataflux.llm.replies import EndpointError, retry_after_s
from tests.helpers.fault_server import FaultServer

SCHEMA = {"type": "object", "required": ["answer"], "additionalProperties": False,
          "properties": {"answer": {"type": "string"}}}


@pytest.fixture
def server():
    with FaultServer(retry_after_s=1.0, slow_s=2.0) as srv:
        yield srv


def make_pool(base_url: str, cache=None, budget=None, **endpoint) -> EndpointPool:
    cfg = {"base_url": base_url, "model": "requested-model", "max_retries": 3, "timeout_s": 5.0,
           "concurrency": 4, **endpoint}
    return EndpointPool({"ep": cfg}, cache=cache, budget=budget, backoff_base_s=0.01, backoff_max_s=0.05)


def ask(pool: EndpointPool, texts: list[str], schema=SCHEMA, max_tokens: int = 32, seed: int | None = 7):
    async def run():
        client = pool.client("ep")
        try:
            return await asyncio.gather(*(client.complete(
                step="test", messages=[{"role": "user", "content": t}], schema=schema, max_tokens=max_tokens,
                seed=seed, prompt_sha256="p" * 64) for t in texts))
        finally:
            await pool.aclose()
    return asyncio.run(run())


def counters(pool: EndpointPool) -> dict:
    return pool.counters.snapshot()["ep"]


def test_rate_limit_waits_for_retry_after_then_succeeds(server):
    pool = make_pool(server.base_url)
    t0 = time.perf_counter()
    [reply] = ask(pool, ["q [[fault:429:1]]"])
    elapsed = time.perf_counter() - t0
    assert reply.call.failure is None and reply.data == {"answer": "ok"}
    assert elapsed >= 1.0, "Retry-After: 1 must be honoured, not replaced by the short backoff"
    c = counters(pool)
    assert c["events"] == {"rate_limited": 1} and c["retries"] == 1 and c["requests"] == 2 and c["failed"] == {}


def test_server_errors_past_max_retries_end_as_recorded_failure(server):
    pool = make_pool(server.base_url, max_retries=2)
    [reply] = ask(pool, ["q [[fault:500:5]]"])
    assert reply.data is None and reply.call.failure == "server_error"
    c = counters(pool)
    assert c["requests"] == 3 and c["events"] == {"server_error": 3} and c["failed"] == {"server_error": 1}


def test_timeout_is_retried(server):
    pool = make_pool(server.base_url, timeout_s=0.5)
    [reply] = ask(pool, ["q [[fault:slow:1]]"])
    assert reply.call.failure is None
    assert counters(pool)["events"] == {"timeout": 1}


def test_refused_connection_is_recorded_as_connection_failure():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = make_pool(f"http://127.0.0.1:{port}/v1", max_retries=1)
    [reply] = ask(pool, ["q"])
    assert reply.call.failure == "connection" and reply.data is None
    assert reply.call.model == "requested-model"  # no server ever answered
    c = counters(pool)
    assert c["events"] == {"connection": 2} and c["failed"] == {"connection": 1} and c["ok"] == 0


def test_non_json_http_body_is_a_retried_server_error(server):
    pool = make_pool(server.base_url)
    [reply] = ask(pool, ["q [[fault:garbage:1]]"])
    assert reply.call.failure is None and counters(pool)["events"] == {"server_error": 1}


def test_invalid_json_is_repaired_by_showing_the_model_its_error(server):
    pool = make_pool(server.base_url)
    [reply] = ask(pool, ["q [[fault:invalid:1]]"])
    assert reply.data == {"answer": "ok"} and reply.call.failure is None
    repair = server.requests[-1]["body"]["messages"]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert repair[1]["content"].startswith("Sure! Here is my answer")
    assert "not valid JSON" in repair[2]["content"] and '"answer"' in repair[2]["content"]
    c = counters(pool)
    assert c["events"] == {"invalid_json": 1} and c["repairs"] == 1 and c["failed"] == {}
    # tokens of both requests are charged to the call
    assert reply.call.tokens_in == server.stats["prompt_tokens"]


def test_schema_violation_after_one_repair_is_a_recorded_failure(server):
    pool = make_pool(server.base_url)
    [reply] = ask(pool, ["q [[fault:violate:2]]"])
    assert reply.data is None and reply.call.failure == "schema_violation"
    assert "'answer' is a required property" in server.requests[-1]["body"]["messages"][-1]["content"]
    c = counters(pool)
    assert c["requests"] == 2 and c["events"] == {"schema_violation": 2} and c["failed"] == {"schema_violation": 1}


def test_truncated_reply_is_retried_once_with_twice_the_tokens(server):
    pool = make_pool(server.base_url)
    [reply] = ask(pool, ["q [[fault:length:1]]"], max_tokens=16)
    assert reply.call.failure is None
    assert [r["body"]["max_tokens"] for r in server.requests] == [16, 32]
    assert reply.call.params["max_tokens"] == 16  # provenance records what the step asked for
    assert counters(pool)["events"] == {"truncated": 1}


def test_truncated_twice_is_a_recorded_failure(server):
    pool = make_pool(server.base_url)
    [reply] = ask(pool, ["q [[fault:length:2]]"])
    assert reply.call.failure == "truncated" and reply.data is None
    assert counters(pool)["failed"] == {"truncated": 1}


def test_rejected_key_raises_naming_the_variable_not_the_key(server, monkeypatch):
    monkeypatch.setenv("DFX_TEST_KEY", "sk-wrong-123")
    pool = make_pool(server.base_url, api_key_env="DFX_TEST_KEY")
    with pytest.raises(EndpointError, match=r"\$DFX_TEST_KEY") as err:
        ask(pool, ["q [[fault:401:9]]"])
    assert "sk-wrong-123" not in str(err.value)
    assert server.stats["requests"] == 1  # no retries against a rejected key


def test_missing_key_variable_is_a_config_error_naming_it(server, monkeypatch):
    monkeypatch.delenv("DFX_UNSET_KEY", raising=False)
    pool = make_pool(server.base_url, api_key_env="DFX_UNSET_KEY")
    with pytest.raises(EndpointConfigError, match="export DFX_UNSET_KEY"):
        ask(pool, ["q"])


def test_api_key_is_sent_but_never_cached_logged_or_recorded(server, monkeypatch, caplog, tmp_path):
    from dataflux.llm.catalog_cache import CatalogCallCache

    key = "sk-planted-" + "9f3a" * 8
    monkeypatch.setenv("DFX_PLANTED_KEY", key)
    catalog = CatalogCallCache(tmp_path / "catalog.duckdb")
    pool = make_pool(server.base_url, cache=catalog, api_key_env="DFX_PLANTED_KEY", max_retries=1)
    with caplog.at_level(logging.DEBUG):
        replies = ask(pool, ["q1", "q2 [[fault:500:1]]", "q3 [[fault:echo400:1]]", "q4 [[fault:invalid:1]]"])
    assert all(r["headers"]["authorization"] == f"Bearer {key}" for r in server.requests)
    assert [r.call.failure for r in replies] == [None, None, "client_error", None]
    written = [caplog.text, json.dumps(pool.report()), json.dumps([r.call.as_dict() for r in replies])]
    written += [json.dumps(r.text) for r in replies]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            written.append(path.read_bytes().decode("latin-1"))
    assert "echo400" in caplog.text or "client_error" in caplog.text
    for blob in written:
        assert key not in blob
        assert "9f3a9f3a" not in blob
    assert not hasattr(pool.client("ep"), "api_key")


def test_rerun_over_warm_cache_makes_zero_requests(server, tmp_path):
    from dataflux.llm.catalog_cache import CatalogCallCache

    catalog = CatalogCallCache(tmp_path / "catalog.duckdb")
    texts = [f"question {i}" for i in range(6)] + ["q [[fault:invalid:1]]", "q [[fault:violate:2]]"]
    first_pool = make_pool(server.base_url, cache=catalog, price_per_1m_input=1.0, price_per_1m_output=2.0)
    first = ask(first_pool, texts)
    sent = server.stats["requests"]
    assert counters(first_pool)["requests"] == sent > 0

    second_pool = make_pool(server.base_url, cache=CatalogCallCache(tmp_path / "catalog.duckdb"),
                            price_per_1m_input=1.0, price_per_1m_output=2.0)
    second = ask(second_pool, texts)
    c = counters(second_pool)
    assert server.stats["requests"] == sent, "a warm rerun must not reach the server"
    assert c["requests"] == 0 and c["cache_hits"] == c["calls"] == len(texts) and c["cost_usd"] == 0.0
    assert second_pool.budget.spent_usd == 0.0
    for a, b in zip(first, second):
        assert b.call.cached and not a.call.cached
        assert (a.data, a.call.failure, a.call.model, a.call.tokens_in, a.call.tokens_out, a.call.cost_usd) == \
               (b.data, b.call.failure, b.call.model, b.call.tokens_in, b.call.tokens_out, b.call.cost_usd)
    assert second[-1].call.failure == "schema_violation"  # the model's own failed reply is cached too


def test_transport_failures_are_not_cached(server):
    cache = MemoryCallCache()
    pool = make_pool(server.base_url, cache=cache, max_retries=0)
    [failed] = ask(pool, ["q [[fault:500:1]]"])
    assert failed.call.failure == "server_error" and len(cache) == 0
    [ok] = ask(make_pool(server.base_url, cache=cache), ["q [[fault:500:1]]"])
    assert ok.call.failure is None and not ok.call.cached and len(cache) == 1


def test_cost_report_equals_tokens_the_server_returned(server):
    pool = make_pool(server.base_url, price_per_1m_input=3.0, price_per_1m_output=15.0)
    replies = ask(pool, [f"a question with some words {i}" for i in range(10)] + ["q [[fault:invalid:1]]"])
    c = counters(pool)
    assert c["tokens_in"] == server.stats["prompt_tokens"] and c["tokens_out"] == server.stats["completion_tokens"]
    expected = (server.stats["prompt_tokens"] * 3.0 + server.stats["completion_tokens"] * 15.0) / 1e6
    assert c["cost_usd"] == pytest.approx(expected) and pool.budget.spent_usd == pytest.approx(expected)
    assert sum(r.call.cost_usd for r in replies) == pytest.approx(expected)


def test_budget_refuses_new_calls_once_spent_but_serves_cache_hits(server):
    cache = MemoryCallCache()
    budget = Budget(max_cost_usd=1e-6)
    pool = make_pool(server.base_url, cache=cache, budget=budget, price_per_1m_input=1000.0)
    [first] = ask(pool, ["first question"])
    assert first.call.failure is None and budget.exhausted
    with pytest.raises(BudgetExhausted, match="max_cost_usd"):
        ask(pool, ["second question"])
    assert counters(pool)["failed"] == {"budget_exhausted": 1}
    requests = server.stats["requests"]
    [again] = ask(pool, ["first question"])  # already paid for: the cache still answers
    assert again.call.cached and server.stats["requests"] == requests


def test_concurrency_per_endpoint_holds_across_threads_and_event_loops():
    with FaultServer(latency_s=0.05) as srv:
        pool = make_pool(srv.base_url, concurrency=3)
        errors = []

        def worker(k):
            try:
                ask(pool, [f"t{k} q{i}" for i in range(8)])
            except Exception as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert srv.stats["requests"] == 24
        assert srv.stats["max_in_flight"] == 3


@pytest.mark.parametrize("mode,expected", [
    ("json_schema", {"type": "json_schema", "json_schema": {"name": "test", "schema": SCHEMA, "strict": True}}),
    ("json_object", {"type": "json_object", "schema": SCHEMA}),
    ("prompt", None),
])
def test_structured_output_mode_decides_response_format(server, mode, expected):
    ask(make_pool(server.base_url, structured_output=mode), ["q"])
    assert server.requests[0]["body"].get("response_format") == expected


def test_fenced_json_from_a_weak_model_is_accepted(server):
    server.reply = lambda body: 'Here you go:\n```json\n{"answer": "fenced"}\n```'
    [reply] = ask(make_pool(server.base_url), ["q"])
    assert reply.data == {"answer": "fenced"} and counters  # no repair needed
    assert server.stats["requests"] == 1


def test_model_id_is_the_one_the_server_reports(server):
    [reply] = ask(make_pool(server.base_url), ["q"])
    assert reply.call.model == "fault-model-1.0" and reply.call.seed == 7 and reply.call.prompt_sha256 == "p" * 64


def test_request_hash_covers_audio_bytes_but_not_their_encoding():
    import base64
    def part_msgs(data: bytes, fmt: str):
        b64 = base64.b64encode(data).decode()
        part = ({"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}} if fmt == "input_audio"
                else {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64}"}})
        return [{"role": "user", "content": [part, {"type": "text", "text": "q"}]}]
    kw = dict(model="m", params={"temperature": 0}, schema=None, structured_output="text", prompt_sha256="x")
    a = request_sha256(messages=part_msgs(b"RIFF-one", "input_audio"), **kw)
    assert a == request_sha256(messages=part_msgs(b"RIFF-one", "input_audio"), **kw)
    assert a != request_sha256(messages=part_msgs(b"RIFF-two", "input_audio"), **kw)
    assert a != request_sha256(messages=part_msgs(b"RIFF-one", "input_audio"), **{**kw, "prompt_sha256": "y"})


def test_retry_after_accepts_seconds_milliseconds_and_http_dates():
    import email.utils
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after_s({"retry-after": future}) <= 30
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s({}) is None


def test_json_object_mode_spells_small_integer_ranges_for_grammar_servers(server):
    schema = {"type": "object", "required": ["i"], "properties": {"i": {"type": "integer", "minimum": 0, "maximum": 3}}}
    server.reply = lambda body: json.dumps({"i": 7})
    [reply] = ask(make_pool(server.base_url, structured_output="json_object"), ["q"], schema=schema)
    sent = server.requests[0]["body"]["response_format"]["schema"]
    assert sent["properties"]["i"]["enum"] == [0, 1, 2, 3]
    assert reply.call.failure == "schema_violation"  # validation still uses the real schema


def test_limiter_slots_survive_cancelled_waiters():
    from dataflux.llm.limiter import CrossLoopLimiter

    limiter = CrossLoopLimiter(2)

    async def main():
        async def hold(t):
            async with limiter:
                await asyncio.sleep(t)

        holders = [asyncio.create_task(hold(0.05)) for _ in range(2)]
        await asyncio.sleep(0.01)
        waiters = [asyncio.create_task(hold(0.0)) for _ in range(5)]
        await asyncio.sleep(0.01)
        for w in waiters[:3]:
            w.cancel()
        await asyncio.gather(*holders, *waiters, return_exceptions=True)
        assert limiter.in_use == 0
        # every slot is still usable afterwards
        await asyncio.wait_for(asyncio.gather(*(hold(0.0) for _ in range(4))), timeout=1)

    asyncio.run(main())
    assert limiter.in_use == 0

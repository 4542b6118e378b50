"""An async client for one OpenAI-compatible endpoint, with the economics a paid run needs.

One logical call (`LLMClient.complete`) may send several HTTP requests:
- transport retries: 429 (honouring `Retry-After`), 5xx, timeouts and refused connections are
  retried with exponential backoff and full jitter, up to the endpoint's `max_retries`;
- one retry with twice the `max_tokens` when the reply was cut off (`finish_reason == "length"`);
- one repair request that shows the model its own reply and the validation error.
Whatever happens, the call ends as a `Reply` whose `call.failure` is None or a reason code
from `counters.FAILURE_REASONS`; only a spent budget raises (`BudgetExhausted`) and a rejected
API key or unknown model raises `replies.EndpointError`, since every later call would fail the
same way (`replies` reads what a status and a body mean).

A content-addressed cache (`cache.CallCache`, the DuckDB catalog in a run) answers repeated
requests without a call. Replies that are the model's own (valid, or invalid after repair) are
cached; transport failures are not, so a rerun retries them.

Requests go straight over HTTP (`transport.HttpTransport`: one keep-alive pool per endpoint and
event loop, under the endpoint's concurrency limit, which holds across loops and threads).
Bodies are rendered with orjson around a `response_format` encoded once per step schema (a
schema is not changed after its first use), and replies are parsed with orjson into the few
fields a call needs. Cache reads and writes of concurrent calls are batched (`cache_batches`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import orjson

from dataflux.llm.budget import Budget, BudgetExhausted
from dataflux.llm.cache import CallCache, request_sha256
from dataflux.llm.cache_batches import CacheBatcher
from dataflux.llm.counters import CallCounters
from dataflux.llm.endpoint import NO_KEY, Endpoint
from dataflux.llm.limiter import CrossLoopLimiter
from dataflux.llm.prompts import load_prompt
from dataflux.llm.replies import Completion, Retryable, TransportFailure, check_status, parse_completion
from dataflux.llm.structured import ReplyError, check_reply, response_format
from dataflux.llm.transport import FormFile, HttpReply, HttpTransport, TransportConnectionError, TransportTimeout
from dataflux.steps.base import Call

log = logging.getLogger("dataflux.llm")

REPAIR_PROMPT = "repair_v1"
MAX_RETRY_AFTER_S = 300.0
# Reasons whose reply is the model's deterministic answer to the request: cached like a success.
_CONTENT_FAILURES = ("invalid_json", "schema_violation", "truncated")


@dataclass
class Reply:
    """What one logical call produced.

    `data`: the validated JSON value (JSON calls) or the reply text (text calls); None exactly
    when `call.failure` is set. `text`: the last raw reply text, kept for diagnosis.
    """

    data: Any
    text: str | None
    call: Call
    request_sha256: str = ""


@dataclass
class _Conversation:
    """What the requests of one logical call have produced so far."""

    model: str
    messages: list[dict]  # what the next request sends
    max_tokens: int
    tokens_in: int = 0
    tokens_out: int = 0
    text: str | None = None
    data: Any = None
    failure: str | None = None
    lengthened: bool = False
    repaired: bool = False


def _repair_messages(messages: list[dict], text: str | None, err: ReplyError, schema: dict) -> list[dict]:
    """The call's messages, then the model's invalid reply and a request to repair it."""
    repair = load_prompt(REPAIR_PROMPT).render_block(
        "user", error=str(err), schema=json.dumps(schema, separators=(", ", ": "), ensure_ascii=False))
    return list(messages) + [
        {"role": "assistant", "content": text or ""},
        {"role": "user", "content": repair},
    ]


class LLMClient:
    """Calls to one endpoint. Safe to share across tasks, threads and event loops."""

    def __init__(self, endpoint: Endpoint, *, cache: CallCache | None = None,
                 budget: Budget | None = None, counters: CallCounters | None = None,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 transport: Any = None):
        self.endpoint = endpoint
        self.cache = cache
        self._cache_batches = CacheBatcher(cache) if cache is not None else None
        self.budget = budget if budget is not None else Budget(None)
        self.counters = counters if counters is not None else CallCounters()
        self.limiter = CrossLoopLimiter(int(endpoint.concurrency))
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._rng = random.Random()
        # Anything with HttpTransport's post_json/post_form will do (benchmarks compare others).
        self.transport = transport if transport is not None else HttpTransport(
            endpoint.base_url, endpoint.timeout_s, max_connections=int(endpoint.concurrency))
        # (step, schema) -> the response_format, encoded once; the schema is held so its id stays its own.
        self._formats: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._formats_lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        """Per-request Authorization header, the key read from the environment now."""
        return {"Authorization": f"Bearer {self.endpoint.api_key()}"}

    def _scrub(self, text: str) -> str:
        """Remove the API key from an error text before it is logged or recorded."""
        if self.endpoint.api_key_env:
            try:
                key = self.endpoint.api_key()
            except Exception:
                return text
            if key and key != NO_KEY:
                text = text.replace(key, "***")
        return text

    async def aclose(self) -> None:
        """Close the running loop's connections to the endpoint (call before the loop ends)."""
        close = getattr(self.transport, "aclose", None)
        if close is not None:
            await close()

    def _response_format(self, step: str, schema: dict | None) -> Any:
        """The endpoint's `response_format` for a step's schema as a pre-encoded JSON fragment."""
        if schema is None:
            return None
        key = (step, id(schema))
        entry = self._formats.get(key)
        if entry is None or entry[0] is not schema:
            fmt = response_format(self.endpoint.structured_output, step, schema)
            entry = (schema, None if fmt is None else orjson.Fragment(orjson.dumps(fmt)))
            with self._formats_lock:
                if len(self._formats) >= 256:  # callers that build a schema per call: stay bounded
                    self._formats.clear()
                self._formats[key] = entry
        return entry[1]

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # Honour the server, plus a little jitter so waiting clients do not return in step.
            wait = min(retry_after, MAX_RETRY_AFTER_S)
            return wait + self._rng.uniform(0, 0.1 * wait + 0.01)
        return self._rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt))

    async def _send(self, send: Callable[[dict], Awaitable[HttpReply]], parse: Callable[[bytes], Any]) -> Any:
        """One request with transport retries; returns `parse(body)` of the first good reply.
        Raises TransportFailure or BudgetExhausted."""
        name = self.endpoint.name
        attempt = 0
        while True:
            try:
                self.budget.check()
            except BudgetExhausted:
                self.counters.event(name, "budget_exhausted")
                self.counters.failed(name, "budget_exhausted")
                raise
            headers = self._headers()
            async with self.limiter:
                self.counters.add(name, "requests")
                try:
                    reply = await send(headers)
                    check_status(reply, self.endpoint, self._scrub)
                    try:
                        parsed = parse(reply.body)
                    except (ValueError, TypeError, AttributeError) as exc:  # a 200 that is no completion
                        raise Retryable("server_error", f"unreadable reply body ({type(exc).__name__}: {exc})",
                                         None) from None
                except Retryable as exc:
                    reason, retry_after, detail = exc.reason, exc.retry_after, self._scrub(exc.detail)[:500]
                except TransportTimeout as exc:
                    reason, retry_after, detail = "timeout", None, self._scrub(f"timeout: {exc}")[:500]
                except TransportConnectionError as exc:
                    reason, retry_after, detail = "connection", None, self._scrub(f"connection: {exc}")[:500]
                else:
                    reason = None
            if reason is None:
                # Let the call that got this slot send its request before this reply is checked:
                # replies that arrive together would otherwise all be checked before any new
                # request goes out, and the requests would travel in waves.
                await asyncio.sleep(0)
                return parsed
            self.counters.event(name, reason)
            if attempt >= int(self.endpoint.max_retries):
                raise TransportFailure(reason, detail)
            attempt += 1
            self.counters.add(name, "retries")
            wait = self._backoff_s(attempt, retry_after)
            log.info("endpoint %s: %s (%s); retry %d/%d in %.2fs", name, reason, detail[:200],
                     attempt, self.endpoint.max_retries, wait)
            await self._sleep(wait)

    # -- logical calls ----------------------------------------------------------------------

    def request_key(self, *, messages: list[dict], schema: dict | None, temperature: float = 0.0,
                    max_tokens: int = 1024, prompt_sha256: str = "") -> str:
        """The cache key `complete` uses for these arguments."""
        mode = self.endpoint.structured_output if schema is not None else "text"
        params = {"temperature": temperature, "max_tokens": max_tokens, "structured_output": mode}
        return request_sha256(model=self.endpoint.model, messages=messages, params=params, schema=schema,
                              structured_output=mode, prompt_sha256=prompt_sha256)

    async def _from_cache(self, key: str, step: str, backend: str, prompt_sha256: str,
                          params: dict, seed: int | None) -> Reply | None:
        if self._cache_batches is None:
            return None
        # The catalog is a DuckDB file: its I/O runs off the event loop, many lookups per query.
        row = await self._cache_batches.get(key)
        if row is None:
            return None
        response = row["response"]
        if isinstance(response, (str, bytes)):
            response = orjson.loads(response)
        self.counters.add(self.endpoint.name, "calls")
        self.counters.add(self.endpoint.name, "cache_hits")
        call = Call(step=step, backend=backend, model=row["model"], prompt_sha256=prompt_sha256,
                    params=params, seed=seed, tokens_in=int(row["tokens_in"]),
                    tokens_out=int(row["tokens_out"]), cost_usd=float(row["cost_usd"]), cached=True,
                    latency_s=0.0, failure=response.get("failure"))
        return Reply(data=response.get("data"), text=response.get("text"), call=call, request_sha256=key)

    async def complete(self, *, step: str, messages: list[dict], schema: dict | None,
                       temperature: float = 0.0, max_tokens: int = 1024, seed: int | None = None,
                       prompt_sha256: str = "", check: Callable[[Any], list[str]] | None = None,
                       backend: str = "openai") -> Reply:
        """One chat completion. With a `schema`, the reply must be JSON that validates against it
        (and passes `check`, which returns extra error messages); without one, any text will do.
        """
        ep = self.endpoint
        mode = ep.structured_output if schema is not None else "text"
        params = {"temperature": temperature, "max_tokens": max_tokens, "structured_output": mode}
        key = request_sha256(model=ep.model, messages=messages, params=params, schema=schema,
                             structured_output=mode, prompt_sha256=prompt_sha256)
        hit = await self._from_cache(key, step, backend, prompt_sha256, params, seed)
        if hit is not None:
            return hit
        self.counters.add(ep.name, "calls")
        # What every request of this call sends; messages and max_tokens may change per attempt.
        fixed: dict[str, Any] = {"model": ep.model, "temperature": temperature}
        if seed is not None:
            fixed["seed"] = seed
        fmt = self._response_format(step, schema)
        if fmt is not None:
            fixed["response_format"] = fmt
        t0 = time.perf_counter()
        conv = _Conversation(model=ep.model, messages=messages, max_tokens=max_tokens)
        try:
            await self._converse(conv, fixed, messages, schema, check)
        except TransportFailure as tf:
            return await self._failed(step, backend, conv.model, prompt_sha256, params, seed, conv.tokens_in,
                                      conv.tokens_out, t0, tf.reason, conv.text, key, cache=False, detail=tf.detail)
        if conv.failure is not None:
            return await self._failed(step, backend, conv.model, prompt_sha256, params, seed, conv.tokens_in,
                                      conv.tokens_out, t0, conv.failure, conv.text, key, cache=True)
        latency = time.perf_counter() - t0
        self.counters.add(ep.name, "ok")
        call = Call(step=step, backend=backend, model=conv.model, prompt_sha256=prompt_sha256,
                    params=params, seed=seed, tokens_in=conv.tokens_in, tokens_out=conv.tokens_out,
                    cost_usd=ep.cost_usd(conv.tokens_in, conv.tokens_out), latency_s=latency)
        await self._store(key, step, conv.model, {"data": conv.data, "text": conv.text, "failure": None}, call)
        return Reply(data=conv.data, text=conv.text, call=call, request_sha256=key)

    async def _converse(self, conv: "_Conversation", fixed: dict, messages: list[dict], schema: dict | None,
                        check: Callable[[Any], list[str]] | None) -> None:
        """Requests until a reply is accepted or has failed for good (`conv.failure`): one retry
        with twice the tokens after a cut-off reply, one repair after an invalid one. Raises
        TransportFailure when the endpoint could not answer."""
        ep = self.endpoint
        transport = self.transport
        while True:
            body = orjson.dumps({**fixed, "messages": conv.messages, "max_tokens": conv.max_tokens})

            def send(headers: dict, body: bytes = body) -> Awaitable[HttpReply]:
                return transport.post_json("/chat/completions", body, headers)

            resp: Completion = await self._send(send, parse_completion)
            conv.model = resp.model or conv.model
            conv.tokens_in += resp.tokens_in
            conv.tokens_out += resp.tokens_out
            cost = ep.cost_usd(resp.tokens_in, resp.tokens_out)
            self.counters.spend(ep.name, resp.tokens_in, resp.tokens_out, cost)
            self.budget.charge(cost)
            conv.text = text = resp.text
            if resp.finish_reason == "length":
                self.counters.event(ep.name, "truncated")
                if not conv.lengthened:
                    conv.lengthened = True
                    conv.max_tokens = conv.max_tokens * 2
                    continue
                conv.failure = "truncated"
                return
            if schema is None:
                if text is None or not text.strip():
                    self.counters.event(ep.name, "invalid_json")
                    conv.failure = "invalid_json"
                else:
                    conv.data = text
                return
            try:
                conv.data = check_reply(text, schema)
                extra = check(conv.data) if check is not None else []
                if extra:
                    raise ReplyError("schema_violation", "; ".join(extra))
                return
            except ReplyError as err:
                conv.data = None
                self.counters.event(ep.name, err.reason)
                if conv.repaired:
                    conv.failure = err.reason
                    return
                conv.repaired = True
                self.counters.add(ep.name, "repairs")
                conv.messages = _repair_messages(messages, text, err, schema)

    async def _failed(self, step, backend, model, prompt_sha256, params, seed, tokens_in, tokens_out,
                      t0, reason, text, key, *, cache: bool, detail: str = "") -> Reply:
        self.counters.failed(self.endpoint.name, reason)
        call = Call(step=step, backend=backend, model=model, prompt_sha256=prompt_sha256,
                    params=params, seed=seed, tokens_in=tokens_in, tokens_out=tokens_out,
                    cost_usd=self.endpoint.cost_usd(tokens_in, tokens_out),
                    latency_s=time.perf_counter() - t0, failure=reason)
        log.warning("endpoint %s: %s call failed: %s%s", self.endpoint.name, step, reason,
                    f" ({detail})" if detail else "")
        if cache and reason in _CONTENT_FAILURES:
            await self._store(key, step, model, {"data": None, "text": text, "failure": reason}, call)
        return Reply(data=None, text=text, call=call, request_sha256=key)

    async def _store(self, key: str, step: str, model: str, response: dict, call: Call) -> None:
        if self._cache_batches is not None:
            await self._cache_batches.put({
                "request_sha256": key, "step": step, "model": model, "response": response,
                "tokens_in": call.tokens_in, "tokens_out": call.tokens_out, "cost_usd": call.cost_usd,
                "latency_s": call.latency_s})

    async def transcribe(self, wav: bytes, *, step: str = "caption", backend: str = "openai",
                         language: str | None = None, response_format: str | None = None) -> Reply:
        """Speech to text through `/audio/transcriptions` (the endpoint's model, e.g. whisper-1).
        With `response_format="verbose_json"` the reply's data is `{"text", "language"}` (the
        language the server detected or was asked for), and an empty text is an answer (no words heard)."""
        ep = self.endpoint
        params: dict[str, Any] = {"language": language} if language else {}
        if response_format:
            params["response_format"] = response_format
        audio_part = {"type": "input_audio",
                      "input_audio": {"data": base64.b64encode(wav).decode("ascii"), "format": "wav"}}
        key = request_sha256(model=ep.model, messages=[{"role": "user", "content": [audio_part]}],
                             params=params, schema=None, structured_output="text", prompt_sha256="",
                             kind="transcription")
        hit = await self._from_cache(key, step, backend, "", params, None)
        if hit is not None:
            return hit
        self.counters.add(ep.name, "calls")
        t0 = time.perf_counter()
        fields: dict[str, Any] = {"model": ep.model}
        if language:
            fields["language"] = language
        if response_format:
            fields["response_format"] = response_format
        file = FormFile("file", "clip.wav", wav, "audio/wav")
        transport = self.transport

        def send(headers: dict) -> Awaitable[HttpReply]:
            return transport.post_form("/audio/transcriptions", fields, file, headers)

        def parse(body: bytes) -> tuple[str, int, int, Any]:
            doc = orjson.loads(body)
            if response_format == "verbose_json" and not isinstance(doc.get("text"), str):
                raise ValueError("a verbose_json transcription without a text field")
            usage = doc.get("usage") or {}
            return ((doc.get("text") or "").strip(), int(usage.get("input_tokens") or 0),
                    int(usage.get("output_tokens") or 0), doc.get("language"))

        try:
            text, t_in, t_out, heard_language = await self._send(send, parse)
        except TransportFailure as tf:
            return await self._failed(step, backend, ep.model, "", params, None, 0, 0, t0, tf.reason, None,
                                      key, cache=False, detail=tf.detail)
        cost = ep.cost_usd(t_in, t_out)
        self.counters.spend(ep.name, t_in, t_out, cost)
        self.budget.charge(cost)
        verbose = response_format == "verbose_json"
        if not text and not verbose:
            self.counters.event(ep.name, "invalid_json")
            return await self._failed(step, backend, ep.model, "", params, None, t_in, t_out, t0,
                                      "invalid_json", text, key, cache=True)
        self.counters.add(ep.name, "ok")
        call = Call(step=step, backend=backend, model=ep.model, params=params, tokens_in=t_in,
                    tokens_out=t_out, cost_usd=cost, latency_s=time.perf_counter() - t0)
        data = {"text": text, "language": heard_language} if verbose else text
        await self._store(key, step, ep.model, {"data": data, "text": text, "failure": None}, call)
        return Reply(data=data, text=text, call=call, request_sha256=key)


class EndpointPool:
    """The run's endpoints: one `LLMClient` per name, sharing one cache, budget and counters,
    so an endpoint's concurrency limit holds across every step that uses it."""

    def __init__(self, endpoints: Mapping[str, Mapping[str, Any]], *, cache: CallCache | None = None,
                 budget: Budget | None = None, counters: CallCounters | None = None, **client_kwargs):
        self.configs = {name: Endpoint.from_config(name, cfg) for name, cfg in (endpoints or {}).items()}
        self.cache = cache
        self.budget = budget if budget is not None else Budget(None)
        self.counters = counters if counters is not None else CallCounters()
        self._client_kwargs = client_kwargs
        self._clients: dict[str, LLMClient] = {}
        self._lock = threading.Lock()

    def client(self, name: str) -> LLMClient:
        if name not in self.configs:
            raise KeyError(f"data_catalog.yaml: no endpoint named {name!r} under endpoints; "
                           f"defined: {sorted(self.configs)}")
        with self._lock:
            if name not in self._clients:
                self._clients[name] = LLMClient(self.configs[name], cache=self.cache, budget=self.budget,
                                                counters=self.counters, **self._client_kwargs)
            return self._clients[name]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    def report(self) -> dict[str, Any]:
        """Counters per endpoint plus the run's spend (what the servers returned, never cache hits)."""
        snap = self.counters.snapshot()
        return {"endpoints": snap, "spent_usd": self.budget.spent_usd,
                "max_cost_usd": self.budget.max_cost_usd,
                "requests": sum(v["requests"] for v in snap.values()),
                "cache_hits": sum(v["cache_hits"] for v in snap.values())}

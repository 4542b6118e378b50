"""Content-addressed cache of model calls: request hash -> response.

The request hash covers everything that decides a reply: the endpoint's model, the messages
(audio replaced by the sha256 of its bytes, so the key is small and the same clip always
gives the same key), sampling parameters and seed, the response schema, the structured-output
mode and the prompt template hash. It never covers the API key or the base URL: the same
model behind another URL gives the same answer.

`CatalogCallCache` (`dataflux.llm.catalog_cache`) keeps the calls in the catalog's file; `MemoryCallCache`
serves runs and benchmarks without a catalog. Both also answer `cache_get_many`/`cache_put_many`,
which `cache_batches.CacheBatcher` uses to serve many concurrent calls with one query.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class CallCache(Protocol):
    def cache_get(self, request_sha256: str) -> dict | None: ...

    def cache_put(self, request_sha256: str, step: str, model: str, response: Any,
                  tokens_in: int, tokens_out: int, cost_usd: float, latency_s: float) -> None: ...


class MemoryCallCache:
    """A `CallCache` in a dict, for one process."""

    def __init__(self) -> None:
        self._rows: dict[str, dict] = {}
        self._lock = threading.Lock()

    def cache_get(self, request_sha256: str) -> dict | None:
        with self._lock:
            row = self._rows.get(request_sha256)
            return dict(row) if row is not None else None

    def cache_put(self, request_sha256: str, step: str, model: str, response: Any,
                  tokens_in: int, tokens_out: int, cost_usd: float, latency_s: float) -> None:
        with self._lock:
            self._rows[request_sha256] = {
                "request_sha256": request_sha256, "step": step, "model": model,
                "response": json.dumps(response, sort_keys=True), "tokens_in": tokens_in,
                "tokens_out": tokens_out, "cost_usd": cost_usd, "latency_s": latency_s,
            }

    def cache_get_many(self, request_sha256s: list[str]) -> dict[str, dict]:
        with self._lock:
            return {k: dict(self._rows[k]) for k in request_sha256s if k in self._rows}

    def cache_put_many(self, calls: list[dict]) -> int:
        stored = 0
        for c in calls:
            with self._lock:
                if c["request_sha256"] in self._rows:
                    continue
            self.cache_put(c["request_sha256"], c["step"], c["model"], c["response"], c.get("tokens_in", 0),
                           c.get("tokens_out", 0), c.get("cost_usd", 0.0), c.get("latency_s", 0.0))
            stored += 1
        return stored

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._rows.values()]


_DIGESTS_KEPT = 64
# id(string carrying the audio) -> (that string, the digest of its audio): a clip's part is reused
# with the same string (`messages.clip_audio_part`), so its bytes are decoded and hashed once.
# The string is held, so its id cannot pass to another string while the entry lives.
_digests: dict[int, tuple[str, str]] = {}
_digests_lock = threading.Lock()


def _audio_sha256(carrier: str, payload: str) -> str:
    """sha256 of the base64 `payload` found in the string `carrier`, remembered per carrier."""
    hit = _digests.get(id(carrier))
    if hit is not None and hit[0] is carrier:
        return hit[1]
    digest = hashlib.sha256(base64.b64decode(payload)).hexdigest()
    with _digests_lock:
        if len(_digests) >= _DIGESTS_KEPT:
            _digests.pop(next(iter(_digests)))
        _digests[id(carrier)] = (carrier, digest)
    return digest


def _audio_digest(part: dict) -> dict:
    """An audio content part with its payload replaced by the sha256 of the decoded bytes."""
    if part.get("type") == "input_audio":
        payload = part["input_audio"]["data"]
        fmt = part["input_audio"].get("format", "")
        digest = _audio_sha256(payload, payload)
    else:  # audio_url with a data: URL
        url = part["audio_url"]["url"]
        fmt, _, payload = url.partition(";base64,")
        digest = _audio_sha256(url, payload)
    return {"type": "audio", "format": fmt, "audio_sha256": digest}


def canonical_messages(messages: list[dict]) -> list[dict]:
    """Messages as they go into the request hash: audio parts replaced by their digest."""
    out = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            content = [_audio_digest(p) if p.get("type") in ("input_audio", "audio_url") else p
                       for p in content]
        out.append({**msg, "content": content})
    return out


def request_sha256(*, model: str, messages: list[dict], params: dict[str, Any],
                   schema: dict | None, structured_output: str, prompt_sha256: str,
                   kind: str = "chat") -> str:
    """The cache key of one logical call (hex sha256 of a canonical JSON document)."""
    doc = {
        "kind": kind, "model": model, "messages": canonical_messages(messages),
        "params": params, "schema": schema, "structured_output": structured_output,
        "prompt_sha256": prompt_sha256,
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()

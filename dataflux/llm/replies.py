"""What an endpoint's HTTP reply means for a call: retry it, give up on it, or read it.

A 429, 408, 409 or 5xx is `Retryable` (after `Retry-After` when the server names a wait); a
rejected key or an unknown model or path is an `EndpointError`, since every later call would fail
the same way; any other 4xx is a `TransportFailure` of the call alone. A 2xx body is read with
orjson into the few fields of a chat completion a call uses (`Completion`).
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import orjson

from dataflux.llm.endpoint import Endpoint
from dataflux.llm.transport import HttpReply


class EndpointError(RuntimeError):
    """The endpoint refuses every request (bad key, unknown model or path): fix the config."""


class TransportFailure(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Retryable(Exception):
    """A request a retry may cure (429, 5xx, 408, an unreadable 200)."""

    def __init__(self, reason: str, detail: str, retry_after: float | None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class Completion:
    """The fields of a chat completion a call uses."""

    model: str | None
    tokens_in: int
    tokens_out: int
    text: str | None
    finish_reason: str | None


def error_message(body: bytes) -> str:
    """The `error.message` of an OpenAI-style error body, else the body's start."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace")
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return body[:300].decode("utf-8", "replace")


def parse_completion(body: bytes) -> Completion:
    """Raises ValueError when a 200's body is not a chat completion object."""
    doc = orjson.loads(body)
    if not isinstance(doc, dict):
        raise ValueError(f"the reply is JSON but not an object: {body[:80]!r}")
    usage = doc.get("usage") or {}
    choices = doc.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else None
    message = (choice or {}).get("message") or {}
    return Completion(model=doc.get("model"), tokens_in=int(usage.get("prompt_tokens") or 0),
                      tokens_out=int(usage.get("completion_tokens") or 0), text=message.get("content"),
                      finish_reason=(choice or {}).get("finish_reason"))


def check_status(reply: HttpReply, endpoint: Endpoint, scrub: Callable[[str], str]) -> None:
    """Return for a 2xx; raise Retryable for what a retry may cure, EndpointError for what it
    cannot (bad key, unknown model or path), TransportFailure otherwise (its text passed through
    `scrub`, which removes the API key)."""
    status = reply.status
    if 200 <= status < 300:
        return
    name = endpoint.name
    retry_after = retry_after_s(reply.headers)
    if status == 429:
        raise Retryable("rate_limited", f"HTTP 429: {error_message(reply.body)}", retry_after)
    if status == 408:
        raise Retryable("timeout", f"HTTP 408: {error_message(reply.body)}", retry_after)
    if status == 409 or status >= 500:
        raise Retryable("server_error", f"HTTP {status}: {error_message(reply.body)}", retry_after)
    if status in (401, 403):
        raise EndpointError(
            f"endpoint {name} ({endpoint.base_url}) refused the credentials (HTTP {status}): "
            f"check the key in ${endpoint.api_key_env or '<no api_key_env configured>'}")
    if status == 404:
        raise EndpointError(
            f"endpoint {name}: HTTP 404 from {endpoint.base_url} for model "
            f"{endpoint.model!r}: check base_url (usually ends in /v1) and model")
    raise TransportFailure("client_error", scrub(f"HTTP {status}: {error_message(reply.body)}"[:500]))

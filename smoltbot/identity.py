"""
Agent identity: which provider key a request carries, and the agent and session ids derived
from it (DESIGN §1.3).

Pure functions, no I/O: the proxy calls them per request and the request records reuse them.
The ids match the original gateway's, so agents keep their identity when they move here.
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable, NamedTuple
from urllib.parse import unquote_to_bytes

_BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr][ \t]+(\S.*)\Z", re.S)
_HOUR_MS = 3_600_000


class KeySource(NamedTuple):
    """Where a provider expects its API key, for extraction and for the 401 that names it."""

    header: str
    """The header the 401 names, as a client would read it."""
    accepts: str
    """Every place the key may come from, in words."""


KEY_SOURCES: dict[str, KeySource] = {
    "anthropic": KeySource("x-api-key", "the x-api-key header or Authorization: Bearer <key>"),
    "openai": KeySource("Authorization: Bearer <key>", "the Authorization: Bearer <key> header"),
    "gemini": KeySource("x-goog-api-key", "the x-goog-api-key header or the key= query parameter"),
}


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The key in an `Authorization: Bearer <key>` value (scheme case-insensitive), else None."""
    if not authorization:
        return None
    match = _BEARER.match(authorization)
    return match.group(1) if match else None


def query_key(query: bytes) -> bytes | None:
    """The percent-decoded value of the first non-empty `key=` parameter of a query string."""
    for pair in query.split(b"&"):
        if pair.startswith(b"key="):
            value = unquote_to_bytes(pair[4:].replace(b"+", b" "))
            if value:
                return value
    return None


def provider_key(provider: str, header: Callable[[bytes], bytes | None], query: bytes = b"") -> bytes | None:
    """
    The provider API key a request carries, or None.

    `header(name)` returns a request header's value (None when absent); `query` is the raw
    query string, consulted for Gemini's `key=`. Anthropic accepts `x-api-key` or a bearer
    token, OpenAI a bearer token, Gemini `x-goog-api-key` or `?key=`.
    """
    if provider == "openai":
        return bearer_token(header(b"authorization"))
    if provider == "anthropic":
        return header(b"x-api-key") or bearer_token(header(b"authorization"))
    if provider == "gemini":
        return header(b"x-goog-api-key") or (query_key(query) if b"key=" in query else None)
    raise ValueError(f"unknown provider {provider!r}")


def agent_hash(key: bytes | str) -> str:
    """First 16 lowercase hex characters of the SHA-256 of the key's UTF-8 bytes."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()[:16]


def agent_id(hash16: str) -> str:
    """The agent id for an agent hash: `smolt-` and its first 8 characters."""
    return "smolt-" + hash16[:8]


def session_id(hash16: str, unix_seconds: float) -> str:
    """The session id: the agent hash and the number of the UTC hour, `<hash>-<floor(ms/3600000)>`."""
    return f"{hash16}-{int(unix_seconds * 1000) // _HOUR_MS}"


class Identity(NamedTuple):
    """An agent as one request identifies it."""

    agent_hash: str
    agent_id: str
    session_id: str


def identify(key: bytes | str, unix_seconds: float) -> Identity:
    """The agent hash, agent id and session id for a provider key at a moment."""
    hash16 = agent_hash(key)
    return Identity(hash16, agent_id(hash16), session_id(hash16, unix_seconds))


"""
What every provider format offers the fake server, and the JSON spellings they share.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Optional, Protocol

from smoltbot.fakeprovider.reply import Reply

JSONObject = dict[str, Any]


def compact(value: object) -> bytes:
    """
    JSON without spaces, as Anthropic bodies and every provider's stream events are written.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def pretty(value: object) -> bytes:
    """
    JSON indented by two spaces, as OpenAI and Google write whole response bodies.
    """
    return json.dumps(value, indent=2, ensure_ascii=False).encode("utf-8")


class ProviderFormat(Protocol):
    """
    One provider's wire format (each provider module provides this interface).
    """

    NAME: str
    JSON_TYPE: bytes
    STREAM_TYPE: bytes

    def features(self, body: JSONObject) -> tuple[bool, Optional[str]]:
        """
        Whether the request asks for thinking, and the name of its first tool if any.
        """

    def message(self, reply: Reply, body: JSONObject) -> bytes:
        """
        The whole non-streaming response body.
        """

    def stream(self, reply: Reply, body: JSONObject) -> Iterator[bytes]:
        """
        The streamed response body, one complete SSE event per item, lazily.
        """

    def stream_error(self) -> bytes:
        """
        The SSE event the provider sends when it fails mid-stream.
        """

    def error(self, status: int, message: str) -> bytes:
        """
        The provider's error body for an HTTP status.
        """

    def models(self) -> bytes:
        """
        A small model list body.
        """

    def headers(self, number: int) -> list[tuple[bytes, bytes]]:
        """
        Extra response headers (the provider's request id).
        """

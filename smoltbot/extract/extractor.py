"""
The extractor the proxy feeds each relayed response chunk to: L{extractor_for} assembles the
layers that a response needs (decoding, SSE or JSON framing, the provider's collector).
"""

from __future__ import annotations

from typing import Callable

from smoltbot.extract.anthropic import AnthropicCollector
from smoltbot.extract.framing import JSONBody, SSEEvents, StopExtraction, decoder
from smoltbot.extract.gemini import GeminiCollector
from smoltbot.extract.openai import OpenAICollector
from smoltbot.extract.result import Collector, Extract

MAX_EVENT_BYTES = 1024 * 1024
MAX_JSON_BYTES = 16 * 1024 * 1024

_COLLECTORS: dict[str, Callable[[int], Collector]] = {
    "anthropic": AnthropicCollector,
    "openai": OpenAICollector,
    "gemini": GeminiCollector,
}


def _reason(error: Exception) -> str:
    """
    The C{extraction_error} recorded for C{error}.
    """
    if isinstance(error, StopExtraction):
        return error.reason
    return f"internal_error: {type(error).__name__}"


class ResponseExtractor:
    """
    Extracts the metadata of one response from its body's chunks, as they are relayed.

    It never raises: a problem it cannot get past disables it for the rest of the response
    and is reported as L{Extract.extraction_error}.
    """

    def __init__(
        self,
        collector: Collector,
        framing: SSEEvents | JSONBody | None,
        content_encoding: str | None,
        error: str | None,
    ) -> None:
        """
        @param collector: the provider's collector, which C{framing} passes the body on to.
        @param framing: how the decoded body is cut up, or C{None} to extract nothing.
        @param content_encoding: the response's C{Content-Encoding}.
        @param error: why nothing is extracted, when C{framing} is C{None}.
        """
        self._collector = collector
        self._framing = framing
        self._error = error
        self._feed: Callable[[bytes], None] | None = None
        self._result: Extract | None = None
        if framing is not None:
            try:
                self._feed = decoder(content_encoding, framing.feed)
            except StopExtraction as stop:
                self._stop(stop)

    def feed(self, chunk: bytes) -> None:
        """
        Read the next chunk of the body, as received from the upstream.
        """
        if self._feed is None:
            return
        try:
            self._feed(chunk)
        except Exception as error:
            self._stop(error)

    def finish(self, complete: bool) -> Extract:
        """
        The metadata of the response, once it has ended (later calls return the same).

        @param complete: whether the body ended normally (C{False} when the stream broke).
        """
        if self._result is None:
            framing, self._feed, self._framing = self._framing, None, None
            if framing is not None:
                try:
                    framing.close(complete)
                    self._collector.close()
                except Exception as error:
                    self._stop(error)
            try:
                self._result = self._collector.extract(self._error)
            except Exception as error:
                self._result = Extract(extraction_error=_reason(error))
        return self._result

    def _stop(self, error: Exception) -> None:
        self._feed = self._framing = None
        self._error = _reason(error)


def extractor_for(
    provider: str,
    *,
    streaming: bool,
    content_type: str | None,
    content_encoding: str | None,
    max_thinking_chars: int = 65536,
) -> ResponseExtractor:
    """
    An extractor for one response of C{provider} (C{"anthropic"}, C{"openai"} or
    C{"gemini"}).

    The body is read as SSE or JSON according to C{content_type}; only when the upstream sent
    none does C{streaming} (whether the request asked for a stream) decide. Other content
    types are not read (C{extraction_error} says so).

    @param content_encoding: the response's C{Content-Encoding}; C{gzip}, C{deflate} and
        C{br} bodies are decoded for reading.
    @param max_thinking_chars: how much of the thinking text L{Extract.thinking_text} keeps.
    @raise KeyError: C{provider} is not one of the three.
    """
    collector = _COLLECTORS[provider](max_thinking_chars)
    mime = (content_type or "").partition(";")[0].strip().lower()
    framing: SSEEvents | JSONBody | None = None
    error = None
    if mime == "text/event-stream" or not mime and streaming:
        framing = SSEEvents(collector.data, collector.note, MAX_EVENT_BYTES)
    elif not mime or mime == "application/json" or mime.endswith("+json"):
        framing = JSONBody(collector.body, MAX_JSON_BYTES)
    else:
        error = "unsupported_content_type: " + mime[:64]
    return ResponseExtractor(collector, framing, content_encoding, error)

"""
What extraction produces (L{Extract}) and the mutable state a provider parser fills while a
response goes by (L{Collector}, with its L{Thinking} accumulator).

Pure code: no I/O, no Twisted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

_MAX_LABEL = 128
# Faster than json.loads for small documents: no encoding detection, no end check (text after
# the JSON value is ignored).
_decode = json.JSONDecoder().raw_decode


def token_count(value: object) -> int | None:
    """
    C{value} if it is a non-negative integer (not a bool), else C{None}.
    """
    return value if type(value) is int and value >= 0 else None


def label(value: object) -> str | None:
    """
    C{value} if it is a non-empty string, cut to 128 characters, else C{None}: model names and
    stop reasons come from the upstream and are stored, so their size is bounded.
    """
    return value[:_MAX_LABEL] if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Extract:
    """
    The metadata of one provider response.

    Token fields are C{None} when the response did not report them.

    @ivar model: the model the response names (C{model}; Gemini C{modelVersion}).
    @ivar input_tokens: prompt tokens.
    @ivar output_tokens: generated tokens as the provider counts them (OpenAI's include
        reasoning; Gemini's C{candidatesTokenCount} does not include thoughts).
    @ivar cache_read_tokens: prompt tokens read from the provider's cache.
    @ivar cache_creation_tokens: prompt tokens written to the cache (Anthropic).
    @ivar reasoning_tokens: reasoning tokens (OpenAI C{reasoning_tokens}, Gemini
        C{thoughtsTokenCount}).
    @ivar stop_reason: Anthropic C{stop_reason}, OpenAI C{finish_reason}, Gemini
        C{finishReason}.
    @ivar tool_calls: the number of tool (function) calls in the answer.
    @ivar thinking_present: whether the answer held thinking text.
    @ivar thinking_sha256: hex SHA-256 of the whole thinking text (UTF-8), or C{None}.
    @ivar thinking_text: the first characters of the thinking text, for the integrity
        analysis only: left out of C{repr} and of L{to_dict}, never to be logged or stored.
    @ivar thinking_truncated: whether C{thinking_text} is shorter than the thinking.
    @ivar error_type: C{"stream_error_event"} when the stream carried the provider's error
        event, else C{None}.
    @ivar extraction_error: why extraction stopped or missed part of the response (the first
        reason), or C{None}.
    """

    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_creation_tokens: int | None = None
    reasoning_tokens: int | None = None
    stop_reason: str | None = None
    tool_calls: int = 0
    thinking_present: bool = False
    thinking_sha256: str | None = None
    thinking_text: str = field(default="", repr=False)
    thinking_truncated: bool = False
    error_type: str | None = None
    extraction_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """
        Every field but C{thinking_text}, for storage.
        """
        values = asdict(self)
        del values["thinking_text"]
        return values


class Thinking:
    """
    The thinking text of one response: hashed whole as it arrives, kept up to a bound.
    """

    def __init__(self, max_chars: int) -> None:
        self._sha = hashlib.sha256()
        self._kept: list[str] = []
        self._room = max(max_chars, 0)
        self.chars = 0

    def add(self, text: str) -> None:
        """
        Append C{text} to the thinking.
        """
        if not text:
            return
        self._sha.update(text.encode("utf-8", "surrogatepass"))
        self.chars += len(text)
        if self._room:
            piece = text[: self._room]
            self._kept.append(piece)
            self._room -= len(piece)

    def fields(self) -> dict[str, Any]:
        """
        The L{Extract} fields describing the thinking seen so far.
        """
        if not self.chars:
            return {}
        text = "".join(self._kept)
        return {
            "thinking_present": True,
            "thinking_sha256": self._sha.hexdigest(),
            "thinking_text": text,
            "thinking_truncated": len(text) < self.chars,
        }


class Collector:
    """
    What one response has shown so far. A provider subclass reads its events and bodies into
    these attributes; L{extract} turns them into an L{Extract}.

    @ivar problem: the first non-fatal problem noticed (an event skipped), or C{None}.
    """

    def __init__(self, max_thinking_chars: int) -> None:
        self.model: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cache_read_tokens: int | None = None
        self.cache_creation_tokens: int | None = None
        self.reasoning_tokens: int | None = None
        self.stop_reason: str | None = None
        self.tool_calls = 0
        self.error_type: str | None = None
        self.problem: str | None = None
        self.thinking = Thinking(max_thinking_chars)

    def note(self, problem: str) -> None:
        """
        Remember C{problem} unless an earlier one was noted.
        """
        if self.problem is None:
            self.problem = problem

    def load(self, payload: bytes) -> Any:
        """
        One event's JSON payload, or C{None} (noted) when it is not JSON.
        """
        try:
            return _decode(payload.decode().strip())[0]
        except (ValueError, RecursionError):
            self.note("invalid_event")
            return None

    def data(self, payload: bytes) -> None:
        """
        Read the data of one SSE event. Subclasses skip, before parsing, events that cannot
        change the result.
        """
        value = self.load(payload)
        if isinstance(value, dict):
            self.event(value)

    def event(self, value: dict[str, Any]) -> None:
        """
        Read one parsed stream event.
        """
        raise NotImplementedError

    def body(self, value: Any) -> None:
        """
        Read a whole parsed JSON response body.
        """
        raise NotImplementedError

    def close(self) -> None:
        """
        The stream has ended: read anything held back.
        """

    def usage(self, usage: object, names: tuple[tuple[str, str], ...]) -> None:
        """
        Take the token counts present in C{usage}; C{names} pairs each provider field name
        with the attribute it sets.
        """
        if isinstance(usage, dict):
            for name, attribute in names:
                value = token_count(usage.get(name))
                if value is not None:
                    setattr(self, attribute, value)

    def extract(self, error: str | None) -> Extract:
        """
        The L{Extract} of everything seen; C{error} is the fatal problem, if any.
        """
        return Extract(
            model=self.model,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_creation_tokens=self.cache_creation_tokens,
            reasoning_tokens=self.reasoning_tokens,
            stop_reason=self.stop_reason,
            tool_calls=self.tool_calls,
            error_type=self.error_type,
            extraction_error=error or self.problem,
            **self.thinking.fields(),
        )

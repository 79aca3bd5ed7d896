"""
The provider-neutral content of a fake answer: the knobs that shape it and the reply they give.

Pure logic, no I/O. Each provider module renders a L{Reply} in its own wire format. Text is
produced lazily, slice by slice, so a 20 MB answer never exists in memory as a whole.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, fields, replace
from typing import Iterator, Optional

from twisted.web.http_headers import Headers

_FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "


def count_tokens(length: int) -> int:
    """
    The fake tokenizer: one token per started group of four characters (or bytes).
    """
    return (length + 3) // 4


@dataclass(frozen=True)
class Knobs:
    """
    What shapes one response. Each field can be set per request by the header named
    C{x-fake-} plus the field name with dashes (C{event_size} is C{x-fake-event-size}).

    @ivar events: the number of text delta events (or text slices of a JSON answer).
    @ivar event_size: characters of text per event (bytes, for an ASCII marker).
    @ivar delay_ms: delay between two streamed events, on the server's clock.
    @ivar status: an HTTP status of 400 or more answers with that provider's error body
        (the knob is ignored below 400).
    @ivar drop_after: abort the connection once this many events were written. Events are
        the SSE events of every kind (C{message_start}, C{ping}, role chunk...), as counted by
        L{EventStream.events_written}; a JSON body is one event, so C{0} cuts it off right
        after the headers.
    @ivar error_after: once this many events were written, send the provider's mid-stream
        error event and end the response cleanly (streams only).
    @ivar marker: a string embedded in the text and the thinking.
    @ivar ttfb_ms: delay before the response headers are sent.
    """

    events: int = 8
    event_size: int = 32
    delay_ms: int = 0
    status: int = 200
    drop_after: Optional[int] = None
    error_after: Optional[int] = None
    marker: str = ""
    ttfb_ms: int = 0

    def with_headers(self, headers: Headers) -> Knobs:
        """
        These knobs, overridden by any C{x-fake-*} request header.

        @raise ValueError: a numeric knob header is not a non-negative integer.
        """
        changes: dict[str, object] = {}
        for field in fields(self):
            name = "x-fake-" + field.name.replace("_", "-")
            values = headers.getRawHeaders(name.encode())
            if not values:
                continue
            raw = values[-1].decode("utf-8", "replace")
            if field.name == "marker":
                changes[field.name] = raw
            elif raw.strip().isdigit():
                changes[field.name] = int(raw)
            else:
                raise ValueError(f"{name} must be a non-negative integer, not {raw!r}")
        return replace(self, **changes)


def _filled(head: str, start: int, stop: int) -> str:
    """
    Characters C{[start, stop)} of C{head} followed by the filler repeated for ever.
    """
    text = head[start:stop]
    start, stop = max(start - len(head), 0), stop - len(head)
    if stop > start:
        offset = start % len(_FILLER)
        repeats = (offset + stop - start) // len(_FILLER) + 1
        text += (_FILLER * repeats)[offset : offset + stop - start]
    return text


@dataclass(frozen=True)
class Reply:
    """
    One fake answer, deterministic in its number, knobs and request.

    @ivar number: the server's response counter, which makes every answer distinct.
    @ivar model: the model named by the request.
    @ivar knobs: the knobs in force.
    @ivar prompt_tokens: input tokens, counted on the request body.
    @ivar thinking: whether the request asked for thinking (or reasoning).
    @ivar tool_name: the first tool offered by the request, which the answer calls.
    @ivar created: the server clock's time, in whole seconds.
    """

    number: int
    model: str
    knobs: Knobs
    prompt_tokens: int
    thinking: bool = False
    tool_name: Optional[str] = None
    created: int = 0

    @property
    def _marker(self) -> str:
        return f" {self.knobs.marker}" if self.knobs.marker else ""

    def text_chunks(self) -> Iterator[str]:
        """
        The text, one event at a time: C{knobs.events} slices of C{knobs.event_size} characters.
        """
        head = f"Fake reply {self.number}{self._marker}. "
        size = self.knobs.event_size
        for index in range(self.knobs.events):
            yield _filled(head, index * size, (index + 1) * size)

    @property
    def text(self) -> str:
        """
        The whole text (built in memory: for JSON answers).
        """
        return "".join(self.text_chunks())

    @property
    def thinking_text(self) -> str:
        """
        The thinking, or C{""} when the request did not ask for it.
        """
        if not self.thinking:
            return ""
        return f"Let me think about reply {self.number}{self._marker}. I will write it out."

    def thinking_chunks(self) -> tuple[str, str]:
        """
        The thinking in two deltas.
        """
        half = len(self.thinking_text) // 2
        return self.thinking_text[:half], self.thinking_text[half:]

    @property
    def signature(self) -> str:
        """
        A signature for the thinking (base64, like the real ones).
        """
        return base64.b64encode(hashlib.sha256(self.thinking_text.encode()).digest() * 3).decode()

    @property
    def tool_input(self) -> dict[str, str]:
        """
        The arguments of the tool call.
        """
        return {"query": f"fake call {self.number}"}

    @property
    def tool_json(self) -> str:
        """
        The tool arguments as a JSON string, or C{""} when no tool is called.
        """
        return json.dumps(self.tool_input) if self.tool_name else ""

    def tool_json_chunks(self) -> tuple[str, str]:
        """
        The tool arguments in two partial JSON deltas.
        """
        half = len(self.tool_json) // 2
        return self.tool_json[:half], self.tool_json[half:]

    @property
    def text_tokens(self) -> int:
        """
        Output tokens of the visible answer: the text plus the tool call.
        """
        return count_tokens(self.knobs.events * self.knobs.event_size) + count_tokens(len(self.tool_json))

    @property
    def thinking_tokens(self) -> int:
        """
        Output tokens of the thinking.
        """
        return count_tokens(len(self.thinking_text))

    @property
    def output_tokens(self) -> int:
        """
        All output tokens: text, tool call and thinking.
        """
        return self.text_tokens + self.thinking_tokens

    def ident(self, prefix: str) -> str:
        """
        A deterministic identifier for this reply, such as C{msg_fake0000000000000001}.
        """
        return f"{prefix}fake{self.number:016d}"

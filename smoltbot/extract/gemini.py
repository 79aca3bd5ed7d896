"""
Reading the Gemini API's responses: a C{GenerateContentResponse} JSON body, a JSON array of
them (C{streamGenerateContent} without C{alt=sse}) and its SSE events.

Only the first candidate counts. Thinking is the text of its parts marked C{thought: true},
concatenated; tool calls are its C{functionCall} parts.
"""

from __future__ import annotations

import re
from typing import Any

from smoltbot.extract.result import Collector, label

_USAGE = (
    ("promptTokenCount", "input_tokens"),
    ("candidatesTokenCount", "output_tokens"),
    ("thoughtsTokenCount", "reasoning_tokens"),
    ("cachedContentTokenCount", "cache_read_tokens"),
)
# An event must be parsed if this is found in it. A quote inside a string is escaped, so a
# quoted key occurs in a raw event only as a key (or as a whole string value: a harmless
# extra parse).
_WANTED = re.compile(rb'"(?:thought|functionCall|finishReason|error)"')


class GeminiCollector(Collector):
    """
    Collects the metadata of one Gemini response.
    """

    def __init__(self, max_thinking_chars: int) -> None:
        super().__init__(max_thinking_chars)
        self._usage_event: bytes | None = None

    def data(self, payload: bytes) -> None:
        """
        Read one event, skipping unparsed those that only carry answer text. Of those, the
        latest with C{usageMetadata} is kept, to be read if the stream ends before a later one.
        """
        if self.model is None or _WANTED.search(payload):
            super().data(payload)
        elif b'"usageMetadata"' in payload:
            self._usage_event = payload

    def event(self, value: dict[str, Any]) -> None:
        """
        Read one parsed response (a stream event or an item of a JSON array).
        """
        if value.get("error"):
            self.error_type = "stream_error_event"
        self._response(value)

    def body(self, value: Any) -> None:
        """
        Read a response body, or each response of a JSON array (an error body holds
        nothing to collect).
        """
        if isinstance(value, dict):
            self._response(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    self.event(item)

    def close(self) -> None:
        """
        Read the usage of the latest unparsed event that had some.
        """
        if self._usage_event is not None:
            value = self.load(self._usage_event)
            if isinstance(value, dict):
                self.usage(value.get("usageMetadata"), _USAGE)

    def _response(self, value: dict[str, Any]) -> None:
        self.model = self.model or label(value.get("modelVersion"))
        usage = value.get("usageMetadata")
        if usage is not None:
            self._usage_event = None
            self.usage(usage, _USAGE)
        candidates = value.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else None
        if not isinstance(candidate, dict):
            return
        self.stop_reason = label(candidate.get("finishReason")) or self.stop_reason
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if not isinstance(part, dict):
                continue
            if part.get("thought") is True:
                text = part.get("text")
                if isinstance(text, str):
                    self.thinking.add(text)
            elif "functionCall" in part:
                self.tool_calls += 1

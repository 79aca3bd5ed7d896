"""
Reading the OpenAI Chat Completions API's responses: the C{chat.completion} JSON body and its
C{chat.completion.chunk} SSE events.

Only the first choice (index 0) counts. Thinking is its C{reasoning_content} (which OpenAI-
compatible servers send; OpenAI itself reports only C{reasoning_tokens}); tool calls are its
C{tool_calls}.
"""

from __future__ import annotations

import re
from typing import Any

from smoltbot.extract.result import Collector, label, token_count

_USAGE = (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens"))
_COMPLETION_DETAILS = (("reasoning_tokens", "reasoning_tokens"),)
_PROMPT_DETAILS = (("cached_tokens", "cache_read_tokens"),)
# A chunk must be parsed if this is found in it: a key whose value may matter, or a finish
# reason or usage that is not null. A quote inside a string is escaped, so a quoted key occurs
# in a raw chunk only as a key (or as a whole string value: a harmless extra parse).
_WANTED = re.compile(rb'"(?:reasoning_content"|tool_calls"|error"|(?:finish_reason|usage)"\s*:\s*[^n\s])')


class OpenAICollector(Collector):
    """
    Collects the metadata of one OpenAI response.
    """

    def __init__(self, max_thinking_chars: int) -> None:
        super().__init__(max_thinking_chars)
        self._tool_indexes: set[int | None] = set()

    def data(self, payload: bytes) -> None:
        """
        Read one event, skipping unparsed the chunks that only carry answer text.
        """
        if payload.startswith(b"[DONE]"):
            return
        if self.model is None or _WANTED.search(payload):
            super().data(payload)

    def event(self, value: dict[str, Any]) -> None:
        """
        Read one parsed chunk.
        """
        if value.get("error"):
            self.error_type = "stream_error_event"
        self._completion(value, "delta")

    def body(self, value: Any) -> None:
        """
        Read a C{chat.completion} body (an error body holds nothing to collect).
        """
        if isinstance(value, dict):
            self._completion(value, "message")

    def _completion(self, value: dict[str, Any], kind: str) -> None:
        """
        Read a completion or chunk, whose choices hold a C{kind} (C{message} or C{delta}).
        """
        self.model = self.model or label(value.get("model"))
        usage = value.get("usage")
        if isinstance(usage, dict):
            self.usage(usage, _USAGE)
            self.usage(usage.get("completion_tokens_details"), _COMPLETION_DETAILS)
            self.usage(usage.get("prompt_tokens_details"), _PROMPT_DETAILS)
        choices = value.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self.stop_reason = label(choice.get("finish_reason")) or self.stop_reason
                self._answer(choice.get(kind), kind == "delta")

    def _answer(self, answer: object, streamed: bool) -> None:
        if not isinstance(answer, dict):
            return
        reasoning = answer.get("reasoning_content")
        if isinstance(reasoning, str):
            self.thinking.add(reasoning)
        calls = answer.get("tool_calls")
        if not isinstance(calls, list):
            return
        if not streamed:
            self.tool_calls += len(calls)
            return
        for call in calls:
            if isinstance(call, dict):
                self._tool_indexes.add(token_count(call.get("index")))
        self.tool_calls = len(self._tool_indexes)

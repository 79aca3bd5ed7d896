"""
Reading the Anthropic Messages API's responses: the C{message} JSON body and its SSE events.

Thinking is the text of the C{thinking} blocks, joined by L{SEPARATOR}; tool calls are the
C{tool_use} blocks.
"""

from __future__ import annotations

from typing import Any

from smoltbot.extract.result import Collector, label

SEPARATOR = "\n\n---\n\n"

_USAGE = (
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cache_read_input_tokens", "cache_read_tokens"),
    ("cache_creation_input_tokens", "cache_creation_tokens"),
)
# Events that cannot change the result, recognised without parsing them. Anthropic writes
# compact JSON with "type" first; a quote inside a string is escaped, so '"thinking_delta"'
# occurs in a content_block_delta only as its delta type.
_DELTA = b'{"type":"content_block_delta"'
_UNUSED = (b'{"type":"ping"', b'{"type":"content_block_stop"', b'{"type":"message_stop"')


class AnthropicCollector(Collector):
    """
    Collects the metadata of one Anthropic response.
    """

    def __init__(self, max_thinking_chars: int) -> None:
        super().__init__(max_thinking_chars)
        self._thinking_blocks = 0

    def data(self, payload: bytes) -> None:
        """
        Read one event, skipping text, signature and tool input deltas unparsed.
        """
        if payload.startswith(_DELTA):
            if b'"thinking_delta"' not in payload:
                return
        elif payload.startswith(_UNUSED):
            return
        super().data(payload)

    def event(self, value: dict[str, Any]) -> None:
        """
        Read one parsed event.
        """
        kind = value.get("type")
        if kind == "content_block_delta":
            delta = value.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "thinking_delta":
                self._think(delta.get("thinking"))
        elif kind == "content_block_start":
            self._block(value.get("content_block"))
        elif kind == "message_start":
            message = value.get("message")
            if isinstance(message, dict):
                self.model = label(message.get("model")) or self.model
                self.usage(message.get("usage"), _USAGE)
        elif kind == "message_delta":
            delta = value.get("delta")
            if isinstance(delta, dict):
                self.stop_reason = label(delta.get("stop_reason")) or self.stop_reason
            self.usage(value.get("usage"), _USAGE)
        elif kind == "error":
            self.error_type = "stream_error_event"

    def body(self, value: Any) -> None:
        """
        Read a C{message} body (an error body holds nothing to collect).
        """
        if not isinstance(value, dict) or value.get("type") != "message":
            return
        self.model = label(value.get("model"))
        self.stop_reason = label(value.get("stop_reason"))
        self.usage(value.get("usage"), _USAGE)
        content = value.get("content")
        for block in content if isinstance(content, list) else ():
            self._block(block)

    def _block(self, block: object) -> None:
        if not isinstance(block, dict):
            return
        kind = block.get("type")
        if kind == "thinking":
            if self._thinking_blocks:
                self.thinking.add(SEPARATOR)
            self._thinking_blocks += 1
            self._think(block.get("thinking"))
        elif kind == "tool_use":
            self.tool_calls += 1

    def _think(self, text: object) -> None:
        if isinstance(text, str):
            self.thinking.add(text)

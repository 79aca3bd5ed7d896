"""
The Anthropic Messages API wire format: C{POST /v1/messages} (JSON or SSE) and C{GET /v1/models}.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

from smoltbot.fakeprovider.reply import Reply
from smoltbot.fakeprovider.wire import JSONObject, compact

NAME = "anthropic"
JSON_TYPE = b"application/json"
STREAM_TYPE = b"text/event-stream; charset=utf-8"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _event(name: str, data: JSONObject) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + compact(data) + b"\n\n"


def features(body: JSONObject) -> tuple[bool, Optional[str]]:
    """
    Thinking is asked by C{thinking: {type: enabled}} (or C{adaptive}); tools by C{tools}.
    """
    thinking = body.get("thinking")
    tools = body.get("tools") or [{}]
    return (
        isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"),
        tools[0].get("name"),
    )


def _usage(reply: Reply, output_tokens: int) -> JSONObject:
    return {
        "input_tokens": reply.prompt_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _message(reply: Reply, content: list[JSONObject], stop_reason: Optional[str], output_tokens: int) -> JSONObject:
    return {
        "id": reply.ident("msg_"),
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _usage(reply, output_tokens),
    }


def _stop_reason(reply: Reply) -> str:
    return "tool_use" if reply.tool_name else "end_turn"


def _tool_use(reply: Reply, arguments: JSONObject) -> JSONObject:
    return {"type": "tool_use", "id": reply.ident("toolu_"), "name": reply.tool_name, "input": arguments}


def message(reply: Reply, body: JSONObject) -> bytes:
    """
    A C{message} object: thinking, text and tool_use blocks, stop reason and usage.
    """
    content: list[JSONObject] = []
    if reply.thinking:
        content.append({"type": "thinking", "thinking": reply.thinking_text, "signature": reply.signature})
    if reply.knobs.events:
        content.append({"type": "text", "text": reply.text})
    if reply.tool_name:
        content.append(_tool_use(reply, reply.tool_input))
    return compact(_message(reply, content, _stop_reason(reply), reply.output_tokens))


def _blocks(reply: Reply) -> Iterator[tuple[JSONObject, Iterable[JSONObject]]]:
    """
    Each content block's C{content_block_start} payload and its deltas.
    """
    if reply.thinking:
        deltas: list[JSONObject] = [{"type": "thinking_delta", "thinking": part} for part in reply.thinking_chunks()]
        yield {"type": "thinking", "thinking": "", "signature": ""}, [
            *deltas,
            {"type": "signature_delta", "signature": reply.signature},
        ]
    if reply.knobs.events:
        yield {"type": "text", "text": ""}, ({"type": "text_delta", "text": part} for part in reply.text_chunks())
    if reply.tool_name:
        yield _tool_use(reply, {}), [
            {"type": "input_json_delta", "partial_json": part} for part in ("", *reply.tool_json_chunks())
        ]


def stream(reply: Reply, body: JSONObject) -> Iterator[bytes]:
    """
    C{message_start}, per block C{content_block_start}/C{_delta}/C{_stop} (a C{ping} after
    the first start), C{message_delta} with the stop reason and output tokens, C{message_stop}.
    """
    yield _event("message_start", {"type": "message_start", "message": _message(reply, [], None, 1)})
    for index, (start, deltas) in enumerate(_blocks(reply)):
        yield _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
        if index == 0:
            yield _event("ping", {"type": "ping"})
        for delta in deltas:
            yield _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
    yield _event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
            "usage": {"output_tokens": reply.output_tokens},
        },
    )
    yield _event("message_stop", {"type": "message_stop"})


def _error(error_type: str, message: str) -> JSONObject:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def stream_error() -> bytes:
    """
    The C{event: error} Anthropic sends when it is overloaded mid-stream.
    """
    return _event("error", _error("overloaded_error", "Overloaded"))


def error(status: int, message: str) -> bytes:
    """
    C{{"type":"error","error":{"type":...,"message":...}}} with the type Anthropic uses for the status.
    """
    return compact(_error(_ERROR_TYPES.get(status, "api_error"), message))


def models() -> bytes:
    """
    A one-page model list.
    """
    data = [
        {"type": "model", "id": model, "display_name": name, "created_at": created}
        for model, name, created in [
            ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
            ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
        ]
    ]
    return compact({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})


def headers(number: int) -> list[tuple[bytes, bytes]]:
    """
    Anthropic's C{request-id} header.
    """
    return [(b"request-id", f"req_fake{number:016d}".encode())]

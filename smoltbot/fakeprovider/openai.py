"""
The OpenAI Chat Completions wire format: C{POST /v1/chat/completions} (JSON or SSE) and
C{GET /v1/models}.

OpenAI returns no reasoning text from Chat Completions: a request with C{reasoning_effort}
gets only C{completion_tokens_details.reasoning_tokens}.
"""

from __future__ import annotations

from typing import Iterator, Optional

from smoltbot.fakeprovider.reply import Reply
from smoltbot.fakeprovider.wire import JSONObject, compact, pretty

NAME = "openai"
JSON_TYPE = b"application/json"
STREAM_TYPE = b"text/event-stream; charset=utf-8"

_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def _data(chunk: JSONObject) -> bytes:
    return b"data: " + compact(chunk) + b"\n\n"


def features(body: JSONObject) -> tuple[bool, Optional[str]]:
    """
    Reasoning is asked by a C{reasoning_effort} other than C{none}; tools by C{tools}.
    """
    tools = body.get("tools") or [{}]
    return body.get("reasoning_effort") not in (None, "none"), tools[0].get("function", {}).get("name")


def _finish_reason(reply: Reply) -> str:
    return "tool_calls" if reply.tool_name else "stop"


def _usage(reply: Reply) -> JSONObject:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.prompt_tokens + reply.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reply.thinking_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _completion(reply: Reply, kind: str, choices: list[JSONObject]) -> JSONObject:
    return {
        "id": reply.ident("chatcmpl-"),
        "object": kind,
        "created": reply.created,
        "model": reply.model,
        "choices": choices,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def message(reply: Reply, body: JSONObject) -> bytes:
    """
    A C{chat.completion} with one choice (text, tool calls), its finish reason and usage.
    """
    answer: JSONObject = {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []}
    if reply.tool_name:
        answer["tool_calls"] = [
            {
                "id": reply.ident("call_"),
                "type": "function",
                "function": {"name": reply.tool_name, "arguments": reply.tool_json},
            }
        ]
    choice = {"index": 0, "message": answer, "logprobs": None, "finish_reason": _finish_reason(reply)}
    return pretty({**_completion(reply, "chat.completion", [choice]), "usage": _usage(reply)})


def stream(reply: Reply, body: JSONObject) -> Iterator[bytes]:
    """
    C{chat.completion.chunk} events: the role, text deltas, tool call deltas by index, the
    finish reason, a usage chunk with no choices when C{stream_options.include_usage}, then
    C{[DONE]}.
    """
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    extra: JSONObject = {"usage": None} if include_usage else {}

    def chunk(delta: JSONObject, finish_reason: Optional[str] = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _data({**_completion(reply, "chat.completion.chunk", [choice]), **extra})

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for part in reply.text_chunks():
        yield chunk({"content": part})
    if reply.tool_name:
        call = {"id": reply.ident("call_"), "type": "function", "function": {"name": reply.tool_name, "arguments": ""}}
        yield chunk({"tool_calls": [{"index": 0, **call}]})
        for part in reply.tool_json_chunks():
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
    yield chunk({}, _finish_reason(reply))
    if include_usage:
        yield _data({**_completion(reply, "chat.completion.chunk", []), "usage": _usage(reply)})
    yield b"data: [DONE]\n\n"


def _error(message: str, error_type: str, code: Optional[str]) -> JSONObject:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def stream_error() -> bytes:
    """
    The C{data: {"error": ...}} event OpenAI sends when it fails mid-stream.
    """
    return _data(_error("The server had an error while processing your request.", "server_error", None))


def error(status: int, message: str) -> bytes:
    """
    C{{"error":{"message","type","param","code"}}} with the type and code OpenAI uses.
    """
    return pretty(_error(message, *_ERRORS.get(status, ("server_error", None))))


def models() -> bytes:
    """
    A small model list.
    """
    data = [
        {"id": model, "object": "model", "created": 1715367049, "owned_by": "system"}
        for model in ("gpt-4o", "gpt-4o-mini", "gpt-5")
    ]
    return pretty({"object": "list", "data": data})


def headers(number: int) -> list[tuple[bytes, bytes]]:
    """
    OpenAI's C{x-request-id} header.
    """
    return [(b"x-request-id", f"req_fake{number:016d}".encode())]

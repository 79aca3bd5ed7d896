"""
The Gemini API wire format: C{POST /v1beta/models/{model}:generateContent},
C{:streamGenerateContent?alt=sse} and C{GET /v1beta/models}.

Google's stream events are C{data: <json>} lines ended by C{\\r\\n\\r\\n}, their JSON spelled
with C{": "} after keys and no space after commas; whole bodies are indented by two spaces.
Streams are always SSE, as with C{alt=sse} (which the SDK always sends); the API version in the
path (C{v1beta}, C{v1}) does not matter.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Optional

from smoltbot.fakeprovider.reply import Reply
from smoltbot.fakeprovider.wire import JSONObject, pretty

NAME = "gemini"
JSON_TYPE = b"application/json; charset=UTF-8"
STREAM_TYPE = b"text/event-stream"

_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _data(value: JSONObject) -> bytes:
    return b"data: " + json.dumps(value, separators=(",", ": "), ensure_ascii=False).encode() + b"\r\n\r\n"


def _field(value: JSONObject, name: str) -> Any:
    """
    A field by its camelCase name or its snake_case one (the API accepts both; the SDK mixes them).
    """
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
    return value.get(name, value.get(snake)) or {}


def features(body: JSONObject) -> tuple[bool, Optional[str]]:
    """
    Thoughts are asked by C{generationConfig.thinkingConfig.includeThoughts}; tools by the
    first C{functionDeclarations} entry of C{tools}.
    """
    thinking = _field(_field(body, "generationConfig"), "thinkingConfig")
    declarations = [d for tool in body.get("tools") or [] for d in _field(tool, "functionDeclarations")]
    return _field(thinking, "includeThoughts") is True, declarations[0]["name"] if declarations else None


def _function_call(reply: Reply) -> JSONObject:
    return {"functionCall": {"name": reply.tool_name, "args": reply.tool_input}}


def _response(reply: Reply, parts: list[JSONObject], final: bool) -> JSONObject:
    candidate: JSONObject = {"content": {"parts": parts, "role": "model"}}
    if final:
        candidate["finishReason"] = "STOP"
    response: JSONObject = {"candidates": [{**candidate, "index": 0}]}
    if final:
        usage = {
            "promptTokenCount": reply.prompt_tokens,
            "candidatesTokenCount": reply.text_tokens,
            "totalTokenCount": reply.prompt_tokens + reply.output_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": reply.prompt_tokens}],
        }
        if reply.thinking:
            usage["thoughtsTokenCount"] = reply.thinking_tokens
        response["usageMetadata"] = usage
    return {**response, "modelVersion": reply.model, "responseId": reply.ident("")}


def message(reply: Reply, body: JSONObject) -> bytes:
    """
    A C{GenerateContentResponse}: thought, text and function call parts, finish reason, usage.
    """
    parts: list[JSONObject] = []
    if reply.thinking:
        parts.append({"text": reply.thinking_text, "thought": True})
    if reply.knobs.events:
        parts.append({"text": reply.text})
    if reply.tool_name:
        parts.append(_function_call(reply))
    return pretty(_response(reply, parts, final=True))


def _parts(reply: Reply) -> Iterator[JSONObject]:
    if reply.thinking:
        for part in reply.thinking_chunks():
            yield {"text": part, "thought": True}
    for part in reply.text_chunks():
        yield {"text": part}
    if reply.tool_name:
        yield _function_call(reply)


def stream(reply: Reply, body: JSONObject) -> Iterator[bytes]:
    """
    One response per part (thoughts, text slices, the function call); the last one carries
    C{finishReason} and C{usageMetadata}.
    """
    parts = _parts(reply)
    part = next(parts, {"text": ""})
    for following in parts:
        yield _data(_response(reply, [part], final=False))
        part = following
    yield _data(_response(reply, [part], final=True))


def _error(status: int, message: str) -> JSONObject:
    return {"error": {"code": status, "message": message, "status": _STATUSES.get(status, "INTERNAL")}}


def stream_error() -> bytes:
    """
    The error Google sends in place of the next event when it fails mid-stream.
    """
    return _data(_error(503, "The model is overloaded. Please try again later."))


def error(status: int, message: str) -> bytes:
    """
    C{{"error":{"code","message","status"}}} with Google's status name for the HTTP status.
    """
    return pretty(_error(status, message))


def models() -> bytes:
    """
    A small model list.
    """
    return pretty(
        {
            "models": [
                {
                    "name": f"models/{model}",
                    "version": "001",
                    "displayName": name,
                    "inputTokenLimit": 1048576,
                    "outputTokenLimit": 65536,
                    "supportedGenerationMethods": ["generateContent", "countTokens", "streamGenerateContent"],
                    "thinking": True,
                }
                for model, name in [("gemini-2.5-flash", "Gemini 2.5 Flash"), ("gemini-2.5-pro", "Gemini 2.5 Pro")]
            ]
        }
    )


def headers(number: int) -> list[tuple[bytes, bytes]]:
    """
    No extra headers: Gemini has no request id header.
    """
    return []

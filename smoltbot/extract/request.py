"""
What a request says about itself: the model it names and whether it asks for a stream.

Anthropic and OpenAI name both in the JSON body, Gemini in the URL path
(C{.../models/{model}:generateContent} or C{:streamGenerateContent}). Bodies can be large and
are not trusted: a member is found by a scan for its key, and the body is parsed only when
the key occurs more than once (to tell the top-level member from nested ones), and only up
to a size. A model name must be printable ASCII without quotes, of at most 128 characters.
"""

from __future__ import annotations

import json
import re

MAX_PARSED_BODY = 4 * 1024 * 1024

_MODEL = re.compile(r"[!#-\[\]-~]{1,128}")
_MODEL_VALUE = re.compile(rb'"([!#-\[\]-~]{1,128})"')
_COLON = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*")
_GEMINI_METHODS = ("generateContent", "streamGenerateContent")


def _member(body: bytes, key: str) -> tuple[int, object]:
    """
    Where the value of the only member named C{key} in a JSON body starts; when there are
    several, C{-1} and the value of the top-level one, parsed (C{None} when unknown).
    """
    quoted = b'"' + key.encode() + b'"'
    found = -1
    start = body.find(quoted)
    while start >= 0:
        colon = _COLON.match(body, start + len(quoted))
        if colon:
            if found >= 0:
                return -1, _parsed_member(body, key)
            found = colon.end()
        start = body.find(quoted, start + 1)
    return found, None


def _parsed_member(body: bytes, key: str) -> object:
    if len(body) > MAX_PARSED_BODY:
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value.get(key) if isinstance(value, dict) else None


def _gemini_call(path: str) -> tuple[str, str]:
    """
    The model and method of a Gemini path such as C{/v1beta/models/gemini-2.5-pro:generateContent}.
    """
    head, _, method = path.partition("?")[0].rpartition(":")
    folder, _, model = head.rpartition("/")
    if folder.rpartition("/")[2] in ("models", "tunedModels") and method in _GEMINI_METHODS:
        return model, method
    return "", ""


def request_model(provider: str, path: str, body: bytes) -> str | None:
    """
    The model a request names, or C{None} when it names none that looks like a model.

    @param provider: C{"anthropic"}, C{"openai"} or C{"gemini"}.
    @param path: the upstream path (any query string is ignored).
    @param body: the request body.
    """
    if provider == "gemini":
        model = _gemini_call(path)[0]
        return model if _MODEL.fullmatch(model) else None
    start, value = _member(body, "model")
    if start >= 0:
        match = _MODEL_VALUE.match(body, start)
        return match.group(1).decode("ascii") if match else None
    return value if isinstance(value, str) and _MODEL.fullmatch(value) else None


def request_streaming(provider: str, path: str, body: bytes) -> bool:
    """
    Whether a request asks for a streamed (SSE) answer: C{"stream": true} in the body, or
    Gemini's C{:streamGenerateContent} method.

    @param provider: C{"anthropic"}, C{"openai"} or C{"gemini"}.
    @param path: the upstream path (any query string is ignored).
    @param body: the request body.
    """
    if provider == "gemini":
        return _gemini_call(path)[1] == "streamGenerateContent"
    start, value = _member(body, "stream")
    if start >= 0:
        return body.startswith(b"true", start)
    return value is True

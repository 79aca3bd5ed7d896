"""
Tests for L{smoltbot.extract}: response metadata from the fake provider's real wire formats
and from hand-written edge cases (chunk boundaries, line ends, odd events, compression,
bounds), and the request helpers.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from dataclasses import fields, replace
from types import ModuleType
from typing import Any, Iterable

import brotli
from twisted.trial.unittest import SynchronousTestCase

from smoltbot.extract import Extract, extractor_for, request, request_model, request_streaming
from smoltbot.extract.anthropic import AnthropicCollector
from smoltbot.extract.result import Collector
from smoltbot.fakeprovider import Knobs, Reply
from smoltbot.fakeprovider import anthropic as fake_anthropic
from smoltbot.fakeprovider import gemini as fake_gemini
from smoltbot.fakeprovider import openai as fake_openai

SEPARATOR = "\n\n---\n\n"
MARKER = "MARKER-7f3c1e"
SSE = "text/event-stream"
JSON = "application/json"
WIRE: dict[str, ModuleType] = {"anthropic": fake_anthropic, "openai": fake_openai, "gemini": fake_gemini}
# What the fake provider's request bodies ask for; OpenAI reports usage in streams only when asked.
REQUEST = {"stream_options": {"include_usage": True}}


def _reply(model: str = "model-x", thinking: bool = True, tool: bool = True, events: int = 50) -> Reply:
    return Reply(7, model, Knobs(events=events, marker=MARKER), 321, thinking, "get_weather" if tool else None)


def _stream(provider: str, reply: Reply) -> bytes:
    return b"".join(WIRE[provider].stream(reply, REQUEST))


def _message(provider: str, reply: Reply) -> bytes:
    body: bytes = WIRE[provider].message(reply, REQUEST)
    return body


def _thinking(text: str, limit: int = 65536) -> dict[str, Any]:
    if not text:
        return {}
    return {
        "thinking_present": True,
        "thinking_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "thinking_text": text[:limit],
        "thinking_truncated": len(text) > limit,
    }


def _expected(provider: str, reply: Reply) -> Extract:
    """
    What extraction must find in the fake provider's answer C{reply}, JSON or streamed.
    """
    tool_calls = 1 if reply.tool_name else 0
    if provider == "anthropic":
        return Extract(
            model=reply.model,
            input_tokens=reply.prompt_tokens,
            output_tokens=reply.output_tokens,
            cache_read_tokens=0,
            cache_creation_tokens=0,
            stop_reason="tool_use" if tool_calls else "end_turn",
            tool_calls=tool_calls,
            **_thinking(reply.thinking_text),
        )
    if provider == "openai":
        return Extract(
            model=reply.model,
            input_tokens=reply.prompt_tokens,
            output_tokens=reply.output_tokens,
            cache_read_tokens=0,
            reasoning_tokens=reply.thinking_tokens,
            stop_reason="tool_calls" if tool_calls else "stop",
            tool_calls=tool_calls,
        )
    return Extract(
        model=reply.model,
        input_tokens=reply.prompt_tokens,
        output_tokens=reply.text_tokens,
        reasoning_tokens=reply.thinking_tokens if reply.thinking else None,
        stop_reason="STOP",
        tool_calls=tool_calls,
        **_thinking(reply.thinking_text),
    )


def _extract(
    provider: str,
    chunks: Iterable[bytes],
    content_type: str | None = SSE,
    *,
    streaming: bool = True,
    encoding: str | None = None,
    complete: bool = True,
    max_thinking_chars: int = 65536,
) -> Extract:
    extractor = extractor_for(
        provider,
        streaming=streaming,
        content_type=content_type,
        content_encoding=encoding,
        max_thinking_chars=max_thinking_chars,
    )
    for chunk in chunks:
        extractor.feed(chunk)
    return extractor.finish(complete)


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _compact(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _compact(data) + b"\n\n"


def _data(data: dict[str, Any]) -> bytes:
    return b"data: " + _compact(data) + b"\n\n"


# Hand-written streams with what the fake provider does not send: several thinking blocks
# (multi-byte text), a redacted one, several tool calls, cache tokens, reasoning_content.
ANTHROPIC_THOUGHTS = ["Premier pas: é", "😀 second " + MARKER]
ANTHROPIC_SSE = b"".join(
    [
        _event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "model": "claude-opus-4-1",
                    "content": [],
                    "stop_reason": None,
                    "usage": {
                        "input_tokens": 11,
                        "cache_read_input_tokens": 40,
                        "cache_creation_input_tokens": 9,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        ),
        _event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Premier "}},
        ),
        _event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "pas: é"}},
        ),
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "redacted_thinking", "data": "opaque"},
            },
        ),
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": 2, "content_block": {"type": "thinking", "thinking": "😀 "}},
        ),
        _event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "thinking_delta", "thinking": "second " + MARKER},
            },
        ),
        _event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 3,
                "content_block": {"type": "tool_use", "id": "t1", "name": "a", "input": {}},
            },
        ),
        _event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 3,
                "delta": {"type": "input_json_delta", "partial_json": '{"x": "thinking_delta"'},
            },
        ),
        _event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 4,
                "content_block": {"type": "tool_use", "id": "t2", "name": "b", "input": {}},
            },
        ),
        _event(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 99}},
        ),
        _event("message_stop", {"type": "message_stop"}),
    ]
)
ANTHROPIC_EXPECTED = Extract(
    model="claude-opus-4-1",
    input_tokens=11,
    output_tokens=99,
    cache_read_tokens=40,
    cache_creation_tokens=9,
    stop_reason="tool_use",
    tool_calls=2,
    **_thinking(SEPARATOR.join(ANTHROPIC_THOUGHTS)),
)
ANTHROPIC_JSON = json.dumps(
    {
        "type": "message",
        "model": "claude-opus-4-1",
        "content": [
            {"type": "thinking", "thinking": ANTHROPIC_THOUGHTS[0], "signature": "s"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "thinking", "thinking": ANTHROPIC_THOUGHTS[1], "signature": "s"},
            {"type": "text", "text": "answer"},
            {"type": "tool_use", "id": "t1", "name": "a", "input": {}},
            {"type": "tool_use", "id": "t2", "name": "b", "input": {}},
        ],
        "stop_reason": "tool_use",
        "usage": {
            "input_tokens": 11,
            "cache_read_input_tokens": 40,
            "cache_creation_input_tokens": 9,
            "output_tokens": 99,
        },
    }
).encode()


def _chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"id": "c", "object": "chat.completion.chunk", "model": "deepseek-r1", "choices": [choice], **extra}


OPENAI_USAGE = {
    "prompt_tokens": 30,
    "completion_tokens": 50,
    "prompt_tokens_details": {"cached_tokens": 12},
    "completion_tokens_details": {"reasoning_tokens": 20},
}
OPENAI_SSE = b"".join(
    [
        _data(_chunk({"role": "assistant", "content": None, "reasoning_content": "Let me "})),
        _data(_chunk({"reasoning_content": "think é😀 " + MARKER})),
        _data(_chunk({"content": "Sure"})),
        _data(_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]})),
        _data(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q": 1}'}}]})),
        _data(_chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]})),
        _data(_chunk({}, "tool_calls")),
        _data(
            {"id": "c", "object": "chat.completion.chunk", "model": "deepseek-r1", "choices": [], "usage": OPENAI_USAGE}
        ),
        b"data: [DONE]\n\n",
    ]
)
OPENAI_EXPECTED = Extract(
    model="deepseek-r1",
    input_tokens=30,
    output_tokens=50,
    cache_read_tokens=12,
    reasoning_tokens=20,
    stop_reason="tool_calls",
    tool_calls=2,
    **_thinking("Let me think é😀 " + MARKER),
)
OPENAI_JSON = json.dumps(
    {
        "object": "chat.completion",
        "model": "deepseek-r1",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Sure",
                    "reasoning_content": "Let me think é😀 " + MARKER,
                    "tool_calls": [
                        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": OPENAI_USAGE,
    }
).encode()


def _gemini(parts: list[dict[str, Any]], usage: dict[str, int], finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-pro"}


# As Google sends them: usageMetadata in every event, thoughts first.
GEMINI_RESPONSES = [
    _gemini([{"text": "Thinking é", "thought": True}], {"promptTokenCount": 8, "totalTokenCount": 8}),
    _gemini([{"text": "😀 more " + MARKER, "thought": True}], {"promptTokenCount": 8, "thoughtsTokenCount": 30}),
    _gemini([{"text": "Answer"}], {"promptTokenCount": 8, "candidatesTokenCount": 2, "thoughtsTokenCount": 31}),
    _gemini(
        [{"functionCall": {"name": "f", "args": {}}}, {"functionCall": {"name": "g", "args": {}}}],
        {"promptTokenCount": 8, "candidatesTokenCount": 9, "thoughtsTokenCount": 31, "cachedContentTokenCount": 4},
        "STOP",
    ),
]
GEMINI_SSE = b"".join(b"data: " + json.dumps(r).encode() + b"\r\n\r\n" for r in GEMINI_RESPONSES)
GEMINI_EXPECTED = Extract(
    model="gemini-2.5-pro",
    input_tokens=8,
    output_tokens=9,
    reasoning_tokens=31,
    cache_read_tokens=4,
    stop_reason="STOP",
    tool_calls=2,
    **_thinking("Thinking é😀 more " + MARKER),
)

HANDWRITTEN = [
    ("anthropic", ANTHROPIC_SSE, ANTHROPIC_JSON, ANTHROPIC_EXPECTED),
    ("openai", OPENAI_SSE, OPENAI_JSON, OPENAI_EXPECTED),
    ("gemini", GEMINI_SSE, json.dumps(GEMINI_RESPONSES).encode(), GEMINI_EXPECTED),
]


class FakeProviderTests(SynchronousTestCase):
    """
    Extraction from the fake provider's answers, which use the providers' real wire formats.
    """

    def test_json_and_stream(self) -> None:
        """
        Model, tokens, stop reason, tool calls and thinking come out of each provider's JSON
        body and stream, with and without thinking and tools.
        """
        for provider, module in WIRE.items():
            for thinking, tool in [(True, True), (False, False), (True, False), (False, True)]:
                reply = _reply(thinking=thinking, tool=tool)
                expected = _expected(provider, reply)
                with self.subTest(provider=provider, thinking=thinking, tool=tool):
                    self.assertEqual(
                        _extract(provider, [_message(provider, reply)], module.JSON_TYPE.decode(), streaming=False),
                        expected,
                    )
                    self.assertEqual(
                        _extract(provider, [_stream(provider, reply)], module.STREAM_TYPE.decode()), expected
                    )

    def test_thinking_hash(self) -> None:
        """
        The thinking hash is the SHA-256 of the thinking text, which holds the marker.
        """
        for provider in ("anthropic", "gemini"):
            reply = _reply()
            extract = _extract(provider, [_stream(provider, reply)])
            self.assertIn(MARKER, extract.thinking_text)
            self.assertEqual(extract.thinking_sha256, hashlib.sha256(reply.thinking_text.encode()).hexdigest())

    def test_chunking(self) -> None:
        """
        A stream fed a byte at a time, in odd-sized chunks or event by event gives the same
        Extract as in one chunk.
        """
        for provider, module in WIRE.items():
            reply = _reply(events=6)
            whole = _stream(provider, reply)
            expected = _expected(provider, reply)
            for chunks in (
                _pieces(whole, 1),
                _pieces(whole, 7),
                _pieces(whole, 100),
                list(module.stream(reply, REQUEST)),
            ):
                with self.subTest(provider=provider, chunk=len(chunks[0])):
                    self.assertEqual(_extract(provider, chunks), expected)

    def test_openai_stream_without_usage(self) -> None:
        """
        An OpenAI stream not asked to include usage has no token counts, but the rest.
        """
        reply = _reply()
        extract = _extract("openai", fake_openai.stream(reply, {}))
        self.assertEqual(
            extract,
            replace(
                _expected("openai", reply),
                input_tokens=None,
                output_tokens=None,
                cache_read_tokens=None,
                reasoning_tokens=None,
            ),
        )

    def test_stream_error_event(self) -> None:
        """
        The provider's mid-stream error event is reported, with what came before it.
        """
        for provider, module in WIRE.items():
            reply = _reply(events=4)
            events = list(module.stream(reply, REQUEST))
            extract = _extract(provider, [*events[:3], module.stream_error()])
            with self.subTest(provider=provider):
                self.assertEqual(extract.error_type, "stream_error_event")
                self.assertEqual(extract.model, reply.model)
                self.assertIsNone(extract.stop_reason)
                self.assertIsNone(extract.extraction_error)

    def test_error_body(self) -> None:
        """
        A provider's JSON error body is not a stream error event, and yields nothing.
        """
        for provider, module in WIRE.items():
            with self.subTest(provider=provider):
                self.assertEqual(_extract(provider, [module.error(429, "slow down")], JSON), Extract())

    def test_cut_stream(self) -> None:
        """
        A stream cut in the middle of an event (complete=False) still reports what it saw.
        """
        reply = _reply()
        cases = [
            (
                "anthropic",
                8,
                Extract(
                    model=reply.model,
                    input_tokens=reply.prompt_tokens,
                    output_tokens=1,
                    cache_read_tokens=0,
                    cache_creation_tokens=0,
                    **_thinking(reply.thinking_text),
                ),
            ),
            ("openai", 8, Extract(model=reply.model)),
            ("gemini", 4, Extract(model=reply.model, **_thinking(reply.thinking_text))),
        ]
        for provider, kept, expected in cases:
            events = list(WIRE[provider].stream(reply, REQUEST))
            cut = b"".join(events[:kept]) + events[kept][:30]
            with self.subTest(provider=provider):
                self.assertEqual(_extract(provider, [cut], complete=False), expected)


class HandWrittenTests(SynchronousTestCase):
    """
    Extraction from hand-written answers with what the fake provider does not send.
    """

    def test_json_and_stream(self) -> None:
        """
        Several thinking blocks are joined by the separator (Anthropic), reasoning_content and
        thought parts are concatenated, and every tool call is counted.
        """
        for provider, stream, body, expected in HANDWRITTEN:
            with self.subTest(provider=provider):
                self.assertEqual(_extract(provider, [stream]), expected)
                self.assertEqual(_extract(provider, [body], JSON, streaming=False), expected)

    def test_every_split(self) -> None:
        """
        Cutting a stream in two anywhere (inside a multi-byte character or a CRLF included)
        changes nothing.
        """
        for provider, stream, _, expected in HANDWRITTEN:
            with self.subTest(provider=provider):
                for cut in range(len(stream)):
                    self.assertEqual(_extract(provider, [stream[:cut], stream[cut:]]), expected, cut)

    def test_gemini_json_array(self) -> None:
        """
        A Gemini stream sent as a JSON array (no alt=sse) is read response by response, an
        error item included.
        """
        error = {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}
        body = json.dumps([*GEMINI_RESPONSES[:2], error]).encode()
        self.assertEqual(
            _extract("gemini", [body], JSON),
            Extract(
                model="gemini-2.5-pro",
                input_tokens=8,
                reasoning_tokens=30,
                error_type="stream_error_event",
                **_thinking("Thinking é😀 more " + MARKER),
            ),
        )

    def test_gemini_cut_stream_usage(self) -> None:
        """
        A Gemini stream cut before its last event reports the usage of the latest event seen.
        """
        extract = _extract("gemini", _pieces(GEMINI_SSE[: GEMINI_SSE.index(b"functionCall")], 5), complete=False)
        self.assertEqual(
            extract,
            Extract(
                model="gemini-2.5-pro",
                input_tokens=8,
                output_tokens=2,
                reasoning_tokens=31,
                **_thinking("Thinking é😀 more " + MARKER),
            ),
        )


def _lines(stream: bytes, end: bytes) -> bytes:
    return stream.replace(b"\n", end)


class SSEFramingTests(SynchronousTestCase):
    """
    The SSE layer: line ends, fields, comments, odd and broken events.
    """

    def test_line_ends(self) -> None:
        """
        LF, CRLF, CR and mixed line ends read alike, in one chunk or byte by byte.
        """
        stream = _stream("anthropic", _reply(events=3))
        expected = _extract("anthropic", [stream])
        mixed = stream.replace(b"\n\n", b"\r\n\n").replace(b"\ndata", b"\rdata")
        for variant in (_lines(stream, b"\r\n"), _lines(stream, b"\r"), mixed):
            with self.subTest(variant=variant[:40]):
                self.assertEqual(_extract("anthropic", [variant]), expected)
                self.assertEqual(_extract("anthropic", _pieces(variant, 1)), expected)

    def test_ignored_lines_and_events(self) -> None:
        """
        Comments, id and retry fields, empty events, events without data and unknown event
        types change nothing.
        """
        reply = _reply(events=3)
        events = list(fake_anthropic.stream(reply, REQUEST))
        noise = [
            b": keep-alive\n\n",
            b"id: 7\nretry: 1000\n\n",
            b"\n\n\n\n",
            b"event: ping\n\n",
            b'event: surprise\ndata: {"type": "surprise", "stop_reason": "no"}\n\n',
            b"data:\n\n",
        ]
        noisy = b"".join(event + noise[i % len(noise)] for i, event in enumerate(events))
        self.assertEqual(_extract("anthropic", [noisy]), _expected("anthropic", reply))
        self.assertEqual(_extract("anthropic", _pieces(noisy, 3)), _expected("anthropic", reply))

    def test_multi_line_data(self) -> None:
        """
        An event whose data spans several data: lines (with or without a space after the
        colon) is read whole.
        """
        reply = _reply(events=2)
        split = []
        for event in fake_openai.stream(reply, REQUEST):
            head, _, tail = event.partition(b",")
            split.append(head + b",\ndata:" + tail if tail else event)
        self.assertEqual(_extract("openai", [b"".join(split)]), _expected("openai", reply))

    def test_last_event_without_blank_line(self) -> None:
        """
        A stream whose last event lacks the closing blank line still yields that event, but
        an event cut inside a line is dropped.
        """
        reply = _reply(events=2)
        stream = _stream("gemini", reply)
        self.assertEqual(_extract("gemini", [stream[:-2]]), _expected("gemini", reply))
        self.assertEqual(
            _extract("gemini", [stream, b'data: {"candidates"'], complete=False), _expected("gemini", reply)
        )

    def test_invalid_event(self) -> None:
        """
        An event whose data is not JSON is skipped and noted; the rest is read.
        """
        for provider, stream, _, expected in HANDWRITTEN:
            broken = b'data: {"type": "message_start", "model": \n\n' + stream
            with self.subTest(provider=provider):
                self.assertEqual(_extract(provider, [broken]), replace(expected, extraction_error="invalid_event"))

    def test_oversize_event(self) -> None:
        """
        An event over 1 MiB is skipped and noted, whether it arrives in one chunk or many
        (cut anywhere); the events after it are read.
        """
        big = b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {"type": "thinking_delta", '
        big += b'"thinking": "' + b"x" * (3 * 512 * 1024) + b'"}}\n\n'
        end = ANTHROPIC_SSE.index(b"\n\n") + 2
        stream = ANTHROPIC_SSE[:end] + big + ANTHROPIC_SSE[end:]
        expected = replace(ANTHROPIC_EXPECTED, extraction_error="event_too_large")
        between = end + len(big) - 1  # between the two line feeds that end the big event
        for chunks in ([stream], _pieces(stream, 65536), _pieces(stream, 1000), [stream[:between], stream[between:]]):
            with self.subTest(chunk=len(chunks[0])):
                self.assertEqual(_extract("anthropic", chunks), expected)

    def test_oversize_event_at_end(self) -> None:
        """
        An oversize event still unfinished when the stream ends is dropped.
        """
        stream = ANTHROPIC_SSE + b"data: " + b"y" * (2 * 1024 * 1024)
        for chunks in ([stream], _pieces(stream, 65536)):
            with self.subTest(chunk=len(chunks[0])):
                extract = _extract("anthropic", chunks, complete=False)
                self.assertEqual(extract, replace(ANTHROPIC_EXPECTED, extraction_error="event_too_large"))


def _raw_deflate(data: bytes) -> bytes:
    """
    Deflate without the zlib wrapper, as some servers send under C{Content-Encoding: deflate}.
    """
    deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return deflate.compress(data) + deflate.flush()


class DecodingTests(SynchronousTestCase):
    """
    Compressed bodies are read from a decompressed copy.
    """

    def test_encodings(self) -> None:
        """
        gzip, deflate (zlib-wrapped or raw) and br bodies, JSON and SSE, fed whole or byte by
        byte, read as their plain form.
        """
        encodings = [
            ("gzip", gzip.compress),
            ("x-gzip", gzip.compress),
            ("deflate", zlib.compress),
            ("deflate", _raw_deflate),
            ("br", brotli.compress),
            ("GZIP, identity", gzip.compress),
        ]
        for provider, stream, body, expected in HANDWRITTEN:
            for encoding, compress in encodings:
                for plain, content_type in ((stream, SSE), (body, JSON)):
                    packed = compress(plain)
                    with self.subTest(provider=provider, encoding=encoding, content_type=content_type):
                        for chunks in ([packed], _pieces(packed, 1)):
                            self.assertEqual(_extract(provider, chunks, content_type, encoding=encoding), expected)

    def test_large_stream(self) -> None:
        """
        A long compressed stream, whose chunks inflate to many pieces, reads as its plain form.
        """
        reply = _reply(events=5000)
        stream = _stream("gemini", reply)
        self.assertEqual(
            _extract("gemini", _pieces(gzip.compress(stream), 65536), encoding="gzip"), _expected("gemini", reply)
        )

    def test_unsupported(self) -> None:
        """
        An unknown or stacked encoding is reported and nothing is read.
        """
        for encoding, error in [("zstd", "unsupported_encoding: zstd"), ("gzip, br", "unsupported_encoding: gzip, br")]:
            with self.subTest(encoding=encoding):
                self.assertEqual(_extract("openai", [OPENAI_SSE], encoding=encoding), Extract(extraction_error=error))

    def test_corrupt(self) -> None:
        """
        A body that does not decode stops extraction where it breaks.
        """
        for encoding, compress in [("gzip", gzip.compress), ("deflate", zlib.compress), ("br", brotli.compress)]:
            packed = compress(ANTHROPIC_SSE)
            extract = _extract("anthropic", [packed[:200], b"garbage" * 20, packed[200:]], encoding=encoding)
            with self.subTest(encoding=encoding):
                self.assertEqual(extract.extraction_error, "decode_error: " + encoding)

    def test_bombs(self) -> None:
        """
        A br chunk that inflates past deflate's ratio, or a gzip JSON body past the JSON cap,
        stops extraction.
        """
        bomb = brotli.compress(b"a" * (8 * 1024 * 1024))
        self.assertEqual(_extract("anthropic", [bomb], encoding="br").extraction_error, "decompressed_too_large")
        spaces = gzip.compress(b" " * (17 * 1024 * 1024))
        self.assertEqual(_extract("anthropic", [spaces], JSON, encoding="gzip").extraction_error, "body_too_large")


class BodyTests(SynchronousTestCase):
    """
    How a response is read: SSE or JSON by content type, JSON bounds and errors, robustness.
    """

    def test_content_type_decides(self) -> None:
        """
        The content type, not the request, says SSE or JSON; the request decides only when
        the content type is missing; other types are not read.
        """
        stream, body = ANTHROPIC_SSE, ANTHROPIC_JSON
        cases = [
            (stream, "text/event-stream; charset=utf-8", False, ANTHROPIC_EXPECTED),
            (body, "application/json", True, ANTHROPIC_EXPECTED),
            (body, "application/vnd.example+json", True, ANTHROPIC_EXPECTED),
            (stream, None, True, ANTHROPIC_EXPECTED),
            (body, None, False, ANTHROPIC_EXPECTED),
            (body, "text/html; charset=utf-8", False, Extract(extraction_error="unsupported_content_type: text/html")),
        ]
        for data, content_type, streaming, expected in cases:
            with self.subTest(content_type=content_type, streaming=streaming):
                self.assertEqual(_extract("anthropic", [data], content_type, streaming=streaming), expected)

    def test_json_problems(self) -> None:
        """
        An empty body yields nothing; a body that is not JSON is reported as invalid, or as
        truncated when the response broke.
        """
        cases = [
            (b"", True, Extract()),
            (ANTHROPIC_JSON[:-1], True, Extract(extraction_error="invalid_json")),
            (ANTHROPIC_JSON[:50], False, Extract(extraction_error="truncated_body")),
            (b"[" * 100000 + b"]" * 100000, True, Extract(extraction_error="invalid_json")),
        ]
        for body, complete, expected in cases:
            with self.subTest(body=body[:20], complete=complete):
                self.assertEqual(_extract("anthropic", _pieces(body, 7), JSON, complete=complete), expected)

    def test_json_too_large(self) -> None:
        """
        A JSON body past 16 MiB is dropped and reported.
        """
        piece = b" " * (1024 * 1024)
        extract = _extract("openai", [OPENAI_JSON] + [piece] * 16, JSON)
        self.assertEqual(extract, Extract(extraction_error="body_too_large"))

    def test_internal_error(self) -> None:
        """
        An unexpected exception disables the extractor instead of escaping from feed.
        """

        def boom(self: AnthropicCollector, value: dict[str, Any]) -> None:
            raise ZeroDivisionError()

        self.patch(AnthropicCollector, "event", boom)
        extractor = extractor_for("anthropic", streaming=True, content_type=SSE, content_encoding=None)
        extractor.feed(ANTHROPIC_SSE)
        extractor.feed(b"data: more\n\n")
        extract = extractor.finish(True)
        self.assertEqual(extract, Extract(extraction_error="internal_error: ZeroDivisionError"))
        self.assertIs(extractor.finish(False), extract)

    def test_internal_error_at_finish(self) -> None:
        """
        An unexpected exception while ending the response is reported, not raised.
        """

        def boom(self: Collector, error: str | None) -> Extract:
            raise KeyError()

        self.patch(Collector, "extract", boom)
        extract = _extract("anthropic", [ANTHROPIC_SSE])
        self.assertEqual(extract, Extract(extraction_error="internal_error: KeyError"))


class ThinkingTests(SynchronousTestCase):
    """
    The thinking text: bounded, hashed whole, never shown.
    """

    def test_bound(self) -> None:
        """
        Only the first max_thinking_chars characters are kept, and the hash covers them all.
        """
        text = SEPARATOR.join(ANTHROPIC_THOUGHTS)
        for limit in (0, 1, 10, len(text) - 1, len(text), 65536):
            with self.subTest(limit=limit):
                extract = _extract("anthropic", _pieces(ANTHROPIC_SSE, 5), max_thinking_chars=limit)
                self.assertEqual(extract, replace(ANTHROPIC_EXPECTED, **_thinking(text, limit)))

    def test_never_shown(self) -> None:
        """
        Neither repr, str nor the storage dictionary of an Extract holds the thinking text.
        """
        for provider, stream, _, _ in HANDWRITTEN:
            extract = _extract(provider, [stream])
            self.assertIn(MARKER, extract.thinking_text)
            stored = extract.to_dict()
            self.assertEqual(set(stored), {f.name for f in fields(Extract)} - {"thinking_text"})
            for shown in (repr(extract), str(extract), json.dumps(stored)):
                self.assertNotIn(MARKER, shown)


class RequestTests(SynchronousTestCase):
    """
    The model and streaming flag a request names.
    """

    def test_model(self) -> None:
        """
        The model comes from the JSON body (its top-level member when nested ones exist) or
        the Gemini path; a missing, malformed or unreadable one gives None.
        """
        nested = {"role": "assistant", "content": [{"type": "tool_use", "input": {"model": "nested"}}]}
        cases = [
            ("anthropic", "/v1/messages", b'{"model": "claude-sonnet-4-5", "max_tokens": 10}', "claude-sonnet-4-5"),
            ("openai", "/v1/chat/completions", b'{"messages":[],"model":"gpt-4o"}', "gpt-4o"),
            ("anthropic", "/v1/messages", json.dumps({"messages": [nested], "model": "top"}).encode(), "top"),
            ("anthropic", "/v1/messages", json.dumps({"model": "top", "messages": [nested]}).encode(), "top"),
            ("openai", "/v1/chat/completions", b'{"model": "gpt-4o", "messages": [', "gpt-4o"),
            ("openai", "/v1/chat/completions", b'{"model": "a", "x": {"model": "b"}', None),
            ("openai", "/v1/chat/completions", b'{"model": "a", "x": {"model": "b"}}', "a"),
            ("openai", "/v1/chat/completions", b"not json", None),
            ("openai", "/v1/chat/completions", b'{"model": 5}', None),
            ("openai", "/v1/chat/completions", b'{"model": "has space"}', None),
            ("openai", "/v1/chat/completions", json.dumps({"model": "m" * 129}).encode(), None),
            ("openai", "/v1/chat/completions", b'{"messages": []}', None),
            ("openai", "/v1/chat/completions", b"", None),
            ("gemini", "/v1beta/models/gemini-2.5-pro:generateContent", b"{}", "gemini-2.5-pro"),
            ("gemini", "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse", b"{}", "gemini-2.5-flash"),
            ("gemini", "/v1beta/tunedModels/my-model-1:generateContent", b"{}", "my-model-1"),
            ("gemini", "/v1beta/models/gemini-2.5-pro:countTokens", b"{}", None),
            ("gemini", "/v1beta/models", b"{}", None),
        ]
        for provider, path, body, expected in cases:
            with self.subTest(provider=provider, path=path, body=body[:40]):
                self.assertEqual(request_model(provider, path, body), expected)

    def test_large_ambiguous_body(self) -> None:
        """
        A body too large to parse whose key occurs more than once names no model.
        """
        self.patch(request, "MAX_PARSED_BODY", 30)
        self.assertEqual(request_model("openai", "/", b'{"model": "a", "x": {"model": "b"}}'), None)
        self.assertEqual(request_model("openai", "/", b'{"model": "a", "x": {}}'), "a")

    def test_streaming(self) -> None:
        """
        A request streams when its body's top-level stream member is true, or when it calls
        Gemini's streamGenerateContent.
        """
        nested = json.dumps({"tools": [{"input_schema": {"stream": True}}], "stream": False}).encode()
        cases = [
            ("anthropic", "/v1/messages", b'{"model": "m", "stream": true}', True),
            ("openai", "/v1/chat/completions", b'{"stream" :true, "stream_options": {}}', True),
            ("openai", "/v1/chat/completions", b'{"stream": false}', False),
            ("anthropic", "/v1/messages", nested, False),
            ("anthropic", "/v1/messages", b'{"model": "m"}', False),
            ("anthropic", "/v1/messages", b"{broken", False),
            ("gemini", "/v1beta/models/gemini-2.5-pro:streamGenerateContent", b"{}", True),
            ("gemini", "/v1beta/models/gemini-2.5-pro:generateContent", b'{"stream": true}', False),
        ]
        for provider, path, body, expected in cases:
            with self.subTest(provider=provider, path=path, body=body[:40]):
                self.assertIs(request_streaming(provider, path, body), expected)

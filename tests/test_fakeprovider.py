"""
Tests for L{smoltbot.fakeprovider}: wire formats byte by byte, knobs, flow control and
observation in memory on a L{Clock}, and the official SDKs against a loopback server.
"""

from __future__ import annotations

import io
import json
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
    RaisingMemoryReactor,
    StringTransport,
)
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers

from smoltbot.fakeprovider import (
    FakeProvider,
    FakeProviderOptions,
    Knobs,
    Reply,
    count_tokens,
    main,
    run_fake_provider,
)
from smoltbot.fakeprovider import gemini

_T = TypeVar("_T")

ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]
OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
GEMINI_TOOLS = [{"functionDeclarations": [{"name": "get_weather", "description": "Weather"}]}]
GEMINI_THOUGHTS = {"thinkingConfig": {"includeThoughts": True}}


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool

    def json(self) -> Any:
        return json.loads(self.body)


def _parse(raw: bytes) -> _Response:
    """
    Parse one HTTP/1.1 response, de-chunking its body; C{complete} says whether it all arrived.
    """
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in header_lines)}
    status = int(status_line.split(" ")[1])
    if "content-length" in headers:
        length = int(headers["content-length"])
        return _Response(status, headers, rest[:length], len(rest) >= length)
    body, complete = b"", False
    while True:
        size_line, found, rest = rest.partition(b"\r\n")
        if not found:
            break
        size = int(size_line, 16)
        if size == 0:
            complete = rest == b"\r\n"
            break
        body, rest = body + rest[:size], rest[size + 2 :]
    return _Response(status, headers, body, complete)


def _frames(body: bytes, pattern: bytes, separator: bytes) -> list[tuple[bytes, ...]]:
    """
    Split an SSE body on C{separator}, requiring each event to match C{pattern} whole.
    """
    if not body.endswith(separator):
        raise AssertionError(f"stream does not end with {separator!r}: {body[-80:]!r}")
    frames = []
    for frame in body[: -len(separator)].split(separator):
        match = re.fullmatch(pattern, frame)
        if match is None:
            raise AssertionError(f"malformed SSE event {frame[:200]!r}")
        frames.append(match.groups())
    return frames


def _anthropic_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    frames = _frames(body, rb"event: (\w+)\ndata: (\{[^\n]*\})", b"\n\n")
    return [(name.decode(), json.loads(data)) for name, data in frames]


def _openai_events(body: bytes) -> list[Any]:
    return [data if data == b"[DONE]" else json.loads(data) for (data,) in _frames(body, rb"data: ([^\n]*)", b"\n\n")]


def _gemini_events(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(data) for (data,) in _frames(body, rb"data: (\{[^\r\n]*\})", b"\r\n\r\n")]


class _Connection:
    """
    One in-memory HTTP/1.1 connection to a fake provider.
    """

    def __init__(self, server: FakeProvider, transport: Optional[StringTransport] = None) -> None:
        self.transport = transport or StringTransport()
        self.protocol = server.factory().buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol.makeConnection(self.transport)

    def send(
        self, method: str, path: str, body: bytes = b"", headers: Optional[dict[str, str]] = None, chunked: bool = False
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: fake.test", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:5], body[5:]) if part) + b"0\r\n\r\n"
        else:
            lines.append(f"Content-Length: {len(body)}")
        self.protocol.dataReceived("\r\n".join(lines).encode() + b"\r\n\r\n" + body)

    def response(self) -> _Response:
        return _parse(self.transport.value())

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


class _SlowTransport(StringTransport):
    """
    A transport whose send buffer holds C{limit} bytes: past that it pauses its producer, as
    a socket does, until the test drains it.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.pending = 0
        self.most_pending = 0
        self.total = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.pending += len(data)
        self.most_pending = max(self.most_pending, self.pending)
        if self.pending > self.limit and self.producer is not None:
            self.producer.pauseProducing()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def drain(self) -> bytes:
        """
        Take what is buffered and let the producer resume.
        """
        data = self.value()
        self.clear()
        self.total += len(data)
        self.pending = 0
        self.producer.resumeProducing()
        return data


def _exchange(
    server: FakeProvider, method: str, path: str, body: Any = None, headers: Optional[dict[str, str]] = None
) -> _Response:
    connection = _Connection(server)
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    connection.send(method, path, raw, headers)
    return connection.response()


class KnobsTests(SynchronousTestCase):
    """
    L{Knobs} and the text they shape.
    """

    def test_headers_override_defaults(self) -> None:
        """
        Each C{x-fake-*} header overrides its knob; knobs without a header keep their default.
        """
        headers = Headers(
            {
                b"x-fake-events": [b"3"],
                b"x-fake-event-size": [b"100"],
                b"x-fake-delay-ms": [b"5"],
                b"x-fake-status": [b"429"],
                b"x-fake-drop-after": [b"0"],
                b"x-fake-error-after": [b"7"],
                b"x-fake-marker": [b"NEEDLE-1"],
            }
        )
        self.assertEqual(
            Knobs(ttfb_ms=9).with_headers(headers),
            Knobs(
                events=3,
                event_size=100,
                delay_ms=5,
                status=429,
                drop_after=0,
                error_after=7,
                marker="NEEDLE-1",
                ttfb_ms=9,
            ),
        )

    def test_bad_number_is_refused(self) -> None:
        """
        A numeric knob header that is not a non-negative integer raises L{ValueError} naming it.
        """
        with self.assertRaisesRegex(ValueError, "x-fake-events"):
            Knobs().with_headers(Headers({b"x-fake-events": [b"-1"]}))

    def test_text_slices(self) -> None:
        """
        The text is C{events} slices of exactly C{event_size} characters, deterministic in the
        reply number, and carries the marker whole even when it spans slices.
        """
        reply = Reply(number=7, model="m", knobs=Knobs(events=5, event_size=4, marker="NEEDLE"), prompt_tokens=1)
        chunks = list(reply.text_chunks())
        self.assertEqual([len(chunk) for chunk in chunks], [4] * 5)
        self.assertEqual("".join(chunks), "Fake reply 7 NEEDLE.")
        self.assertEqual(reply.text, Reply(7, "other", reply.knobs, 9).text)
        self.assertNotEqual(reply.text, Reply(8, "m", reply.knobs, 1).text)

    def test_long_text_repeats_filler(self) -> None:
        """
        Past its head the text is filler, sliced consistently whatever the event size.
        """
        small = Reply(1, "m", Knobs(events=300, event_size=3), 1).text
        large = Reply(1, "m", Knobs(events=9, event_size=100), 1).text
        self.assertEqual(small[:900], large)
        self.assertIn("lorem ipsum", large[-200:])

    def test_thinking_and_usage(self) -> None:
        """
        Thinking text carries the marker, and output tokens add text, tool call and thinking.
        """
        reply = Reply(3, "m", Knobs(events=2, event_size=10, marker="MK"), 5, thinking=True, tool_name="t")
        self.assertIn("MK", reply.thinking_text)
        self.assertEqual("".join(reply.thinking_chunks()), reply.thinking_text)
        self.assertEqual("".join(reply.tool_json_chunks()), json.dumps(reply.tool_input))
        self.assertEqual(
            reply.output_tokens,
            count_tokens(20) + count_tokens(len(reply.tool_json)) + count_tokens(len(reply.thinking_text)),
        )
        self.assertEqual(Reply(3, "m", Knobs(), 5).thinking_text, "")


class AnthropicWireTests(SynchronousTestCase):
    """
    The Anthropic Messages API, as bytes on the wire.
    """

    def setUp(self) -> None:
        self.server = FakeProvider(Clock(), Knobs(events=3, event_size=10, marker="MK"))
        self.request = {
            "model": "claude-test",
            "max_tokens": 2048,
            "messages": [{"role": "user", "content": "hi"}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tools": ANTHROPIC_TOOLS,
        }

    def test_message(self) -> None:
        """
        A JSON answer is a compact C{message} with thinking, text and tool_use blocks, the
        C{tool_use} stop reason, the four usage counts and a C{request-id} header.
        """
        response = _exchange(self.server, "POST", "/v1/messages", self.request, {"anthropic-version": "2023-06-01"})
        self.assertEqual((response.status, response.headers["content-type"]), (200, "application/json"))
        self.assertEqual(response.headers["request-id"], "req_fake0000000000000001")
        self.assertNotIn(b"\n", response.body)
        message = response.json()
        thinking, text, tool = message["content"]
        self.assertEqual(
            {k: message[k] for k in ("id", "type", "role", "model", "stop_reason", "stop_sequence")},
            {
                "id": "msg_fake0000000000000001",
                "type": "message",
                "role": "assistant",
                "model": "claude-test",
                "stop_reason": "tool_use",
                "stop_sequence": None,
            },
        )
        self.assertEqual((thinking["type"], text["type"], tool["type"]), ("thinking", "text", "tool_use"))
        self.assertIn("MK", thinking["thinking"])
        self.assertTrue(thinking["signature"])
        self.assertEqual(text["text"], "Fake reply 1 MK. lorem ipsum d")
        self.assertEqual((tool["name"], tool["input"]), ("get_weather", {"query": "fake call 1"}))
        self.assertTrue(tool["id"].startswith("toolu_"))
        body = self.server.requests[-1].body
        self.assertEqual(
            message["usage"],
            {
                "input_tokens": count_tokens(len(body)),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": count_tokens(30)
                + count_tokens(len(thinking["thinking"]))
                + count_tokens(len(json.dumps(tool["input"]))),
                "service_tier": "standard",
            },
        )

    def test_plain_message(self) -> None:
        """
        Without thinking or tools the answer is one text block ending with C{end_turn}.
        """
        request = {"model": "claude-test", "max_tokens": 10, "messages": []}
        message = _exchange(self.server, "POST", "/v1/messages", request).json()
        self.assertEqual([block["type"] for block in message["content"]], ["text"])
        self.assertEqual(message["stop_reason"], "end_turn")

    def test_stream(self) -> None:
        """
        A stream is C{event: NAME\\ndata: JSON\\n\\n} events in Anthropic's order: message_start,
        per block start/deltas/stop with a ping after the first start, message_delta, message_stop.
        """
        response = _exchange(self.server, "POST", "/v1/messages", {**self.request, "stream": True})
        self.assertEqual(response.headers["content-type"], "text/event-stream; charset=utf-8")
        self.assertEqual((response.headers["transfer-encoding"], response.complete), ("chunked", True))
        events = _anthropic_events(response.body)
        block = ["content_block_start", "content_block_delta", "content_block_delta", "content_block_delta"]
        self.assertEqual(
            [name for name, _ in events],
            [
                "message_start",
                "content_block_start",
                "ping",
                *block[1:],
                "content_block_stop",
                *block,
                "content_block_stop",
                *block,
                "content_block_stop",
                "message_delta",
                "message_stop",
            ],
        )
        self.assertTrue(all(data["type"] == name for name, data in events))
        start = events[0][1]["message"]
        self.assertEqual((start["content"], start["stop_reason"]), ([], None))
        self.assertEqual(start["usage"]["input_tokens"], count_tokens(len(self.server.requests[-1].body)))
        deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
        by_type = {kind: [d for d in deltas if d["type"] == kind] for kind in {d["type"] for d in deltas}}
        self.assertIn("MK", "".join(d["thinking"] for d in by_type["thinking_delta"]))
        self.assertEqual(len(by_type["signature_delta"]), 1)
        self.assertEqual("".join(d["text"] for d in by_type["text_delta"]), "Fake reply 1 MK. lorem ipsum d")
        arguments = "".join(d["partial_json"] for d in by_type["input_json_delta"])
        self.assertEqual(json.loads(arguments), {"query": "fake call 1"})
        tool_start = events[12][1]["content_block"]
        self.assertEqual((tool_start["type"], tool_start["name"], tool_start["input"]), ("tool_use", "get_weather", {}))
        self.assertEqual(events[-2][1]["delta"], {"stop_reason": "tool_use", "stop_sequence": None})
        self.assertEqual(set(events[-2][1]["usage"]), {"output_tokens"})

    def test_error_after(self) -> None:
        """
        C{x-fake-error-after: N} sends N events, then an C{overloaded_error} error event, and
        ends the response cleanly.
        """
        response = _exchange(
            self.server, "POST", "/v1/messages", {**self.request, "stream": True}, {"x-fake-error-after": "4"}
        )
        events = _anthropic_events(response.body)
        self.assertEqual(len(events), 5)
        self.assertEqual(
            events[-1], ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        )
        self.assertTrue(response.complete)
        self.assertEqual(self.server.streams[-1].outcome, "error-event")

    def test_status(self) -> None:
        """
        C{x-fake-status} answers that status with Anthropic's error body and error type.
        """
        for status, kind in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (529, "overloaded_error"),
        ]:
            response = _exchange(self.server, "POST", "/v1/messages", self.request, {"x-fake-status": str(status)})
            self.assertEqual(response.status, status)
            body = response.json()
            self.assertEqual((body["type"], body["error"]["type"]), ("error", kind))
            self.assertIsInstance(body["error"]["message"], str)


class OpenAIWireTests(SynchronousTestCase):
    """
    The OpenAI Chat Completions API, as bytes on the wire.
    """

    def setUp(self) -> None:
        self.server = FakeProvider(Clock(), Knobs(events=3, event_size=10, marker="MK"))
        self.request = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "tools": OPENAI_TOOLS}

    def test_completion(self) -> None:
        """
        A JSON answer is an indented C{chat.completion} with text, tool calls, the
        C{tool_calls} finish reason, usage with reasoning tokens, and an C{x-request-id} header.
        """
        response = _exchange(self.server, "POST", "/v1/chat/completions", {**self.request, "reasoning_effort": "low"})
        self.assertEqual(response.headers["x-request-id"], "req_fake0000000000000001")
        self.assertTrue(response.body.startswith(b'{\n  "id": "chatcmpl-fake'))
        completion = response.json()
        self.assertEqual((completion["object"], completion["model"]), ("chat.completion", "gpt-test"))
        (choice,) = completion["choices"]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertEqual(choice["message"]["content"], "Fake reply 1 MK. lorem ipsum d")
        (call,) = choice["message"]["tool_calls"]
        self.assertEqual((call["type"], call["function"]["name"]), ("function", "get_weather"))
        self.assertEqual(json.loads(call["function"]["arguments"]), {"query": "fake call 1"})
        usage = completion["usage"]
        reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
        self.assertGreater(reasoning, 0)
        self.assertEqual(usage["prompt_tokens"], count_tokens(len(self.server.requests[-1].body)))
        self.assertEqual(
            usage["completion_tokens"], count_tokens(30) + count_tokens(len(call["function"]["arguments"])) + reasoning
        )
        self.assertEqual(usage["total_tokens"], usage["prompt_tokens"] + usage["completion_tokens"])

    def test_stream(self) -> None:
        """
        A stream is C{data: JSON\\n\\n} chunks: the role, text deltas, tool call deltas at
        index 0, the finish reason, a usage chunk with no choices, then C{data: [DONE]\\n\\n}.
        """
        request = {**self.request, "stream": True, "stream_options": {"include_usage": True}}
        response = _exchange(self.server, "POST", "/v1/chat/completions", request)
        self.assertEqual(response.headers["content-type"], "text/event-stream; charset=utf-8")
        *chunks, usage_chunk, done = _openai_events(response.body)
        self.assertEqual(done, b"[DONE]")
        self.assertTrue(all(c["object"] == "chat.completion.chunk" and c["usage"] is None for c in chunks))
        deltas = [c["choices"][0]["delta"] for c in chunks]
        self.assertEqual(deltas[0], {"role": "assistant", "content": "", "refusal": None})
        self.assertEqual("".join(d.get("content", "") for d in deltas), "Fake reply 1 MK. lorem ipsum d")
        calls = [call for d in deltas for call in d.get("tool_calls", [])]
        self.assertEqual({call["index"] for call in calls}, {0})
        self.assertEqual((calls[0]["type"], calls[0]["function"]["name"]), ("function", "get_weather"))
        self.assertEqual(json.loads("".join(c["function"]["arguments"] for c in calls)), {"query": "fake call 1"})
        self.assertEqual([c["choices"][0]["finish_reason"] for c in chunks][-2:], [None, "tool_calls"])
        self.assertEqual(usage_chunk["choices"], [])
        self.assertEqual(usage_chunk["usage"]["prompt_tokens"], count_tokens(len(self.server.requests[-1].body)))

    def test_stream_without_usage(self) -> None:
        """
        Without C{stream_options.include_usage} no chunk carries a C{usage} key.
        """
        response = _exchange(self.server, "POST", "/v1/chat/completions", {**self.request, "stream": True})
        *chunks, done = _openai_events(response.body)
        self.assertTrue(all("usage" not in c and c["choices"] for c in chunks))

    def test_error_after(self) -> None:
        """
        C{x-fake-error-after} ends the stream with OpenAI's C{data: {"error": ...}} and no C{[DONE]}.
        """
        request = {**self.request, "stream": True}
        response = _exchange(self.server, "POST", "/v1/chat/completions", request, {"x-fake-error-after": "2"})
        events = _openai_events(response.body)
        self.assertEqual(len(events), 3)
        self.assertEqual(events[-1]["error"]["type"], "server_error")
        self.assertTrue(response.complete)

    def test_status(self) -> None:
        """
        C{x-fake-status} answers that status with OpenAI's error body.
        """
        for status, kind, code in [
            (400, "invalid_request_error", None),
            (401, "invalid_request_error", "invalid_api_key"),
            (429, "requests", "rate_limit_exceeded"),
            (503, "server_error", None),
        ]:
            headers = {"x-fake-status": str(status)}
            response = _exchange(self.server, "POST", "/v1/chat/completions", self.request, headers)
            self.assertEqual(response.status, status)
            error = response.json()["error"]
            self.assertEqual((error["type"], error["param"], error["code"]), (kind, None, code))
            self.assertIsInstance(error["message"], str)
            self.assertIn("x-request-id", response.headers)


class GeminiWireTests(SynchronousTestCase):
    """
    The Gemini API, as bytes on the wire.
    """

    def setUp(self) -> None:
        self.server = FakeProvider(Clock(), Knobs(events=3, event_size=10, marker="MK"))
        self.request = {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "tools": GEMINI_TOOLS,
            "generationConfig": GEMINI_THOUGHTS,
        }

    def test_generate(self) -> None:
        """
        A JSON answer has thought, text and function call parts, C{STOP}, usage with
        thoughts, and the model of the URL as C{modelVersion}.
        """
        response = _exchange(self.server, "POST", "/v1beta/models/gemini-2.5-flash:generateContent", self.request)
        self.assertEqual(response.headers["content-type"], "application/json; charset=UTF-8")
        self.assertTrue(response.body.startswith(b'{\n  "candidates": ['))
        body = response.json()
        (candidate,) = body["candidates"]
        thought, text, call = candidate["content"]["parts"]
        self.assertEqual((candidate["content"]["role"], candidate["finishReason"]), ("model", "STOP"))
        self.assertIs(thought["thought"], True)
        self.assertIn("MK", thought["text"])
        self.assertEqual(text, {"text": "Fake reply 1 MK. lorem ipsum d"})
        self.assertEqual(call, {"functionCall": {"name": "get_weather", "args": {"query": "fake call 1"}}})
        usage = body["usageMetadata"]
        self.assertEqual(usage["promptTokenCount"], count_tokens(len(self.server.requests[-1].body)))
        self.assertEqual(usage["thoughtsTokenCount"], count_tokens(len(thought["text"])))
        arguments = json.dumps(call["functionCall"]["args"])
        self.assertEqual(usage["candidatesTokenCount"], count_tokens(30) + count_tokens(len(arguments)))
        self.assertEqual(
            usage["totalTokenCount"],
            usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"],
        )
        self.assertEqual(body["modelVersion"], "gemini-2.5-flash")

    def test_stream(self) -> None:
        """
        A stream is C{data: JSON\\r\\n\\r\\n} events, thoughts first, one part each, with
        C{finishReason} and C{usageMetadata} on the last event only.
        """
        response = _exchange(
            self.server, "POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", self.request
        )
        self.assertEqual(response.headers["content-type"], "text/event-stream")
        self.assertNotIn(b"\n\n", response.body)
        events = _gemini_events(response.body)
        parts = [part for event in events for part in event["candidates"][0]["content"]["parts"]]
        self.assertEqual([len(event["candidates"][0]["content"]["parts"]) for event in events], [1] * 6)
        self.assertEqual([part.get("thought", False) for part in parts], [True, True, False, False, False, False])
        self.assertEqual("".join(part["text"] for part in parts[2:5]), "Fake reply 1 MK. lorem ipsum d")
        self.assertEqual(parts[-1]["functionCall"]["name"], "get_weather")
        self.assertEqual(["usageMetadata" in event for event in events], [False] * 5 + [True])
        self.assertEqual(["finishReason" in event["candidates"][0] for event in events], [False] * 5 + [True])
        self.assertIn("thoughtsTokenCount", events[-1]["usageMetadata"])

    def test_snake_case_request(self) -> None:
        """
        Thinking and tools are found under snake_case names too, as the SDK sometimes sends them.
        """
        body = {
            "generation_config": {"thinkingConfig": {"include_thoughts": True}},
            "tools": [{"function_declarations": [{"name": "f"}]}],
        }
        self.assertEqual(gemini.features(body), (True, "f"))
        self.assertEqual(gemini.features({}), (False, None))

    def test_error_after(self) -> None:
        """
        C{x-fake-error-after} ends the stream with Google's C{data: {"error": ...}} event.
        """
        path = "/v1beta/models/g:streamGenerateContent?alt=sse"
        response = _exchange(self.server, "POST", path, self.request, {"x-fake-error-after": "1"})
        events = _gemini_events(response.body)
        self.assertEqual(events[-1]["error"]["status"], "UNAVAILABLE")
        self.assertEqual(len(events), 2)

    def test_status(self) -> None:
        """
        C{x-fake-status} answers that status with Google's error body.
        """
        for status, name in [
            (400, "INVALID_ARGUMENT"),
            (403, "PERMISSION_DENIED"),
            (429, "RESOURCE_EXHAUSTED"),
            (500, "INTERNAL"),
            (503, "UNAVAILABLE"),
        ]:
            headers = {"x-fake-status": str(status)}
            response = _exchange(self.server, "POST", "/v1beta/models/g:generateContent", self.request, headers)
            self.assertEqual(response.status, status)
            message = f"Fake error with status {status}"
            self.assertEqual(response.json()["error"], {"code": status, "message": message, "status": name})


class RoutingTests(SynchronousTestCase):
    """
    Routes, errors in each provider's shape, and what the server records.
    """

    def setUp(self) -> None:
        self.server = FakeProvider(Clock())

    def test_prefixes(self) -> None:
        """
        Any path prefix may precede a provider's own path.
        """
        for path, body, key in [
            ("/anthropic/v1/messages", {"model": "c"}, "content"),
            ("/openai/v1/chat/completions", {"model": "g"}, "choices"),
            ("/gemini/v1beta/models/g:generateContent", {}, "candidates"),
            ("/gemini/v1/models/g:generateContent", {}, "candidates"),
        ]:
            response = _exchange(self.server, "POST", path, body)
            self.assertEqual(response.status, 200, path)
            self.assertIn(key, response.json())

    def test_model_lists(self) -> None:
        """
        C{GET /v1/models} is Anthropic's list when Anthropic headers are present, else OpenAI's
        (Gemini's for a Google key), and C{GET /v1beta/models} is Gemini's.
        """
        anthropic_list = _exchange(self.server, "GET", "/v1/models", headers={"anthropic-version": "2023-06-01"}).json()
        self.assertEqual((anthropic_list["has_more"], anthropic_list["data"][0]["type"]), (False, "model"))
        self.assertEqual(_exchange(self.server, "GET", "/openai/v1/models").json()["object"], "list")
        self.assertIn("models", _exchange(self.server, "GET", "/v1/models", headers={"x-goog-api-key": "k"}).json())
        gemini_list = _exchange(self.server, "GET", "/v1beta/models").json()
        self.assertTrue(gemini_list["models"][0]["name"].startswith("models/"))

    def test_unknown_path(self) -> None:
        """
        An unknown path, or a known one with the wrong method, is a 404 in the likely provider's shape.
        """
        anthropic_error = _exchange(self.server, "GET", "/v1/messages", headers={"x-api-key": "k"}).json()
        self.assertEqual(anthropic_error["error"]["type"], "not_found_error")
        self.assertEqual(_exchange(self.server, "GET", "/v1beta/nothing").json()["error"]["status"], "NOT_FOUND")
        response = _exchange(self.server, "POST", "/v1/nothing")
        self.assertEqual((response.status, response.json()["error"]["type"]), (404, "invalid_request_error"))

    def test_bad_json(self) -> None:
        """
        A body that is not a JSON object is a 400 in the provider's shape.
        """
        for path, body in [
            ("/v1/messages", b"{bad"),
            ("/v1/chat/completions", b"[1]"),
            ("/v1beta/models/g:generateContent", b""),
        ]:
            response = _exchange(self.server, "POST", path, body)
            self.assertEqual(response.status, 400, path)
        error = _exchange(self.server, "POST", "/v1/messages", b"{bad").json()["error"]
        self.assertEqual(error["type"], "invalid_request_error")

    def test_bad_knob(self) -> None:
        """
        A malformed knob header is a 400 naming the header.
        """
        response = _exchange(self.server, "POST", "/v1/chat/completions", {}, {"x-fake-events": "many"})
        self.assertEqual(response.status, 400)
        self.assertIn("x-fake-events", response.json()["error"]["message"])

    def test_records_chunked_request(self) -> None:
        """
        A chunked request is recorded with its method, path, query, lower-case headers and whole body.
        """
        connection = _Connection(self.server)
        body = b'{"model": "g", "messages": []}'
        headers = {"Authorization": "Bearer sk-1"}
        connection.send("POST", "/openai/v1/chat/completions?key=abc&x=1", body, headers, chunked=True)
        self.assertEqual(connection.response().status, 200)
        received = self.server.requests[-1]
        self.assertEqual(
            (received.method, received.path, received.query, received.body),
            ("POST", "/openai/v1/chat/completions", "key=abc&x=1", body),
        )
        self.assertEqual(received.headers["authorization"], "Bearer sk-1")
        self.assertEqual(received.headers["transfer-encoding"], "chunked")

    def test_bounded_record(self) -> None:
        """
        Only the latest C{max_requests} requests and responses are kept.
        """
        server = FakeProvider(Clock(), max_requests=2)
        for path in ("/a", "/b", "/c"):
            _exchange(server, "GET", path)
        self.assertEqual([r.path for r in server.requests], ["/b", "/c"])
        self.assertEqual([s.request.path for s in server.streams], ["/b", "/c"])


class FlowControlTests(SynchronousTestCase):
    """
    Pacing, pausing, dropping and disconnects, driven by a fake clock and transport.
    """

    stream_request = json.dumps({"model": "g", "stream": True}).encode()

    def setUp(self) -> None:
        self.clock = Clock()

    def _start(self, knobs: Knobs, transport: Optional[StringTransport] = None) -> tuple[FakeProvider, _Connection]:
        server = FakeProvider(self.clock, knobs)
        connection = _Connection(server, transport)
        connection.send("POST", "/v1/chat/completions", self.stream_request)
        return server, connection

    def test_delay_between_events(self) -> None:
        """
        With C{delay_ms} the first event goes out at once and each next one a delay later.
        """
        server, connection = self._start(Knobs(events=3, delay_ms=100))
        stream = server.streams[-1]
        self.assertEqual(stream.events_written, 1)
        self.clock.advance(0.05)
        self.assertEqual(stream.events_written, 1)
        self.clock.advance(0.05)
        self.assertEqual(stream.events_written, 2)
        self.clock.pump([0.1] * 10)
        self.assertEqual((stream.events_written, stream.outcome), (6, "complete"))
        self.assertTrue(connection.response().complete)

    def test_time_to_first_byte(self) -> None:
        """
        With C{ttfb_ms} not even the headers go out before the delay.
        """
        _, connection = self._start(Knobs(ttfb_ms=250))
        self.clock.advance(0.249)
        self.assertEqual(connection.transport.value(), b"")
        self.clock.advance(0.001)
        self.assertEqual(connection.response().status, 200)
        self.assertTrue(connection.response().complete)

    def test_paused_stream_generates_nothing(self) -> None:
        """
        While the transport is paused no event is generated, even when delays elapse; a
        resume sends the next event at once if its delay has elapsed, else when it does.
        """
        transport = _SlowTransport(limit=1)
        server, _ = self._start(Knobs(events=4, delay_ms=10), transport)
        stream = server.streams[-1]
        self.assertEqual((stream.events_written, stream.paused), (0, True))
        self.clock.advance(1)
        self.assertEqual(stream.events_written, 0)
        transport.drain()
        self.assertEqual((stream.events_written, stream.paused), (1, True))
        self.clock.advance(1)
        self.assertEqual(stream.events_written, 1)
        transport.drain()
        self.assertEqual(stream.events_written, 2)
        transport.drain()
        self.assertEqual((stream.events_written, stream.paused), (2, False))
        self.clock.advance(0.01)
        self.assertEqual((stream.events_written, stream.pauses), (3, 4))

    def test_large_stream_memory_is_bounded(self) -> None:
        """
        A 20 MB stream through a 64 KB send buffer never buffers much more than one event
        beyond it, and arrives whole.
        """
        size = 16384
        transport = _SlowTransport(limit=65536)
        server, _ = self._start(Knobs(events=1280, event_size=size), transport)
        stream = server.streams[-1]
        tail = b""
        while stream.outcome is None:
            tail = (tail + transport.drain())[-64:]
        tail = (tail + transport.value())[-64:]
        self.assertEqual(stream.outcome, "complete")
        self.assertGreater(transport.total + len(transport.value()), 20 * 1024 * 1024)
        self.assertLess(transport.most_pending, 65536 + 2 * size)
        self.assertGreater(stream.pauses, 300)
        self.assertTrue(tail.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"))

    def test_drop_after(self) -> None:
        """
        C{drop_after} aborts the connection after that many events, without the chunked
        terminator, and is not counted as a client disconnect.
        """
        server, connection = self._start(Knobs(events=5, drop_after=3))
        stream = server.streams[-1]
        self.assertTrue(connection.transport.disconnected)
        self.assertEqual((stream.events_written, stream.outcome), (3, "dropped"))
        response = connection.response()
        self.assertFalse(response.complete)
        self.assertEqual(len(_openai_events(response.body)), 3)
        connection.lose()
        self.assertEqual(server.disconnects, 0)

    def test_drop_json_body(self) -> None:
        """
        C{drop_after: 0} on a JSON answer sends the headers only, then aborts.
        """
        server = FakeProvider(self.clock, Knobs(drop_after=0))
        connection = _Connection(server)
        connection.send("POST", "/v1/messages", b"{}")
        response = connection.response()
        self.assertEqual((response.status, response.body, response.complete), (200, b"", False))
        self.assertGreater(int(response.headers["content-length"]), 0)
        self.assertTrue(connection.transport.disconnected)

    def test_client_disconnect(self) -> None:
        """
        A client leaving mid-stream stops generation, cancels the pending delay, is counted,
        and fires L{FakeProvider.next_disconnect} with its request.
        """
        server, connection = self._start(Knobs(events=5, delay_ms=100))
        gone = server.next_disconnect()
        self.clock.advance(0.1)
        self.assertNoResult(gone)
        connection.lose()
        stream = server.streams[-1]
        self.assertIs(self.successResultOf(gone), server.requests[-1])
        self.assertEqual((server.disconnects, stream.outcome, stream.events_written), (1, "client-gone", 2))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_disconnect_before_headers(self) -> None:
        """
        A client leaving while the headers wait for C{ttfb_ms} cancels the wait and is counted.
        """
        server, connection = self._start(Knobs(ttfb_ms=500))
        connection.lose()
        self.assertEqual(server.disconnects, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(connection.transport.value(), b"")

    def test_connections(self) -> None:
        """
        Open connections are counted, and L{FakeProvider.when_idle} fires once all are closed.
        """
        server, connection = self._start(Knobs())
        self.assertEqual((server.connections_made, server.open_connections), (1, 1))
        idle = server.when_idle()
        self.assertNoResult(idle)
        connection.lose()
        self.successResultOf(idle)
        self.assertEqual(server.open_connections, 0)
        self.successResultOf(server.when_idle())


class EntryPointTests(SynchronousTestCase):
    """
    L{run_fake_provider}, L{FakeProviderOptions} and L{main}.
    """

    def test_run_listens_and_logs(self) -> None:
        """
        L{run_fake_provider} listens on the port and host given, logs one line saying where,
        serves the fake provider, and stops when its Deferred is cancelled.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        reactor = MemoryReactorClock()
        running = run_fake_provider(reactor, 8788, "127.0.0.2")
        self.assertNoResult(running)
        ((port, factory, _, interface),) = reactor.tcpServers
        self.assertEqual((port, interface), (8788, "127.0.0.2"))
        (event,) = [e for e in events if e.get("log_namespace") == "smoltbot.fakeprovider.server"]
        self.assertEqual(event["log_format"], "Fake provider listening on http://{host}:{port}")
        transport = StringTransport()
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /v1beta/models HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"models/gemini", transport.value())
        running.cancel()
        self.failureResultOf(running, CancelledError)

    def test_run_cannot_listen(self) -> None:
        """
        L{run_fake_provider} fails at once when the port cannot be bound.
        """
        reactor = RaisingMemoryReactor(listenException=CannotListenError("127.0.0.1", 80, OSError("in use")))
        self.failureResultOf(run_fake_provider(reactor, 80), CannotListenError)

    def test_options(self) -> None:
        """
        The command line sets the port, host and default knobs, and refuses negative numbers.
        """
        options = FakeProviderOptions()
        options.parseOptions(
            ["--port", "9000", "--host", "0.0.0.0", "--delay-ms", "5", "--events", "10", "--event-size", "100"]
        )
        self.assertEqual((options["port"], options["host"]), (9000, "0.0.0.0"))
        self.assertEqual(options.knobs(), Knobs(events=10, event_size=100, delay_ms=5))
        self.assertEqual(FakeProviderOptions().knobs(), Knobs())
        self.assertRaises(usage.UsageError, FakeProviderOptions().parseOptions, ["--events", "-1"])

    def test_main_usage_error(self) -> None:
        """
        L{main} exits with status 2 and the usage on stderr when the arguments are wrong.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as raised:
            main(["--port", "eighty"])
        self.assertEqual(raised.exception.code, 2)
        self.assertIn("--event-size", stderr.getvalue())


class SDKTests(TestCase):
    """
    The official SDKs, run in threads against a loopback fake provider, accept its answers.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.server = FakeProvider(reactor, Knobs(events=4, event_size=16))
        port = reactor.listenTCP(0, self.server.factory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(self.server.when_idle)
        self.base = f"http://127.0.0.1:{port.getHost().port}"

    async def _in_thread(self, call: Callable[[], _T]) -> _T:
        return await deferToThread(call)

    def _anthropic(self, **headers: str) -> Any:
        import anthropic

        return anthropic.Anthropic(base_url=self.base, api_key="sk-ant-test", max_retries=0, default_headers=headers)

    def _openai(self, **headers: str) -> Any:
        import openai

        return openai.OpenAI(base_url=self.base + "/v1", api_key="sk-test", max_retries=0, default_headers=headers)

    def _gemini(self, **headers: str) -> Any:
        from google import genai
        from google.genai import types

        return genai.Client(api_key="g-test", http_options=types.HttpOptions(base_url=self.base, headers=headers))

    def _gemini_config(self) -> Any:
        from google.genai import types

        return types.GenerateContentConfig(
            thinking_config=types.ThinkingConfig(include_thoughts=True),
            tools=[
                types.Tool(function_declarations=[types.FunctionDeclaration(name="get_weather", description="Weather")])
            ],
        )

    _anthropic_args: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 2048,
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": ANTHROPIC_TOOLS,
    }

    async def test_anthropic_message(self) -> None:
        """
        The Anthropic SDK parses a message with thinking, signature, text, tool use and usage.
        """

        def call() -> Any:
            with self._anthropic(**{"x-fake-marker": "NEEDLE-A"}) as client:
                return client.messages.create(**self._anthropic_args)

        message = await self._in_thread(call)
        thinking, text, tool = message.content
        self.assertIn("NEEDLE-A", thinking.thinking)
        self.assertTrue(thinking.signature)
        self.assertIn("NEEDLE-A", text.text)
        self.assertEqual((tool.name, tool.input), ("get_weather", {"query": "fake call 1"}))
        self.assertEqual(message.stop_reason, "tool_use")
        self.assertEqual(message.usage.input_tokens, count_tokens(len(self.server.requests[-1].body)))
        self.assertEqual(message.usage.cache_read_input_tokens, 0)

    async def test_anthropic_stream(self) -> None:
        """
        The Anthropic SDK's stream helper yields the text and assembles the final message.
        """

        def call() -> Any:
            with self._anthropic(**{"x-fake-marker": "NEEDLE-B"}) as client:
                with client.messages.stream(**self._anthropic_args) as stream:
                    return "".join(stream.text_stream), stream.get_final_message()

        text, message = await self._in_thread(call)
        self.assertEqual(len(text), 64)
        self.assertIn("NEEDLE-B", text)
        thinking, text_block, tool = message.content
        self.assertIn("NEEDLE-B", thinking.thinking)
        self.assertTrue(thinking.signature)
        self.assertEqual(text_block.text, text)
        self.assertEqual((tool.name, tool.input), ("get_weather", {"query": "fake call 1"}))
        self.assertEqual(message.stop_reason, "tool_use")
        self.assertEqual(
            message.usage.output_tokens,
            count_tokens(64) + count_tokens(len(thinking.thinking)) + count_tokens(len(json.dumps(tool.input))),
        )

    async def test_anthropic_errors(self) -> None:
        """
        The Anthropic SDK raises on an error status and on a mid-stream error event.
        """
        import anthropic

        def call() -> tuple[Exception, Exception]:
            with self._anthropic() as client:
                try:
                    client.messages.create(**self._anthropic_args, extra_headers={"x-fake-status": "529"})
                except anthropic.APIStatusError as error:
                    status_error = error
                try:
                    headers = {"x-fake-error-after": "5"}
                    with client.messages.stream(**self._anthropic_args, extra_headers=headers) as stream:
                        stream.get_final_message()
                except anthropic.APIStatusError as error:
                    return status_error, error
            raise AssertionError("no error raised")

        status_error, stream_error = await self._in_thread(call)
        self.assertEqual(status_error.status_code, 529)
        self.assertEqual(status_error.body["error"]["type"], "overloaded_error")
        self.assertEqual(stream_error.body["error"]["type"], "overloaded_error")

    async def test_anthropic_client_goes_away(self) -> None:
        """
        A client closing a large stream early is observed as a disconnect.
        """
        gone = self.server.next_disconnect()

        def call() -> None:
            with self._anthropic(**{"x-fake-events": "5000", "x-fake-event-size": "8192"}) as client:
                with client.messages.stream(**self._anthropic_args) as stream:
                    next(iter(stream))

        await self._in_thread(call)
        received = await gone
        self.assertEqual(received.path, "/v1/messages")
        self.assertEqual(self.server.disconnects, 1)
        self.assertEqual(self.server.streams[-1].outcome, "client-gone")

    async def test_openai_completion(self) -> None:
        """
        The OpenAI SDK parses a completion with text, a tool call, finish reason and usage.
        """

        def call() -> Any:
            with self._openai(**{"x-fake-marker": "NEEDLE-C"}) as client:
                return client.chat.completions.with_raw_response.create(
                    model="gpt-test",
                    messages=[{"role": "user", "content": "hi"}],
                    tools=OPENAI_TOOLS,
                    reasoning_effort="low",
                )

        raw = await self._in_thread(call)
        self.assertEqual(raw.request_id, "req_fake0000000000000001")
        completion = raw.parse()
        choice = completion.choices[0]
        self.assertIn("NEEDLE-C", choice.message.content)
        (tool_call,) = choice.message.tool_calls
        self.assertEqual(tool_call.function.name, "get_weather")
        self.assertEqual(json.loads(tool_call.function.arguments), {"query": "fake call 1"})
        self.assertEqual(choice.finish_reason, "tool_calls")
        self.assertGreater(completion.usage.completion_tokens_details.reasoning_tokens, 0)
        usage = completion.usage
        self.assertEqual(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens)

    async def test_openai_stream(self) -> None:
        """
        The OpenAI SDK's stream helper assembles the text and tool call, and the raw stream
        ends with a usage chunk.
        """

        def call() -> Any:
            args = {
                "model": "gpt-test",
                "messages": [{"role": "user", "content": "hi"}],
                "tools": OPENAI_TOOLS,
                "stream_options": {"include_usage": True},
            }
            with self._openai(**{"x-fake-marker": "NEEDLE-D"}) as client:
                with client.chat.completions.stream(**args) as stream:
                    final = stream.get_final_completion()
                return final, list(client.chat.completions.create(stream=True, **args))

        final, chunks = await self._in_thread(call)
        choice = final.choices[0]
        self.assertIn("NEEDLE-D", choice.message.content)
        self.assertEqual(choice.message.tool_calls[0].function.name, "get_weather")
        self.assertEqual(choice.finish_reason, "tool_calls")
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.prompt_tokens, count_tokens(len(self.server.requests[-1].body)))

    async def test_openai_errors(self) -> None:
        """
        The OpenAI SDK raises its rate limit error on a 429, and a connection error when the
        connection is dropped mid-stream.
        """
        import openai

        def call() -> tuple[Exception, Exception]:
            with self._openai() as client:
                try:
                    client.models.list(extra_headers={"x-fake-status": "429"})
                except openai.RateLimitError as error:
                    limited = error
                try:
                    headers = {"x-fake-drop-after": "2"}
                    list(client.chat.completions.create(model="g", messages=[], stream=True, extra_headers=headers))
                except openai.APIConnectionError as error:
                    return limited, error
            raise AssertionError("no error raised")

        limited, dropped = await self._in_thread(call)
        self.assertEqual(limited.body["code"], "rate_limit_exceeded")
        self.assertEqual(self.server.streams[-1].outcome, "dropped")

    async def test_gemini_generate(self) -> None:
        """
        The Gemini SDK parses thoughts, text, a function call and usage metadata.
        """

        def call() -> Any:
            with self._gemini(**{"x-fake-marker": "NEEDLE-E"}) as client:
                config = self._gemini_config()
                return client.models.generate_content(model="gemini-2.5-flash", contents="hi", config=config)

        response = await self._in_thread(call)
        thought, text, _ = response.candidates[0].content.parts
        self.assertTrue(thought.thought)
        self.assertIn("NEEDLE-E", thought.text)
        self.assertIn("NEEDLE-E", text.text)
        (function_call,) = response.function_calls
        self.assertEqual((function_call.name, function_call.args), ("get_weather", {"query": "fake call 1"}))
        self.assertEqual(response.candidates[0].finish_reason, "STOP")
        usage = response.usage_metadata
        self.assertEqual(usage.thoughts_token_count, count_tokens(len(thought.text)))
        self.assertEqual(
            usage.total_token_count,
            usage.prompt_token_count + usage.candidates_token_count + usage.thoughts_token_count,
        )
        self.assertEqual(response.model_version, "gemini-2.5-flash")

    async def test_gemini_stream(self) -> None:
        """
        The Gemini SDK reads the SSE stream: thoughts, text, function call, usage on the last chunk.
        """

        def call() -> Any:
            with self._gemini(**{"x-fake-marker": "NEEDLE-F"}) as client:
                config = self._gemini_config()
                return list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi", config=config))

        chunks = await self._in_thread(call)
        parts = [part for chunk in chunks for part in chunk.candidates[0].content.parts]
        self.assertIn("NEEDLE-F", "".join(part.text for part in parts if part.thought))
        self.assertIn("NEEDLE-F", "".join(part.text for part in parts if part.text and not part.thought))
        self.assertEqual(chunks[-1].function_calls[0].name, "get_weather")
        self.assertEqual([chunk.usage_metadata is not None for chunk in chunks], [False] * (len(chunks) - 1) + [True])
        self.assertGreater(chunks[-1].usage_metadata.thoughts_token_count, 0)

    async def test_gemini_errors(self) -> None:
        """
        The Gemini SDK raises its client error on a 400, and an API error on a mid-stream error.
        """
        from google.genai import errors

        def call() -> tuple[Exception, Exception]:
            with self._gemini() as client:
                try:
                    config = {"http_options": {"headers": {"x-fake-status": "400"}}}
                    client.models.generate_content(model="g", contents="hi", config=config)
                except errors.ClientError as error:
                    refused = error
                try:
                    config = {"http_options": {"headers": {"x-fake-error-after": "2"}}}
                    list(client.models.generate_content_stream(model="g", contents="hi", config=config))
                except errors.APIError as error:
                    return refused, error
            raise AssertionError("no error raised")

        refused, failed = await self._in_thread(call)
        self.assertEqual((refused.code, refused.status), (400, "INVALID_ARGUMENT"))
        self.assertEqual((failed.code, failed.status), (503, "UNAVAILABLE"))

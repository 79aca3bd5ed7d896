"""
Integration tests of the provider proxy over loopback TCP against the fake provider: the
official SDKs through the gateway and directly, byte-for-byte bodies, error paths, timeouts
on the gateway's own fake clock, cancellation, backpressure and memory on a 20 MB stream.

Two fake providers with identical state answer identically (their clocks never move), so a
request sent directly to one and through the gateway to the other must give the same result.
"""

from __future__ import annotations

import json
import tracemalloc
from io import BytesIO
import socket
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from smoltbot.fakeprovider import FakeProvider, Knobs
from smoltbot.health.probes import HealthState
from smoltbot.metrics import Metrics
from smoltbot.proxy import ProviderProxy, UpstreamClient
from smoltbot.http.ops import OpsApi
from smoltbot.http.root import build_root
from smoltbot.http.site import GatewaySite

_T = TypeVar("_T")

ANTHROPIC_ARGS: dict[str, Any] = {
    "model": "claude-sonnet-4-20250514",
    "max_tokens": 2048,
    "messages": [{"role": "user", "content": "hi"}],
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
}
OPENAI_ARGS: dict[str, Any] = {
    "model": "gpt-5",
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    "reasoning_effort": "low",
}
# Headers the gateway adds or owns; everything else must match the direct response.
GATEWAY_HEADERS = {b"Date", b"Server", b"X-Smoltbot-Agent", b"X-Smoltbot-Session", b"X-Smoltbot-Request-Id"}


@dataclass
class Fake:
    """A fake provider on loopback, with the clock that paces its streams."""

    server: FakeProvider
    clock: Clock
    base: str


class ProxyHarness(TestCase):
    """A fake provider reached directly, and a twin of it behind a gateway on loopback."""

    knobs = Knobs(events=4, event_size=16)
    ttfb_timeout = 30.0
    idle_timeout = 10.0

    def setUp(self) -> None:
        self.direct = self._fake()
        self.behind = self._fake()
        self.clock = Clock()  # the gateway's timers: advanced by hand, never by time passing
        self.clock.advance(1_700_000_000)
        self.proxy = ProviderProxy(
            upstreams={provider: self.upstream_for(provider) for provider in ("anthropic", "openai", "gemini")},
            client=UpstreamClient(
                reactor, max_connections_per_host=16, keepalive_timeout=30, connect_timeout=5, tls_policy=self.tls_policy()
            ),
            clock=self.clock,
            metrics=Metrics("test", CollectorRegistry()),
            max_concurrent_requests=100,
            ttfb_timeout=self.ttfb_timeout,
            idle_timeout=self.idle_timeout,
        )
        ops = OpsApi(version="test", aip_enabled=False, health=HealthState(), metrics=Metrics("t", CollectorRegistry()), clock=reactor, routes_providers=True)
        site = GatewaySite(build_root(ops, self.proxy.resources()), reactor)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.proxy.close)
        self.addCleanup(port.stopListening)
        self.gateway = f"http://127.0.0.1:{port.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=pool)

    def upstream_for(self, provider: str) -> str:
        """The upstream base URL the gateway uses for `provider`: the twin fake provider."""
        return self.behind.base

    def tls_policy(self) -> Any:
        """The gateway's TLS policy: None for the default, browser-like verification."""
        return None

    def _fake(self) -> Fake:
        clock = Clock()
        server = FakeProvider(clock, self.knobs)
        port = reactor.listenTCP(0, server.factory(), interface="127.0.0.1")
        self.addCleanup(server.when_idle)
        self.addCleanup(port.stopListening)
        return Fake(server, clock, f"http://127.0.0.1:{port.getHost().port}")

    async def paced(self, work: Deferred[_T], step: float = 0.01) -> _T:
        """Wait for `work` while moving both fake providers' clocks on, so paced streams progress."""
        while not work.called:
            self.direct.clock.advance(step)
            self.behind.clock.advance(step)
            await deferLater(reactor, 0.002)
        return await work

    async def in_thread(self, call: Callable[[], _T]) -> _T:
        """Run a synchronous SDK call off the reactor thread."""
        return await deferToThread(call)

    async def fetch(self, url: str, headers: dict[str, str], body: bytes = b"", method: bytes = b"POST") -> tuple[IResponse, bytes]:
        """One raw HTTP exchange: the response and its whole body."""
        response = await self.agent.request(
            method,
            url.encode(),
            Headers({k.encode(): [v.encode()] for k, v in headers.items()}),
            FileBodyProducer(BytesIO(body)) if body else None,
        )
        return response, await readBody(response)

    def anthropic(self, base: str, **headers: str) -> Any:
        import anthropic

        return anthropic.Anthropic(base_url=base, api_key="sk-ant-test", max_retries=0, default_headers=headers)

    def openai(self, base: str, **headers: str) -> Any:
        import openai

        return openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0, default_headers=headers)

    def gemini(self, base: str, **headers: str) -> Any:
        from google import genai
        from google.genai import types

        return genai.Client(api_key="g-test", http_options=types.HttpOptions(base_url=base, headers=headers))


def gemini_config() -> Any:
    """Thoughts and one tool, so the answer has thought parts and a function call."""
    from google.genai import types

    return types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(include_thoughts=True),
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(name="get_weather", description="Weather")])],
    )


def gemini_dump(response: Any) -> Any:
    """A Gemini response without the HTTP metadata the SDK attaches (it holds the headers)."""
    return response.model_dump(exclude={"sdk_http_response"})


class SDKTests(ProxyHarness):
    """The official SDKs get the same objects through the gateway as directly."""

    async def both(self, call: Callable[[str, str], _T]) -> tuple[_T, _T]:
        """Run `call(base, anthropic_base)` directly and through the gateway."""
        direct = await self.in_thread(lambda: call(self.direct.base, self.direct.base))
        through = await self.in_thread(lambda: call(self.gateway + "/openai", self.gateway + "/anthropic"))
        return direct, through

    async def test_anthropic_message(self) -> None:
        """A message with thinking, text and tool use is the same object through the gateway."""

        def call(_: str, base: str) -> Any:
            with self.anthropic(base, **{"x-fake-marker": "NEEDLE"}) as client:
                return client.messages.create(**ANTHROPIC_ARGS).model_dump()

        direct, through = await self.both(call)
        self.assertEqual([block["type"] for block in through["content"]], ["thinking", "text", "tool_use"])
        self.assertEqual(through, direct)

    async def test_anthropic_stream(self) -> None:
        """Every stream event and the assembled final message are the same through the gateway."""

        def call(_: str, base: str) -> Any:
            with self.anthropic(base) as client:
                events = [event.model_dump() for event in client.messages.create(stream=True, **ANTHROPIC_ARGS)]
                with client.messages.stream(**ANTHROPIC_ARGS) as stream:
                    text = "".join(stream.text_stream)
                    final = stream.get_final_message().model_dump()
                return events, text, final

        direct, through = await self.both(call)
        self.assertIn("thinking_delta", {e["delta"]["type"] for e in through[0] if e["type"] == "content_block_delta"})
        self.assertIn("input_json_delta", {e["delta"]["type"] for e in through[0] if e["type"] == "content_block_delta"})
        self.assertEqual(through, direct)

    async def test_anthropic_errors(self) -> None:
        """An error status and a mid-stream error event reach the SDK as they would directly."""
        import anthropic

        def call(_: str, base: str) -> Any:
            errors = []
            with self.anthropic(base) as client:
                try:
                    client.messages.create(**ANTHROPIC_ARGS, extra_headers={"x-fake-status": "529"})
                except anthropic.APIStatusError as error:
                    errors.append((error.status_code, error.body))
                try:
                    with client.messages.stream(**ANTHROPIC_ARGS, extra_headers={"x-fake-error-after": "5"}) as stream:
                        stream.get_final_message()
                except anthropic.APIStatusError as error:
                    errors.append((type(error).__name__, error.body))
            return errors

        direct, through = await self.both(call)
        self.assertEqual(len(through), 2)
        self.assertEqual(through, direct)

    async def test_openai_completion(self) -> None:
        """A completion with a tool call and usage is the same object through the gateway."""

        def call(base: str, _: str) -> Any:
            with self.openai(base, **{"x-fake-marker": "NEEDLE"}) as client:
                raw = client.chat.completions.with_raw_response.create(**OPENAI_ARGS)
                return raw.request_id, raw.parse().model_dump()

        direct, through = await self.both(call)
        self.assertEqual(through[1]["choices"][0]["finish_reason"], "tool_calls")
        self.assertEqual(through, direct)

    async def test_openai_stream(self) -> None:
        """The chunks, ending with the usage chunk, and the assembled completion are the same."""

        def call(base: str, _: str) -> Any:
            args = {**OPENAI_ARGS, "stream_options": {"include_usage": True}}
            with self.openai(base) as client:
                chunks = [chunk.model_dump() for chunk in client.chat.completions.create(stream=True, **args)]
                with client.chat.completions.stream(**args) as stream:
                    final = stream.get_final_completion().model_dump()
            return chunks, final

        direct, through = await self.both(call)
        self.assertEqual(through[0][-1]["choices"], [])
        self.assertEqual(through, direct)

    async def test_openai_dropped_stream(self) -> None:
        """A connection dropped mid-stream upstream is a connection error for the SDK through the gateway too."""
        import openai

        def call(base: str, _: str) -> str:
            with self.openai(base) as client:
                try:
                    list(client.chat.completions.create(stream=True, **OPENAI_ARGS, extra_headers={"x-fake-drop-after": "3", "x-fake-delay-ms": "10"}))
                except openai.APIConnectionError as error:
                    return type(error).__name__
            return "no error"

        direct = await self.paced(deferToThread(call, self.direct.base, ""))
        through = await self.paced(deferToThread(call, self.gateway + "/openai", ""))
        self.assertEqual((direct, through), ("APIConnectionError", "APIConnectionError"))
        self.assertEqual(self.behind.server.streams[-1].outcome, "dropped")

    async def test_gemini_generate(self) -> None:
        """Thoughts, text, a function call and usage are the same through the gateway."""

        def call(base: str, _: str) -> Any:
            with self.gemini(base.replace("/openai", "/gemini")) as client:
                return gemini_dump(client.models.generate_content(model="gemini-2.5-flash", contents="hi", config=gemini_config()))

        direct, through = await self.both(call)
        self.assertTrue(through["candidates"][0]["content"]["parts"][0]["thought"])
        self.assertEqual(through, direct)

    async def test_gemini_stream(self) -> None:
        """Every streamed chunk is the same through the gateway."""

        def call(base: str, _: str) -> Any:
            with self.gemini(base.replace("/openai", "/gemini")) as client:
                stream = client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi", config=gemini_config())
                return [gemini_dump(chunk) for chunk in stream]

        direct, through = await self.both(call)
        self.assertGreater(len(through), 2)
        self.assertEqual(through, direct)

    async def test_missing_key_reaches_the_sdk(self) -> None:
        """The gateway's 401 for a request without a key is an authentication error for the SDK."""
        import openai

        def call() -> Any:
            with self.openai(self.gateway + "/openai") as client:
                try:
                    client.chat.completions.create(**OPENAI_ARGS, extra_headers={"Authorization": openai.Omit()})
                except openai.AuthenticationError as error:
                    return error.status_code, error.body
            return None

        self.assertEqual(await self.in_thread(call), (401, "Missing Authorization: Bearer <key> header"))


class BytesTests(ProxyHarness):
    """Bodies and end-to-end headers are byte-for-byte the provider's."""

    cases = {
        "anthropic json": ("/anthropic", "/v1/messages", {"x-api-key": "k", "anthropic-version": "2023-06-01"}, ANTHROPIC_ARGS),
        "anthropic sse": ("/anthropic", "/v1/messages", {"x-api-key": "k"}, {**ANTHROPIC_ARGS, "stream": True}),
        "openai json": ("/openai", "/v1/chat/completions", {"authorization": "Bearer k"}, OPENAI_ARGS),
        "openai sse": ("/openai", "/v1/chat/completions", {"authorization": "Bearer k"}, {**OPENAI_ARGS, "stream": True, "stream_options": {"include_usage": True}}),
        "gemini json": ("/gemini", "/v1beta/models/gemini-2.5-flash:generateContent", {"x-goog-api-key": "k"}, {"contents": [{"parts": [{"text": "hi"}]}]}),
        "gemini sse": ("/gemini", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=k", {}, {"contents": [{"parts": [{"text": "hi"}]}]}),
    }

    async def test_bodies_and_headers_identical(self) -> None:
        """For each provider, JSON and SSE, the gateway's status, headers and body bytes equal the direct ones."""
        for name, (prefix, path, headers, args) in self.cases.items():
            body = json.dumps(args).encode()
            direct, direct_body = await self.fetch(self.direct.base + path, headers, body)
            through, through_body = await self.fetch(self.gateway + prefix + path, headers, body)
            self.assertEqual(through.code, direct.code, name)
            self.assertEqual(through_body, direct_body, name)
            self.assertGreater(len(through_body), 200, name)
            direct_headers = {k: v for k, v in direct.headers.getAllRawHeaders() if k not in GATEWAY_HEADERS}
            through_headers = {
                k: v for k, v in through.headers.getAllRawHeaders() if k not in GATEWAY_HEADERS and not k.startswith(b"Access-Control-")
            }
            if b"X-Request-Id" not in direct_headers:
                through_headers.pop(b"X-Request-Id")
            self.assertEqual(through_headers, direct_headers, name)
            self.assertEqual(self.behind.server.requests[-1].body, body, name)

    async def test_error_statuses_verbatim(self) -> None:
        """Upstream 4xx and 5xx answers come through with their status and body."""
        for status in ("400", "401", "403", "429", "500", "503"):
            headers = {"x-api-key": "k", "x-fake-status": status}
            body = json.dumps(ANTHROPIC_ARGS).encode()
            direct, direct_body = await self.fetch(self.direct.base + "/v1/messages", headers, body)
            through, through_body = await self.fetch(self.gateway + "/anthropic/v1/messages", headers, body)
            self.assertEqual((through.code, through_body), (direct.code, direct_body))
            self.assertEqual(through.code, int(status))

class UnreachableTests(ProxyHarness):
    """An upstream nobody listens on."""

    def upstream_for(self, provider: str) -> str:
        """OpenAI's upstream is a closed loopback port."""
        if provider != "openai":
            return super().upstream_for(provider)
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        port.stopListening()
        return f"http://127.0.0.1:{port.getHost().port}"

    async def test_refused_connection_is_502(self) -> None:
        """A refused connection gives 502 upstream_unreachable, which the SDK surfaces as a server error."""
        import openai

        response, body = await self.fetch(self.gateway + "/openai/v1/chat/completions", {"authorization": "Bearer k"}, b"{}")
        self.assertEqual((response.code, json.loads(body)["type"]), (502, "upstream_unreachable"))

        def call() -> Any:
            with self.openai(self.gateway + "/openai") as client:
                try:
                    client.chat.completions.create(**OPENAI_ARGS)
                except openai.InternalServerError as error:
                    return error.status_code
            return None

        self.assertEqual(await self.in_thread(call), 502)


def self_signed() -> tuple[bytes, bytes]:
    """A throwaway certificate for 127.0.0.1 and its key, PEM-encoded."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class _TLSHarness(ProxyHarness):
    """Every provider is one fake provider served over TLS with a self-signed certificate."""

    certificate, key = self_signed()
    tls_base = ""

    def upstream_for(self, provider: str) -> str:
        """The TLS fake provider, started on first use."""
        from twisted.internet import ssl

        if not self.tls_base:
            self.tls_server = FakeProvider(Clock(), self.knobs)
            options = ssl.PrivateCertificate.loadPEM(self.certificate + self.key).options()
            port = reactor.listenSSL(0, self.tls_server.factory(), options, interface="127.0.0.1")
            self.addCleanup(self.tls_server.when_idle)
            self.addCleanup(port.stopListening)
            self.tls_base = f"https://127.0.0.1:{port.getHost().port}"
        return self.tls_base


class UntrustedTLSTests(_TLSHarness):
    """The provider's certificate is signed by no authority the gateway trusts."""

    async def test_unverified_certificate_is_refused(self) -> None:
        """By default the provider's certificate is verified: a self-signed one gives 502, and no request is sent."""
        response, body = await self.fetch(self.gateway + "/anthropic/v1/messages", {"x-api-key": "k"}, json.dumps(ANTHROPIC_ARGS).encode())
        self.assertEqual((response.code, json.loads(body)["type"]), (502, "upstream_unreachable"))
        self.assertEqual(len(self.tls_server.requests), 0)


class TrustedTLSTests(_TLSHarness):
    """The same TLS provider, its certificate trusted by the gateway's policy."""

    def tls_policy(self) -> Any:
        """Browser-like verification against the test certificate as the only root."""
        from twisted.internet import ssl
        from twisted.web.client import BrowserLikePolicyForHTTPS

        return BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(self.certificate))

    async def test_trusted_certificate_carries_the_stream(self) -> None:
        """A trusted certificate carries the request over TLS and the answer back unchanged."""
        body = json.dumps({**ANTHROPIC_ARGS, "stream": True}).encode()
        response, data = await self.fetch(self.gateway + "/anthropic/v1/messages", {"x-api-key": "k"}, body)
        self.assertEqual(response.code, 200)
        self.assertIn(b"event: message_stop", data)
        self.assertEqual(self.tls_server.requests[-1].body, body)


def request_head(body: bytes, headers: dict[str, str], path: str = "/anthropic/v1/messages") -> bytes:
    """The head of a POST with `body` on a keep-alive connection."""
    head = [f"POST {path} HTTP/1.1", "Host: gw", f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


class _Reader(Protocol):
    """A raw HTTP client that counts the bytes it reads and can stop reading."""

    def __init__(self) -> None:
        self.received = 0
        self.head = b""
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if len(self.head) < 4096:
            self.head += data[:4096]
        self.received += len(data)

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason
        self.lost.callback(None)

    async def close(self) -> None:
        """Close the connection (if still open) and wait until it is gone."""
        if self.reason is None:
            self.transport.loseConnection()
        await self.lost


class StreamingTests(ProxyHarness):
    """Cancellation, timeouts and flow control with real sockets."""

    async def connect(self, path: str, headers: dict[str, str], body: bytes) -> _Reader:
        """Open a raw connection to the gateway and send one request on it."""
        port = int(self.gateway.rsplit(":", 1)[1])
        reader = _Reader()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), reader)
        self.addCleanup(reader.close)
        # A small receive window, so a client that stops reading is felt at once.
        reader.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        reader.transport.write(request_head(body, headers, path) + body)
        return reader

    async def turns(self, condition: Callable[[], bool], seconds: float = 30.0) -> None:
        """Let the reactor run until `condition` holds, checking after every turn (bounded by `seconds`)."""
        deadline = reactor.seconds() + seconds
        while not condition():
            if reactor.seconds() > deadline:
                self.fail("condition never held")
            await deferLater(reactor, 0)

    async def test_client_disconnect_before_headers_cancels_upstream(self) -> None:
        """A client leaving while the gateway waits for the provider's headers makes the provider see a disconnect."""
        gone = self.behind.server.next_disconnect()
        reader = await self.connect("/anthropic/v1/messages", {"x-api-key": "k", "x-fake-ttfb-ms": "60000"}, json.dumps(ANTHROPIC_ARGS).encode())
        await self.turns(lambda: len(self.behind.server.requests) == 1)
        reader.transport.abortConnection()
        received = await gone
        self.assertEqual(received.path, "/v1/messages")
        self.assertEqual(self.proxy.in_flight, 0)

    async def test_client_disconnect_mid_stream_cancels_upstream(self) -> None:
        """A client leaving mid-stream makes the provider see a disconnect."""
        gone = self.behind.server.next_disconnect()
        body = json.dumps({**ANTHROPIC_ARGS, "stream": True}).encode()
        reader = await self.connect("/anthropic/v1/messages", {"x-api-key": "k", "x-fake-delay-ms": "1000"}, body)
        await self.turns(lambda: b"event: message_start" in reader.head)
        reader.transport.abortConnection()
        await gone
        self.assertEqual(self.behind.server.streams[-1].outcome, "client-gone")

    async def test_ttfb_timeout(self) -> None:
        """No provider headers within the TTFB timeout (gateway clock) gives 504 and cancels the provider call."""
        gone = self.behind.server.next_disconnect()
        reader = await self.connect("/openai/v1/chat/completions", {"authorization": "Bearer k", "x-fake-ttfb-ms": "60000"}, b"{}")
        await self.turns(lambda: len(self.behind.server.requests) == 1)
        self.clock.advance(self.ttfb_timeout)
        await self.turns(lambda: b"\r\n\r\n" in reader.head)
        self.assertTrue(reader.head.startswith(b"HTTP/1.1 504 "))
        self.assertIn(b'"type":"upstream_timeout"', reader.head)
        await gone
        await reader.close()

    async def test_idle_timeout_breaks_the_stream(self) -> None:
        """A provider silent for longer than the idle timeout has its stream cut, and the client sees a broken stream."""
        gone = self.behind.server.next_disconnect()
        body = json.dumps({**OPENAI_ARGS, "stream": True}).encode()
        reader = await self.connect("/openai/v1/chat/completions", {"authorization": "Bearer k", "x-fake-delay-ms": "5000"}, body)
        await self.turns(lambda: b"data: " in reader.head)
        self.clock.advance(self.idle_timeout)
        await reader.lost
        await gone
        self.assertTrue(reader.head.startswith(b"HTTP/1.1 200 "))
        self.assertNotIn(b"\r\n0\r\n\r\n", reader.head)
        self.assertNotIn(b"[DONE]", reader.head)

    async def test_mid_stream_drop_breaks_the_client(self) -> None:
        """A provider dropping the connection mid-stream leaves the client with an unfinished body, never a clean end."""
        body = json.dumps({**ANTHROPIC_ARGS, "stream": True}).encode()
        reader = await self.connect("/anthropic/v1/messages", {"x-api-key": "k", "x-fake-drop-after": "3", "x-fake-delay-ms": "10"}, body)
        await self.paced(reader.lost)
        self.assertTrue(reader.head.startswith(b"HTTP/1.1 200 "))
        self.assertIn(b"event: message_start", reader.head)
        self.assertNotIn(b"\r\n0\r\n\r\n", reader.head)
        self.assertEqual(self.behind.server.streams[-1].outcome, "dropped")

    async def test_paused_client_stops_upstream_and_memory_stays_bounded(self) -> None:
        """A client that stops reading soon stops the provider's writes; the 64 MB stream then flows with bounded memory."""
        events, size = 4096, 16384
        body = json.dumps({**ANTHROPIC_ARGS, "stream": True}).encode()
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        reader = await self.connect("/anthropic/v1/messages", {"x-api-key": "k", "x-fake-events": str(events), "x-fake-event-size": str(size)}, body)
        reader.transport.pauseProducing()
        await self.turns(lambda: bool(self.behind.server.streams))
        stream = self.behind.server.streams[-1]
        quiet, written = 0, -1
        while quiet < 200:  # until the provider has written nothing for 200 reactor turns
            quiet, written = (quiet + 1, written) if stream.bytes_written == written else (0, stream.bytes_written)
            await deferLater(reactor, 0)
        self.assertTrue(stream.paused)
        self.assertLess(written, events * size / 2)
        reader.transport.resumeProducing()
        await self.turns(lambda: stream.outcome == "complete" and reader.received >= stream.bytes_written)
        _, peak = tracemalloc.get_traced_memory()
        self.assertGreater(stream.bytes_written, events * size)
        self.assertLess(peak, 8 * 1024 * 1024)


class DaemonTests(TestCase):
    """The proxy inside the daemon: built from the configuration, drained and closed on shutdown."""

    async def test_stream_drains_then_pool_closes(self) -> None:
        """A stream in flight at shutdown runs to its end; then the upstream pool's connections are closed."""
        from smoltbot.config import load_config
        from smoltbot.app.compose import build_service

        clock = Clock()
        fake = FakeProvider(clock, Knobs(events=4, event_size=16))
        fake_port = reactor.listenTCP(0, fake.factory(), interface="127.0.0.1")
        self.addCleanup(fake_port.stopListening)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        base = f"http://127.0.0.1:{fake_port.getHost().port}"
        environ = {
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
            "AIP_ENABLED": "false",
            "HEARTBEAT_URL": "",
            "SMOLTBOT_ROLE": "gateway",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "ANTHROPIC_UPSTREAM_URL": base,
        }
        service = build_service(load_config(environ), reactor)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)

        reader = _Reader()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), reader)
        body = json.dumps({**ANTHROPIC_ARGS, "stream": True}).encode()
        reader.transport.write(request_head(body, {"x-api-key": "k", "x-fake-delay-ms": "10"}) + body)
        deadline = reactor.seconds() + 30
        while b"event: message_start" not in reader.head and reactor.seconds() < deadline:
            await deferLater(reactor, 0)

        stopped = service.stopService()
        self.assertFalse(stopped.called)
        while not stopped.called and reactor.seconds() < deadline:
            clock.advance(0.01)
            await deferLater(reactor, 0.001)
        await stopped
        self.assertEqual(fake.streams[-1].outcome, "complete")
        await reader.lost  # the drain closes the keep-alive connection once its response is done
        self.assertIn(b"event: message_stop", reader.head)
        await fake.when_idle()  # and the pool has closed its connection to the provider

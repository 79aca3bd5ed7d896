"""
An in-memory gateway for proxy unit tests: the real site, resources and HTTP client, with
clients and upstreams on `StringTransport`s and every timer on a `MemoryReactorClock`.

A test plays both ends: it writes a raw HTTP request into a client connection, reads what
the upstream connection received, feeds upstream response bytes back, and reads what the
client got. Nothing touches the network or real time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from smoltbot.health.probes import HealthState
from smoltbot.metrics import Metrics
from smoltbot.proxy import ProviderProxy, UpstreamClient
from smoltbot.http.ops import OpsApi
from smoltbot.http.root import build_root
from smoltbot.http.site import GatewaySite

UPSTREAMS = {
    "anthropic": "https://api.anthropic.test",
    "openai": "https://api.openai.test",
    "gemini": "http://gemini.test:8080/base",
}


@dataclass
class UpstreamConnection:
    """One connection the gateway opened to an upstream: its protocol and transport."""

    uri: URI
    protocol: Any
    transport: StringTransport

    def received(self) -> bytes:
        """Everything the gateway has sent on this connection."""
        return self.transport.value()

    def respond(self, data: bytes) -> None:
        """Deliver response bytes to the gateway as if the upstream sent them."""
        self.protocol.dataReceived(data)

    def close(self, reason: Failure | None = None) -> None:
        """End the connection from the upstream side."""
        self.protocol.connectionLost(reason or Failure(ConnectionDone()))


@implementer(IAgentEndpointFactory)
class FakeUpstreams:
    """
    Endpoints that connect in memory. `mode` is `connect`, `refuse`, `hang`, or an exception
    every connection attempt fails with.
    """

    def __init__(self) -> None:
        self.connections: list[UpstreamConnection] = []
        self.pending: list[Deferred[Any]] = []
        self.mode: str | Exception = "connect"

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return _Endpoint(self, uri)


@implementer(IStreamClientEndpoint)
@dataclass
class _Endpoint:
    owner: FakeUpstreams
    uri: URI

    def connect(self, factory: Any) -> Deferred[Any]:
        if isinstance(self.owner.mode, Exception):
            return fail(self.owner.mode)
        if self.owner.mode == "refuse":
            return fail(ConnectionRefusedError("refused"))
        if self.owner.mode == "hang":
            waiting: Deferred[Any] = Deferred()
            self.owner.pending.append(waiting)
            return waiting
        protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", self.uri.port))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", self.uri.port), lenient=True)
        protocol.makeConnection(transport)
        self.owner.connections.append(UpstreamConnection(self.uri, protocol, transport))
        return succeed(protocol)


@dataclass
class ClientConnection:
    """One client connection to the gateway."""

    channel: Any
    transport: StringTransport

    def send(self, data: bytes) -> None:
        """Bytes from the client."""
        self.channel.dataReceived(data)

    def received(self) -> bytes:
        """Everything the gateway has written to this client."""
        return self.transport.value()

    def response(self) -> Response:
        """The (first) response written to this client, parsed."""
        return parse_response(self.received())

    def pause(self) -> None:
        """The client's socket buffer is full: its transport pauses the HTTP channel."""
        self.transport.producer.pauseProducing()

    def resume(self) -> None:
        """The client has read its buffer: its transport resumes the HTTP channel."""
        self.transport.producer.resumeProducing()

    def pending_requests(self) -> list[Any]:
        """The requests the HTTP channel is still serving."""
        return list(self.transport.producer.requests)

    def disconnect(self) -> None:
        """The client goes away."""
        self.channel.connectionLost(Failure(ConnectionLost()))


@dataclass
class Response:
    """A parsed HTTP/1.1 response (body de-chunked); `complete` tells whether its framing ended."""

    status: int
    headers: dict[str, list[str]]
    body: bytes
    complete: bool

    def header(self, name: str) -> str | None:
        """The last value of a header (by lower-case name), or None."""
        values = self.headers.get(name.lower())
        return values[-1] if values else None


def parse_response(raw: bytes) -> Response:
    """Parse one response from raw bytes, tolerating a truncated body."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if headers.get("transfer-encoding") == ["chunked"]:
        body = b""
        while True:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                return Response(status, headers, body, False)
            size = int(size_line, 16)
            if size == 0:
                return Response(status, headers, body, rest.startswith(b"\r\n"))
            if len(rest) < size + 2:
                return Response(status, headers, body + rest[:size], False)
            body += rest[:size]
            rest = rest[size + 2 :]
    length = headers.get("content-length")
    if length is not None:
        expected = int(length[0])
        return Response(status, headers, rest[:expected], len(rest) >= expected)
    return Response(status, headers, rest, True)


@dataclass
class Gateway:
    """The gateway under test and the things around it."""

    clock: MemoryReactorClock
    upstreams: FakeUpstreams
    proxy: ProviderProxy
    site: GatewaySite
    metrics: Metrics
    events: list[dict[str, Any]] = field(default_factory=list)

    def connect(self) -> ClientConnection:
        """Open a client connection to the gateway."""
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = StringTransport(lenient=True)
        channel.makeConnection(transport)
        return ClientConnection(channel, transport)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> ClientConnection:
        """Open a connection and send one request on it."""
        client = self.connect()
        client.send(raw_request(method, path, headers, body))
        return client

    def upstream(self, index: int = -1) -> UpstreamConnection:
        """An upstream connection the gateway opened (the latest by default)."""
        return self.upstreams.connections[index]

    def metric(self, name: str, **labels: str) -> float | None:
        """A sample's value from the gateway's registry."""
        return self.metrics.registry.get_sample_value(name, labels)

    def access_lines(self) -> list[dict[str, Any]]:
        """The proxy's access-log events."""
        return [e for e in self.events if e.get("log_namespace", "").startswith("smoltbot.proxy") and "duration_ms" in e]


def raw_request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """An HTTP/1.1 request; a Content-Length is added for a body unless `headers` frames it."""
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway.test"]
    headers = dict(headers or {})
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in headers):
        headers["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def make_gateway(
    testcase: Any,
    *,
    max_concurrent: int = 100,
    ttfb_timeout: float = 30.0,
    idle_timeout: float = 10.0,
    max_body: int = 32 * 1024 * 1024,
    observe: Any = None,
) -> Gateway:
    """Build the gateway on a fresh clock, registry and set of fake upstreams."""
    clock = MemoryReactorClock()
    clock.advance(1_700_000_000)
    metrics = Metrics("test", CollectorRegistry())
    upstreams = FakeUpstreams()
    client = UpstreamClient(clock, max_connections_per_host=8, keepalive_timeout=30, connect_timeout=5, endpoints=upstreams)
    proxy = ProviderProxy(
        upstreams=UPSTREAMS,
        client=client,
        clock=clock,
        metrics=metrics,
        max_concurrent_requests=max_concurrent,
        ttfb_timeout=ttfb_timeout,
        idle_timeout=idle_timeout,
        observe=observe,
    )
    ops = OpsApi(version="test", aip_enabled=False, health=HealthState(), metrics=metrics, clock=clock, routes_providers=True)
    site = GatewaySite(build_root(ops, proxy.resources()), clock, max_request_body_bytes=max_body)
    gateway = Gateway(clock, upstreams, proxy, site, metrics)
    globalLogPublisher.addObserver(gateway.events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, gateway.events.append)
    return gateway


def upstream_head(status: str = "200 OK", headers: dict[str, str] | None = None) -> bytes:
    """A response status line and headers, as an upstream would send them."""
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

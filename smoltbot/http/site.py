"""
The HTTP site and its request class: request ids, CORS on every response, the request body cap
(413 before the body is read), and the count of requests in flight that shutdown drains.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from typing import Any, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import IResource

DEFAULT_MAX_REQUEST_BODY_BYTES = 32 * 1024 * 1024

_REQUEST_ID = re.compile(
    r"^(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[A-Za-z0-9._-]{1,64})$"
)

CORS_HEADERS: Mapping[bytes, bytes] = {
    b"access-control-allow-origin": b"*",
    b"access-control-allow-methods": b"GET, POST, PUT, PATCH, DELETE, OPTIONS",
    b"access-control-allow-headers": (
        b"Content-Type, x-api-key, anthropic-version, anthropic-beta, authorization, x-goog-api-key, "
        b"x-mnemom-api-key, x-request-id"
    ),
    b"access-control-expose-headers": (
        b"x-smoltbot-agent, x-smoltbot-session, x-smoltbot-request-id, x-request-id, X-AIP-Verdict, "
        b"X-AIP-Checkpoint-Id, X-AIP-Action, X-AIP-Proceed, X-AIP-Synthetic, X-AIP-Certificate-Id, "
        b"X-AIP-Chain-Hash, X-AIP-Enforcement, X-AIP-Nudge-Count"
    ),
    b"access-control-max-age": b"86400",
}


def request_id_for(incoming: bytes | None) -> str:
    """Keep a well-formed incoming `x-request-id` (a UUID or a short token); otherwise make one."""
    if incoming:
        try:
            candidate = incoming.decode("ascii")
        except UnicodeDecodeError:
            candidate = ""
        if _REQUEST_ID.match(candidate):
            return candidate
    return str(uuid.uuid4())


class GatewayRequest(server.Request):
    """
    A request that carries the gateway's request id and tells its site when it is in flight,
    so shutdown can wait for it. Its body is kept in memory and capped: a body over the site's
    `max_request_body_bytes` gets a 413 as soon as its length is known, and the connection closes.
    """

    log = Logger()
    request_id: str = ""
    _body_refused = False
    _body_size = 0

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if length is not None and length > self._body_limit():
            self._refuse_body(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._body_refused:
            return
        self._body_size += len(data)
        if self._body_size > self._body_limit():
            self._refuse_body(None)
            return
        self.content.write(data)

    def _body_limit(self) -> int:
        return getattr(self.channel.site, "max_request_body_bytes", DEFAULT_MAX_REQUEST_BODY_BYTES)

    def _refuse_body(self, length: int | None) -> None:
        """Answer 413 before reading the body (twisted.web has not parsed the request line yet)."""
        self._body_refused = True
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the answer
        limit = self._body_limit()
        request_id = request_id_for(self.requestHeaders.getRawHeaders(b"x-request-id", [None])[0])
        body = json.dumps(
            {
                "error": "Request too large",
                "type": "request_too_large",
                "message": f"The request body is larger than the gateway's limit of {limit} bytes.",
            },
            separators=(",", ":"),
        ).encode("utf-8")
        head = [b"HTTP/1.1 413 Request Entity Too Large"]
        head += [name + b": " + value for name, value in CORS_HEADERS.items()]
        rid = request_id.encode("ascii")
        head += [
            b"x-smoltbot-request-id: " + rid,
            b"x-request-id: " + rid,
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"connection: close",
        ]
        self.log.info(
            "refused a request body of {length} bytes (limit {limit})",
            length=length if length is not None else self._body_size,
            limit=limit,
            status=413,
            request_id=request_id,
        )
        self.channel.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.channel.loseConnection()

    def process(self) -> None:
        if self._body_refused:
            return  # answered with a 413 already; the connection is closing
        self.request_id = request_id_for(self.requestHeaders.getRawHeaders(b"x-request-id", [None])[0])
        headers = self.responseHeaders
        for name, value in CORS_HEADERS.items():
            headers.setRawHeaders(name, [value])
        rid = self.request_id.encode("ascii")
        headers.setRawHeaders(b"x-smoltbot-request-id", [rid])
        headers.setRawHeaders(b"x-request-id", [rid])
        site = self.channel.site
        if isinstance(site, GatewaySite):
            site.track(self)
            if site.draining:
                # Finish this request, then let the client reconnect elsewhere.
                headers.setRawHeaders(b"connection", [b"close"])
                self.channel.persistent = False
        super().process()


class GatewaySite(server.Site):
    """The HTTP site: quiet factory, gateway requests, and a count of requests in flight."""

    requestFactory = GatewayRequest
    noisy = False

    def __init__(
        self,
        resource: IResource,
        reactor: IReactorTime,
        max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, reactor=reactor, **kwargs)
        self.max_request_body_bytes = max_request_body_bytes
        self._in_flight: set[GatewayRequest] = set()
        self._idle_waiters: list[Deferred[None]] = []
        self.draining = False

    @property
    def in_flight(self) -> int:
        """Requests received and not yet finished or abandoned."""
        return len(self._in_flight)

    def track(self, request: GatewayRequest) -> None:
        """Count `request` as in flight until it finishes or its client goes away."""
        self._in_flight.add(request)
        request.notifyFinish().addBoth(self._untrack, request)

    def _untrack(self, result: object, request: GatewayRequest) -> None:
        self._in_flight.discard(request)
        if not self._in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def log(self, request: server.Request) -> None:
        """Replace twisted.web's combined-format access line: the proxy logs its own structured one."""

    def begin_draining(self) -> None:
        """From now on every response closes its connection, including those of requests in flight."""
        self.draining = True
        for request in self._in_flight:
            if request.channel is not None:
                # A response already under way (a stream) cannot say so, but still ends with a close.
                if not request.startedWriting:
                    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
                request.channel.persistent = False

    def when_idle(self) -> Deferred[None]:
        """A Deferred that fires once no request is in flight (at once if none is)."""
        if not self._in_flight:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def abort_in_flight(self) -> None:
        """Cut the connections of requests still in flight (the drain timeout has passed)."""
        for request in list(self._in_flight):
            transport = request.channel.transport if request.channel is not None else None
            if transport is not None:
                transport.abortConnection()


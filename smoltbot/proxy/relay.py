"""
The life of one proxied request after it has been sent upstream: waiting for the response
headers under the time-to-first-byte timeout, then relaying the body to the client chunk by
chunk under flow control and the idle timeout, until the upstream ends, fails or the client
leaves.

Flow control: the relay registers itself with the client's request as a streaming producer
and passes pause/resume on to the upstream connection, so a client that reads slowly stops
the gateway reading from the provider; memory per stream stays at a socket buffer or two.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from smoltbot.proxy.exchange import CLIENT_DISCONNECTED, OK, UPSTREAM_BROKEN, UPSTREAM_IDLE, Exchange, ExchangeObserver
from smoltbot.proxy.headers import copy_response_headers
from smoltbot.http.errors import error_body

_NETWORK_ERRORS = (
    ConnectError,
    DNSLookupError,
    ConnectionClosed,
    ResponseNeverReceived,
    ResponseFailed,
    RequestTransmissionFailed,
    OSError,
)
_NO_BODY_STATUSES = (204, 304)
_CLIENT_GONE_STATUS = 499  # nginx's "client closed request"

# Relay states.
_WAITING, _STREAMING, _DONE = range(3)


@implementer(IPushProducer)
class Relay(Protocol):
    """
    Drives one request from "sent upstream" to its end, then calls `done(exchange)` exactly once.

    It is the body protocol given to `IResponse.deliverBody` and the producer registered with
    the client's request. One timer serves both timeouts: time to first byte while waiting for
    the response headers, then the idle gap between chunks (not counted while the client has
    paused the stream).
    """

    log = Logger()

    def __init__(
        self,
        request: Request,
        exchange: Exchange,
        clock: IReactorTime,
        *,
        ttfb_timeout: float,
        idle_timeout: float,
        observer: ExchangeObserver | None,
        done: Callable[[Exchange], None],
    ) -> None:
        self._request = request
        self.exchange = exchange
        self._clock = clock
        self._ttfb_timeout = ttfb_timeout
        self._idle_timeout = idle_timeout
        self._observer = observer
        self._done = done
        self._state = _WAITING
        self._pending: Deferred[IResponse] | None = None
        self._timer: IDelayedCall | None = None
        self._timed_out = False
        self._client_gone = False
        self._paused = False
        self._last_chunk = 0.0

    def start(self, response: Deferred[IResponse]) -> None:
        """Wait for the upstream's response to `response` (the Deferred of the request just sent)."""
        self._pending = response
        self._timer = self._clock.callLater(self._ttfb_timeout, self._on_timer)
        response.addCallbacks(self._on_response, self._on_no_response).addErrback(self._on_bug)
        self._request.notifyFinish().addErrback(self._on_client_gone)

    # Waiting for the response headers.

    def _on_response(self, response: IResponse) -> None:
        self._pending = None
        request = self._request
        exchange = self.exchange
        exchange.status = response.code
        exchange.response_at = self._clock.seconds()
        request.setResponseCode(response.code, response.phrase)
        headers = request.responseHeaders
        copy_response_headers(response.headers, headers)
        if response.length is not UNKNOWN_LENGTH and response.code not in _NO_BODY_STATUSES and request.method != b"HEAD":
            headers.setRawHeaders(b"content-length", [b"%d" % response.length])
        if self._observer is not None:
            self._notify("response_started", exchange, response.headers)
        request.write(b"")  # the status line and headers go out now, before any body
        self._state = _STREAMING
        self._last_chunk = exchange.response_at
        self._timer.reset(self._idle_timeout)
        response.deliverBody(self)

    def _on_no_response(self, failure: Failure) -> None:
        self._pending = None
        if self._client_gone:
            return self._finish(_CLIENT_GONE_STATUS, CLIENT_DISCONNECTED)
        if self._timed_out:
            return self._answer(
                504, "upstream_timeout", "Upstream timeout", f"no response from the provider within {self._ttfb_timeout:g}s"
            )
        if failure.check(*_NETWORK_ERRORS):
            return self._answer(
                502, "upstream_unreachable", "Upstream unreachable", f"could not reach the provider: {_describe(failure)}"
            )
        self.log.failure("unexpected error calling {provider}", failure, provider=self.exchange.provider, request_id=self.exchange.request_id)
        return self._answer(500, "gateway_error", "Internal gateway error", "unexpected error; see the gateway log")

    def _answer(self, status: int, error_type: str, error: str, message: str) -> None:
        request = self._request
        body = error_body(request, status, error_type, error, message)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()
        self._finish(status, error_type)

    # Relaying the body (IProtocol, given to deliverBody).

    def connectionMade(self) -> None:
        if not self._client_gone:
            self._request.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        self._last_chunk = self._clock.seconds()
        self.exchange.bytes_out += len(data)
        if self._observer is not None:
            self._notify("response_chunk", data)
        self._request.write(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._client_gone:
            return self._finish(self.exchange.status, CLIENT_DISCONNECTED)
        request = self._request
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
            return self._finish(self.exchange.status, OK)
        # Part of the response is out: only a broken connection tells the client it is incomplete.
        if self._paused:
            request.channel.transport.abortConnection()
        else:
            request.channel.loseConnection()
        self._finish(self.exchange.status, UPSTREAM_IDLE if self._timed_out else UPSTREAM_BROKEN)

    # Flow control (IPushProducer, registered with the client's request).

    def pauseProducing(self) -> None:
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self._last_chunk = self._clock.seconds()
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    # Timeouts and the client going away.

    def _on_timer(self) -> None:
        if self._state == _WAITING:
            self._timer = None
            self._timed_out = True
            self._pending.cancel()
            return
        idle = self._clock.seconds() - self._last_chunk
        if self._paused or idle < self._idle_timeout:
            self._timer = self._clock.callLater(self._idle_timeout - (0 if self._paused else idle), self._on_timer)
            return
        self._timer = None
        self._timed_out = True
        self.log.warn(
            "no data from {provider} for {idle:.0f}s: cutting the stream",
            provider=self.exchange.provider,
            idle=idle,
            request_id=self.exchange.request_id,
        )
        self.transport.stopProducing()

    def _on_client_gone(self, reason: Failure) -> None:
        if self._state == _DONE:
            return
        self._client_gone = True
        if self._pending is not None:
            self._pending.cancel()
        else:
            self.transport.stopProducing()

    def _on_bug(self, failure: Failure) -> None:
        self.log.failure("proxy relay failed", failure, request_id=self.exchange.request_id)
        if self._state != _DONE:
            if not self._client_gone:
                self._request.channel.transport.abortConnection()
            self._finish(self.exchange.status or 500, "gateway_error")

    def _finish(self, status: int, outcome: str) -> None:
        self._state = _DONE
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        exchange = self.exchange
        exchange.status = status
        exchange.outcome = outcome
        exchange.finished_at = self._clock.seconds()
        if self._observer is not None:
            self._notify("exchange_finished", exchange)
        self._done(exchange)

    def _notify(self, method: str, *args: Any) -> None:
        try:
            getattr(self._observer, method)(*args)
        except Exception:
            self.log.failure("exchange observer failed; detaching it", request_id=self.exchange.request_id)
            self._observer = None


def _describe(failure: Failure) -> str:
    """A short reason for a failed upstream call, naming no host, key or path."""
    value = failure.value
    reasons = getattr(value, "reasons", None)
    if reasons:
        value = reasons[0].value
    return type(value).__name__

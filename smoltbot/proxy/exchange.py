"""
One proxied request as the proxy saw it (`Exchange`), and the hook through which other parts
of the gateway watch it (`ExchangeObserver`) without the relay knowing about them.

The request recorder and the response extractors attach here: an observer factory
is called once per request with its `Exchange` and request body, and the observer it returns
(or None, which costs nothing) sees the response headers, every response chunk, and the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from twisted.web.http_headers import Headers

from smoltbot.identity import Identity

# Outcomes other than "ok" and the gateway's own error types (`not_found`, ...).
OK = "ok"
CLIENT_DISCONNECTED = "client_disconnected"
UPSTREAM_BROKEN = "upstream_broken"
UPSTREAM_IDLE = "upstream_idle_timeout"


@dataclass(slots=True, eq=False)
class Exchange:
    """
    What happened to one request: who sent it, where it went, how it ended, when and how big.

    Times are the clock's seconds. `status` is the status sent to the client (499 when the
    client left before any response). `outcome` is `ok` when the upstream's response was relayed
    whole (whatever its status), the gateway error type when the gateway answered itself
    (`authentication_error`, `upstream_timeout`, ...), or `client_disconnected`,
    `upstream_broken`, `upstream_idle_timeout` when the stream was cut.
    """

    provider: str
    method: str
    path: str
    request_id: str
    started: float
    identity: Identity | None = None
    status: int = 0
    outcome: str = ""
    response_at: float | None = None
    finished_at: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def ttfb(self) -> float | None:
        """Seconds from the request to the upstream's response headers (None when none came)."""
        return None if self.response_at is None else self.response_at - self.started

    @property
    def duration(self) -> float | None:
        """Seconds from the request to its end (None while it runs)."""
        return None if self.finished_at is None else self.finished_at - self.started


class ExchangeObserver(Protocol):
    """Watches one exchange; its methods must be quick and must not raise (a failing one is dropped)."""

    def response_started(self, exchange: Exchange, headers: Headers) -> None:
        """The upstream's status (in `exchange.status`) and response headers have arrived."""

    def response_chunk(self, data: bytes) -> None:
        """One piece of the response body, exactly as it is sent to the client."""

    def exchange_finished(self, exchange: Exchange) -> None:
        """The exchange is over; `exchange` holds its outcome, timings and byte counts."""


ObserverFactory = Callable[[Exchange, bytes], "ExchangeObserver | None"]
"""Called with each request's `Exchange` and body; returns the observer for it, or None."""

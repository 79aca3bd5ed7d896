"""
The deployment heartbeat: a small JSON POST to `HEARTBEAT_URL` at start and every minute.

Strictly fail-open: a heartbeat that cannot be delivered is logged and counted
(`gateway_heartbeats_total{result}`), never retried early and never fatal. At most one heartbeat
is in flight; each has one deadline covering the response headers and body. Deciding whether
to run at all (an empty `HEARTBEAT_URL` disables it) is the daemon's business, not this module's.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
from typing import Any, Callable, NoReturn
from urllib.parse import urlsplit

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from smoltbot.logs import format_timestamp
from smoltbot.metrics import Metrics
from smoltbot.util.errors import describe, unwrap
from smoltbot.util.periodic import PeriodicService


class HeartbeatService(PeriodicService):
    """
    Sends a heartbeat at start and then every `interval` seconds on `reactor`'s clock.

    `http_client` is a treq `HTTPClient` (tests may pass a `StubTreq`); `health_status` returns
    `"healthy"` or `"degraded"` from the readiness probes; `started_at` is `reactor.seconds()`
    when the daemon started. A beat due while the previous one is still in flight is skipped.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        *,
        license_jwt: str | None,
        deployment_id: str,
        version: str,
        interval: float = 60,
        timeout: float = 10,
        reactor: IReactorTime,
        http_client: HTTPClient,
        health_status: Callable[[], str],
        metrics: Metrics,
        started_at: float,
    ) -> None:
        super().__init__(clock=reactor, interval=interval)
        self._url = url
        self._license_jwt = license_jwt or None
        self._deployment_id = deployment_id
        self._version = version
        self._timeout = timeout
        self._reactor = reactor
        self._http = http_client
        self._health_status = health_status
        self._metrics = metrics
        self._started_at = started_at
        self._headers = {"Content-Type": "application/json"}
        if self._license_jwt:
            self._headers["Authorization"] = f"Bearer {self._license_jwt}"
        self._secrets = [s for s in (self._license_jwt, urlsplit(url).query) if s]

    def skipped(self) -> None:
        self.log.warn("[heartbeat] Previous heartbeat still in flight; skipping this one")

    def tick(self) -> Deferred[None] | None:
        """Send one heartbeat; the Deferred fires when it has landed, whatever the outcome."""
        try:
            d = self._http.post(
                self._url,
                data=json.dumps(self._payload()).encode(),
                headers=self._headers,
                allow_redirects=False,  # a redirect must not carry the license elsewhere
                unbuffered=True,
            )
        except Exception:
            self._count("failed")
            self.log.failure("[heartbeat] Could not start the heartbeat")
            return None
        d.addCallback(self._drain)
        d.addTimeout(self._timeout, self._reactor, onTimeoutCancel=_timed_out)
        d.addCallbacks(self._answered, self._failed)
        d.addErrback(lambda failure: self.log.failure("[heartbeat] Unexpected error", failure))
        return d

    def _payload(self) -> dict[str, Any]:
        """The heartbeat body (reference §8.5, with Python's runtime in place of Node's)."""
        now = self._reactor.seconds()
        return {
            "deployment_id": self._deployment_id,
            "license_jwt": self._license_jwt,
            "version": self._version,
            "heartbeat_data": {
                "uptime_seconds": int(now - self._started_at),
                "health_status": self._health_status(),
                "python_version": platform.python_version(),
                "platform": sys.platform,
                "memory_usage_mb": _rss_mb(),
            },
            "timestamp": format_timestamp(now),
        }

    def _drain(self, response: IResponse) -> Deferred[int]:
        """Read the response body to its end, keeping nothing; fire with the status code."""
        reader = _Discard()
        response.deliverBody(reader)
        return reader.done.addCallback(lambda _: response.code)

    def _answered(self, status: int) -> None:
        if 200 <= status < 300:
            self._count("ok")
        else:
            self._count("http_error")
            self.log.warn("[heartbeat] Server returned {status} \N{EM DASH} continuing operation", status=status)

    def _failed(self, failure: Failure) -> None:
        if isinstance(unwrap(failure), CancelledError):
            return  # abandoned by stopService
        self._count("failed")
        # Typed: a network error's message alone ("Connection refused") does not say which step failed.
        reason = describe(failure, self._secrets, typed=True)
        self.log.warn("[heartbeat] Failed to send heartbeat: {reason}", reason=reason)

    def _count(self, result: str) -> None:
        self._metrics.heartbeats.labels(result=result).inc()


def _timed_out(result: object, timeout: float) -> NoReturn:
    """`addTimeout`'s translation: whatever the cancelled request produced, report the timeout."""
    raise TimeoutError(f"no response within {timeout:g} s")


class _Discard(Protocol):
    """Consumes a response body and drops it; cancelling `done` drops the connection."""

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred(lambda _: self.transport.stopProducing())

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


def _rss_mb() -> float:
    """This process's resident set size in MiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:  # procfs: served from memory, never blocks
            pages = int(statm.read().split()[1])
        return round(pages * resource.getpagesize() / 2**20, 1)
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)

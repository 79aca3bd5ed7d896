"""
The daemon's lifecycle: binding the listener, signals, systemd notifications, and the ordered,
draining shutdown of the parts `smoltbot.app.compose` builds.
"""

from __future__ import annotations

import errno
import os
import platform
import signal
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure

from smoltbot.app.sdnotify import sd_notify
from smoltbot.config import Config

if TYPE_CHECKING:
    from smoltbot.app.compose import Parts


class StartupError(Exception):
    """The daemon cannot start; the message is the one line an operator needs."""


def listen_error_message(error: CannotListenError, variable: str) -> str:
    """
    One clear line for a failed bind, naming the address and the fix; `variable` is the one that
    placed the listener (PORT, or LISTEN when that was given).
    """
    port = error.port
    if isinstance(port, int):
        address = _host_port(error.interface or "0.0.0.0", port)
        users = f"lsof -i :{port}"
    else:
        address = str(port)
        users = f"lsof {port}"
    code = getattr(error.socketError, "errno", None)
    if code == errno.EADDRINUSE:
        return f"listen EADDRINUSE: address already in use {address} (set {variable}, or stop the process using it: {users})"
    if code == errno.EACCES:
        if variable == "PORT":
            return f"listen EACCES: permission denied {address} (use a port above 1023, or grant CAP_NET_BIND_SERVICE)"
        return f"listen EACCES: permission denied {address} (check LISTEN: a port above 1023, or a folder the daemon may write)"
    if code == errno.EADDRNOTAVAIL:
        where = "HOST" if variable == "PORT" else "the interface in LISTEN"
        return f"listen EADDRNOTAVAIL: address not available {address} (set {where} to an address of this machine, or 0.0.0.0)"
    check = "HOST and PORT" if variable == "PORT" else "LISTEN"
    return f"listen failed on {address}: {error.socketError} (check {check})"


def describe_address(address: IAddress) -> str:
    """A listening address as an operator writes it: `127.0.0.1:8787`, `[::]:8787`, or a socket path."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        name = getattr(address, "name", None)
        return os.fsdecode(name) if name is not None else str(address)
    return _host_port(host, port)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GatewayService(MultiService):
    """
    Runs the parts of one smoltbot process: starts their services in order, with the HTTP
    listener opened first (it may need privileges) and the process announced once the reactor
    runs; on shutdown drains the site, then stops the services one after the other in reverse.
    """

    log = Logger()

    def __init__(
        self,
        parts: Parts,
        config: Config,
        reactor: Any,
        *,
        log_observer: ILogObserver | None = None,
        handle_signals: bool = False,
    ) -> None:
        super().__init__()
        self.parts = parts
        self.config = config
        self._reactor = reactor
        self._handle_signals = handle_signals
        self.log_observer = log_observer
        self.port: IListeningPort | None = None
        self._stopping: Deferred[None] | None = None
        for service in parts.services:
            service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Listen first (a low port may need privileges that are dropped after this), failing with
        one clear line. Every endpoint Twisted ships (tcp, unix, systemd, ssl) listens at once, so
        a failure is known here, before any other service starts.
        """
        http = self.config.http
        outcome: list[Any] = []
        listening = self.parts.http.endpoint.listen(self.parts.http.site)
        listening.addBoth(outcome.append)
        if not outcome:
            listening.cancel()
            raise StartupError(f"{http.listen_variable}: {http.endpoint} does not listen at once; use a tcp:, unix: or systemd: endpoint")
        result = outcome[0]
        if isinstance(result, Failure):
            if result.check(CannotListenError):
                raise StartupError(listen_error_message(result.value, http.listen_variable))
            raise StartupError(f"listen failed on {http.endpoint}: {result.getErrorMessage()} (check {http.listen_variable})")
        self.port = result
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()
        self._reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        """The reactor runs: take over the signals, then announce the daemon as started."""
        if self._handle_signals:
            self.install_signal_handlers()
        self.parts.health.state.started = True
        assert self.port is not None, "startService listens before the reactor runs"
        address = self.port.getHost()
        self.log.info(
            "smoltbot {version} starting: role={role} python={python_version} kv={kv_mode} listening on {address}",
            version=self.config.gateway_version,
            role=self.config.role,
            python_version=platform.python_version(),
            kv_mode=self.config.kv.mode,
            address=describe_address(address),
            host=getattr(address, "host", None),
            port=getattr(address, "port", None),
            pid=os.getpid(),
        )
        if self.parts.health.heartbeat is None:
            self.log.info("heartbeat disabled (HEARTBEAT_URL is empty)")
        sd_notify(b"READY=1")

    @property
    def listening_port(self) -> int | None:
        """The bound TCP port (differs from the configured one when that was 0); None before listening or off TCP."""
        return getattr(self.port.getHost(), "port", None) if self.port is not None else None

    def install_signal_handlers(self) -> None:
        """
        Handle SIGTERM and SIGINT ourselves: drain, then stop the reactor with exit status 0
        (twistd's own handlers make it re-raise the signal and exit 143). A second signal
        during the drain cuts it short.
        """

        def handler(signum: int, frame: Any) -> None:
            self._reactor.callFromThread(self._on_signal, signum)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping is not None:
            self.log.warn("{signal} again: cutting the drain short", signal=name)
            self.parts.http.site.abort_in_flight()
            return
        self.log.info("{signal} received: draining", signal=name)
        self._reactor.stop()

    def stopService(self) -> Deferred[None]:
        if self._stopping is None:
            self._stopping = self._drain_and_stop()
        return self._stopping

    @inlineCallbacks
    def _drain_and_stop(self):
        shutdown, site, health = self.config.shutdown, self.parts.http.site, self.parts.health.state
        sd_notify(b"STOPPING=1")
        health.draining = True
        site.begin_draining()
        if shutdown.delay > 0:
            self.log.info("readiness reports draining; closing the listener in {delay}s", delay=shutdown.delay)
            yield deferLater(self._reactor, shutdown.delay)
        if self.port is not None:
            yield self.port.stopListening()
        if site.in_flight:
            self.log.info(
                "waiting up to {timeout}s for {count} requests in flight",
                timeout=shutdown.drain_timeout,
                count=site.in_flight,
            )
            idle = site.when_idle()
            idle.addTimeout(shutdown.drain_timeout, self._reactor)
            try:
                yield idle
            except Exception:
                self.log.warn(
                    "drain timeout of {timeout}s reached: aborting {count} requests",
                    timeout=shutdown.drain_timeout,
                    count=site.in_flight,
                )
                site.abort_in_flight()
        if self.parts.http.proxy is not None:
            yield self.parts.http.proxy.close()
        Service.stopService(self)
        for service in reversed(list(self)):
            try:
                yield maybeDeferred(service.stopService)
            except Exception:
                self.log.failure("stopping {service} failed", service=type(service).__name__)
        self.log.info("smoltbot stopped")
